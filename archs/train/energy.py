"""Energy phases of a run (CO2 tracking mode): training epochs (and pruning), evaluation and
checkpoint writing are each measured as their own CodeCarbon task, so no training figure ever
contains evaluation or file writing. :class:`EnergyPhases` keeps the sum of each phase's tasks,
so a resumed run continues from exactly what was measured up to its checkpoint."""
from __future__ import annotations

import contextlib
import time

from data.energy.emissions import PHASES, accumulate, provenance_mismatch, zero_record
from utils import UserError


class EnergyPhases:
    """Sum of every measured task of each phase, across sessions; tasks CodeCarbon could not
    measure are counted apart, never added as NaN. ``recorder`` is the session's per-task
    recorder (None when not tracking)."""

    def __init__(self):
        self.energy: dict[str, dict[str, float]] = {phase: zero_record() for phase in PHASES}
        self.unmeasured: dict[str, dict[str, float]] = {phase: {"tasks": 0, "seconds": 0.0}
                                                        for phase in PHASES}
        self.provenance: dict | None = None
        self.recorder = None

    def adopt_provenance(self, provenance: dict, device: str) -> None:
        current = {**provenance, "device": device}
        if self.provenance is not None:
            difference = provenance_mismatch(self.provenance, current)
            if difference:
                raise UserError(f"cannot resume: this session would measure energy differently from "
                                f"the checkpoint ({difference}); resume on the same machine with the "
                                f"same CodeCarbon settings, or rerun without --resume to start over")
        self.provenance = current

    @contextlib.contextmanager
    def measured(self, phase: str):
        """Measure the enclosed work as one CodeCarbon task of ``phase`` (when tracking).

        Work interrupted by an exception is redone after a resume, so its energy is dropped.
        """
        recorder = self.recorder
        if recorder is None:
            yield
            return
        start = time.perf_counter()
        recorder.start_task(phase)
        completed = False
        try:
            yield
            completed = True
        finally:
            record = recorder.stop_task()
            if completed:
                if record is None:
                    self.unmeasured[phase]["tasks"] += 1
                    self.unmeasured[phase]["seconds"] += time.perf_counter() - start
                else:
                    self.energy[phase] = accumulate(self.energy[phase], record)

    def csv_row(self, key: int, cycle: int, epoch: int) -> dict:
        """One row of the run's CSV: the cumulative training record, then the other phases' totals."""
        row = {"images_seen": key, "cycle": cycle, "epoch": epoch, **self.energy["training"]}
        for phase in PHASES[1:]:
            for name in ("duration", "energy_consumed", "emissions"):
                row[f"{phase}_{name}"] = self.energy[phase][name]
        row["unmeasured_tasks"] = sum(int(u["tasks"]) for u in self.unmeasured.values())
        return row

    def state_dict(self) -> dict:
        return {"energy": self.energy, "unmeasured": self.unmeasured, "energy_provenance": self.provenance}

    def load_state_dict(self, state: dict) -> None:
        """What was measured up to the checkpoint, and how: a resumed CO2 run continues these
        totals, and refuses to start if this session would measure differently."""
        self.energy, self.unmeasured = state["energy"], state["unmeasured"]
        self.provenance = state["energy_provenance"]
