"""Residual and dense blocks replay in the tile layout (archs.sparse.blocks) with the dense
blocks' results: BatchNorm folded or applied per channel, shortcuts added, features
concatenated; compared with the float64 blocks, at batch 1, odd batches and odd sizes."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.densenet import DenseNet, _DenseBlock, _Transition
from torchvision.models.resnet import BasicBlock, Bottleneck

from archs import build_model
from archs.sparse import sparsify
from archs.sparse.blocks import block_supported
from archs.sparse.common import relative_error
from archs.sparse.conv import SparseConvChain
from archs.sparse.tile_program import BlockSpec, TileProgram, batchnorm_affine
from archs.sparse.blocks import block_step
from tests.test_sparse import fake_timer
from tests.test_sparse_conv import TOLERANCE, prune_everything


def pruned(module: nn.Module, seed: int = 0) -> nn.Module:
    """``module`` with random 90 % masks and BatchNorms of non-trivial statistics and affine
    parameters, in eval mode."""
    torch.manual_seed(seed)
    for norm in module.modules():
        if isinstance(norm, nn.BatchNorm2d):
            norm.weight.data.uniform_(0.5, 1.5)
            norm.bias.data.normal_()
    return prune_everything(module, 0.9, seed).requires_grad_(False)


def replay(block: nn.Module) -> TileProgram:
    return TileProgram([BlockSpec(block)], block_step)


def check(program: nn.Module, reference: nn.Module, x: torch.Tensor) -> None:
    with torch.inference_mode():
        expected = reference.double()(x.double())
    for inference in (True, False):
        with torch.inference_mode(inference):
            actual = program(x)
        assert actual.shape == expected.shape and actual.dtype == torch.float32
        assert relative_error(actual, expected) < TOLERANCE


BLOCKS = {
    "basic": lambda: BasicBlock(6, 6),
    "basic_stride2": lambda: BasicBlock(4, 8, stride=2, downsample=nn.Sequential(
        nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))),
    "bottleneck": lambda: Bottleneck(16, 4),
    "bottleneck_stride2_groups": lambda: Bottleneck(8, 4, stride=2, groups=2, base_width=64,
                                                    downsample=nn.Sequential(
        nn.Conv2d(8, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))),
    "dense_block": lambda: _DenseBlock(3, 5, bn_size=2, growth_rate=3, drop_rate=0.0),
    "transition": lambda: _Transition(7, 4),
}


@pytest.mark.parametrize("images,height,width", [(1, 8, 8), (17, 7, 9)])
@pytest.mark.parametrize("kind", BLOCKS)
def test_a_block_replays_as_the_dense_block_in_float64(kind, images, height, width):
    block = pruned(BLOCKS[kind]())
    assert block_supported(block)
    channels = next(m for m in block.modules() if isinstance(m, nn.Conv2d)).in_channels
    if kind == "dense_block":
        channels = 5
    elif kind == "transition":
        channels = 7
    check(replay(block), block, torch.randn(images, channels, height, width))


def test_blocks_in_a_row_keep_the_tile_layout_between_them():
    blocks = pruned(nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), BLOCKS["basic"](),
        BasicBlock(6, 16, stride=2, downsample=nn.Sequential(
            nn.Conv2d(6, 16, 1, stride=2, bias=False), nn.BatchNorm2d(16))),
        Bottleneck(16, 4), nn.ReLU(), nn.BatchNorm2d(16), nn.Conv2d(16, 5, 3, padding=1),
        nn.MaxPool2d(2), nn.BatchNorm2d(5), nn.ReLU()))
    fast, choices = sparsify(blocks, "sparse")
    programs = [m for m in fast.modules() if isinstance(m, SparseConvChain)]
    assert len(programs) == 1 and isinstance(programs[0], TileProgram)
    assert [c.kernel for c in choices] == ["numba_conv"] * len(choices)
    check(fast, blocks, torch.randn(3, 3, 11, 10))


def test_batchnorm_as_a_per_channel_affine_equals_the_module():
    norm = pruned(nn.Sequential(nn.BatchNorm2d(5)))[0].double()
    scale, shift = batchnorm_affine(norm)
    x = torch.randn(2, 5, 3, 4, dtype=torch.float64)
    assert torch.allclose(x * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1), norm(x),
                          rtol=1e-12, atol=1e-12)


def tiny_densenet() -> nn.Module:
    """torchvision's DenseNet at toy size, with its ImageNet stem: a 7x7 stride-2 convolution
    (a chain of its own) and a padded max-pool, which runs dense; the program follows it."""
    return pruned(DenseNet(growth_rate=4, block_config=(2, 2), num_init_features=8,
                           bn_size=2, num_classes=5))


@pytest.mark.parametrize("arch", ["resnet20", "tiny_densenet"])
def test_residual_and_dense_networks_replay_as_one_program_without_batchnorms(arch):
    model = tiny_densenet() if arch == "tiny_densenet" else pruned(build_model(arch, 3, 8, 10))
    fast, choices = sparsify(model, "sparse")
    programs = [m for m in fast.modules() if isinstance(m, TileProgram)]
    assert len(programs) == 1
    convolutions = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    assert sum(c.kernel == "numba_conv" for c in choices) == convolutions
    # every BatchNorm folded into its convolution or run as a per-channel step
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    for images in (1, 5):
        x = torch.randn(images, 3, 9, 9)
        with torch.inference_mode():
            expected, actual = model.double()(x.double()), fast(x)
        model.float()
        assert relative_error(actual, expected) < TOLERANCE
        assert torch.equal(actual.argmax(1), expected.argmax(1))


def test_auto_times_a_residual_network_as_one_program():
    model = pruned(build_model("resnet20", 3, 8, 10))
    x = torch.randn(4, 3, 8, 8)
    seconds = {"dense": 3.0, "numba_conv": 1.0, "torch_csr": 2.0, "numba_csr": 1.0,
               "chain": 1.0, "numba_tiled": 1.0}
    fast, choices = sparsify(model, "auto", example_input=x, timer=fake_timer(seconds))
    programs = [m for m in fast.modules() if isinstance(m, TileProgram)]
    assert len(programs) == 1 and programs[0].min_batch == 4
    for batch in (x, x[:1]):    # the second through the dense fallback
        with torch.inference_mode():
            assert relative_error(fast(batch), model.double()(batch.double())) < TOLERANCE
        model.float()
    slow = dict(seconds, dense=0.5)
    fast, choices = sparsify(model, "auto", example_input=x, timer=fake_timer(slow))
    assert not any(isinstance(m, SparseConvChain) for m in fast.modules())
    assert {c.kernel for c in choices if c.name != "fc.weight"} == {"dense"}


def test_one_and_two_threads_give_the_same_results_and_the_thread_count_holds():
    model = pruned(build_model("resnet20", 3, 8, 10))
    fast, _ = sparsify(model, "sparse")
    x = torch.randn(50, 3, 8, 8)    # 4 tiles, the last one partial
    before = torch.get_num_threads()
    try:
        outputs = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with torch.inference_mode():
                outputs.append(fast(x))
            assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(before)
    assert torch.equal(outputs[0], outputs[1])
    with torch.inference_mode():
        assert relative_error(outputs[1], model.double()(x.double())) < TOLERANCE


class _Holder(nn.Module):
    """A block outside any Sequential: replaced on its own."""

    def __init__(self):
        super().__init__()
        self.block = BLOCKS["basic_stride2"]()
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.block(x).mean((2, 3)))


def test_a_block_outside_a_sequential_is_replaced_on_its_own():
    model = pruned(_Holder())
    fast, choices = sparsify(model, "sparse")
    assert isinstance(fast.block, TileProgram)
    assert [c.kernel for c in choices][:3] == ["numba_conv"] * 3
    check(fast, model, torch.randn(5, 4, 9, 9))


def test_imagenet_alexnet_features_with_the_11x11_stride_4_convolution():
    from torchvision.models import alexnet
    torch.manual_seed(0)
    features = pruned(alexnet(num_classes=10).features)
    assert features[0].kernel_size == (11, 11) and features[0].stride == (4, 4)
    fast, choices = sparsify(features, "sparse")
    assert [c.kernel for c in choices] == ["numba_conv"] * 5
    check(fast, features, torch.randn(3, 3, 67, 67))


def test_a_residual_ticket_replays_sparse_through_the_script(tmp_path, small_mnist_dir, capsys):
    import post_training_inference
    from archs.experiment import TrainingJob, run_job
    from data.runs import RunConfig
    config = RunConfig(arch_type="resnet20", prune_percent=90, prune_iterations=2, end_iter=1,
                       batch_size=64)
    run_job(TrainingJob(config=config, seeds=[0], data_dir=small_mnist_dir, save_dir=tmp_path,
                        device="cpu", show_progress=False))
    post_training_inference.main(["--save_dir", str(tmp_path), "--arch_type", "resnet20",
                                  "--mode", "sparse", "--passes", "1", "--batch_size", "16",
                                  "--no_progress", "--country_iso_code", "FRA"])
    out = capsys.readouterr()
    table = out.out + out.err
    table = table[table.index("Kernels in sparse mode"):].splitlines()
    rows = [line.split() for line in table]
    kernels = {row[0]: row[2] for row in rows if row and row[0].endswith(".weight")}
    assert len(kernels) == 22 and kernels.pop("fc.weight") != "dense"
    assert set(kernels.values()) == {"numba_conv"}
