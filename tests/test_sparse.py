"""The sparse inference path gives the dense answers, picks kernels sensibly, and leaves the
original model alone."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from archs import build_model  # noqa: E402
from archs import sparse  # noqa: E402
from archs.sparse import (AGREEMENT_TOLERANCE, BENCHMARK_MODES, CONVOLUTION_REASON,  # noqa: E402
                          KERNEL_MODES, DenseTransposedLinear, SparseLinear, TransposedChain,
                          batch_chunk, compare_outputs, relative_error, sparsify)
from utils import UserError  # noqa: E402


def seeded_model(arch: str, in_channels: int = 1, image_size: int = 28) -> nn.Module:
    torch.manual_seed(0)
    return build_model(arch, in_channels, image_size, 10).eval()


@torch.no_grad()
def prune_linears_randomly(model: nn.Module, fraction: float, seed: int = 1) -> nn.Module:
    """Zero ``fraction`` of every linear weight at random positions (in place)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.weight.mul_(torch.rand(module.weight.shape, generator=generator) >= fraction)
    return model


def linears(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def chains(model: nn.Module) -> list[TransposedChain]:
    return [m for m in model.modules() if isinstance(m, TransposedChain)]


def assert_agrees(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor) -> None:
    agreement = compare_outputs(reference, candidate, inputs)
    assert agreement.agrees, f"relative error {agreement.relative_error:.2e}"


# enough images for "auto" to take its sparse path at any sparsity (sparse.MIN_SPARSE_BATCH)
MNIST_BATCH = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(2))


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("mode", ["sparse", "auto", "coo"])
def test_fc1_matches_dense(fraction, mode):
    model = prune_linears_randomly(seeded_model("fc1"), fraction)
    fast, _ = sparsify(model, mode)
    assert_agrees(model, fast, MNIST_BATCH)


def test_fc1_runs_sparse_kernels_in_one_chain():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    fast, choices = sparsify(model, "sparse")
    assert [c.kernel for c in choices] == ["sparse"] * 3
    (chain,) = chains(fast)
    assert all(isinstance(layer, SparseLinear) for layer in chain.layers)
    assert not linears(fast)


def test_lenet5_with_pruned_linears_matches_dense():
    model = prune_linears_randomly(seeded_model("lenet5"), 0.95)
    fast, choices = sparsify(model, "sparse")
    kernels = {c.name: c.kernel for c in choices}
    assert kernels == {"0.weight": "dense", "2.weight": "dense", "6.weight": "sparse",
                       "8.weight": "sparse", "10.weight": "sparse"}
    assert_agrees(model, fast, MNIST_BATCH[:4])


@torch.no_grad()
def lenet5_with_empty_rows_and_columns() -> nn.Module:
    """LeNet5 whose linear layers have whole rows and columns pruned, biases of both signs."""
    model = prune_linears_randomly(seeded_model("lenet5"), 0.9)
    first, second, last = linears(model)
    first.weight[:, :3000] = 0                 # input features nobody reads
    first.weight[10:40] = 0                    # units that output relu(bias), a constant
    first.bias[10:25] = 1.5                    # ... positive: folded into the next bias
    first.bias[25:40] = -1.0                   # ... negative: relu gives 0
    second.weight[:, 100:120] = 0              # units of `first` nobody reads
    second.weight[50:60] = 0                   # constant units again
    last.weight[:, 200:] = 0
    last.weight[3] = 0                         # an output that is its bias alone
    return model


def test_empty_rows_and_columns_are_dropped_exactly():
    model = lenet5_with_empty_rows_and_columns()
    fast, _ = sparsify(model, "sparse")
    assert_agrees(model, fast, MNIST_BATCH[:4])
    (chain,) = chains(fast)
    first, second, last = chain.layers
    assert chain.used_inputs is not None and len(chain.used_inputs) <= 12544 - 3000
    assert first.out_features <= 256 - 30 - 20      # constant and unread units removed
    assert second.out_features <= 256 - 10 - 56
    assert last.out_features == 10                  # the outputs are all kept
    assert last.in_features <= 200


def test_a_layer_pruned_entirely_still_gives_the_dense_answer():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    with torch.no_grad():
        model[3].weight.zero_()     # the 300->100 layer: every unit outputs relu(bias)
    fast, _ = sparsify(model, "sparse")
    assert_agrees(model, fast, MNIST_BATCH)


def test_resnet18_classifier_matches_dense():
    torch.manual_seed(0)
    model = prune_linears_randomly(build_model("resnet18", 3, 8, 10).eval(), 0.9)
    fast, choices = sparsify(model, "sparse")
    assert {c.name: c.kernel for c in choices if c.kernel == "sparse"} == {"fc.weight": "sparse"}
    assert_agrees(model, fast, torch.randn(2, 3, 8, 8))


def test_leading_dense_layers_stay_batch_major():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(200, 100)).eval()
    with torch.no_grad():
        for layer in (model[2], model[5]):
            layer.weight.mul_(torch.rand(layer.weight.shape) > 0.95)
    fast, choices = sparsify(model, "auto", threshold=0.5)
    assert [c.kernel for c in choices] == ["dense", "sparse", "sparse"]
    assert isinstance(fast[0], nn.Linear) and isinstance(fast[2], TransposedChain)
    assert_agrees(model, fast, torch.randn(7, 20))
    assert fast(torch.randn(7, 20)).shape == (7, 100)


def test_chain_accepts_extra_leading_dimensions():
    torch.manual_seed(0)
    model = prune_linears_randomly(nn.Sequential(nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3)), 0.5)
    fast, _ = sparsify(model, "sparse")
    inputs = torch.randn(2, 5, 12)
    assert fast(inputs).shape == (2, 5, 3)
    assert_agrees(model, fast, inputs)


def test_wide_layers_are_run_in_column_blocks(monkeypatch):
    monkeypatch.setattr(sparse, "CSR_BLOCK_BYTES", 64 * 4 * 20)    # 20 columns of 64 floats
    torch.manual_seed(0)
    weight = torch.randn(9, 64) * (torch.rand(9, 64) > 0.7)
    bias = torch.randn(9)
    inputs = torch.randn(50, 64)
    layer = SparseLinear(weight, bias, relu=True)
    expected = torch.relu(inputs @ weight.t() + bias).t()
    assert relative_error(layer(inputs.t()), expected) < AGREEMENT_TOLERANCE


def test_batch_chunk():
    assert batch_chunk(784, 512, 4) == 512                  # fc1 is never split
    assert batch_chunk(12544, 512, 4) % 16 == 0
    assert 16 <= batch_chunk(12544, 512, 4) < 512
    assert batch_chunk(10 ** 8, 512, 4) == 16


def test_works_with_and_without_inference_mode():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    fast, _ = sparsify(model, "sparse")
    expected = model(MNIST_BATCH).detach()
    with torch.inference_mode():
        inside = fast(MNIST_BATCH)
    outside = fast(MNIST_BATCH)
    assert relative_error(inside, expected) < AGREEMENT_TOLERANCE
    assert relative_error(outside, expected) < AGREEMENT_TOLERANCE


# --------------------------------------------------------------------------- choosing kernels
def test_auto_leaves_a_dense_model_dense():
    model = seeded_model("fc1")
    fast, choices = sparsify(model, "auto")
    assert [c.kernel for c in choices] == ["dense"] * 3
    assert not chains(fast) and len(linears(fast)) == 3


def test_auto_picks_sparse_for_a_99_percent_sparse_model():
    model = prune_linears_randomly(seeded_model("fc1"), 0.99)
    fast, choices = sparsify(model, "auto")
    assert [c.kernel for c in choices] == ["sparse", "sparse", "dense"]
    assert choices[2].reason.startswith("small layer")     # 100 x 10: dense in the chain
    (chain,) = chains(fast)
    assert [type(layer) for layer in chain.layers] == [SparseLinear, SparseLinear,
                                                       DenseTransposedLinear]


@pytest.mark.parametrize("fraction", [0.8, 0.9, 0.99])
def test_auto_runs_small_batches_dense(fraction):
    model = prune_linears_randomly(seeded_model("fc1"), fraction)
    fast, choices = sparsify(model, "auto")
    (chain,) = chains(fast)
    big_layers = linears(model)[:2]     # the 100 x 10 layer is too small to run sparse
    nonzero = sum(int(torch.count_nonzero(layer.weight)) for layer in big_layers)
    smallest = sparse.min_sparse_batch(1 - nonzero / sum(layer.weight.numel() for layer in big_layers))
    assert chain.min_batch == smallest
    assert f"batches under {smallest} run dense" in choices[0].reason
    sparse_calls = []
    chain.layers[0].register_forward_hook(lambda *_: sparse_calls.append(1))
    assert_agrees(model, fast, MNIST_BATCH[:smallest - 1])
    assert not sparse_calls
    assert_agrees(model, fast, MNIST_BATCH[:smallest])
    assert sparse_calls


def test_min_sparse_batch_falls_with_sparsity():
    batches = [sparse.min_sparse_batch(s) for s in (0.0, 0.8, 0.85, 0.9, 0.95, 0.99, 1.0)]
    assert batches == sorted(batches, reverse=True)
    assert batches[-1] >= 1 and batches[0] <= MNIST_BATCH.shape[0]


def test_sparse_mode_runs_every_batch_sparse():
    fast, _ = sparsify(prune_linears_randomly(seeded_model("fc1"), 0.99), "sparse")
    (chain,) = chains(fast)
    assert chain.dense_fallback is None


def test_auto_threshold_can_be_overridden():
    model = prune_linears_randomly(seeded_model("fc1"), 0.5)
    _, default = sparsify(model, "auto")
    _, low = sparsify(model, "auto", threshold=0.3)
    assert [c.kernel for c in default] == ["dense"] * 3
    assert [c.kernel for c in low] == ["sparse", "sparse", "dense"]


def test_auto_can_measure_both_kernels():
    model = prune_linears_randomly(seeded_model("fc1"), 0.99)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast, choices = sparsify(model, "auto", measure=True, example_input=MNIST_BATCH)
    assert all(c.reason.startswith("measured") for c in choices)
    assert_agrees(model, fast, MNIST_BATCH)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_convolutions_are_reported_dense():
    model = prune_linears_randomly(seeded_model("lenet5"), 0.99)
    for mode in KERNEL_MODES:
        _, choices = sparsify(model, mode)
        convolutions = [c for c in choices if c.name in ("0.weight", "2.weight")]
        assert len(convolutions) == 2
        assert all(c.kernel == "dense" and c.reason == CONVOLUTION_REASON for c in convolutions)


def test_choices_follow_the_model_order_and_report_sparsity():
    model = prune_linears_randomly(seeded_model("fc1"), 0.5)
    _, choices = sparsify(model, "dense")
    assert [c.name for c in choices] == ["1.weight", "3.weight", "5.weight"]
    assert all(0.4 < c.sparsity < 0.6 and c.kernel == "dense" for c in choices)


def test_dense_mode_changes_nothing_but_the_copy():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    fast, _ = sparsify(model, "dense")
    assert fast is not model
    assert [type(m) for m in fast.modules()] == [type(m) for m in model.modules()]


# --------------------------------------------------------------------------- the original
def test_original_model_is_unchanged():
    model = prune_linears_randomly(seeded_model("lenet5"), 0.95).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    structure = [type(m) for m in model.modules()]
    for mode in BENCHMARK_MODES:
        sparsify(model, mode)
    assert model.training
    assert [type(m) for m in model.modules()] == structure
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_converted_model_is_inference_only():
    fast, _ = sparsify(prune_linears_randomly(seeded_model("fc1"), 0.9), "sparse")
    assert not fast.training
    assert not any(p.requires_grad for p in fast.parameters())


# --------------------------------------------------------------------------- errors and checks
@pytest.mark.parametrize("kwargs", [
    dict(mode="fast"),
    dict(mode="sparse", measure=True, example_input=MNIST_BATCH),
    dict(mode="auto", measure=True),
    dict(mode="auto", measure=True, example_input=MNIST_BATCH, threshold=0.5),
    dict(mode="auto", threshold=1.5),
])
def test_bad_arguments_are_user_errors(kwargs):
    with pytest.raises(UserError):
        sparsify(seeded_model("fc1"), **kwargs)


def test_relative_error():
    expected = torch.tensor([3.0, 4.0])
    assert relative_error(expected, expected) == 0
    assert relative_error(torch.tensor([3.0, 4.5]), expected) == pytest.approx(0.1)
    assert relative_error(torch.zeros(2), torch.zeros(2)) == 0
    assert relative_error(torch.ones(2), torch.zeros(2)) == float("inf")


def test_dense_transposed_linear_matches_linear():
    torch.manual_seed(0)
    linear = nn.Linear(6, 4)
    inputs = torch.randn(3, 6)
    layer = DenseTransposedLinear(linear.weight, linear.bias, relu=False)
    assert relative_error(layer(inputs.t()), linear(inputs).t()) < AGREEMENT_TOLERANCE


def test_auto_runs_dense_off_the_cpu_unless_the_kernels_are_timed():
    layer = prune_linears_randomly(nn.Linear(300, 100), 0.99)   # sparse on the CPU by the threshold
    cpu, cuda = torch.device("cpu"), torch.device("cuda")   # the layer stays on the CPU: no GPU needed

    def choice(device, mode="auto", threshold=None, recorded_input=None):
        return sparse.choose_kernel("w", layer, True, mode, threshold, recorded_input, device)

    assert choice(cpu).kernel == "sparse"
    off_cpu = choice(cuda)
    assert off_cpu.kernel == "dense" and "--measure_auto" in off_cpu.reason and "CPU" in off_cpu.reason
    # Timing, a threshold of the caller's own, or sparse mode decide wherever the layer runs.
    assert choice(cuda, recorded_input=torch.randn(256, 300)).reason.startswith("measured")
    assert choice(cuda, threshold=0.5).kernel == "sparse"
    assert choice(cuda, mode="sparse").kernel == "sparse"
