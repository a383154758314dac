"""ResNet18 for small images, built on torchvision's ResNet.

ImageNet's stem (7x7 stride-2 convolution then max-pool) would shrink a 28x28 or 32x32
image to 7x7 or 8x8 before the first block; small-image ResNets use a 3x3 stride-1
convolution and no pooling instead, which is the only change made here.
"""
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet


def resnet18(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size  # global average pooling makes the network size-agnostic
    model = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model
