#!/usr/bin/env python3
"""Training speed and file sizes of the networks (not a test).

Default: seconds per training epoch of the project's loop against the floor, for fc1.
70,000 synthetic MNIST-size images are split 49,000 / 10,500 / 10,500 as the real data is;
fc1 at batch 512. "Project" is the real LotteryRun: shuffling, masked Adam steps on a pruned
network, evaluation of validation and test (21,000 images) and the per-epoch checkpoint.
"Floor" is a bare loop of the same model's forward, backward and Adam step over the 49,000
preloaded training images. Floor and project are measured in alternating rounds; prints each round
and the medians.

--networks [NAME ...]: every network (or those named), on both input shapes: the project's
training epoch (archs.train.loop.train_epoch: masked Adam steps) over a fixed number of synthetic
images after one untimed warm-up batch, as wall-clock and process CPU seconds for those images,
images per second, and the training part of an epoch of the real train splits (49,000 MNIST,
42,000 CIFAR-10 images) projected from that rate; evaluation and checkpointing are not included.

--sizes: for every network on 3x32x32 inputs and 10 classes: parameters, float32 state dict,
a model + Adam checkpoint (two moments per parameter), and the project's own files measured
by serialising a tiny 2-cycle LotteryRun: the per-epoch checkpoint (model, best state, Adam,
masks) and the results file (initial, best and final states, one mask set per cycle).

    python3 -m tests.benchmarks.benchmark_training [--rounds 5] [--epochs 3] [--threads N]
    python3 -m tests.benchmarks.benchmark_training --networks [NAME ...] [--images 512] [--batch_size 64] [--device cpu]
    python3 -m tests.benchmarks.benchmark_training --sizes
"""
from __future__ import annotations

import argparse
import io
import statistics
import tempfile
import time
from pathlib import Path


import torch
import torch.nn.functional as F

from archs import architecture_names, build_model
from archs.pruning import full_masks
from archs.train import LotteryRun, train_epoch
from data.datasets import DATASETS, Split, make_splits
from data.runs import RunConfig
from archs.runtime import resolve_device, synchronise
from data.store import atomic_torch_save
from utils import cpu_model, setup_logging

# Images in the real train splits (70% of the merged official sets).
TRAIN_IMAGES = {"mnist": 49_000, "cifar10": 42_000}


def synthetic_mnist(n: int = 70_000) -> Split:
    generator = torch.Generator().manual_seed(0)
    return Split(torch.randn(n, 1, 28, 28, generator=generator), torch.randint(0, 10, (n,), generator=generator))


def floor_seconds_per_epoch(train: Split, epochs: int, batch_size: int) -> list[float]:
    torch.manual_seed(0)
    model = build_model("fc1", 1, 28, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    times = []
    for _ in range(epochs + 1):  # the first epoch warms up and is dropped
        start = time.perf_counter()
        for first in range(0, len(train), batch_size):
            images, labels = train.images[first:first + batch_size], train.labels[first:first + batch_size]
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(images), labels).backward()
            optimizer.step()
        times.append(time.perf_counter() - start)
    return times[1:]


def project_seconds_per_epoch(dataset: Split, epochs: int, batch_size: int) -> list[float]:
    splits = make_splits(dataset, seed=0)
    # Two cycles: a short dense one, then the measured epochs on a 90%-pruned network.
    config = RunConfig(arch_type="fc1", prune_percent=90, prune_iterations=2, end_iter=epochs + 1,
                       batch_size=batch_size)
    run = LotteryRun(config, splits, torch.device("cpu"))
    with tempfile.TemporaryDirectory() as folder:
        checkpoint = Path(folder) / "checkpoint.pt"
        run.run(checkpoint=lambda r: atomic_torch_save(r.state_dict(), checkpoint), show_progress=False)
    stamps = sorted(run.logs["time"].items())[epochs + 1:]  # the pruned cycle
    return [b[1] - a[1] for a, b in zip(stamps, stamps[1:])]


def network_seconds(arch: str, dataset: str, images: int, batch_size: int,
                    device: torch.device) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of the project's training epoch over ``images``
    synthetic images (dense masks)."""
    spec = DATASETS[dataset]
    generator = torch.Generator().manual_seed(0)
    shape = (spec.in_channels, spec.image_size, spec.image_size)
    split = Split(torch.randn(images, *shape, generator=generator),
                  torch.randint(0, spec.num_classes, (images,), generator=generator)).to(device)
    warm_up = Split(split.images[:batch_size], split.labels[:batch_size])
    torch.manual_seed(0)
    model = build_model(arch, spec.in_channels, spec.image_size, spec.num_classes, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3)
    params = dict(model.named_parameters())
    masked = [(params[name], mask.to(device)) for name, mask in full_masks(model).items()]
    train_epoch(model, optimizer, warm_up, batch_size, torch.Generator().manual_seed(1), masked)
    synchronise(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    train_epoch(model, optimizer, split, batch_size, torch.Generator().manual_seed(2), masked)
    synchronise(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def report_networks(names: list[str], images: int, batch_size: int, device: torch.device) -> None:
    print(f"Training epoch over {images} synthetic images, batch {batch_size}, on {device} "
          f"({cpu_model() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}")
    # On a shared machine the wall clock includes waiting for a core; the process's CPU time
    # (all threads) does not, so with one thread it is the dedicated-core figure.
    print(f"{'network':12} {'dataset':8} {'wall s':>8} {'CPU s':>8} {'img/s (wall)':>12}  "
          "projected s per train-split epoch: wall, CPU")
    for arch in names:
        for dataset in ("mnist", "cifar10"):
            seconds, cpu_seconds = network_seconds(arch, dataset, images, batch_size, device)
            rate = images / seconds
            projected = TRAIN_IMAGES[dataset] / rate
            cpu_projected = TRAIN_IMAGES[dataset] / images * cpu_seconds
            print(f"{arch:12} {dataset:8} {seconds:8.2f} {cpu_seconds:8.2f} {rate:12.1f}  "
                  f"{projected:8.0f} s, {cpu_projected:8.0f} s  ({TRAIN_IMAGES[dataset]:,} img)", flush=True)


def serialised_mb(obj) -> float:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.tell() / 1e6


def project_file_sizes(arch: str) -> tuple[float, float]:
    """MB of the largest per-epoch checkpoint and of the results file of a 2-cycle run."""
    generator = torch.Generator().manual_seed(0)
    dataset = Split(torch.randn(40, 3, 32, 32, generator=generator), torch.randint(0, 10, (40,), generator=generator))
    config = RunConfig(arch_type=arch, dataset="cifar10", prune_percent=50, prune_iterations=2,
                       end_iter=1, batch_size=16)
    run = LotteryRun(config, make_splits(dataset, seed=0), torch.device("cpu"))
    checkpoints = []
    run.run(checkpoint=lambda r: checkpoints.append(serialised_mb(r.state_dict())), show_progress=False)
    return max(checkpoints), serialised_mb(run.results({}))


def report_sizes(names: list[str]) -> None:
    print("3x32x32 inputs, 10 classes; MB = 10^6 bytes, float32")
    print(f"{'network':12} {'parameters':>12} {'state dict MB':>14} {'model+Adam MB':>14} "
          f"{'run checkpoint MB':>18} {'results (2 cycles) MB':>22}")
    for arch in names:
        torch.manual_seed(0)
        model = build_model(arch, 3, 32, 10)
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.randn(2, 3, 32, 32)).sum().backward()
        optimizer.step()  # creates the two moments
        with_adam = serialised_mb({"model": model.state_dict(), "optimizer": optimizer.state_dict()})
        checkpoint, results = project_file_sizes(arch)
        print(f"{arch:12} {sum(p.numel() for p in model.parameters()):12,} "
              f"{serialised_mb(model.state_dict()):14.1f} {with_adam:14.1f} {checkpoint:18.1f} {results:22.1f}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs of each loop per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating floor/project rounds")
    parser.add_argument("--batch_size", type=int, default=None,
                        help="default: 512 for the fc1 loop, 64 for --networks")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--networks", nargs="*", default=None, metavar="NAME",
                        help="time every network (or those named) instead of the fc1 loop")
    parser.add_argument("--images", type=int, default=512, help="images per timed epoch of --networks")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto, for --networks")
    parser.add_argument("--sizes", action="store_true", help="print parameter counts and file sizes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging()
    import logging
    logging.getLogger("lottery").setLevel(logging.WARNING)
    if args.sizes or args.networks is not None:
        names = args.networks or architecture_names()
        if args.sizes:
            report_sizes(names)
        if args.networks is not None:
            report_networks(names, args.images, args.batch_size or 64, resolve_device(args.device))
        return
    args.batch_size = args.batch_size or 512

    dataset = synthetic_mnist()
    train = make_splits(dataset, 0).train
    # This machine's speed drifts by 20-30% over tens of seconds, so floor and project are
    # measured in alternating blocks and compared block by block.
    floors, projects, ratios = [], [], []
    for _ in range(args.rounds):
        floor = statistics.median(floor_seconds_per_epoch(train, args.epochs, args.batch_size))
        project = statistics.median(project_seconds_per_epoch(dataset, args.epochs, args.batch_size))
        floors.append(floor)
        projects.append(project)
        ratios.append(project / floor)
    print(f"fc1, batch {args.batch_size}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"{args.rounds} rounds of {args.epochs} epochs")
    print("round  floor s/epoch  project s/epoch  project/floor")
    for i, (f, p, r) in enumerate(zip(floors, projects, ratios), start=1):
        print(f"{i:5d}  {f:13.3f}  {p:15.3f}  {r:13.2f}")
    print(f"floor (bare forward/backward/Adam over 49,000 images):      {statistics.median(floors):.3f} s/epoch")
    print(f"project (49,000 masked training + 21,000 evaluation + ckpt): {statistics.median(projects):.3f} s/epoch")
    print(f"project / floor, median of rounds: {statistics.median(ratios):.2f}x   "
          "(goal: under 1.3x; the original took 3.6 s/epoch here)")


if __name__ == "__main__":
    main()
