"""--threads N holds: importing a kernel module or replaying sparse kernels leaves torch's count.

Each check runs in a fresh interpreter: torch's thread count is per process, and this test
process may already have loaded numba's thread pool (whose start used to reset it).
"""
import csv
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="needs two cores to tell 1 thread from all")


def python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_one_thread_still_one_after_importing_every_kernel_module_and_using_numbas_pool():
    out = python("import importlib, pkgutil, torch, archs\n"
                 "torch.set_num_threads(1)\n"
                 "for m in pkgutil.walk_packages(archs.__path__, 'archs.'):\n"
                 "    importlib.import_module(m.name)\n"
                 "from archs.sparse import numba_kernels as numba_csr\n"
                 "import numpy as np\n"
                 "x = np.ones((256, 256), np.float32); out = np.empty((256, 256), np.float32)\n"
                 "numba_csr.gather_transposed(x, np.arange(256), out, 2)   # numba's pool at work\n"
                 "assert (out == 1).all()\n"
                 "print(torch.get_num_threads())")
    assert out.splitlines()[-1] == "1"


def test_one_thread_recorded_for_every_row_after_a_sparse_replay(tmp_path, mnist_dir):
    from archs.experiment import TrainingJob, run_job
    from data.paths import inference_runs_csv_path
    from data.runs import RunConfig

    config = RunConfig(prune_percent=90, prune_iterations=2, end_iter=1, batch_size=64)
    run_job(TrainingJob(config=config, seeds=[0], data_dir=mnist_dir, save_dir=tmp_path,
                        device="cpu", show_progress=False))
    # both: dense then sparse for the one run; a second call replays dense again, after numba
    # has been loaded in that process.
    out = python("import torch, post_training_inference as p\n"
                 f"args = ['--save_dir', {str(tmp_path)!r}, '--threads', '1', '--passes', '1',"
                 " '--no_progress', '--country_iso_code', 'FRA']\n"
                 "p.main(args + ['--mode', 'sparse'])\n"
                 "p.main(args + ['--mode', 'dense', '--state', 'best'])\n"
                 "print(torch.get_num_threads())")
    assert out.splitlines()[-1] == "1"
    with open(inference_runs_csv_path(tmp_path, "fc1", "mnist"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert {(row["mode"], row["state"]) for row in rows} >= {("sparse", "final"), ("dense", "best")}
    assert {row["threads"] for row in rows} == {"1"}


def test_training_pins_its_threads_and_records_them_outside_the_run_identity(tmp_path, mnist_dir):
    from data.paths import results_path
    from data.runs import RunConfig
    from data.store import load_checkpoint

    out = python("import torch, lottery_ticket\n"
                 f"assert lottery_ticket.main(['--data_dir', {str(mnist_dir)!r}, '--save_dir', {str(tmp_path)!r},"
                 " '--threads', '1', '--seeds', '0', '--end_iter', '1', '--batch_size', '256', '--train_type',"
                 " 'regular', '--device', 'cpu', '--no_progress']) == 0\n"
                 "print(torch.get_num_threads())")
    assert out.splitlines()[-1] == "1"
    path = results_path(tmp_path, RunConfig(train_type="regular", end_iter=1, batch_size=256, seed=0))
    assert load_checkpoint(path)["threads"] == 1   # the same file name as without --threads
