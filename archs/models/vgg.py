"""VGG11, VGG16 and VGG19 for small images, with BatchNorm (the CIFAR variants).

The convolutional part is torchvision's: its configurations "A", "D" and "E" built by its
``make_layers`` with BatchNorm after every 3x3 convolution. As in Frankle & Carbin (2019)
and open_lth, the classifier is one linear layer 512 -> classes after global average pooling,
in place of ImageNet's 4096-4096 head, and the last max-pool becomes that average pool:
32 -> 16 -> 8 -> 4 -> 2 through four max-pools, then 2x2 -> 1x1.

1x28x28 inputs are zero-padded to 32x32 first (2 pixels each side), so both datasets use
the same layers and no stage runs on 1x1 maps, where a 3x3 kernel's outer weights would
never see data. Larger inputs are left as they are; global average pooling absorbs the size.
"""
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from archs.registry import register_model

MIN_SIZE = 32


class PadToMinimum(nn.Module):
    """Zero-pads height and width up to ``size``, centred; larger inputs pass unchanged.

    A module without parameters, so the state dict is the same with or without it."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        extra_h, extra_w = max(self.size - height, 0), max(self.size - width, 0)
        if not extra_h and not extra_w:
            return x
        return F.pad(x, (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2))

    def extra_repr(self) -> str:
        return f"size={self.size}"


class SmallImageVGG(nn.Module):
    """Attribute names follow torchvision's VGG (features, avgpool, classifier)."""

    def __init__(self, config: str, in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers = cfgs[config]
        assert layers[-1] == "M", "torchvision's VGG configurations end in a max-pool"
        self.pad = PadToMinimum(MIN_SIZE)
        self.features = make_layers(layers[:-1], batch_norm=True)
        if in_channels != 3:  # make_layers assumes RGB
            first = self.features[0]
            self.features[0] = nn.Conv2d(in_channels, first.out_channels, kernel_size=3, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(self.pad(x))
        return self.classifier(torch.flatten(self.avgpool(x), 1))


@register_model("vgg11")
def vgg11(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return SmallImageVGG("A", in_channels, num_classes)


@register_model("vgg16")
def vgg16(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return SmallImageVGG("D", in_channels, num_classes)


@register_model("vgg19")
def vgg19(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return SmallImageVGG("E", in_channels, num_classes)
