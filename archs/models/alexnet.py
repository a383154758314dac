"""AlexNet for small images, on torchvision's AlexNet.

Layout for a 3x32x32 input (1x28x28 inputs are zero-padded to 32x32 first, as for VGG):

    conv 3x3/1   in -> 64,   ReLU, max-pool 3x3/2   32 -> 15
    conv 5x5/1   64 -> 192,  ReLU, max-pool 3x3/2   15 -> 7
    conv 3x3/1  192 -> 384,  ReLU
    conv 3x3/1  384 -> 256,  ReLU
    conv 3x3/1  256 -> 256,  ReLU, max-pool 3x3/2    7 -> 3
    adaptive average pool to 3x3 (an identity at 32x32)
    linear 2304 -> 4096, ReLU, linear 4096 -> 4096, ReLU, linear 4096 -> classes

Changes from torchvision's: the stem is a 3x3 stride-1 convolution instead of 11x11 stride 4
(which would leave a 32x32 image 7x7 before the first pool), the pooled map is 3x3 instead of
6x6, and dropout is off (p = 0, like every network of this toolkit, so that pruning results are
comparable across networks). Everything else, including the 4096-wide classifier that holds
most of the 28.7M parameters, is torchvision's.
"""
import torch
from torch import nn
from torchvision.models import AlexNet

from archs.models.vgg import MIN_SIZE, PadToMinimum
from archs.registry import register_model

POOLED_SIZE = 3


class SmallImageAlexNet(AlexNet):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__(num_classes=num_classes, dropout=0.0)
        self.pad = PadToMinimum(MIN_SIZE)
        self.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1)
        self.avgpool = nn.AdaptiveAvgPool2d(POOLED_SIZE)
        hidden = self.classifier[1].out_features
        self.classifier[1] = nn.Linear(256 * POOLED_SIZE * POOLED_SIZE, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(self.pad(x))


@register_model("alexnet")
def alexnet(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    return SmallImageAlexNet(in_channels, num_classes)
