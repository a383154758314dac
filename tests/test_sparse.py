"""The sparse inference path gives the dense answers, picks kernels sensibly, and leaves the
original model alone."""
from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from archs import build_model  # noqa: E402
from archs.sparse import common as sparse_common  # noqa: E402
from archs.sparse.chains import Affine  # noqa: E402
from archs.sparse.timing import (InterleavedTimer, KernelTimingCache,  # noqa: E402
                                 default_timing_cache_path, timing_key)
from archs.sparse import (AGREEMENT_TOLERANCE, BENCHMARK_MODES,  # noqa: E402
                          KERNEL_MODES, MEASURED_SPEEDUP_REQUIRED, DenseTransposedLinear,
                          LinearChain, NumbaCsrLinear, NumbaTiledChain, SparseLinear,
                          TransposedChain,
                          batch_chunk,
                          candidate_layers, compare_outputs, relative_error, sparsify)
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


def chains(model: nn.Module) -> list[LinearChain]:
    return [m for m in model.modules() if isinstance(m, LinearChain)]


def layer_sizes(chain: LinearChain) -> list[tuple[int, int]]:
    """(out, in) of each layer of a chain, after compaction."""
    return [(shape[1], shape[2]) for shape in chain.layer_shapes()]


def assert_agrees(reference: nn.Module, candidate: nn.Module, inputs: torch.Tensor) -> None:
    agreement = compare_outputs(reference, candidate, inputs)
    assert agreement.agrees, f"relative error {agreement.relative_error:.2e}"


MNIST_BATCH = torch.randn(128, 1, 28, 28, generator=torch.Generator().manual_seed(2))


def fake_timer(seconds: dict[str, float], asked: list | None = None):
    """A timer that runs every candidate once (so each must work) and reports ``seconds``.

    Per layer the candidates are kernel names; for a whole chain, "dense" and "chain".
    """
    def timer(runs):
        for run in runs.values():
            run()
        if asked is not None:
            asked.append(sorted(runs))
        return {name: seconds[name] for name in runs}
    return timer


def timer_answering(answers: list[dict[str, float]]):
    """A timer that runs every candidate once and reports the next of ``answers``: one per
    layer, then one per chain, in the order sparsify asks."""
    answers = iter(answers)

    def timer(runs):
        for run in runs.values():
            run()
        return next(answers)
    return timer


NUMBA_WINS = {"dense": 3.0, "torch_csr": 2.0, "numba_csr": 1.0, "chain": 1.0,
              "numba_tiled": 1.0, "numba_conv": 1.0}


# --------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("fraction", [0.0, 0.5, 0.9, 0.99])
@pytest.mark.parametrize("mode", ["sparse", "numba_csr", "torch_csr", "auto", "coo"])
def test_fc1_matches_dense(fraction, mode):
    model = prune_linears_randomly(seeded_model("fc1"), fraction)
    extra = dict(example_input=MNIST_BATCH, timer=fake_timer(NUMBA_WINS)) if mode == "auto" else {}
    fast, _ = sparsify(model, mode, **extra)
    assert_agrees(model, fast, MNIST_BATCH)


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97, 0.999, 1.0])
@pytest.mark.parametrize("images", [1, 64, 512])
@pytest.mark.parametrize("relu", [False, True])
def test_numba_kernel_matches_dense(sparsity, images, relu):
    generator = torch.Generator().manual_seed(int(sparsity * 1000) + images)
    weight = torch.randn(37, 300, generator=generator)
    weight *= torch.rand(weight.shape, generator=generator) >= sparsity
    weight[5:9] = 0          # empty rows
    weight[:, 100:140] = 0   # empty columns
    bias = torch.randn(37, generator=generator)
    inputs = torch.randn(images, 300, generator=generator)
    for layer_bias in (bias, None):
        layer = NumbaCsrLinear(weight, layer_bias, relu)
        expected = inputs @ weight.t() + (0 if layer_bias is None else layer_bias)
        expected = expected.relu() if relu else expected
        actual = layer(inputs.t())           # a strided view: the layer copies it
        assert actual.shape == (37, images)
        assert relative_error(actual.t(), expected) < AGREEMENT_TOLERANCE


def affine(out_features: int, in_features: int, sparsity: float, relu: bool, seed: int,
           bias: bool = True) -> Affine:
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_features, in_features, generator=generator)
    weight *= torch.rand(weight.shape, generator=generator) >= sparsity
    values = torch.randn(out_features, generator=generator) if bias else torch.zeros(out_features)
    return Affine(weight=weight, bias=values, has_bias=bias, relu=relu,
                          kernel="numba_csr")


def dense_chain(layers: list, inputs: torch.Tensor) -> torch.Tensor:
    h = inputs.double()
    for layer in layers:
        h = h @ layer.weight.double().t() + layer.bias.double()
        h = h.relu() if layer.relu else h
    return h


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97, 1.0])
@pytest.mark.parametrize("images", [1, 15, 16, 17, 100])
def test_tiled_chain_matches_dense(sparsity, images):
    """Whole tiles of 16 images, partial ones, input features not a multiple of 16 (37),
    layers without bias or ReLU."""
    layers = [affine(300, 37, sparsity, True, 1), affine(45, 300, sparsity, True, 2, bias=False),
              affine(10, 45, sparsity, False, 3)]
    layers[1].weight[5:9] = 0            # empty rows
    chain = NumbaTiledChain(layers, 37, None)
    inputs = torch.randn(images, 37, generator=torch.Generator().manual_seed(images))
    actual = chain(inputs)
    assert actual.shape == (images, 10) and actual.dtype == torch.float32
    assert relative_error(actual, dense_chain(layers, inputs)) < AGREEMENT_TOLERANCE


def test_tiled_chain_reads_only_the_inputs_its_first_layer_uses():
    layers = [affine(20, 5, 0.0, True, 1), affine(3, 20, 0.5, False, 2)]
    used = torch.tensor([0, 4, 7, 8, 30])            # 5 of 40 input features
    chain = NumbaTiledChain(layers, 40, used)
    inputs = torch.randn(33, 40, generator=torch.Generator().manual_seed(0))
    expected = dense_chain(layers, inputs[:, used])
    assert relative_error(chain(inputs), expected) < AGREEMENT_TOLERANCE
    inputs[:, [1, 2, 3, 39]] = float("nan")          # features nobody reads
    assert relative_error(chain(inputs), expected) < AGREEMENT_TOLERANCE


def test_tiled_chain_propagates_nan_like_the_dense_product():
    layers = [affine(8, 32, 0.0, True, 1), affine(4, 8, 0.0, False, 2)]
    chain = NumbaTiledChain(layers, 32, None)
    inputs = torch.randn(20, 32, generator=torch.Generator().manual_seed(0))
    inputs[3, 0] = float("nan")
    out = chain(inputs)
    assert torch.isnan(out[3]).all()               # through the ReLU as well
    assert not torch.isnan(torch.cat([out[:3], out[4:]])).any()


def test_tiled_chain_gives_identical_bits_on_any_thread_count():
    layers = [affine(300, 784, 0.9, True, 1), affine(10, 300, 0.9, False, 2)]
    chain = NumbaTiledChain(layers, 784, None)
    inputs = torch.randn(200, 784, generator=torch.Generator().manual_seed(0))
    before = torch.get_num_threads()
    try:
        outputs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            outputs.append(chain(inputs))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outputs[0], outputs[1])


def test_tiled_chain_follows_its_buffers():
    chain = NumbaTiledChain([affine(6, 20, 0.5, False, 1)], 20, None)
    inputs = torch.randn(18, 20)
    first = chain(inputs)
    copied = copy.deepcopy(chain)
    copied.values.mul_(2)
    copied.bias.mul_(2)
    assert relative_error(copied(inputs), 2 * first) < AGREEMENT_TOLERANCE
    assert torch.equal(chain(inputs), first)


def test_tiled_chain_refuses_input_it_was_not_built_for():
    chain = NumbaTiledChain([affine(4, 8, 0.5, False, 1)], 8, None)
    with pytest.raises(TypeError, match="float32 CPU input"):
        chain(torch.randn(3, 8, dtype=torch.float64))


def test_a_chain_with_a_dense_fallback_shares_the_original_chains_weights():
    chain = NumbaTiledChain([affine(4, 8, 0.5, False, 1)], 8, None)
    fallback = [nn.Linear(8, 4)]
    slow = chain.with_dense_fallback(fallback, min_batch=10)
    assert chain.dense_fallback is None and slow.min_batch == 10
    assert slow.values.data_ptr() == chain.values.data_ptr()
    small, large = torch.randn(9, 8), torch.randn(10, 8)
    assert torch.equal(slow(small), fallback[0](small))
    assert torch.equal(slow(large), chain(large))


def test_numba_layer_follows_its_buffers():
    torch.manual_seed(0)
    weight = torch.randn(8, 20) * (torch.rand(8, 20) > 0.7)
    layer = NumbaCsrLinear(weight, torch.randn(8), relu=False)
    h = torch.randn(20, 5)
    first = layer(h)
    copied = copy.deepcopy(layer)
    copied.values.mul_(2)
    copied.bias.mul_(2)
    assert relative_error(copied(h), 2 * first) < AGREEMENT_TOLERANCE
    assert relative_error(layer(h), first) < AGREEMENT_TOLERANCE


@pytest.mark.parametrize("threads", [1, 2])
def test_numba_kernel_gives_the_same_answer_on_any_thread_count(threads):
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    fast, _ = sparsify(model, "sparse")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert_agrees(model, fast, MNIST_BATCH)
    finally:
        torch.set_num_threads(before)


def test_fc1_runs_sparse_kernels_in_one_chain():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    fast, choices = sparsify(model, "sparse")
    assert [c.kernel for c in choices] == ["numba_tiled"] * 3
    (chain,) = chains(fast)
    assert isinstance(chain, NumbaTiledChain)
    first, second, last = layer_sizes(chain)
    read_by_last = int((linears(model)[2].weight != 0).any(dim=0).sum())    # 66 of 100
    assert (first, second, last) == ((300, 784), (read_by_last, 300), (10, read_by_last))
    assert not linears(fast)


def test_numba_csr_mode_runs_numbas_per_layer_kernel():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    fast, choices = sparsify(model, "numba_csr")
    assert [c.kernel for c in choices] == ["numba_csr"] * 3
    (chain,) = chains(fast)
    assert all(isinstance(layer, NumbaCsrLinear) for layer in chain.layers)


def test_torch_csr_mode_runs_torchs_kernel():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    fast, choices = sparsify(model, "torch_csr")
    assert [c.kernel for c in choices] == ["torch_csr"] * 3
    (chain,) = chains(fast)
    assert all(isinstance(layer, SparseLinear) for layer in chain.layers)


def test_sparse_mode_uses_torchs_kernel_where_numba_does_not_apply():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9).double()
    fast, choices = sparsify(model, "sparse")
    assert [c.kernel for c in choices] == ["torch_csr"] * 3
    assert "numba_csr" not in candidate_layers(linears(model)[0], relu=True)
    assert_agrees(model, fast, MNIST_BATCH.double())


def test_lenet5_with_pruned_linears_matches_dense():
    model = prune_linears_randomly(seeded_model("lenet5"), 0.95)
    fast, choices = sparsify(model, "sparse")
    kernels = {c.name: c.kernel for c in choices}
    assert kernels == {"0.weight": "dense", "2.weight": "dense", "6.weight": "numba_tiled",
                       "8.weight": "numba_tiled", "10.weight": "numba_tiled"}
    assert_agrees(model, fast, MNIST_BATCH[:4])


@torch.no_grad()
def lenet5_with_empty_rows_and_columns() -> nn.Module:  # noqa: D401
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


@pytest.mark.parametrize("mode", ["sparse", "numba_csr", "torch_csr"])
def test_empty_rows_and_columns_are_dropped_exactly(mode):
    model = lenet5_with_empty_rows_and_columns()
    fast, _ = sparsify(model, mode)
    assert_agrees(model, fast, MNIST_BATCH[:4])
    assert_agrees(model, fast, MNIST_BATCH[:37])     # two whole tiles and a partial one
    (chain,) = chains(fast)
    first, second, last = layer_sizes(chain)
    assert chain.used_inputs is not None and len(chain.used_inputs) <= 12544 - 3000
    assert first[1] == len(chain.used_inputs)
    assert first[0] <= 256 - 30 - 20      # constant and unread units removed
    assert second[0] <= 256 - 10 - 56
    assert last[0] == 10                  # the outputs are all kept
    assert last[1] <= 200


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
    assert {c.name: c.kernel for c in choices if c.is_sparse} == {"fc.weight": "numba_tiled"}
    assert_agrees(model, fast, torch.randn(2, 3, 8, 8))


def test_leading_dense_layers_stay_batch_major():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 200), nn.ReLU(), nn.Linear(200, 200), nn.ReLU(),
                          nn.Dropout(0.5), nn.Linear(200, 100)).eval()
    with torch.no_grad():
        for layer in (model[2], model[5]):
            layer.weight.mul_(torch.rand(layer.weight.shape) > 0.95)
    fast, choices = sparsify(model, "auto", threshold=0.5)
    assert [c.kernel for c in choices] == ["dense", "numba_csr", "numba_csr"]
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
    monkeypatch.setattr(sparse_common, "CSR_BLOCK_BYTES", 64 * 4 * 20)    # 20 columns of 64 floats
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
    asked = []
    fast, choices = sparsify(model, "auto", example_input=MNIST_BATCH, timer=fake_timer({}, asked))
    assert [c.kernel for c in choices] == ["dense"] * 3
    assert not asked                      # nothing pruned: nothing to time
    assert not chains(fast) and len(linears(fast)) == 3


def test_auto_picks_the_fastest_timed_kernel_per_layer():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    timer = timer_answering([{"dense": 3.0, "torch_csr": 2.0, "numba_csr": 1.0},
                             {"dense": 3.0, "torch_csr": 1.0, "numba_csr": 2.0},
                             {"dense": 1.0, "torch_csr": 2.0, "numba_csr": 3.0},
                             {"dense": 2.0, "chain": 1.0, "numba_tiled": 1.5}])

    fast, choices = sparsify(model, "auto", example_input=MNIST_BATCH, timer=timer)
    assert [c.kernel for c in choices] == ["numba_csr", "torch_csr", "dense"]
    assert choices[0].reason.startswith(f"timed at {MNIST_BATCH.shape[0]} rows: numba_csr 3.00x")
    assert "chain 2.00x, numba_tiled 1.33x dense" in choices[0].reason
    (chain,) = chains(fast)
    assert [type(layer) for layer in chain.layers] == [NumbaCsrLinear, SparseLinear,
                                                       DenseTransposedLinear]
    assert_agrees(model, fast, MNIST_BATCH)


def test_auto_runs_numbas_tiled_chain_when_that_is_timed_fastest():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    timer = timer_answering([{"dense": 3.0, "torch_csr": 2.0, "numba_csr": 1.0},
                             {"dense": 3.0, "torch_csr": 1.0, "numba_csr": 2.0},
                             {"dense": 1.0, "torch_csr": 2.0, "numba_csr": 3.0},
                             {"dense": 4.0, "chain": 2.0, "numba_tiled": 1.0}])

    fast, choices = sparsify(model, "auto", example_input=MNIST_BATCH, timer=timer)
    assert [c.kernel for c in choices] == ["numba_tiled"] * 3
    assert "numba's tiled chain of every layer ran faster" in choices[2].reason
    assert "chain 2.00x, numba_tiled 4.00x dense" in choices[2].reason
    (chain,) = chains(fast)
    assert isinstance(chain, NumbaTiledChain) and chain.min_batch == MNIST_BATCH.shape[0]
    assert_agrees(model, fast, MNIST_BATCH)


def test_auto_falls_back_to_dense_when_the_timed_sparse_kernels_lose():
    model = prune_linears_randomly(seeded_model("fc1"), 0.99)
    asked = []
    fast, choices = sparsify(model, "auto", example_input=MNIST_BATCH,
                             timer=fake_timer({"dense": 1.0, "torch_csr": 1.5, "numba_csr": 1.2,
                                               "numba_tiled": 1.1}, asked))
    assert [c.kernel for c in choices] == ["dense"] * 3
    assert "numba_csr 0.83x" in choices[0].reason
    assert "ran numba_tiled 0.91x dense (needs 1.2x)" in choices[0].reason
    assert asked[-1] == ["dense", "numba_tiled"]     # no per-layer chain: every layer lost
    assert not chains(fast) and len(linears(fast)) == 3


def test_auto_times_the_tiled_chain_even_when_every_layer_alone_is_faster_dense():
    """At one image per batch numba's per-layer kernel loses on every layer, while the tiled
    chain, one call for all of them, can still win."""
    model = prune_linears_randomly(seeded_model("fc1"), 0.97)
    fast, choices = sparsify(model, "auto", example_input=MNIST_BATCH[:1],
                             timer=fake_timer({"dense": 1.0, "torch_csr": 1.5, "numba_csr": 1.2,
                                               "numba_tiled": 0.5}))
    assert [c.kernel for c in choices] == ["numba_tiled"] * 3
    assert choices[0].reason.endswith("numba_tiled 2.00x dense")
    (chain,) = chains(fast)
    assert isinstance(chain, NumbaTiledChain)
    assert_agrees(model, fast, MNIST_BATCH[:1])
    assert_agrees(model, fast, MNIST_BATCH)


@pytest.mark.parametrize("chain_seconds", [1.0, 1.0 / (MEASURED_SPEEDUP_REQUIRED - 0.01)])
def test_auto_falls_back_to_dense_when_the_timed_chain_loses(chain_seconds):
    model = prune_linears_randomly(seeded_model("fc1"), 0.99)
    layers_win = fake_timer(NUMBA_WINS)
    chain_loses = fake_timer({"dense": 1.0, "chain": chain_seconds,
                              "numba_tiled": chain_seconds})

    def timer(runs):
        return (chain_loses if "chain" in runs else layers_win)(runs)

    fast, choices = sparsify(model, "auto", example_input=MNIST_BATCH, timer=timer)
    assert [c.kernel for c in choices] == ["dense"] * 3
    assert "the sparse chains from 1.weight" in choices[0].reason
    assert not chains(fast) and len(linears(fast)) == 3


def test_auto_runs_batches_smaller_than_the_timed_one_dense():
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    example = MNIST_BATCH[:64]
    fast, choices = sparsify(model, "auto", example_input=example, timer=fake_timer(NUMBA_WINS))
    (chain,) = chains(fast)
    assert chain.min_batch == 64 and "batches under 64 rows run dense" in choices[0].reason
    sparse_calls = []
    chain.layers[0].register_forward_hook(lambda *_: sparse_calls.append(1))
    assert_agrees(model, fast, MNIST_BATCH[:63])
    assert not sparse_calls
    assert_agrees(model, fast, MNIST_BATCH[:64])
    assert_agrees(model, fast, MNIST_BATCH)
    assert len(sparse_calls) == 2


def test_sparse_mode_runs_every_batch_sparse():
    fast, _ = sparsify(prune_linears_randomly(seeded_model("fc1"), 0.99), "sparse")
    (chain,) = chains(fast)
    assert chain.dense_fallback is None


def test_auto_with_a_threshold_of_its_own_does_not_time():
    model = prune_linears_randomly(seeded_model("fc1"), 0.5)
    asked = []
    _, high = sparsify(model, "auto", threshold=0.6, timer=fake_timer({}, asked))
    _, low = sparsify(model, "auto", threshold=0.3, timer=fake_timer({}, asked))
    assert [c.kernel for c in high] == ["dense"] * 3
    assert [c.kernel for c in low] == ["numba_csr"] * 3
    assert not asked


def test_auto_times_on_this_machine():
    """The real timer: whatever it picks must give the dense answer, original untouched."""
    model = prune_linears_randomly(seeded_model("fc1"), 0.99)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast, choices = sparsify(model, "auto", example_input=MNIST_BATCH)
    assert all(c.reason.startswith("timed at 128 rows") for c in choices)
    assert_agrees(model, fast, MNIST_BATCH)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_interleaved_timer_reports_the_median_per_run(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("archs.sparse.timing.time.perf_counter", lambda: clock[0])
    durations = {"fast": iter([1.0] * 20 + [50.0]), "slow": iter([3.0] * 21)}

    def run(name):
        clock[0] += next(durations[name])

    timer = InterleavedTimer(torch.device("cpu"), rounds=5, warmup=1, sample_seconds=0.0)
    seconds = timer({"fast": lambda: run("fast"), "slow": lambda: run("slow")})
    assert seconds == {"fast": 1.0, "slow": 3.0}


# --------------------------------------------------------------------------- timing cache
def test_auto_reuses_cached_timings(tmp_path):
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    cache = KernelTimingCache(tmp_path / "timings.json")
    asked = []
    _, first = sparsify(model, "auto", example_input=MNIST_BATCH, timing_cache=cache,
                        timer=fake_timer(NUMBA_WINS, asked))
    assert len(asked) == 4 and len(cache) == 4        # three layers and the chain
    reopened = KernelTimingCache(tmp_path / "timings.json")
    fast, again = sparsify(model, "auto", example_input=MNIST_BATCH, timing_cache=reopened,
                           timer=fake_timer(NUMBA_WINS, asked))
    assert len(asked) == 4                            # all hits: nothing timed again
    assert [c.kernel for c in again] == [c.kernel for c in first]
    assert all(c.reason.startswith("cached timing") for c in again)
    assert_agrees(model, fast, MNIST_BATCH)


def test_cache_misses_on_another_batch_size_thread_count_or_weights(tmp_path):
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    cache = KernelTimingCache(tmp_path / "timings.json")
    asked = []

    def run(model=model, example=MNIST_BATCH):
        sparsify(model, "auto", example_input=example, timing_cache=cache,
                 timer=fake_timer(NUMBA_WINS, asked))
        timed = len(asked)
        asked.clear()
        return timed

    assert run() == 4
    assert run() == 0
    assert run(example=MNIST_BATCH[:64]) == 4
    assert run(model=prune_linears_randomly(seeded_model("fc1"), 0.95)) == 4
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if before > 1 else 2)
        assert run() == 4
    finally:
        torch.set_num_threads(before)
    assert run() == 0


def test_timing_keys_tell_apart_shape_sparsity_batch_and_threads():
    cpu = torch.device("cpu")
    base = dict(what="layer", shape=[300, 784], nonzeros=23520, rows=512)
    cache_keys = [timing_key(cpu, **base), timing_key(cpu, **{**base, "shape": [784, 300]}),
                  timing_key(cpu, **{**base, "nonzeros": 7056}),
                  timing_key(cpu, **{**base, "rows": 64})]
    assert len({json.dumps(k, sort_keys=True) for k in cache_keys}) == 4
    key = timing_key(cpu, **base)
    assert key["threads"] == torch.get_num_threads() and key["torch"] == torch.__version__
    import numba
    assert key["device"] and key["numba"] == numba.__version__


def test_cache_is_written_atomically(tmp_path, monkeypatch):
    path = tmp_path / "timings.json"
    cache = KernelTimingCache(path)
    cache.put({"layer": 1}, {"dense": 1.0})
    saved = path.read_text()

    def torn_write(self, text, *args, **kwargs):
        Path.write_bytes(self, text[:10].encode())    # half the file, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", torn_write)
    with pytest.raises(KeyboardInterrupt):
        cache.put({"layer": 2}, {"dense": 2.0})
    monkeypatch.undo()
    assert path.read_text() == saved
    assert [p.name for p in tmp_path.iterdir()] == ["timings.json"]
    assert KernelTimingCache(path).get({"layer": 1}) == {"dense": 1.0}


@pytest.mark.parametrize("content", ["{not json", '{"format": 1, "timings": [1, 2]}', '[]',
                                     '{"format": 99, "timings": {}}'])
def test_a_corrupt_cache_is_ignored_with_a_warning(tmp_path, content):
    path = tmp_path / "timings.json"
    path.write_text(content)
    with pytest.warns(UserWarning, match="corrupt kernel timing cache"):
        cache = KernelTimingCache(path)
    assert len(cache) == 0
    model = prune_linears_randomly(seeded_model("fc1"), 0.9)
    sparsify(model, "auto", example_input=MNIST_BATCH, timing_cache=cache,
             timer=fake_timer(NUMBA_WINS))
    assert len(json.loads(path.read_text())["timings"]) == 4      # rewritten whole


def test_default_cache_path_follows_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_timing_cache_path() == tmp_path / "lottery_ticket" / "kernel_timings.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_timing_cache_path() == Path.home() / ".cache" / "lottery_ticket" / "kernel_timings.json"


def mode_arguments(mode: str) -> dict:
    return dict(example_input=MNIST_BATCH[:4], timer=fake_timer(NUMBA_WINS)) if mode == "auto" else {}


def test_unpruned_convolutions_are_reported_dense():
    model = prune_linears_randomly(seeded_model("lenet5"), 0.99)
    for mode in KERNEL_MODES:
        _, choices = sparsify(model, mode, **mode_arguments(mode))
        convolutions = [c for c in choices if c.name in ("0.weight", "2.weight")]
        assert len(convolutions) == 2
        reason = "dense mode" if mode == "dense" else "not pruned"
        assert all(c.kernel == "dense" and c.reason == reason for c in convolutions)


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
        sparsify(model, mode, **mode_arguments(mode))
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
    dict(mode="auto"),
    dict(mode="sparse", threshold=0.5),
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


def test_a_cache_path_that_is_a_directory_is_refused_before_any_timing(tmp_path):
    with pytest.raises(UserError, match="is a directory; give a file name"):
        KernelTimingCache(tmp_path)
