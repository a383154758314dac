"""How runs are named: configuration names (pp90x2) and run file stems.

A run made with every default setting keeps the original program's name,
``pp{P}x{N}_seed{S}_co2{True|False}_{dataset}``; any other run appends one ``_{token}{value}``
per setting that differs from its default, in declaration order (``_lr0.0012_bs64``). When
that list would be long, or a value holds characters unfit for a file name, the readable part
is cut and a digest of the full settings follows (``_h1a2b3c4d``), so names stay short and two
runs that differ in any setting never share a path. Names are for people: readers take a
run's settings from its results file (``args``), never from its name. The network is in the
folder (``{save_dir}/{arch}/{dataset}/``), not in the stem: a collection of runs from several
folders is keyed on :func:`data.runs.run_key`, never on the stem.
"""
from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path
from typing import Sequence

from data.settings import format_number

MAX_READABLE_SUFFIX = 48        # characters of "_lr0.0012_bs64..." before a digest replaces the rest
NAME_SAFE = re.compile(r"^[A-Za-z0-9.+-]*$")


def config_name(prune_percent: float, prune_iterations: int) -> str:
    return f"pp{format_number(prune_percent)}x{prune_iterations}"


CONFIG_NAME = re.compile(r"^pp(?P<prune_percent>\d+(?:\.\d+)?(?:e-?\d+)?)x(?P<prune_iterations>\d+)$")
STEM_HEAD = re.compile(
    r"^pp(?P<prune_percent>\d+(?:\.\d+)?(?:e-?\d+)?)x(?P<prune_iterations>\d+)_seed(?P<seed>\d+)"
    r"_co2(?P<co2>True|False)_(?P<dataset>[a-z0-9]+)(?P<rest>_.*)?$")


def parse_config_name(name: str) -> tuple[float, int] | None:
    """'pp68x3' -> (68.0, 3); 'pp1e-05x2' -> (1e-05, 2); None for anything else."""
    match = CONFIG_NAME.match(name.split(",")[0].strip())
    if not match:
        return None
    return float(match["prune_percent"]), int(match["prune_iterations"])


def parse_stem(stem: str) -> dict | None:
    """The fixed head of a run's file name: prune percent, cycles, seed, CO2 mode, dataset."""
    match = STEM_HEAD.match(stem)
    if not match:
        return None
    return {"prune_percent": float(match["prune_percent"]),
            "prune_iterations": int(match["prune_iterations"]), "seed": int(match["seed"]),
            "co2_tracking_mode": match["co2"] == "True", "dataset": match["dataset"]}


def settings_suffix(parts: Sequence[str], digest: str) -> str:
    """``_lr0.0012_bs64`` from the parts ``lr0.0012``, ``bs64``; cut and ended by ``_h{digest}``
    when long or when a part holds characters unfit for a file name."""
    if not parts:
        return ""
    readable = "".join(f"_{p}" for p in parts)
    if len(readable) <= MAX_READABLE_SUFFIX and all(NAME_SAFE.match(p) for p in parts):
        return readable
    kept = ""
    for part in parts:
        if not NAME_SAFE.match(part) or len(kept) + len(part) + 1 > MAX_READABLE_SUFFIX - 10:
            break
        kept += f"_{part}"
    return f"{kept}_h{digest}"


# --------------------------------------------------------------------------- networks
MODELS_DIR = Path(__file__).resolve().parent.parent / "archs" / "models"


def declared_networks() -> dict[str, str]:
    """Every network name and alias declared by ``@register_model("name", aliases=(...))`` in
    ``archs/models/*.py``, mapped to its canonical name, read from the files' text without
    importing them (so without torch): what parsers and readers check names against."""
    names: dict[str, str] = {}
    for path in sorted(MODELS_DIR.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "register_model"
                    and node.args and isinstance(node.args[0], ast.Constant)):
                continue
            name = node.args[0].value
            names[name] = name
            for keyword in node.keywords:
                if keyword.arg == "aliases" and isinstance(keyword.value, (ast.Tuple, ast.List)):
                    names.update({alias.value: name for alias in keyword.value.elts
                                  if isinstance(alias, ast.Constant)})
    return names


def network_choices() -> list[str]:
    """The declared networks, sorted, then their aliases, sorted (as --arch_type offers them)."""
    declared = declared_networks()
    return sorted(n for n, c in declared.items() if n == c) + sorted(n for n, c in declared.items() if n != c)


def canonical_network(name: str) -> str:
    """The canonical name ``name`` stands for (an alias such as lenet300_100 -> fc1); a name not
    declared under archs/models is returned as it is (a network registered elsewhere)."""
    return declared_networks().get(name, name)


def network_argument(text: str) -> str:
    """argparse type of ``--arch_type`` for the scripts: any declared name or alias, given back
    canonical, so that every script finds runs trained under an alias."""
    declared = declared_networks()
    if text not in declared:
        canonical = sorted(n for n, c in declared.items() if n == c)
        aliases = ", ".join(f"{a} = {c}" for a, c in sorted(declared.items()) if a != c)
        raise argparse.ArgumentTypeError(
            f"unknown network {text!r}; choose one of {', '.join(canonical)}"
            + (f" (aliases: {aliases})" if aliases else ""))
    return declared[text]


# --------------------------------------------------------------------------- datasets
DATASETS_DIR = Path(__file__).resolve().parent / "datasets"
# The calls that declare a dataset name as their first argument (a string), or as name="..."
DATASET_DECLARERS = ("register_dataset", "add_official_dataset")


def declared_datasets() -> list[str]:
    """Every dataset name declared in ``data/datasets/*.py`` (``@register_dataset("name", ...)``,
    ``DatasetSpec(name="name", ...)``, ``add_official_dataset("name", ...)``), in the order they
    register (files sorted, then as written), read from the files' text without importing them (so
    without torch): what a fresh command line checks ``--dataset`` against."""
    names: list[str] = []
    for path in sorted(DATASETS_DIR.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        calls = sorted((n for n in ast.walk(tree) if isinstance(n, ast.Call)),
                       key=lambda n: (n.lineno, n.col_offset))   # as written
        for node in calls:
            called = getattr(node.func, "id", None)
            if called in DATASET_DECLARERS and node.args and isinstance(node.args[0], ast.Constant):
                names.append(node.args[0].value)
            elif called == "DatasetSpec":
                names += [k.value.value for k in node.keywords
                          if k.arg == "name" and isinstance(k.value, ast.Constant)]
    return names


# --------------------------------------------------------------------------- other registries
ARCHS_DIR = Path(__file__).resolve().parent.parent / "archs"
# setting -> (folder under archs/, the decorator that registers an entry there). A decorator
# called with the name (``@register_optimizer("adam")``) declares that name; a bare one on a
# class (``@register_prune_type``) declares the class's ``name = "..."``.
REGISTRY_DECLARATIONS = {
    "optimizer": ("optim", "register_optimizer"),
    "lr_schedule": ("optim", "register_schedule"),
    "prune_criterion": ("pruning/criteria", "register_criterion"),
    "prune_type": ("pruning/prune_types", "register_prune_type"),
    "branch": ("pruning/branches", "register_branch"),
}


def _declared_in(folder: Path, decorator: str) -> list[str]:
    names: list[str] = []
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for node in tree.body:
            for mark in getattr(node, "decorator_list", ()):
                if (isinstance(mark, ast.Call) and getattr(mark.func, "id", None) == decorator
                        and mark.args and isinstance(mark.args[0], ast.Constant)):
                    names.append(mark.args[0].value)
                elif isinstance(node, ast.ClassDef) and getattr(mark, "id", None) == decorator:
                    names += [statement.value.value for statement in node.body
                              if isinstance(statement, ast.Assign) and isinstance(statement.value, ast.Constant)
                              and any(getattr(t, "id", None) == "name" for t in statement.targets)]
    return names


def declared_registry_names() -> dict[str, list[str]]:
    """The names each registry-backed setting accepts (and ``branch``: the branches), read from
    the declaring files' text under archs/ without importing them (so without torch), in the
    order the folders register them: what a fresh command line's ``--help`` offers. Entries
    registered from code (tests, notebooks) are checked once torch has loaded them."""
    return {setting: _declared_in(ARCHS_DIR / folder, decorator)
            for setting, (folder, decorator) in REGISTRY_DECLARATIONS.items()}


def branch_file_name(config) -> str:
    """A branch's file name: NAME, then its settings and levels when given
    (``retrain_lr0.01_optimizersgd``, ``reinit_lv3-5``); "" for a run that is no branch."""
    parts = [config.branch] if config.branch else []
    parts += [item.replace("=", "") for item in config.branch_args.split(",") if item]
    if config.branch_levels:
        parts.append("lv" + "-".join(map(str, config.branch_levels)))
    return "_".join(parts)


def branch_suffix(config) -> str:
    """What a branch adds to its run's stem and configuration id (``_br-reinit``)."""
    name = branch_file_name(config)
    return f"_br-{name}" if name else ""
