#!/usr/bin/env python3
"""Seconds per training epoch of the project's loop against the floor (not a test).

70,000 synthetic MNIST-size images are split 49,000 / 10,500 / 10,500 as the real data is;
fc1 at batch 512. "Project" is the real LotteryRun: shuffling, masked Adam steps on a pruned
network, evaluation of validation and test (21,000 images) and the per-epoch checkpoint.
"Floor" is a bare loop of the same model's forward, backward and Adam step over the 49,000
preloaded training images. Floor and project are measured in alternating rounds; prints each round
and the medians.

    python3 tests/benchmark_training.py [--rounds 5] [--epochs 3] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from archs import build_model  # noqa: E402
from archs.training import LotteryRun  # noqa: E402
from data.datasets import Split, make_splits  # noqa: E402
from data.runs import RunConfig  # noqa: E402
from utils import atomic_torch_save, setup_logging  # noqa: E402


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="measured epochs of each loop per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating floor/project rounds")
    parser.add_argument("--batch_size", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    setup_logging()
    import logging
    logging.getLogger("lottery").setLevel(logging.WARNING)

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
