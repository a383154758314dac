"""Checkpoints of a run: the whole state as a dict of tensors (:func:`run_state`,
:func:`restore_run`), written atomically by a :class:`Checkpointer` with side files for the
parts that rarely change, so an interrupted run resumes to the same result."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from archs.train.loop import cpu_state
from archs.train.summary import CycleSummary
from data.runs import RESULTS_FORMAT_VERSION, RunConfig
from data.store import atomic_torch_save, load_checkpoint
from utils import UserError

if TYPE_CHECKING:
    from archs.train.cycles import LotteryRun


class Checkpointer:
    """Saves a run's :meth:`LotteryRun.state_dict` to ``path``, atomically.

    The state's ``parts`` (masks and best weights: a quarter of a ResNet18 checkpoint, and
    they change only at a cycle's end or a new best) go to side files beside ``path`` named
    by their tag, written only when the tag changes; ``path`` names the side files it needs.
    A side file is deleted only once no saved ``path`` refers to it, so a kill at any moment
    leaves a loadable checkpoint.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._written: dict[str, str] = {}   # part -> side file name holding its current tag

    def side_path(self, part: str, tag: str) -> Path:
        return self.path.with_name(f"{self._prefix}{part}-{tag}.pt")

    @property
    def _prefix(self) -> str:
        return f"{self.path.stem}."   # "X.checkpoint." for "X.checkpoint.pt"

    def __call__(self, run: LotteryRun) -> None:
        state = run.state_dict()
        references = {}
        for part, content in state["parts"].items():
            target = self.side_path(part, content["tag"])
            if self._written.get(part) != target.name:
                atomic_torch_save({"value": content["value"]}, target)
            references[part] = target.name
        atomic_torch_save({**state, "parts": references}, self.path)
        self._written = references
        self._remove_side_files(keep=set(references.values()))

    def exists(self) -> bool:
        return self.path.exists()

    def load(self) -> dict:
        """The state saved last, with its parts read back from their side files."""
        state = load_checkpoint(self.path)
        references = state.get("parts") or {}
        parts = {}
        for part, name in references.items():
            side = self.path.with_name(name)
            if not side.exists():
                raise UserError(f"{side} is missing (part of the checkpoint {self.path.name}); "
                                "rerun without --resume to start over")
            tag = name[len(f"{self._prefix}{part}-"):-len(".pt")]
            parts[part] = {"tag": tag, "value": load_checkpoint(side)["value"]}
        self._written = dict(references)
        return {**state, "parts": parts} if references else state

    def remove(self) -> None:
        """Delete the checkpoint and its side files (once the results are saved)."""
        self.path.unlink(missing_ok=True)
        self._remove_side_files(keep=set())
        self._written = {}

    def _remove_side_files(self, keep: set[str]) -> None:
        for candidate in self.path.parent.iterdir():
            name = candidate.name
            side_file = name.startswith(self._prefix) and name != self.path.name and name.endswith(".pt")
            # Temporaries of a write that a kill interrupted (ours are all finished by now).
            temporary = name.startswith(f".{self._prefix}") and name.endswith(".tmp")
            if (side_file and name not in keep) or temporary:
                candidate.unlink(missing_ok=True)


def run_state(run: LotteryRun) -> dict:
    """The whole state of ``run``, self-contained. ``parts`` holds what changes only at a cycle's
    end or a new best (masks, best weights), each under a tag that changes with its content, so
    that a :class:`Checkpointer` rewrites it only when it changed."""
    best = None if run.best is None else {**run.best, "state": cpu_state(run.best["state"])}
    best_tag = "none" if run.best is None else str(run.best["images_seen"])
    late = run.late_rewind_state()
    return {
        "format_version": RESULTS_FORMAT_VERSION,
        "settings": run.identity.training_settings(),
        "cycle": run.cycle, "epoch": run.epoch, "images_seen": run.images_seen,
        "elapsed": run.elapsed(), "cycle_elapsed": run.cycle_elapsed(),
        "model": cpu_state(run.model.state_dict()),
        "optimizer": run.optimizer.state_dict(),
        # The initial state is rebuilt from the seed on resume, not stored every epoch
        # (45 MB for ResNet18); its fingerprint proves the rebuild is the same.
        "initial_fingerprint": run.initial_fingerprint,
        "generator": run.generator.get_state(),
        "logs": run.logs, "emissions": run.emissions,
        "evaluation_emissions": run.evaluation_emissions,
        **run.meter.state_dict(),
        "lineage": run.lineage,
        "cycles": [asdict(c) for c in run.cycles],
        "parts": {
            "masks": {"tag": f"{run.lineage}-c{run.cycle}-h{len(run.mask_history)}",
                      "value": {"masks": cpu_state(run.masks),
                                "mask_history": [cpu_state(m) for m in run.mask_history]}},
            "best": {"tag": f"{run.lineage}-{best_tag}", "value": best},
            # Late rewinding: captured once in cycle 0, so written once.
            "rewind": {"tag": f"{run.lineage}-{'late' if late else 'init'}", "value": late},
        },
        "early_bird": None if run.early_bird is None else {
            "detector": run.early_bird.state_dict(), "epoch": run.early_bird_epoch},
        **({"extra": run.extra_state()} if run.extra_state() else {}),
    }


def restore_run(run: LotteryRun, state: dict) -> None:
    """Put ``run`` back in the state :func:`run_state` saved (after checking it is this run's)."""
    # Read through RunConfig, so a checkpoint made before a setting existed compares at its default.
    saved = state.get("settings")
    if not isinstance(saved, dict) or RunConfig.from_dict(saved) != run.identity:
        raise UserError("the checkpoint was made with other settings "
                        f"({state.get('settings')}); rerun without --resume to start over")
    if "parts" not in state or "energy" not in state:
        raise UserError("the checkpoint was written by an older version of this toolkit; "
                        "rerun without --resume to start over")
    run.cycle, run.epoch = state["cycle"], state["epoch"]
    run.images_seen = state["images_seen"]
    run.elapsed_before, run.cycle_elapsed_before = state["elapsed"], state["cycle_elapsed"]
    if state["initial_fingerprint"] != run.initial_fingerprint:
        raise UserError("this machine does not rebuild the checkpoint's initial weights from the "
                        "seed (another torch version?); rerun without --resume to start over")
    run.model.load_state_dict(state["model"])
    masks = state["parts"]["masks"]["value"]
    run.masks = {k: v.to(run.device) for k, v in masks["masks"].items()}
    run.mask_history = masks["mask_history"]
    run.optimizer = run.new_optimizer()
    run.optimizer.load_state_dict(state["optimizer"])
    run.generator.set_state(state["generator"])
    run.logs, run.emissions = state["logs"], state["emissions"]
    run.evaluation_emissions = state["evaluation_emissions"]
    run.meter.load_state_dict(state)
    run.lineage = state["lineage"]
    run.cycles = [CycleSummary(**c) for c in state["cycles"]]
    best = state["parts"]["best"]["value"]
    run.best = None if best is None else {
        **best, "state": {k: v.to(run.device) for k, v in best["state"].items()}}
    late = state["parts"].get("rewind", {}).get("value")
    if late is not None:
        run.rewind_state = {k: v.to(run.device) for k, v in late.items()}
    if run.early_bird is not None and state.get("early_bird"):
        run.early_bird.load_state_dict(state["early_bird"]["detector"])
        run.early_bird_epoch = state["early_bird"]["epoch"]
    run.load_extra_state(state.get("extra", {}))
