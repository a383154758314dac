"""The registry's networks: layer sizes, parameter counts, training on both input shapes,
the original's initialisation, user-registered networks and aliases."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archs import (ALIASES, ARCHITECTURES, architecture_names, build_model, canonical_arch,
                   output_layer_name, register_model)
from archs.pruning import prunable_names
from utils import UserError

INPUTS = {"mnist": (1, 28), "cifar10": (3, 32)}
SMALL = ["fc1", "lenet5", "conv2", "conv4", "conv6", "resnet20"]
BIG = ["alexnet", "vgg11", "vgg16", "vgg19", "resnet18", "resnet50", "densenet121"]


# Parameter counts worked out from each network's published layout, independently of the code
# that builds it. c: input channels, s: image side, k: classes.
def conv(c_in, c_out, kernel, bias=True):
    return c_in * c_out * kernel * kernel + (c_out if bias else 0)


def linear(n_in, n_out):
    return n_in * n_out + n_out


def batchnorm(channels):
    return 2 * channels


def frankle_conv_count(pairs, c, s, k):
    total, channels = 0, c
    for width in pairs:
        total += conv(channels, width, 3) + conv(width, width, 3)
        channels, s = width, s // 2
    return total + linear(channels * s * s, 256) + linear(256, 256) + linear(256, k)


def vgg_count(widths, c, k):
    total, channels = 0, c
    for width in widths:
        total += conv(channels, width, 3) + batchnorm(width)
        channels = width
    return total + linear(512, k)


def resnet20_count(c, k):
    def block(c_in, c_out):
        shortcut = conv(c_in, c_out, 1, bias=False) + batchnorm(c_out) if c_in != c_out else 0
        return conv(c_in, c_out, 3, bias=False) + conv(c_out, c_out, 3, bias=False) + 2 * batchnorm(c_out) + shortcut

    stages = sum(block(c_in, c_out) + 2 * block(c_out, c_out) for c_in, c_out in ((16, 16), (16, 32), (32, 64)))
    return conv(c, 16, 3, bias=False) + batchnorm(16) + stages + linear(64, k)


def from_imagenet_count(imagenet_params, features, c, k):
    """torchvision's ImageNet model (as published in its docs) with the 7x7 RGB stem swapped for
    a 3x3 one on c channels and the 1000-class head for a k-class one."""
    return imagenet_params - conv(3, 64, 7, bias=False) + conv(c, 64, 3, bias=False) \
        - linear(features, 1000) + linear(features, k)


VGG_WIDTHS = {
    "vgg11": [64, 128, 256, 256, 512, 512, 512, 512],
    "vgg16": [64, 64, 128, 128, 256, 256, 256] + [512] * 6,
    "vgg19": [64, 64, 128, 128] + [256] * 4 + [512] * 8,
}
EXPECTED_PARAMETERS = {
    "fc1": lambda c, s, k: linear(c * s * s, 300) + linear(300, 100) + linear(100, k),
    "lenet5": lambda c, s, k: frankle_conv_count([64], c, s, k),
    "conv2": lambda c, s, k: frankle_conv_count([64], c, s, k),
    "conv4": lambda c, s, k: frankle_conv_count([64, 128], c, s, k),
    "conv6": lambda c, s, k: frankle_conv_count([64, 128, 256], c, s, k),
    "resnet20": lambda c, s, k: resnet20_count(c, k),
    **{name: (lambda c, s, k, widths=widths: vgg_count(widths, c, k)) for name, widths in VGG_WIDTHS.items()},
    "alexnet": lambda c, s, k: (conv(c, 64, 3) + conv(64, 192, 5) + conv(192, 384, 3) + conv(384, 256, 3)
                                + conv(256, 256, 3) + linear(256 * 3 * 3, 4096) + linear(4096, 4096)
                                + linear(4096, k)),
    "resnet18": lambda c, s, k: from_imagenet_count(11_689_512, 512, c, k),
    "resnet50": lambda c, s, k: from_imagenet_count(25_557_032, 2048, c, k),
    "densenet121": lambda c, s, k: from_imagenet_count(7_978_856, 1024, c, k),
}
# CIFAR-10 (3x32x32, 10 classes) figures as the papers and common CIFAR code report them.
CIFAR10_PARAMETERS = {"fc1": 953_010, "conv2": 4_301_642, "conv4": 2_425_930, "conv6": 2_262_602,
                      "resnet20": 272_474, "vgg11": 9_231_114, "vgg16": 14_728_266, "vgg19": 20_040_522,
                      "resnet18": 11_173_962, "resnet50": 23_520_842, "densenet121": 6_956_426}
# Convolution and linear layers.
EXPECTED_PRUNABLE = {
    "fc1": 3, "lenet5": 5, "conv2": 5, "conv4": 7, "conv6": 9,
    "resnet20": 1 + 9 * 2 + 2 + 1,            # stem, 9 blocks of 2, 2 projection shortcuts, fc
    "vgg11": 8 + 1, "vgg16": 13 + 1, "vgg19": 16 + 1, "alexnet": 5 + 3,
    "resnet18": 1 + 8 * 2 + 3 + 1,            # stem, 8 blocks of 2, 3 projection shortcuts, fc
    "resnet50": 1 + 16 * 3 + 4 + 1,           # stem, 16 bottlenecks of 3, 4 projections, fc
    "densenet121": 1 + 58 * 2 + 3 + 1,        # stem, 58 dense layers of 2, 3 transitions, classifier
}


def test_the_registry_holds_every_network_and_the_alias():
    assert sorted(ARCHITECTURES) == sorted(SMALL + BIG)
    assert architecture_names() == sorted(SMALL + BIG)
    assert architecture_names(include_aliases=True)[-1] == "lenet300_100"
    assert ALIASES == {"lenet300_100": "fc1"}


def test_cifar10_parameter_counts_match_the_published_figures():
    for name, count in CIFAR10_PARAMETERS.items():
        assert EXPECTED_PARAMETERS[name](3, 32, 10) == count, name


@pytest.fixture(scope="module")
def big_models():
    """Each big network built once per input shape for the whole module (they take seconds)."""
    cache = {}

    def get(arch, dataset):
        if (arch, dataset) not in cache:
            torch.manual_seed(0)
            cache[arch, dataset] = build_model(arch, *INPUTS[dataset], 10)
        return cache[arch, dataset]

    return get


def get_model(arch, dataset, big_models):
    return big_models(arch, dataset) if arch in BIG else build_model(arch, *INPUTS[dataset], 10)


def parameter_count(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", SMALL + BIG)
@pytest.mark.parametrize("dataset", list(INPUTS))
def test_sizes_and_prunable_layers(arch, dataset, big_models):
    channels, size = INPUTS[dataset]
    model = get_model(arch, dataset, big_models)
    assert parameter_count(model) == EXPECTED_PARAMETERS[arch](channels, size, 10)
    names = prunable_names(model)
    assert len(names) == EXPECTED_PRUNABLE[arch]
    params = dict(model.named_parameters())
    assert all(params[name].dim() in (2, 4) for name in names)
    # The output layer is the last prunable one and has one row per class.
    assert output_layer_name(model) == names[-1]
    assert params[names[-1]].shape[0] == 10


@pytest.mark.parametrize("arch", SMALL + BIG)
@pytest.mark.parametrize("dataset", list(INPUTS))
def test_one_training_step_on_a_batch_of_two(arch, dataset, big_models):
    """Forward, backward and an Adam step: every parameter takes part (a 28x28 input that
    shrank to nothing, or a layer left out of forward, would leave gradients empty)."""
    channels, size = INPUTS[dataset]
    model = copy.deepcopy(get_model(arch, dataset, big_models)).train()  # the shared one stays as built
    torch.manual_seed(1)
    images, labels = torch.randn(2, channels, size, size), torch.tensor([3, 7])
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    optimizer.zero_grad()
    logits = model(images)
    assert logits.shape == (2, 10)
    loss = F.cross_entropy(logits, labels)
    assert torch.isfinite(loss)
    loss.backward()
    without_gradient = [name for name, p in model.named_parameters()
                        if p.grad is None or not torch.any(p.grad != 0)]
    assert without_gradient == []
    optimizer.step()
    assert all(not torch.equal(before[name], p.detach()) for name, p in model.named_parameters())


@pytest.mark.parametrize("arch", SMALL + BIG)
def test_any_class_count(arch):
    model = build_model(arch, 3, 32, 3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert parameter_count(model) == EXPECTED_PARAMETERS[arch](3, 32, 3)


def test_fc1_and_lenet5_have_the_original_layer_sizes():
    fc1 = build_model("fc1", 1, 28, 10)
    assert [tuple(m.weight.shape) for m in fc1 if isinstance(m, nn.Linear)] == [(300, 784), (100, 300), (10, 100)]
    lenet_mnist = build_model("lenet5", 1, 28, 10)
    lenet_cifar = build_model("lenet5", 3, 32, 10)
    assert lenet_mnist[0].weight.shape == (64, 1, 3, 3) and lenet_cifar[0].weight.shape == (64, 3, 3, 3)
    assert lenet_mnist[6].weight.shape == (256, 64 * 14 * 14)
    assert lenet_cifar[6].weight.shape == (256, 64 * 16 * 16)
    # Saved lenet5 runs load into conv2 and back: the same layers under the same names.
    assert {k: v.shape for k, v in lenet_cifar.state_dict().items()} == \
        {k: v.shape for k, v in build_model("conv2", 3, 32, 10).state_dict().items()}


def test_conv6_pools_28_down_to_3_and_32_down_to_4():
    assert build_model("conv6", 1, 28, 10)[16].in_features == 256 * 3 * 3
    assert build_model("conv6", 3, 32, 10)[16].in_features == 256 * 4 * 4


def test_vgg_and_alexnet_pad_28x28_inputs_to_32x32(big_models):
    """Padded, a 1x28x28 image meets the same layers as a 32x32 one: the feature maps before
    the classifier have the same size."""
    for arch in ("vgg19", "alexnet"):
        model = big_models(arch, "mnist").eval()
        with torch.no_grad():
            small = model.features(model.pad(torch.randn(2, 1, 28, 28)))
            padded = model.features(torch.nn.functional.pad(torch.randn(2, 1, 28, 28), (2, 2, 2, 2)))
        assert small.shape == padded.shape == ((2, 512, 2, 2) if arch == "vgg19" else (2, 256, 3, 3))


def test_small_image_stems():
    from torchvision.models.densenet import DenseNet
    from torchvision.models.resnet import ResNet

    for arch in ("resnet18", "resnet50"):
        model = build_model(arch, 3, 32, 10)
        assert isinstance(model, ResNet)
        assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
        assert isinstance(model.maxpool, nn.Identity)
    densenet = build_model("densenet121", 1, 28, 10)
    assert isinstance(densenet, DenseNet)
    assert densenet.features.conv0.kernel_size == (3, 3) and densenet.features.conv0.stride == (1, 1)
    assert densenet.features.conv0.in_channels == 1
    assert isinstance(densenet.features.pool0, nn.Identity)


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


@pytest.mark.parametrize("arch", ["vgg19", "resnet50", "densenet121", "alexnet"])
def test_initialisation_applies_to_the_new_networks(arch, big_models):
    model = big_models(arch, "cifar10")
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if norms:
        weights = torch.cat([m.weight.detach() for m in norms])
        assert weights.std().item() == pytest.approx(0.02, rel=0.1)
        assert all(torch.count_nonzero(m.bias) == 0 for m in norms)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.weight.shape[1] * 9 >= 576]
    layer = convs[len(convs) // 2]  # torchvision's own init is Kaiming, whose std differs
    fan_in = layer.weight[0].numel()
    fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
    assert layer.weight.std().item() == pytest.approx((2 / (fan_in + fan_out)) ** 0.5, rel=0.05)


# ---------------------------------------------------------------- registering and aliases
@pytest.fixture
def scratch_registry():
    """Registrations made by a test are undone after it."""
    saved = dict(ARCHITECTURES), dict(ALIASES)
    yield
    ARCHITECTURES.clear()
    ARCHITECTURES.update(saved[0])
    ALIASES.clear()
    ALIASES.update(saved[1])


def test_a_user_model_registered_here_builds_through_build_model(scratch_registry):
    @register_model("tiny_user_net", aliases=("tiny",))
    def tiny_user_net(in_channels, image_size, num_classes):
        return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.Flatten(),
                             nn.Linear(4 * (image_size - 2) ** 2, num_classes))

    torch.manual_seed(0)
    model = build_model("tiny", 3, 32, 5)
    assert canonical_arch("tiny") == "tiny_user_net" and "tiny_user_net" in architecture_names()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert prunable_names(model) == ["0.weight", "3.weight"] and output_layer_name(model) == "3.weight"
    assert torch.count_nonzero(model[0].bias) == 4  # initialised as the original: N(0, 1) biases
    assert tiny_user_net(1, 28, 10)[3].in_features == 4 * 26 * 26  # the decorator returns the builder


def test_a_taken_name_is_an_error_unless_replaced(scratch_registry):
    def builder(in_channels, image_size, num_classes):
        return nn.Linear(in_channels * image_size * image_size, num_classes)

    with pytest.raises(UserError, match="'vgg19' is already registered; .*replace=True"):
        register_model("vgg19")(builder)
    with pytest.raises(UserError, match="'lenet300_100' is already an alias of fc1"):
        register_model("lenet300_100")(builder)
    with pytest.raises(UserError, match="'fc1' is already registered"):
        register_model("my_net", aliases=("fc1",))(builder)
    assert "my_net" not in ARCHITECTURES  # a refused registration leaves nothing behind
    register_model("vgg19", replace=True)(builder)
    assert isinstance(build_model("vgg19", 1, 28, 10), nn.Linear)


@pytest.mark.parametrize("name", ["", "My-Net", "9 lives", "a/b", "_hidden"])
def test_names_must_be_usable_as_folder_names(name):
    with pytest.raises(UserError, match="invalid network name"):
        register_model(name)


def test_aliases_resolve_to_the_canonical_name():
    assert canonical_arch("lenet300_100") == "fc1" and canonical_arch("fc1") == "fc1"
    torch.manual_seed(0)
    alias = build_model("lenet300_100", 1, 28, 10)
    torch.manual_seed(0)
    original = build_model("fc1", 1, 28, 10)
    assert all(torch.equal(a, b) for a, b in zip(alias.state_dict().values(), original.state_dict().values()))


def test_unknown_architecture_names_the_choices():
    with pytest.raises(UserError, match="unknown architecture 'vgg7'; choose one of alexnet, conv2, .*, vgg19 "
                                        "\\(aliases: lenet300_100 = fc1\\)"):
        build_model("vgg7", 3, 32, 10)


def test_a_model_without_a_linear_layer_has_no_output_layer():
    with pytest.raises(UserError, match="no nn.Linear layer"):
        output_layer_name(nn.Sequential(nn.Conv2d(1, 2, 3)))


# ---------------------------------------------------------------- through the command line
def run_main(argv, capsys):
    import lottery_ticket

    with pytest.raises(SystemExit) as exit_info:
        lottery_ticket.run_cli(lambda: lottery_ticket.main(argv))
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


# fc1 and lenet5 run end to end on both datasets in test_cli.py; fc1 also here, by its alias.
# One dataset each keeps this quick: both input shapes already train one step above.
# ``stored``: the folder and the saved arch_type, written out rather than computed with
# canonical_arch, so a run filed under the name it was given instead fails for the alias.
@pytest.mark.parametrize("arch,dataset,stored", [("conv2", "mnist", "conv2"), ("conv4", "cifar10", "conv4"),
                                                 ("conv6", "mnist", "conv6"), ("resnet20", "cifar10", "resnet20"),
                                                 ("lenet300_100", "mnist", "fc1")])
def test_small_networks_train_a_tiny_pruning_run(arch, dataset, stored, tmp_path, request, capsys):
    data_dir = request.getfixturevalue(f"small_{dataset}_dir")
    code, out, err = run_main(["--arch_type", arch, "--dataset", dataset, "--data_dir", str(data_dir),
                               "--save_dir", str(tmp_path), "--device", "cpu", "--end_iter", "1",
                               "--prune_iterations", "2", "--prune_percent", "50", "--batch_size", "32",
                               "--seeds", "3", "--no_progress"], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [stored]   # one folder, named canonically
    path = tmp_path / stored / dataset / f"pp50x2_seed3_co2False_{dataset}_bs32_ep1.pt"
    results = torch.load(path, weights_only=True)
    assert results["args"]["arch_type"] == stored
    channels, size = INPUTS[dataset]
    assert results["prunable"] == prunable_names(build_model(arch, channels, size, 10))
    assert [round(c["percent_remaining"], 1) for c in results["cycles"]] == [100.0, 50.0]
    final_masks = results["masks"][-1]
    assert all(mask.float().mean().item() == pytest.approx(0.5, abs=0.01) for mask in final_masks.values())
