"""Small-image ResNets: ResNet18 and ResNet50 on torchvision's ResNet, ResNet20 of He et al.

ImageNet's stem (7x7 stride-2 convolution then max-pool) would shrink a 28x28 or 32x32
image to 7x7 or 8x8 before the first block; small-image ResNets use a 3x3 stride-1
convolution and no pooling instead, which is the only change made to torchvision's.

ResNet20 is He et al.'s (2016, section 4.2) CIFAR network, which torchvision lacks: a 3x3
convolution of 16 channels, three stages of three basic blocks of 16, 32 and 64 channels
(the first block of stages 2 and 3 halves the resolution), global average pooling, one linear
layer; 0.27M parameters. The blocks are torchvision's BasicBlock. Where the width doubles the
shortcut is a 1x1 stride-2 convolution with BatchNorm (the paper's option B, as in open_lth)
rather than option A's zero-padding, so every shortcut is an ordinary prunable layer.
"""
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from archs.registry import register_model


def small_image_stem(model: ResNet, in_channels: int) -> ResNet:
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


@register_model("resnet18")
def resnet18(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size  # global average pooling makes the network size-agnostic
    return small_image_stem(ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes), in_channels)


@register_model("resnet50")
def resnet50(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return small_image_stem(ResNet(Bottleneck, [3, 4, 6, 3], num_classes=num_classes), in_channels)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2) with ``blocks_per_stage`` = n."""

    WIDTHS = (16, 32, 64)

    def __init__(self, in_channels: int, num_classes: int, blocks_per_stage: int) -> None:
        super().__init__()
        widths = self.WIDTHS
        self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages = []
        channels = widths[0]
        for stage, width in enumerate(widths):
            blocks = []
            for block in range(blocks_per_stage):
                stride = 2 if stage > 0 and block == 0 else 1
                downsample = None
                if stride != 1 or channels != width:
                    downsample = nn.Sequential(
                        nn.Conv2d(channels, width, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(width))
                blocks.append(BasicBlock(channels, width, stride=stride, downsample=downsample))
                channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@register_model("resnet20")
def resnet20(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return CifarResNet(in_channels, num_classes, blocks_per_stage=3)
