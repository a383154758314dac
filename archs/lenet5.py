"""LeNet5 as the original program defined it (the "Conv-2" network of the LTH paper).

Two 3x3 convolutions of 64 channels, one 2x2 max-pool, then 256-256-classes. The MNIST
variant takes 1x28x28 inputs, the CIFAR-10 variant 3x32x32; only the input channels and
the first linear layer's width differ.
"""
from torch import nn


def lenet5(in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    pooled = image_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(64, 64, kernel_size=3, stride=1, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=2, stride=2),
        nn.Flatten(),
        nn.Linear(64 * pooled * pooled, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, 256),
        nn.ReLU(inplace=True),
        nn.Linear(256, num_classes),
    )
