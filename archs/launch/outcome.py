"""A job to launch, what came of it, and how the submitting process reports it."""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archs.launch.settings import LaunchSettings
from utils import UserError

LOG_TAIL_LINES = 12


@dataclass
class Planned:
    """A job to launch: what it does, and whether its energy is measured."""

    label: str
    task: Any
    measured: bool


@dataclass
class Outcome:
    planned: Planned
    job_id: str
    value: Any = None
    error: str | None = None          # None: the job succeeded
    log_tail: list[str] = field(default_factory=list)
    log_path: Path | None = None


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").rstrip("\n").splitlines()[-lines:]
    except OSError:
        return []


def _outcome(planned: Planned, job, launcher: str, state: str | None = None) -> Outcome:
    outcome = Outcome(planned, str(job.job_id))
    if not job.paths.result_pickle.exists():
        # A job that left no result was killed (no Python exception to report).
        outcome.error = ("it ended without a result (killed by a signal, or out of memory?)"
                         if launcher == "local" else
                         f"it ended without a result ({_slurm_state(state)}: cancelled, killed, out "
                         "of time or memory?)")
    else:
        try:
            outcome.value = job.result()
            return outcome
        except Exception as exc:   # submitit's FailedJobError / UncompletedJobError, with the trace
            outcome.error = _last_error_line(str(exc))
    for path in (job.paths.stderr, job.paths.stdout):
        lines = tail(path)
        if lines:
            outcome.log_tail, outcome.log_path = lines, path
            break
    return outcome


def _slurm_state(state: str | None) -> str:
    return "no longer in the queue" if state in (None, "GONE") else f"SLURM state {state}"


def _last_error_line(text: str) -> str:
    """The exception line of a traceback submitit passes on (its last 'Error: ...' line)."""
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("-")]
    errors = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Held|Interrupt)\b.*:", line)]
    return (errors[-1] if errors else (lines[0] if lines else "it failed")).strip()


def _progress(total: int, settings: LaunchSettings):
    from tqdm import tqdm

    return tqdm(total=total, unit="job", desc="jobs", dynamic_ncols=True, disable=not settings.show_progress)


def _say(text: str) -> None:
    from tqdm import tqdm

    tqdm.write(text, file=sys.stdout)


def _report(outcome: Outcome, bar) -> Outcome:
    bar.update(1)
    if outcome.error is not None:
        lines = [f"job {outcome.job_id} failed: {outcome.planned.label}: {outcome.error}"]
        if outcome.log_tail:
            lines.append(f"  last lines of {outcome.log_path}:")
            lines += [f"    {line}" for line in outcome.log_tail]
        _say("\n".join(lines))
    return outcome


def _failures(outcomes: list[Outcome], rerun_hint: str) -> None:
    failed = [o for o in outcomes if o.error is not None]
    if failed:
        raise UserError(f"{len(failed)} of {len(outcomes)} job(s) failed (see above); {rerun_hint}")
