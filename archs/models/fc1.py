"""fc1: the fully connected 784-300-100-10 network of Frankle & Carbin (2019), LeNet-300-100."""
from torch import nn

from archs.registry import register_model


@register_model("fc1", aliases=("lenet300_100",))
def fc1(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size * image_size, 300),
        nn.ReLU(inplace=True),
        nn.Linear(300, 100),
        nn.ReLU(inplace=True),
        nn.Linear(100, num_classes),
    )
