"""The ledger of job intervals: which launched jobs shared a host (and a GPU) with a run."""
from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from utils import atomic_write_text


@dataclass
class LedgerEntry:
    path: Path
    run: str
    host: str
    pid: int
    gpu: str | None
    start: float
    end: float | None = None

    def as_dict(self) -> dict:
        return {"run": self.run, "host": self.host, "pid": self.pid, "gpu": self.gpu,
                "start": self.start, "end": self.end}


def _read_entries(folder: Path) -> list[LedgerEntry]:
    entries = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text())
            entries.append(LedgerEntry(path, str(data["run"]), str(data["host"]), int(data["pid"]),
                                       data.get("gpu"), float(data["start"]), data.get("end")))
        except (OSError, ValueError, KeyError, TypeError):
            continue   # a file cut short by a crash says nothing reliable
    return entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def open_ledger_entry(folder: Path, run: str, gpu: str | None) -> LedgerEntry:
    """Record that ``run`` starts now on this host. Entries of this host's dead jobs are closed
    first: they ended before now, whenever exactly, so they overlap nothing that starts now."""
    folder.mkdir(parents=True, exist_ok=True)
    host, now = socket.gethostname(), time.time()
    for entry in _read_entries(folder):
        if entry.end is None and entry.host == host and not _alive(entry.pid):
            entry.end = now
            atomic_write_text(entry.path, json.dumps(entry.as_dict()))
    name = f"{run.replace('/', '.')}.{host}.{os.getpid()}.{time.time_ns()}.json"
    entry = LedgerEntry(folder / name, run, host, os.getpid(), gpu, _process_start(now))
    atomic_write_text(entry.path, json.dumps(entry.as_dict()))
    return entry


def _process_start(fallback: float) -> float:
    """When this process started: its imports competed for the CPU too."""
    try:
        import psutil   # CodeCarbon's own dependency

        return min(psutil.Process(os.getpid()).create_time(), fallback)
    except Exception:
        return fallback


def close_ledger_entry(entry: LedgerEntry) -> None:
    entry.end = time.time()
    atomic_write_text(entry.path, json.dumps(entry.as_dict()))


def shared_hardware(folder: Path, run: str, now: float | None = None) -> dict[str, Any]:
    """Which other launched jobs ran on this host while any attempt at ``run`` did.

    ``concurrent_runs``: those jobs (they shared the CPU socket and memory); ``shared_gpu_with``:
    those among them given the same GPU. Jobs not started by a launcher (or by another user)
    are not seen.
    """
    now = time.time() if now is None else now
    host = socket.gethostname()
    entries = [e for e in _read_entries(folder) if e.host == host]
    mine = [e for e in entries if e.run == run]
    others = [e for e in entries if e.run != run]

    def overlaps(a: LedgerEntry, b: LedgerEntry) -> bool:
        a_end = a.end if a.end is not None else now
        b_end = b.end if b.end is not None else now
        return a.start < b_end and b.start < a_end

    concurrent = [o for o in others if any(overlaps(o, m) for m in mine)]
    my_gpus = {m.gpu for m in mine if m.gpu}
    return {"concurrent_runs": sorted({o.run for o in concurrent}),
            "shared_gpu_with": sorted({o.run for o in concurrent if o.gpu and o.gpu in my_gpus}),
            "attempts": len(mine)}


@contextmanager
def _ledger(folder: Path, run: str, gpu: str | None) -> Iterator[LedgerEntry]:
    entry = open_ledger_entry(folder, run, gpu)
    try:
        yield entry
    finally:
        close_ledger_entry(entry)
