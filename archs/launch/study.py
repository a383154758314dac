"""Study files: several configurations (and seeds) for one command, expanded to runs."""
from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any, Sequence

from data.runs import RunConfig, parse_setting, run_key, setting_fields, setting_names
from utils import UserError

STUDY_KEYS = ("configurations", "seeds")


def read_study(path: Path | str) -> dict:
    """A study file's JSON object (UserError naming the file and the problem otherwise)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read the study file {path} ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not a text file (byte {exc.start} is not UTF-8); a study file is "
                        'JSON such as {"configurations": [{"prune_percent": 90}]}') from None
    try:
        study = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: "
                        f"{exc.msg})") from None
    if not isinstance(study, dict):
        raise UserError(f"{path} must hold a JSON object such as "
                        '{"configurations": [{"prune_percent": 90}], "co2_tracking_mode": [false, true]}')
    return study


def _setting_value(name: str, value: Any, where: str) -> Any:
    """A JSON value checked and converted as the command line would convert it."""
    if name == "seed":
        raise UserError(f"{where}: give seeds with \"seeds\": [0, 1, ...], not \"seed\"")
    if name not in setting_names():
        raise UserError(f"{where}: {name!r} is not a setting; settings: {', '.join(setting_names())}")
    default = {f.name: f.default for f in setting_fields()}[name]
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise UserError(f"{where}: {name} takes a list of values, not {json.dumps(value)}")
        return tuple(_setting_value_text(name, item, where) for item in value)
    if isinstance(value, (list, dict)) or value is None:
        raise UserError(f"{where}: {name} takes one value, not {json.dumps(value)}")
    return _setting_value_text(name, value, where)


def _setting_value_text(name: str, value: Any, where: str) -> Any:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        return parse_setting(name, text)
    except ValueError as exc:
        raise UserError(f"{where}: {name}: {exc}") from None


def expand_study(base: RunConfig, study: dict, source: str = "the study") -> list[RunConfig]:
    """The runs' settings (seed left at the base's) a study asks for.

    ``base`` holds the command line's settings. A top-level key of the study that names a setting
    overrides them: a list is an axis of a grid (every value is combined with every other
    axis), a single value applies to every run. ``configurations`` is a list of objects whose
    keys are settings; each one overrides the command line and the top-level keys, and every
    configuration is crossed with the axes. ``seeds`` (optional) replaces ``--seeds``. Runs that
    come out identical are kept once, in order.
    """
    unknown = [key for key in study if key not in STUDY_KEYS and key not in setting_names()]
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}; a study has \"configurations\", "
                        f"\"seeds\" and settings ({', '.join(setting_names())})")
    axes: list[tuple[str, list[Any]]] = []
    fixed: dict[str, Any] = {}
    for name, value in study.items():
        if name in STUDY_KEYS:
            continue
        default = {f.name: f.default for f in setting_fields()}.get(name)
        is_axis = isinstance(value, list) and not (isinstance(default, tuple)
                                                   and not all(isinstance(v, list) for v in value))
        if is_axis:
            if not value:
                raise UserError(f"{source}: {name} lists no value")
            axes.append((name, [_setting_value(name, v, f"{source}: {name}") for v in value]))
        else:
            fixed[name] = _setting_value(name, value, f"{source}: {name}")
    entries = study.get("configurations", [{}])
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        raise UserError(f"{source}: \"configurations\" must be a non-empty list of objects such as "
                        '{"prune_percent": 90, "prune_iterations": 2}')
    configs: dict[str, RunConfig] = {}
    for index, entry in enumerate(entries):
        where = f"{source}: configurations[{index}]"
        own = {name: _setting_value(name, value, where) for name, value in entry.items()}
        for combination in itertools.product(*(values for _, values in axes)):
            values = {**fixed, **dict(zip((name for name, _ in axes), combination)), **own}
            config = dataclasses.replace(base, **values)
            try:
                config.validate()
            except UserError as exc:
                raise UserError(f"{where}: {exc}") from None
            configs.setdefault(run_key(config), config)
    return list(configs.values())


def study_seeds(study: dict, default: Sequence[int], source: str = "the study") -> list[int]:
    """The study's ``seeds``, or ``default`` (the command line's) when it has none."""
    seeds = study.get("seeds", list(default))
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds)):
        raise UserError(f"{source}: \"seeds\" must be a non-empty list of whole numbers such as [0, 1, 2]")
    values = [_setting_value_text("seed", s, f"{source}: seeds") for s in seeds]
    if len(set(values)) < len(values):
        raise UserError(f"{source}: \"seeds\" lists a seed more than once")
    return values
