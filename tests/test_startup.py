"""Start-up: every script's --help and argument errors import no torch, torchvision, numba or
matplotlib (so they answer in well under a second), and the torch-free declarations the parsers
use agree with the registries they stand for."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPTS = ("lottery_ticket.py", "post_training_inference.py", "lottery_ticket_performance.py",
           "lottery_ticket_emissions.py", "post_training_inference_emissions.py", "inference_emission.py")
HEAVY = ("torch", "torchvision", "numba", "matplotlib", "numpy")

PROBE = """
import io, json, runpy, sys, contextlib
sys.path.insert(0, {root!r})
sys.argv = [{script!r}, *{args!r}]
out, err = io.StringIO(), io.StringIO()
code = 0
try:
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        runpy.run_path({script!r}, run_name="__main__")
except SystemExit as exc:
    code = exc.code
print(json.dumps({{"code": code, "out": out.getvalue(), "err": err.getvalue(),
                  "heavy": sorted(m for m in {heavy!r} if m in sys.modules)}}))
"""


def probe(script: str, *args: str) -> dict:
    code = PROBE.format(root=str(ROOT), script=str(ROOT / script), args=list(args), heavy=HEAVY)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_imports_no_heavy_library(script):
    result = probe(script, "--help")
    assert result["code"] == 0 and "usage:" in result["out"] and "--arch_type" in result["out"]
    assert result["heavy"] == []


@pytest.mark.parametrize("script,args,words", [
    ("lottery_ticket.py", ["--prune_percent", "100"], "outside [0, 100)"),
    ("lottery_ticket.py", ["--arch_type", "nope"], "invalid choice: 'nope'"),
    ("post_training_inference.py", ["--passes", "0"], "must be at least 1"),
    ("lottery_ticket.py", ["--dataset", "imagenet"], "invalid choice: 'imagenet' (choose from 'digits', "),
    ("post_training_inference.py", ["--dataset", "imagenet"], "invalid choice: 'imagenet'"),
    ("lottery_ticket.py", ["--optimizer", "rmsprop"], "invalid choice: 'rmsprop' (choose from 'adam', 'sgd')"),
    ("lottery_ticket.py", ["--branch", "nope"], "invalid choice: 'nope' (choose from 'lmc', "),
    ("lottery_ticket_performance.py", ["--arch_type", "nope"], "unknown network 'nope'"),
    ("inference_emission.py", ["--where", "lr"], "is not KEY=VALUE"),
])
def test_argument_errors_are_one_line_without_heavy_imports(script, args, words):
    result = probe(script, *args)
    assert result["code"] == 2 and result["heavy"] == []
    assert len(result["err"].strip().splitlines()) == 1 and words in result["err"]


def test_declared_networks_are_the_registry():
    from archs import ALIASES, ARCHITECTURES, architecture_names
    from data.names import canonical_network, declared_networks, network_choices

    declared = declared_networks()
    assert {n for n, c in declared.items() if n == c} == set(ARCHITECTURES)
    assert {a: c for a, c in declared.items() if a != c} == ALIASES
    assert network_choices() == architecture_names(include_aliases=True)
    assert canonical_network("lenet300_100") == "fc1" and canonical_network("fc1") == "fc1"


def test_declared_datasets_are_the_registry():
    from data.datasets import DATASETS
    from data.names import declared_datasets

    assert declared_datasets() == list(DATASETS)   # the same names, in the order they register


def test_declared_registry_names_are_the_registries():
    from archs.choices import registered_choices
    from archs.pruning.branches import BRANCHES
    from data.names import declared_registry_names

    declared, registered = declared_registry_names(), registered_choices()
    assert declared.pop("branch") == list(BRANCHES)
    assert declared == {name: registered[name] for name in declared}   # same names, same order
    assert declared["prune_type"] == ["lt", "random", "reinit"] and "cosine" in declared["lr_schedule"]


def test_declared_options_are_the_ones_used():
    from archs.experiment import CYCLE_WEIGHTS
    from archs.inference import MODE_CHOICES
    from archs.sparse import KERNEL_MODES

    assert set(CYCLE_WEIGHTS) == {"both", "best", "final", "none"}
    assert MODE_CHOICES == KERNEL_MODES + ("both",)


def test_utils_imports_only_the_standard_library():
    code = ("import sys; sys.path.insert(0, %r); import utils, data.runs, data.selection, data.names, "
            "data.paths, data.settings, data.report.plot_cli, archs, archs.launch.settings; "
            "print(sorted(m for m in %r if m in sys.modules))" % (str(ROOT), HEAVY))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
