"""The sparse convolution kernel gives torch's answers (float64 reference), BatchNorm folding
keeps the network's function, "auto" keeps dense where the sparse chain is timed slower, and
every network of the zoo replays sparse with its dense predictions."""
from __future__ import annotations

import copy
import csv

import numba
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import post_training_inference
from archs import architecture_names, build_model
from archs.experiment import TrainingJob, run_job
from archs.sparse import CONVOLUTION_REASON, compare_outputs, sparsify
from archs.sparse.conv import ConvSpec, PoolSpec, SparseConvChain, fold_batchnorm
from archs.sparse.common import relative_error
from data.paths import inference_runs_csv_path
from data.runs import RunConfig
from tests.test_sparse import fake_timer

# float32 kernels against a float64 reference: rounding only
TOLERANCE = 1e-5


def pruned_conv(in_channels, out_channels, kernel, stride, padding, groups, sparsity, seed=0,
                empty_channels=()):
    torch.manual_seed(seed)
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=padding,
                     groups=groups).requires_grad_(False)
    conv.weight[torch.rand_like(conv.weight) < sparsity] = 0
    for channel in empty_channels:
        conv.weight[channel] = 0
    return conv


def reference(modules, x):
    """The modules' output in float64 (copies; the float32 originals are left alone)."""
    h = x.double()
    for module in modules:
        h = _double(module)(h)
    return h


def _double(module):
    return copy.deepcopy(module).double().eval()


# (in, out, kernel, stride, padding, groups, images, height, width)
CONFIGURATIONS = [
    (3, 8, 3, 1, 1, 1, 16, 9, 9),      # a whole tile, the zoo's 3x3
    (5, 7, 3, 2, 1, 1, 17, 11, 10),    # stride 2, odd sizes, a second, partial tile
    (4, 6, 5, 1, 2, 2, 3, 8, 13),      # 5x5 (AlexNet), groups
    (3, 4, 11, 4, 2, 1, 1, 23, 23),    # 11x11 stride 4 (ImageNet AlexNet), one image
    (8, 8, 1, 2, 0, 1, 5, 7, 7),       # 1x1 stride 2 (ResNet's shortcut)
    (6, 6, 3, 1, 0, 3, 2, 5, 6),       # no padding, 3 groups
    (2, 3, 3, 1, (0, 2), 1, 2, 4, 6),  # unequal padding
]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97, 1.0])
@pytest.mark.parametrize("config", CONFIGURATIONS, ids=lambda c: "x".join(map(str, c[:6])))
def test_convolution_matches_torch_in_float64(config, sparsity):
    in_channels, out_channels, kernel, stride, padding, groups, images, height, width = config
    conv = pruned_conv(in_channels, out_channels, kernel, stride, padding, groups, sparsity,
                       empty_channels=(0,))
    x = torch.randn(images, in_channels, height, width)
    for relu in (False, True):
        chain = SparseConvChain([ConvSpec(conv, None, relu)])
        expected = F.conv2d(x.double(), conv.weight.double(), conv.bias.double(), stride,
                            padding, 1, groups)
        expected = expected.relu() if relu else expected
        actual = chain(x)
        assert actual.shape == expected.shape and actual.dtype == torch.float32
        assert relative_error(actual, expected) < TOLERANCE
        # an empty output channel is its bias everywhere
        assert torch.allclose(actual[:, 0], expected[:, 0].float())


def test_chain_with_batchnorm_relu_and_pools_matches_the_unfolded_modules():
    torch.manual_seed(3)
    modules = nn.Sequential(
        pruned_conv(3, 8, 3, 1, 1, 1, 0.8), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        pruned_conv(8, 16, 3, 1, 1, 1, 0.9, seed=1), nn.MaxPool2d(3, stride=2), nn.ReLU(),
        pruned_conv(16, 4, 1, 1, 0, 1, 0.5, seed=2), nn.BatchNorm2d(4, affine=False)).eval()
    for norm in (modules[1], modules[8]):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.5, 2.0)
    modules[1].weight.data.normal_()
    modules[1].bias.data.normal_()
    x = torch.randn(19, 3, 13, 12)
    chain = SparseConvChain([ConvSpec(modules[0], modules[1], True), PoolSpec((2, 2), (2, 2)),
                             ConvSpec(modules[4], None, True), PoolSpec((3, 3), (2, 2)),
                             ConvSpec(modules[7], modules[8], False)])
    assert relative_error(chain(x), reference(modules, x)) < TOLERANCE


def test_folding_batchnorm_equals_the_unfolded_layers():
    torch.manual_seed(4)
    conv = pruned_conv(4, 6, 3, 1, 1, 1, 0.7)
    norm = nn.BatchNorm2d(6).eval()
    norm.running_mean.normal_()
    norm.running_var.uniform_(0.1, 3.0)
    norm.weight.data.normal_()
    norm.bias.data.normal_()
    weight, bias = fold_batchnorm(conv.weight.double(), conv.bias.double(), _double(norm))
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64)
    folded = F.conv2d(x, weight, bias, padding=1)
    assert torch.allclose(folded, reference([conv, norm], x), rtol=1e-12, atol=1e-12)
    assert torch.equal(weight == 0, conv.weight == 0)    # the fold keeps the ticket's zeros


def prune_everything(model: nn.Module, fraction: float, seed: int = 1) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                module.weight[torch.rand(module.weight.shape, generator=generator) < fraction] = 0
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.normal_(generator=generator)
                module.running_var.uniform_(0.5, 2.0, generator=generator)
    return model.eval()


def small_lenet(fraction=0.9):
    torch.manual_seed(0)
    return prune_everything(build_model("lenet5", 1, 12, 10), fraction)


LAYOUT = {"to_tiles": 0.1, "from_tiles": 0.1}


def test_auto_falls_back_to_dense_when_the_sparse_chain_is_timed_slower():
    model = small_lenet()
    x = torch.randn(8, 1, 12, 12)
    slow = {"dense": 1.0, "numba_conv": 2.0, "torch_csr": 2.0, "numba_csr": 2.0, "chain": 2.0,
            "numba_tiled": 2.0, **LAYOUT}
    fast, choices = sparsify(model, "auto", example_input=x, timer=fake_timer(slow))
    assert not any(isinstance(m, SparseConvChain) for m in fast.modules())
    convolutions = [c for c in choices if c.name in ("0.weight", "2.weight")]
    assert [c.kernel for c in convolutions] == ["dense", "dense"]
    assert all("sparse 0.50x dense" in c.reason and "dense is faster" in c.reason
               for c in convolutions)


def conv_timer(layers: list[dict[str, float]], run: dict[str, float], asked: list):
    """Per convolution layer (runs with a "to_tiles") the next of ``layers``; for the
    assembled run ``run``; linear layers and chains slower than dense."""
    layers = iter(layers)

    def timer(runs):
        for candidate in runs.values():
            candidate()
        asked.append(sorted(runs))
        if "to_tiles" in runs:
            return next(layers)
        if "numba_conv" in runs:
            return dict(run)
        return {name: 1.0 if name == "dense" else 2.0 for name in runs}
    return timer


def test_auto_chooses_per_convolution_and_keeps_dense_where_sparse_is_timed_slower():
    model = small_lenet()
    x = torch.randn(8, 1, 12, 12)
    asked = []
    # the first layer is slower sparse, the second faster even with both layout changes
    timer = conv_timer([{"dense": 1.0, "numba_conv": 1.5, **LAYOUT},
                        {"dense": 3.0, "numba_conv": 1.0, **LAYOUT}],
                       {"dense": 4.0, "numba_conv": 2.0}, asked)
    fast, choices = sparsify(model, "auto", example_input=x, timer=timer)
    assert asked[-3:] == [["dense", "from_tiles", "numba_conv", "to_tiles"]] * 2 + [
        ["dense", "numba_conv"]]
    chains = [m for m in fast.modules() if isinstance(m, SparseConvChain)]
    assert len(chains) == 1 and len(chains[0].steps) == 2      # the second conv and its pool
    assert isinstance(fast[0], nn.Conv2d)                       # the first stays dense
    kernels = {c.name: c.kernel for c in choices}
    assert (kernels["0.weight"], kernels["2.weight"]) == ("dense", "numba_conv")
    assert "the run (timed) 2.00x dense" in [c for c in choices if c.name == "2.weight"][0].reason
    assert compare_outputs(model, fast, x).agrees


def test_auto_keeps_every_layer_dense_when_the_assembled_run_is_not_fast_enough():
    model = small_lenet()
    x = torch.randn(8, 1, 12, 12)
    timer = conv_timer([{"dense": 3.0, "numba_conv": 1.0, **LAYOUT}] * 2,
                       {"dense": 1.1, "numba_conv": 1.0}, [])
    fast, choices = sparsify(model, "auto", example_input=x, timer=timer)
    assert not any(isinstance(m, SparseConvChain) for m in fast.modules())
    convolutions = [c for c in choices if c.name in ("0.weight", "2.weight")]
    assert all(c.kernel == "dense" and "ran 1.10x dense (needs 1.2x)" in c.reason
               for c in convolutions)


def test_a_layer_that_gains_less_than_its_layout_changes_stays_dense():
    from archs.sparse.conv_choice import cheapest_plan
    layer = {"to_tiles": 1.0, "from_tiles": 1.0}
    # alone, 2 s saved but 2 s of layout changes: dense; between sparse layers it pays
    assert cheapest_plan([{"dense": 4.0, "numba_conv": 2.0, **layer}]) == [False]
    assert cheapest_plan([{"dense": 4.0, "numba_conv": 1.0, **layer}]) == [True]
    assert cheapest_plan([{"dense": 9.0, "numba_conv": 1.0, **layer},
                          {"dense": 4.0, "numba_conv": 2.5, **layer},
                          {"dense": 9.0, "numba_conv": 1.0, **layer}]) == [True] * 3
    assert cheapest_plan([{"dense": 1.0, "numba_conv": 9.0, **layer},
                          {"dense": 9.0, "numba_conv": 1.0, **layer}]) == [False, True]
    # leaving the tile layout before a segment costs the change after the segment before it:
    # sparse then dense pays 1 + 1 + 10 + 4 = 16 s here against 7 s all dense
    assert cheapest_plan([{"dense": 3.0, "numba_conv": 1.0, "to_tiles": 1.0, "from_tiles": 10.0},
                          {"dense": 4.0, "numba_conv": 9.0, "to_tiles": 1.0, "from_tiles": 0.1}]) == [False, False]


def test_auto_keeps_the_sparse_chain_when_timed_faster_and_small_batches_run_dense():
    model = small_lenet()
    x = torch.randn(8, 1, 12, 12)
    wins = {"dense": 3.0, "numba_conv": 1.0, "torch_csr": 2.0, "numba_csr": 1.0, "chain": 1.0,
            "numba_tiled": 1.0, **LAYOUT}
    fast, choices = sparsify(model, "auto", example_input=x, timer=fake_timer(wins))
    chains = [m for m in fast.modules() if isinstance(m, SparseConvChain)]
    assert len(chains) == 1 and chains[0].min_batch == 8
    assert [c.kernel for c in choices if c.name in ("0.weight", "2.weight")] == ["numba_conv"] * 2
    assert compare_outputs(model, fast, x).agrees
    assert compare_outputs(model, fast, x[:3]).agrees        # through the dense fallback


def test_unpruned_and_unsupported_convolutions_stay_dense():
    torch.manual_seed(0)
    model = build_model("lenet5", 1, 12, 10).eval()
    _, choices = sparsify(model, "sparse")
    assert all(c.kernel == "dense" and c.reason == "not pruned" for c in choices)
    dilated = prune_everything(nn.Sequential(nn.Conv2d(2, 3, 3, dilation=2)), 0.9)
    fast, choices = sparsify(dilated, "sparse")
    assert [(c.kernel, c.reason) for c in choices] == [("dense", CONVOLUTION_REASON)]
    x = torch.randn(2, 2, 7, 7)
    assert torch.equal(fast(x), dilated(x))


SMALL_INPUTS = {"densenet121": 9, "resnet50": 9, "alexnet": 16}


@pytest.mark.parametrize("arch", [a for a in architecture_names() if a != "fc1"])
def test_every_network_replays_sparse_with_the_dense_predictions(arch):
    torch.manual_seed(0)
    size = SMALL_INPUTS.get(arch, 11)
    model = prune_everything(build_model(arch, 3, size, 10), 0.9)
    fast, choices = sparsify(model, "sparse")
    assert any(isinstance(m, SparseConvChain) for m in fast.modules())
    convolutions = [c for c in choices if "numba_conv" == c.kernel]
    assert len(convolutions) == sum(isinstance(m, nn.Conv2d) for m in model.modules())
    # BatchNorms folded into their convolutions or run per channel in the tile layout
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    for images in (1, 3):
        x = torch.randn(images, 3, size, size)
        with torch.inference_mode():
            expected, actual = model.double()(x.double()), fast(x)
        model.float()
        assert relative_error(actual, expected) < TOLERANCE
        assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_threads_hold():
    chain = SparseConvChain([ConvSpec(pruned_conv(4, 8, 3, 1, 1, 1, 0.9), None, True)])
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            chain(torch.randn(40, 4, 9, 9))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)


def test_the_chain_runs_inside_and_outside_inference_mode_in_turn():
    conv = pruned_conv(3, 5, 3, 1, 1, 1, 0.8)
    chain = SparseConvChain([ConvSpec(conv, None, False)])
    x = torch.randn(20, 3, 6, 6)
    with torch.inference_mode():
        inside = chain(x)
    outside = chain(x)
    assert torch.equal(inside, outside)
    assert relative_error(outside, F.conv2d(x.double(), conv.weight.double(), conv.bias.double(),
                                            padding=1)) < TOLERANCE


def test_a_convolutional_ticket_replays_sparse_through_the_script(tmp_path, mnist_dir, capsys):
    config = RunConfig(arch_type="lenet5", prune_percent=90, prune_iterations=2, end_iter=1,
                       batch_size=64)
    run_job(TrainingJob(config=config, seeds=[0], data_dir=mnist_dir, save_dir=tmp_path,
                        device="cpu", show_progress=False))
    post_training_inference.main(["--save_dir", str(tmp_path), "--arch_type", "lenet5",
                                  "--mode", "sparse", "--passes", "1", "--batch_size", "32",
                                  "--no_progress", "--country_iso_code", "FRA"])
    out = capsys.readouterr()
    table = out.out + out.err
    table = table[table.index("Kernels in sparse mode"):].splitlines()[3:8]
    assert [line.split()[2] for line in table] == ["numba_conv"] * 2 + ["numba_tiled"] * 3
    with open(inference_runs_csv_path(tmp_path, "lenet5", "mnist"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [row["mode"] for row in rows] == ["sparse"]


def test_a_fused_max_pool_propagates_nan_as_torch_does():
    # no weight pruned: a pruned weight never reads its input, where dense gives 0 * NaN
    conv = pruned_conv(2, 3, 3, 1, 1, 1, 0.0)
    x = torch.randn(17, 2, 7, 9)
    x[0, :, 2, 3] = float("nan")
    x[16, 1, 6, 8] = float("nan")
    modules = [conv, nn.ReLU(), nn.MaxPool2d(2)]
    chain = SparseConvChain([ConvSpec(conv, None, True), PoolSpec((2, 2), (2, 2))])
    expected, actual = reference(modules, x), chain(x)
    assert actual.shape == expected.shape == (17, 3, 3, 4)
    assert torch.equal(actual.isnan(), expected.isnan()) and actual.isnan().any()
    keep = ~expected.isnan()
    assert relative_error(actual[keep], expected[keep]) < TOLERANCE


@pytest.mark.parametrize("images", [1, 17, 40, 64])
def test_the_chain_in_one_call_equals_the_chain_layer_by_layer(images):
    from archs.sparse import conv_one_call
    from archs.sparse.conv import TILE, from_tiles, to_tiles
    convs = [pruned_conv(3, 8, 3, 1, 1, 1, 0.8), pruned_conv(8, 12, 3, 2, 1, 2, 0.9, seed=1),
             pruned_conv(12, 6, 1, 1, 0, 1, 0.5, seed=2)]
    specs = [ConvSpec(convs[0], None, True), PoolSpec((2, 2), (2, 2)),
             ConvSpec(convs[1], None, True), ConvSpec(convs[2], None, False),
             PoolSpec((3, 3), (1, 1))]
    modules = [convs[0], nn.ReLU(), nn.MaxPool2d(2), convs[1], nn.ReLU(), convs[2],
               nn.MaxPool2d(3, 1)]
    chain = SparseConvChain(specs)
    x = torch.randn(images, 3, 19, 21)
    expected = reference(modules, x)
    layered = from_tiles(chain.run_tiles(to_tiles(x, (1, 1), 2), 19, 21), images, 2)
    for threads in (1, 2):
        in_one_call = conv_one_call.run(chain, x, threads)
        assert in_one_call.shape == expected.shape
        assert relative_error(in_one_call, expected) < TOLERANCE
        assert torch.equal(in_one_call, layered)
    assert conv_one_call.worth_it(4, 2) and conv_one_call.worth_it(1, 1)
    if numba.config.NUMBA_NUM_THREADS >= 2:
        # one tile, or 3 tiles on 2 threads (2:1): layer by layer, each layer shared out
        assert not conv_one_call.worth_it(1, 2) and not conv_one_call.worth_it(3, 2)
    assert TILE == 16
