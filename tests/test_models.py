"""The registry's networks: shapes for both datasets and the original's initialisation."""
import pytest
import torch
from torch import nn

from archs import ARCHITECTURES, build_model
from utils import UserError

INPUTS = {"mnist": (1, 28), "cifar10": (3, 32)}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
@pytest.mark.parametrize("dataset", list(INPUTS))
def test_every_architecture_runs_on_every_dataset(arch, dataset):
    channels, size = INPUTS[dataset]
    model = build_model(arch, channels, size, 10)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 10)


def test_fc1_and_lenet5_have_the_original_layer_sizes():
    fc1 = build_model("fc1", 1, 28, 10)
    assert [tuple(m.weight.shape) for m in fc1 if isinstance(m, nn.Linear)] == [(300, 784), (100, 300), (10, 100)]
    lenet_mnist = build_model("lenet5", 1, 28, 10)
    lenet_cifar = build_model("lenet5", 3, 32, 10)
    assert lenet_mnist[0].weight.shape == (64, 1, 3, 3) and lenet_cifar[0].weight.shape == (64, 3, 3, 3)
    assert lenet_mnist[6].weight.shape == (256, 64 * 14 * 14)
    assert lenet_cifar[6].weight.shape == (256, 64 * 16 * 16)


def test_resnet18_is_torchvisions_with_a_small_image_stem():
    from torchvision.models.resnet import ResNet

    model = build_model("resnet18", 3, 32, 10)
    assert isinstance(model, ResNet)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, nn.Identity)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(11.17e6, rel=0.01)


def test_initialisation_is_the_originals():
    torch.manual_seed(0)
    model = build_model("resnet18", 3, 32, 10)
    bn_weights = torch.cat([m.weight.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    bn_biases = torch.cat([m.bias.detach() for m in model.modules() if isinstance(m, nn.BatchNorm2d)])
    assert bn_weights.mean().item() == pytest.approx(1.0, abs=0.005)
    assert bn_weights.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.count_nonzero(bn_biases) == 0
    torch.manual_seed(0)
    fc1 = build_model("fc1", 1, 28, 10)
    weight = fc1[1].weight.detach()
    assert weight.std().item() == pytest.approx((2 / (784 + 300)) ** 0.5, rel=0.02)  # Xavier normal
    assert fc1[1].bias.detach().std().item() == pytest.approx(1.0, rel=0.2)       # standard normal


def test_unknown_architecture_names_the_choices():
    with pytest.raises(UserError, match="fc1, lenet5, resnet18"):
        build_model("vgg19", 3, 32, 10)
