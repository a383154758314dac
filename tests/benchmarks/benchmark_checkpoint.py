#!/usr/bin/env python3
"""Seconds and megabytes of the per-epoch resume checkpoint, for each model (not a test).

For fc1 and lenet5 (MNIST shapes) and resnet18 (CIFAR-10 shapes), a LotteryRun trains one
epoch on a few synthetic images (so that Adam has its moments) in the second cycle of a
90%-pruned run, with a best state from an earlier epoch. Then, on the disk of --dir:

* "before": the previous scheme, the whole state in one fsync'd file every epoch, with the
  initial-state fingerprint recomputed each time;
* "after, steady": this version's Checkpointer when masks and best weights did not change
  since the last save (most epochs): only the main file is written;
* "after, new best": the same when the best weights changed (their side file is written too).

Each figure is the median of --repeats writes, with the smallest and largest. Also printed:
the cost of one CodeCarbon task (start_task + stop_task), paid once per epoch for training,
once per evaluation and once per checkpoint in CO2 tracking mode.

    python3 -m tests.benchmarks.benchmark_checkpoint [--repeats 7] [--dir .]
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


import torch

from archs.train import (Checkpointer, LotteryRun, clone_state, state_fingerprint,
                            train_epoch)
from data.datasets import DataSplits, Split
from data.runs import RunConfig
from data.store import atomic_torch_save
from utils import cpu_model

MODELS = {"fc1": ("mnist", 1, 28), "lenet5": ("mnist", 1, 28), "resnet18": ("cifar10", 3, 32)}


def synthetic_splits(channels: int, size: int, n: int = 64) -> DataSplits:
    generator = torch.Generator().manual_seed(0)

    def split():
        return Split(torch.randn(n, channels, size, size, generator=generator),
                     torch.randint(0, 10, (n,), generator=generator))

    return DataSplits(split(), split(), split())


def prepared_run(arch: str) -> LotteryRun:
    dataset, channels, size = MODELS[arch]
    config = RunConfig(arch_type=arch, dataset=dataset, prune_percent=90, prune_iterations=3, end_iter=2,
                       batch_size=32)
    run = LotteryRun(config, synthetic_splits(channels, size), torch.device("cpu"))
    # Into the second cycle (one history mask, pruned masks), then one epoch of training.
    run.epoch = run.config.end_iter
    run._finish_cycle()
    run._start_next_cycle()
    masked = [(w, run.masks[n].to(w.dtype)) for n, w in run.model.named_parameters() if n in run.masks]
    train_epoch(run.model, run.optimizer, run.splits.train, 32, run.generator, masked)
    run.epoch, run.images_seen = 1, len(run.splits.train) * (run.config.end_iter + 1)
    run.best = {"state": clone_state(run.model), "val_accuracy": 50.0, "test_accuracy": 50.0,
                "epoch": 1, "images_seen": run.images_seen}
    return run


def timed(action, repeats: int) -> list[float]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return seconds


def summary(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):7.3f} s ({min(seconds):.3f}-{max(seconds):.3f})"


def megabytes(paths) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def measure(arch: str, folder: Path, repeats: int) -> None:
    run = prepared_run(arch)
    old_path = folder / f"{arch}.old.pt"

    def old_checkpoint():
        state = run.state_dict()
        flat = {**{key: value for key, value in state.items() if key != "parts"},
                "initial_fingerprint": state_fingerprint(run.initial_state),
                **{part: content["value"] for part, content in state["parts"].items()}}
        atomic_torch_save(flat, old_path)

    checkpointer = Checkpointer(folder / f"{arch}.checkpoint.pt")
    checkpointer(run)   # the first save writes every part
    old_checkpoint()
    # Alternated, so that a slow spell of a shared machine or disk hits both alike.
    before, steady = [], []
    for _ in range(repeats):
        before += timed(old_checkpoint, 1)
        steady += timed(lambda: checkpointer(run), 1)
    main_mb = megabytes([checkpointer.path])
    side_mb = megabytes([p for p in folder.iterdir() if p.name.startswith(f"{arch}.checkpoint.") and p != checkpointer.path])

    def new_best():
        run.best = {**run.best, "images_seen": run.best["images_seen"] + 1}
        checkpointer(run)

    changed = timed(new_best, repeats)
    print(f"{arch:9s} before {summary(before)} {megabytes([old_path]):7.1f} MB | after, steady "
          f"{summary(steady)} {main_mb:7.1f} MB | after, new best {summary(changed)} "
          f"(side files {side_mb:.1f} MB)")
    checkpointer.remove()
    old_path.unlink()


def task_overhead(repeats: int) -> list[float]:
    from data.energy.emissions import EmissionsRecorder, TrackerSettings

    with tempfile.TemporaryDirectory() as folder:
        recorder = EmissionsRecorder(Path(folder) / "t.csv", TrackerSettings(country_iso_code="FRA"), "bench",
                                     per_task=True)
        recorder.start_task("warm-up")   # the first task detects the hardware (about a second)
        recorder.stop_task()

        def one_task():
            recorder.start_task("training")
            recorder.stop_task()

        seconds = timed(one_task, repeats)
        provenance = recorder.provenance()
        recorder.stop()
    from data.energy.emissions import describe_provenance
    print(f"CodeCarbon task (start_task + stop_task): {summary(seconds)}; {describe_provenance(provenance)}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=Path("."), help="where the files are written (the disk "
                        "that matters is the one --save_dir is on)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    args = parser.parse_args()
    import logging
    logging.getLogger("lottery").setLevel(logging.WARNING)
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} thread(s); "
          f"median of {args.repeats} writes (min-max), fsync'd, in {args.dir.resolve()}")
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        for arch in args.models:
            measure(arch, Path(folder), args.repeats)
    task_overhead(args.repeats)


if __name__ == "__main__":
    main()
