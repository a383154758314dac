"""The house rules, read from the source: the top level the design card fixes, imports that go one
way (scripts -> archs -> data -> utils), modules and classes of readable size, and process-wide
torch state set in one module."""
from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOP_LEVEL = {"archs", "data", "lottery_ticket.py", "lottery_ticket_emissions.py",
             "lottery_ticket_performance.py", "post_training_inference.py",
             "post_training_inference_emissions.py", "inference_emission.py", "utils.py", "plots",
             "saves", "tests", "requirements.txt", "README.md", ".ci", ".gitignore", "pyproject.toml"}
MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
# Calls that change torch's state for the whole process (every thread, every later run).
PROCESS_WIDE = {"set_flush_denormal", "set_num_threads", "set_num_interop_threads",
                "use_deterministic_algorithms", "allow_tf32", "benchmark", "deterministic"}
# archs/sparse/numba_kernels.py puts torch's thread count back after numba's OpenMP start-up
# changed it: it restores the state it found, it sets none of its own.
RESTORES_ONLY = {"archs/sparse/numba_kernels.py"}


def tracked_files() -> list[str]:
    try:
        listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files cannot be listed")
    return [name for name in listed if (ROOT / name).exists()]


def package_modules() -> list[Path]:
    return sorted([ROOT / "utils.py", *(ROOT / "archs").rglob("*.py"), *(ROOT / "data").rglob("*.py")])


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth (imports inside functions count too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def layer(module: str) -> str | None:
    head = module.split(".")[0]
    if head in ("archs", "data", "utils"):
        return head
    return "scripts" if (ROOT / f"{head}.py").exists() and head != "utils" else None


def test_the_top_level_holds_only_what_the_design_card_names():
    top = {name.split("/")[0] for name in tracked_files()}
    assert top <= TOP_LEVEL, f"unexpected top-level entries: {sorted(top - TOP_LEVEL)}"
    assert {"archs", "data", "tests", "utils.py", "lottery_ticket.py", "README.md"} <= top


def test_imports_go_one_way():
    allowed = {"utils": set(), "data": {"utils", "data"}, "archs": {"utils", "data", "archs"}}
    wrong = []
    for path in package_modules():
        own = path.relative_to(ROOT).parts[0].removesuffix(".py")
        for module in imported_modules(path):
            target = layer(module)
            if target is not None and target not in allowed[own]:
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
            if module == "archs.api":
                wrong.append(f"{path.relative_to(ROOT)} imports the public facade archs.api")
    assert wrong == []


def test_no_module_or_class_is_too_long_to_read_in_one_sitting():
    too_long = []
    for path in package_modules():
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{path.relative_to(ROOT)}: {lines} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES:
                too_long.append(f"{path.relative_to(ROOT)}: class {node.name}, "
                                f"{node.end_lineno - node.lineno + 1} lines")
    assert too_long == []


def test_process_wide_torch_state_is_set_only_by_the_runtime_module():
    setters = []
    for path in package_modules():
        relative = path.relative_to(ROOT).as_posix()
        if relative == "archs/runtime.py" or relative in RESTORES_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            called = (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr in PROCESS_WIDE)
            assigned = (isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Attribute) and t.attr in PROCESS_WIDE for t in node.targets))
            if called or assigned:
                setters.append(f"{relative}:{node.lineno}")
    assert setters == []


def test_the_rule_checks_find_what_they_look_for(tmp_path):
    # The checks above pass on a clean tree; these show they would see a violation.
    upward = tmp_path / "upward.py"
    upward.write_text("def f():\n    from archs.models import build_model\n", encoding="utf-8")
    assert imported_modules(upward) == {"archs.models"}
    assert layer("archs.models") == "archs" and layer("lottery_ticket") == "scripts"
    assert layer("torch") is None and layer("data.runs") == "data"
