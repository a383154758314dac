#!/usr/bin/env python3
"""Does a busy neighbour change the energy of identical work? (not a test)

The same dense fc1 training (CO2-tracking mode, synthetic MNIST-size digits) and the same
dense replay, measured alone and beside N busy loops (separate processes spinning on the
CPU), each on 1 thread, through the project's real pipeline (lottery_ticket's run_job and
post_training_inference's run_inference with CodeCarbon). Prints, for each condition, the
elapsed seconds, the process's CPU-seconds, the others' CPU-seconds, the energy (kWh, RAM
included) and the ratio loaded / alone. The goal: within 20% (1.00 +- 0.20).

    python3 -m tests.benchmarks.benchmark_energy_load [--loops 2] [--epochs 3] [--images 12000] [--passes 5]
"""
from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

BUSY = "while True: pass"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def measure(folder: Path, data_dir: Path, args) -> dict[str, float]:
    import torch

    from archs.experiment import TrainingJob, run_job
    from archs.inference import InferenceJob, run_inference
    from data.energy.emissions import TrackerSettings
    from data.runs import RunConfig

    torch.set_num_threads(1)
    tracker = TrackerSettings(country_iso_code="FRA")
    config = RunConfig(train_type="regular", end_iter=args.epochs, batch_size=128, co2_tracking_mode=True)
    [path] = run_job(TrainingJob(config=config, seeds=[0], data_dir=data_dir, save_dir=folder, device="cpu",
                                 show_progress=False, tracker=tracker))
    training = torch.load(path, weights_only=False)
    final = training["emissions"][max(training["emissions"])]
    [row] = run_inference(InferenceJob(save_dir=folder, passes=args.passes, sweeps_per_pass=args.sweeps,
                                       threads=1, mode="dense", tracker=tracker, show_progress=False))
    return {"training s": final["duration"], "training cpu s": final.get("cpu_seconds", float("nan")),
            "training others cpu s": final.get("others_cpu_seconds", float("nan")),
            "training kWh": final["energy_consumed"],
            "replay s/pass": row["seconds_per_pass"], "replay kWh/pass": row["energy_kwh_per_pass"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loops", type=int, default=2, help="busy loops beside the loaded measurement")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--images", type=int, default=12000, help="training images (synthetic digits)")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--sweeps", type=int, default=20, help="test-split sweeps per replay pass")
    args = parser.parse_args()
    from tests.conftest import write_mnist
    from utils import setup_logging

    setup_logging()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = write_mnist(Path(tmp) / "data", n_train=args.images, n_test=max(args.images // 6, 100))
        for name, loops in (("alone", 0), (f"beside {args.loops} busy loops", args.loops)):
            spinners = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(loops)]
            try:
                results[name] = measure(Path(tmp) / name.split()[0], data_dir, args)
            finally:
                for spinner in spinners:
                    spinner.kill()
                    spinner.wait()
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"CPU: {cpu_model()}; load average after the run {' '.join(load)}; fc1, {args.epochs} epochs "
          f"on {args.images} images, replay {args.passes} passes x {args.sweeps} sweeps, 1 thread")
    names = list(results)
    columns = list(results[names[0]])
    print(f"{'':28s}" + "".join(f"{c:>22s}" for c in columns))
    for name in names:
        print(f"{name:28s}" + "".join(f"{results[name][c]:22.4g}" for c in columns))
    alone, loaded = results[names[0]], results[names[1]]
    print(f"{'ratio loaded / alone':28s}" + "".join(f"{loaded[c] / alone[c]:22.3f}" if alone[c] else f"{'-':>22s}"
                                                for c in columns))


if __name__ == "__main__":
    main()
