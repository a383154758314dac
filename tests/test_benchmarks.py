"""The benchmark scripts are not collected (they print figures and assert nothing), so nothing
else would notice when a module they import moves: each one's imports and flags must load."""
from __future__ import annotations

import importlib
import pkgutil
import sys

import pytest

import tests.benchmarks as benchmarks

SCRIPTS = sorted(info.name for info in pkgutil.iter_modules(benchmarks.__path__))


def test_every_benchmark_is_named_so_pytest_leaves_it_alone():
    assert SCRIPTS and all(name.startswith("benchmark_") for name in SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_benchmark_imports_and_prints_its_help(name, monkeypatch, capsys):
    module = importlib.import_module(f"{benchmarks.__name__}.{name}")
    monkeypatch.setattr(sys, "argv", [f"python3 -m tests.benchmarks.{name}", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 0
    assert "usage: python3 -m tests.benchmarks." + name in capsys.readouterr().out
