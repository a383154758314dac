"""The replay's GPU kernels (archs/sparse/cuda.py): torch's CSR path for linear layers and
convolutions, run here on the CPU against float64 references; the 2:4 semi-structured path's
eligibility on the CPU and its execution where a CUDA device exists; the replay's GPU
synchronisation and NVML provenance with fakes."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archs.inference as inference
import archs.sparse.cuda as cuda
from archs import build_model
from archs.pruning import n_of_m_mask
from archs.sparse import sparsify
from archs.sparse.choice import Timing
from archs.sparse.common import AGREEMENT_TOLERANCE, relative_error
from data.energy.emissions import TrackerSettings, describe_provenance, hardware_provenance

NO_CUDA = "no CUDA device: cuSPARSELt's 2:4 kernels run on NVIDIA GPUs only (the CPU checks eligibility)"
NO_TIMING = Timing(None, None)


def pruned(shape, sparsity, seed=0, two_of_four=False):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(shape, generator=generator)
    if two_of_four:
        keep = n_of_m_mask(weight.abs(), torch.ones_like(weight, dtype=torch.bool))
    else:
        keep = torch.rand(shape, generator=generator) >= sparsity
    return weight * keep


def linear(weight, bias=True):
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=bias)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer.eval()


def conv(weight, bias=True, **options):
    layer = nn.Conv2d(weight.shape[1], weight.shape[0], weight.shape[2:], bias=bias, **options)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer.eval()


def float64_reference(layer, x):
    if isinstance(layer, nn.Linear):
        return F.linear(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double())
    return F.conv2d(x.double(), layer.weight.double(), None if layer.bias is None else layer.bias.double(),
                    layer.stride, layer.padding, layer.dilation, layer.groups)


# --------------------------------------------------------------------------- CSR on the CPU
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.97, 1.0])
@pytest.mark.parametrize("batch", [1, 7])
def test_csr_linear_equals_float64(sparsity, batch):
    layer = linear(pruned((33, 50), sparsity))
    x = torch.randn(batch, 50, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        out = cuda.CsrLayer(layer)(x)
    assert out.shape == (batch, 33)
    assert relative_error(out, float64_reference(layer, x)) < AGREEMENT_TOLERANCE


CONVS = {"3x3 pad 1": ((16, 8, 3, 3), dict(padding=1), (9, 9)),
         "stride 2": ((12, 3, 3, 3), dict(stride=2, padding=1), (11, 10)),
         "1x1": ((16, 8, 1, 1), {}, (6, 5)),
         "1x1 stride 2": ((16, 8, 1, 1), dict(stride=2), (7, 7)),
         "5x5 no pad": ((6, 1, 5, 5), {}, (12, 12)),
         "11x11 stride 4": ((8, 3, 11, 11), dict(stride=4, padding=2), (35, 35)),
         "dilation 2": ((8, 4, 3, 3), dict(dilation=2, padding=2), (10, 10))}


@pytest.mark.parametrize("name", CONVS)
@pytest.mark.parametrize("sparsity", [0.0, 0.9, 1.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_csr_convolution_equals_float64(name, sparsity, batch):
    shape, options, size = CONVS[name]
    weight = pruned(shape, sparsity)
    weight[0] = 0                                           # an empty output channel
    layer = conv(weight, bias=sparsity != 0.9, **options)
    x = torch.randn(batch, shape[1], *size, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        out = cuda.CsrLayer(layer)(x)
    expected = float64_reference(layer, x)
    assert out.shape == expected.shape
    assert relative_error(out, expected) < AGREEMENT_TOLERANCE


def test_a_convolution_unfolded_in_batch_pieces_gives_the_same_result(monkeypatch):
    layer = conv(pruned((8, 4, 3, 3), 0.8), padding=1)
    x = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        whole = cuda.CsrLayer(layer)(x)
        monkeypatch.setattr(cuda, "UNFOLD_BYTES", 4 * 36 * 64 * 2)   # two images at a time
        assert cuda._batch_pieces(cuda.Geometry.of(layer), x) == 2
        pieces = cuda.CsrLayer(layer)(x)
    assert torch.equal(whole, pieces)


def test_csr_refuses_grouped_convolutions_and_other_padding_modes():
    assert cuda.csr_reason(nn.Conv2d(4, 4, 3, groups=2)).startswith("groups=2")
    assert cuda.csr_reason(nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"))
    assert cuda.csr_reason(nn.Conv2d(4, 4, 3, padding="same"))
    assert cuda.csr_reason(nn.Conv2d(4, 4, 3)) is None and cuda.csr_reason(nn.Linear(3, 2)) is None


# --------------------------------------------------------------------------- whole networks, CPU
def pruned_network(arch="lenet5", sparsity=0.9, seed=0):
    torch.manual_seed(seed)
    model = build_model(arch, 1, 8, 10).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.weight.mul_(torch.rand(module.weight.shape) >= sparsity)
    return model


def test_a_whole_network_in_csr_on_the_cpu_gives_the_float64_outputs():
    import copy

    model = pruned_network()
    x = torch.randn(6, 1, 8, 8)
    converted, choices = cuda.sparsify_layers(model, "torch_csr", timing=NO_TIMING)
    assert {c.kernel for c in choices} == {"torch_csr"}
    assert len(choices) == len(cuda_layer_names(model))
    with torch.inference_mode():
        reference = copy.deepcopy(model).double()(x.double())
        out = converted(x)
    assert relative_error(out, reference) < AGREEMENT_TOLERANCE
    # "sparse" without a CUDA device: CSR for every pruned layer, never 2:4
    _, choices = cuda.sparsify_layers(model, "sparse", timing=NO_TIMING)
    assert all(c.kernel == "torch_csr" for c in choices)


class FixedTimer:
    """Seconds per kernel, whatever runs (each run is still called once)."""

    def __init__(self, seconds):
        self.seconds = seconds

    def __call__(self, runs):
        for run in runs.values():
            run()
        return {name: self.seconds[name] for name in runs}


@pytest.mark.parametrize("csr_seconds, expected", [(1.0, "torch_csr"), (1.9, "dense")])
def test_auto_keeps_csr_only_when_timed_faster_by_the_margin(csr_seconds, expected):
    model = pruned_network()
    timing = Timing(FixedTimer({"dense": 2.0, "torch_csr": csr_seconds}), None)
    converted, choices = cuda.sparsify_layers(model, "auto", example_input=torch.randn(4, 1, 8, 8), timing=timing)
    assert {c.kernel for c in choices} == {expected}
    assert all("vs dense" in c.reason for c in choices)
    x = torch.randn(3, 1, 8, 8)
    with torch.inference_mode():
        assert relative_error(converted(x), model(x)) < AGREEMENT_TOLERANCE


def test_a_threshold_runs_sparse_only_the_layers_sparse_enough():
    model = pruned_network(sparsity=0.5)
    with torch.no_grad():
        model.get_submodule(cuda_layer_names(model)[0]).weight.mul_(0)   # the first: 100% sparse
    _, choices = cuda.sparsify_layers(model, "auto", threshold=0.9, timing=NO_TIMING)
    assert choices[0].kernel == "torch_csr"
    assert all(c.kernel == "dense" and "< threshold" in c.reason for c in choices[1:])


def cuda_layer_names(model):
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def test_a_kernel_torch_refuses_to_build_leaves_the_layer_dense_and_says_why(monkeypatch):
    def refuse(module):
        raise RuntimeError("cuSPARSELt not supported on this build\nmore")

    monkeypatch.setattr(cuda, "CsrLayer", refuse)
    model = pruned_network()
    converted, choices = cuda.sparsify_layers(model, "torch_csr", timing=NO_TIMING)
    assert all(c.kernel == "dense" and c.reason == "torch_csr refused by torch: cuSPARSELt not supported "
               "on this build" for c in choices)
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(converted(x), model(x))


def test_the_semi_structured_mode_on_the_cpu_runs_dense_and_says_why():
    model = pruned_network()
    converted, choices = sparsify(model, "semi_structured")
    assert all(c.kernel == "dense" and "CUDA devices only" in c.reason for c in choices)
    x = torch.randn(2, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(converted(x), model(x))


# --------------------------------------------------------------------------- 2:4 eligibility
def test_semi_structured_eligibility_follows_the_pattern_and_the_shapes():
    two_of_four = pruned((32, 64), 0, two_of_four=True)
    on_gpu = dict(device_type="cuda", constraints=(16, 16))
    assert cuda.semi_structured_reason(two_of_four, **on_gpu) is None
    assert cuda.semi_structured_reason(two_of_four) == "semi-structured kernels run on CUDA devices only"
    assert "8.0 (Ampere)" in cuda.semi_structured_reason(two_of_four, capability=(7, 5), **on_gpu)
    assert cuda.semi_structured_reason(two_of_four, capability=(9, 0), **on_gpu) is None
    assert "not 2:4" in cuda.semi_structured_reason(pruned((32, 64), 0.4), **on_gpu)
    assert cuda.semi_structured_reason(pruned((24, 64), 0, two_of_four=True), **on_gpu) == \
        "shape 24 x 64: needs multiples of 16 x 16"
    assert "needs multiples of 32 x 64" in cuda.semi_structured_reason(two_of_four[:, :48].contiguous(),
                                                                      device_type="cuda", constraints=(32, 64))
    # a convolution's K is in*kh*kw, grouped as cuSPARSELt groups the GEMM's K
    kernel = pruned((32, 4, 2, 2), 0, two_of_four=True)
    assert cuda.semi_structured_reason(kernel, conv(kernel), **on_gpu) is None
    assert cuda.semi_structured_reason(kernel, nn.Conv2d(8, 32, 2, groups=2), **on_gpu).startswith("groups=2")


def test_torchs_backend_constraints_are_read_for_half_precision():
    rows, columns = cuda.semi_structured_constraints(torch.float16)
    assert rows >= 8 and columns >= 8 and rows % 8 == 0 and columns % 8 == 0


def test_the_replay_allows_half_precision_only_where_a_layer_runs_2_of_4():
    from archs.sparse.common import LayerChoice

    dense = [LayerChoice("a.weight", 0.5, "torch_csr", "")]
    assert cuda.agreement_tolerance(dense) == AGREEMENT_TOLERANCE
    assert cuda.agreement_tolerance(dense + [LayerChoice("b.weight", 0.5, "semi_structured", "")]) == 1e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason=NO_CUDA)
@pytest.mark.parametrize("kind", ["linear", "conv 3x3", "conv 1x1"])
def test_semi_structured_layers_on_a_gpu_equal_float64_within_half_precision(kind):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability 8.0 (Ampere) or newer")
    device = torch.device("cuda")
    if kind == "linear":
        layer, x = linear(pruned((64, 128), 0, two_of_four=True)), torch.randn(37, 128)
    else:
        size = 3 if kind == "conv 3x3" else 1
        layer = conv(pruned((32, 16, size, size), 0, two_of_four=True), padding=size // 2)
        x = torch.randn(5, 16, 9, 9)
    layer, x = layer.to(device), x.to(device)
    assert cuda.semi_structured_reason(layer.weight, layer) is None
    with torch.inference_mode():
        out = cuda.SemiStructuredLayer(layer)(x)
    assert out.dtype == torch.float32
    assert relative_error(out, float64_reference(layer, x)) < cuda.HALF_TOLERANCE[torch.float16]


# --------------------------------------------------------------------------- the replay on a GPU, with fakes
def test_a_cuda_replay_synchronises_before_every_timing_and_flush(monkeypatch, tmp_path):
    events = []

    class Recorder:
        def __init__(self, path, tracker, project_name):
            self.path = path

        def provenance(self):
            return {"cpus": 2, "sample_seconds": 1.0}

        def flush(self):
            events.append("flush")
            return {}

        def stop(self):
            events.append("stop")
            self.path.write_text("")
            return {"energy_consumed": 1e-6, "emissions": 1e-7, "cpu_seconds": 0.1}

    monkeypatch.setattr(inference, "synchronise", lambda device: events.append(f"sync {device.type}"))
    monkeypatch.setattr(inference, "EmissionsRecorder", Recorder)
    monkeypatch.setattr(inference, "describe_provenance", lambda provenance: "fake")
    monkeypatch.setattr(inference, "evaluate", lambda model, split, batch: events.append("pass") or (0.5, 90.0))
    job = SimpleNamespace(passes=3, sweeps_per_pass=1, batch_size=8,
                          tracker=SimpleNamespace(measure_power_secs=1.0))
    measured = inference.replay(None, None, job, torch.device("cuda"), tmp_path / "replay.csv",
                                SimpleNamespace(update=lambda: None))
    assert events[0] == "pass"   # the warm-up
    timed = events[1:]
    assert timed == ["sync cuda", "pass", "sync cuda", "flush"] * 2 + ["sync cuda", "pass", "sync cuda", "stop"]
    assert measured["accuracy"] == 90.0 and (tmp_path / "replay.csv").exists()


def test_the_replay_turns_cudnn_autotuning_on_for_a_gpu_only():
    from archs.runtime import replay_runtime

    before = torch.backends.cudnn.benchmark
    try:
        torch.backends.cudnn.benchmark = False
        replay_runtime(torch.device("cpu"))
        assert torch.backends.cudnn.benchmark is False
        replay_runtime(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark is True
    finally:
        torch.backends.cudnn.benchmark = before


def test_a_gpu_tracked_by_codecarbon_is_named_an_nvml_counter():
    from codecarbon.external.hardware import CPU, GPU

    cpu = CPU.__new__(CPU)
    cpu._mode = "intel_rapl"
    gpu = GPU.__new__(GPU)
    gpu.devices = SimpleNamespace(devices=[type("GPUDevice", (), {})()])
    tracker = SimpleNamespace(_ensure_hardware_ready=lambda: None, _hardware=[cpu, gpu],
                              _conf={"cpu_model": "Some Xeon", "gpu_model": "1 x NVIDIA H100 80GB HBM3",
                                     "codecarbon_version": "3.3.2"},
                              _scheduler_monitor_power=SimpleNamespace(interval=1))
    provenance = hardware_provenance(tracker, TrackerSettings(country_iso_code="FRA"))
    assert provenance["gpu_power_source"] == "counter (NVML)"
    assert provenance["power_source"] == "CPU counter (RAPL), GPU counter (NVML)"
    line = describe_provenance(provenance)
    assert "GPU counter (NVML)" in line and "NVIDIA H100" in line
