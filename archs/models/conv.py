"""The Conv-2, Conv-4 and Conv-6 networks of Frankle & Carbin (2019), and lenet5.

Pairs of 3x3 convolutions (padding 1, ReLU) of 64, then 128, then 256 channels, a 2x2
max-pool after each pair, then fully connected 256-256-classes. No dropout (the paper trained
these with and without; without is the plain network). On 1x28x28 inputs the pools floor
28 -> 14 -> 7 -> 3, on 3x32x32 they halve 32 -> 16 -> 8 -> 4; only the first convolution's
input channels and the first linear layer's width depend on the input.

``lenet5`` is the name the original program gave to Conv-2: the same layers, kept under its
own name so that runs saved as lenet5 stay where they are.
"""
from torch import nn

from archs.registry import register_model

FC_WIDTHS = (256, 256)


def frankle_conv_net(channel_pairs: tuple[int, ...], in_channels: int, image_size: int,
                     num_classes: int) -> nn.Sequential:
    """One flat Sequential (state-dict names "0.weight", "2.weight", ...) for every depth."""
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for width in channel_pairs:
        layers += [nn.Conv2d(channels, width, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True),
                   nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1), nn.ReLU(inplace=True),
                   nn.MaxPool2d(kernel_size=2, stride=2)]
        channels, size = width, size // 2
    layers.append(nn.Flatten())
    features = channels * size * size
    for width in FC_WIDTHS:
        layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


@register_model("conv2")
def conv2(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    return frankle_conv_net((64,), in_channels, image_size, num_classes)


@register_model("conv4")
def conv4(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    return frankle_conv_net((64, 128), in_channels, image_size, num_classes)


@register_model("conv6")
def conv6(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    return frankle_conv_net((64, 128, 256), in_channels, image_size, num_classes)


@register_model("lenet5")
def lenet5(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    return frankle_conv_net((64,), in_channels, image_size, num_classes)
