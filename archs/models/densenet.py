"""DenseNet121 for small images, on torchvision's DenseNet.

The ImageNet stem (7x7 stride-2 convolution then a 3x3 stride-2 max-pool) becomes a 3x3
stride-1 convolution without the pool, as for the ResNets; the dense blocks, transitions
(32 -> 16 -> 8 -> 4 on 32x32 inputs, 28 -> 14 -> 7 -> 3 on 28x28) and the classifier after
global average pooling are torchvision's.
"""
from torch import nn
from torchvision.models.densenet import DenseNet

from archs.registry import register_model


@register_model("densenet121")
def densenet121(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    del image_size
    model = DenseNet(growth_rate=32, block_config=(6, 12, 24, 16), num_init_features=64,
                     num_classes=num_classes)
    model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.features.pool0 = nn.Identity()
    return model
