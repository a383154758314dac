"""Cross-cutting helpers: user-facing errors, atomic file writes, locks, logging, argument types.

Torch-free (only the standard library at import), so that every script's ``--help`` and
argument errors stay fast: torch file I/O lives in data.store, devices and seeding in
archs.runtime.

Library code raises :class:`UserError` for anything the user can fix; the top-level
scripts turn it into one line on stderr and a non-zero exit (see :func:`run_cli`).
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import secrets
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Sequence


LOGGER_NAME = "lottery"


class UserError(Exception):
    """A problem the user can fix (bad flag, missing file...). Its message is shown as is."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; finished work is kept."""


# --------------------------------------------------------------------------- files
def atomic_write(path: Path | str, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then move the temporary file over ``path`` in one step.

    A reader never sees a half-written file, and an interrupted write (even a power cut:
    the data is flushed to disk before the rename) leaves the previous ``path`` intact.
    ``write`` creates the temporary file itself, so it gets the user's usual permissions.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path | str) -> None:
    """Make a rename in ``folder`` durable: until the directory itself is synced, a power cut
    can undo the rename even though the file's data reached the disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open directories; nothing more can be done there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def replace_durably(source: Path | str, target: Path | str) -> None:
    """``os.replace`` followed by a sync of the target's directory."""
    os.replace(source, target)
    fsync_dir(Path(target).parent)


def remove_stale_temporaries(path: Path | str) -> None:
    """Delete temporary files :func:`atomic_write` left beside ``path`` when a process was killed."""
    path = Path(path)
    for leftover in path.parent.glob(f".{path.name}.*.tmp"):
        leftover.unlink(missing_ok=True)


def atomic_write_text(path: Path | str, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text))


# --------------------------------------------------------------------------- locks
class LockHeld(UserError):
    """Another live process holds the lock."""


class ProcessLock:
    """An exclusive claim on a resource by one process, as a file holding its PID and host.

    The claim is an ``flock`` on the file, which the kernel drops when the holder dies, so a
    lock left by a dead process of this host is simply taken over and two processes can never
    both hold it (creating the file and writing the holder are not one step, so the file's
    content alone cannot decide). A lock whose file names another host is refused even when
    no flock is seen (it may not reach across hosts): its holder cannot be checked from here.
    Refusals raise :class:`LockHeld`, naming the holder.
    """

    def __init__(self, path: Path | str, what: str):
        self.path = Path(path)
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> "ProcessLock":
        import fcntl
        import json
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(10):
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise self._refusal(self._read_holder(wait=True)) from None
            try:
                current = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                current = False
            if not current:   # the holder released (unlinking the file) after we opened it
                os.close(fd)
                continue
            holder = self._read_holder()
            if holder is not None and holder.get("host") != me["host"]:
                os.close(fd)
                raise self._refusal(holder)
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(me).encode())
            os.fsync(fd)
            self._fd = fd
            return self
        raise LockHeld(f"could not take the lock {self.path} for {self.what}; try again")

    def _refusal(self, holder: dict | None) -> "LockHeld":
        holder = holder or {}
        return LockHeld(f"{self.what} is being written by process {holder.get('pid', '?')} on "
                        f"{holder.get('host', '?')} (lock file {self.path}); wait for it to "
                        "finish, or delete the lock file if that process is gone")

    def _read_holder(self, wait: bool = False) -> dict | None:
        """The holder named in the file; ``wait``: give a holder that has just taken the lock a
        moment to write its name."""
        import json
        import time

        for attempt in range(20 if wait else 1):
            try:
                holder = json.loads(self.path.read_text())
                if isinstance(holder, dict):
                    return holder
            except (OSError, ValueError):
                pass
            if wait:
                time.sleep(0.05)
        return None

    def release(self) -> None:
        if self._fd is not None:
            # Unlink while still holding, so that no process can take the lock on a file about
            # to disappear (a waiter that opened it sees it is gone and retries).
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "ProcessLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class FileLock:
    """A blocking advisory lock (``flock``) for short read-modify-write updates of a shared file.

    The lock is taken on ``PATH.lock`` beside the file, so the file itself can still be
    replaced atomically while the lock is held.
    """

    def __init__(self, path: Path | str):
        self.path = Path(path).with_name(Path(path).name + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> "FileLock":
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        import fcntl

        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (library messages can run to many lines)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def ensure_writable_dir(path: Path | str, what: str = "directory") -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"cannot write to the {what} {path} ({exc.strerror or exc}); "
                        "choose another folder or fix its permissions") from exc
    return path


def cpu_model() -> str:
    """The processor's model name, as benchmarks print it beside their figures."""
    import platform

    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def library_versions() -> dict[str, str]:
    import importlib.metadata as metadata

    versions = {"python": sys.version.split()[0]}
    for package in ("torch", "torchvision", "numpy", "codecarbon"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


# --------------------------------------------------------------------------- output
def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)


class _TqdmHandler(logging.Handler):
    """Writes through tqdm so log lines do not tear progress bars apart."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except BrokenPipeError:  # the reader went away (`| head`): let run_cli end quietly
            raise
        except Exception:  # pragma: no cover - logging must never crash a run
            self.handleError(record)


def setup_logging() -> logging.Logger:
    logger = get_logger()
    logger.handlers.clear()
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def format_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table with right-aligned columns."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line
class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not already say it and X means something."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, (), [], argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with 2."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


class BadValue(argparse.ArgumentTypeError, ValueError):
    """Text that is not a valid value: argparse prints the message; settings catch it as ValueError."""


def parse_whole(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a whole number") from None


def parse_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadValue(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise BadValue(f"{text!r} is not a finite number")
    return value


def percent(text: str) -> float:
    """argparse type for a pruning percentage in [0, 100)."""
    value = parse_number(text)
    if not 0 <= value < 100:
        raise BadValue(f"{text} is outside [0, 100): give the percent of surviving weights to prune "
                       "each cycle, e.g. 90")
    return value


def positive_int(text: str) -> int:
    value = parse_whole(text)
    if value < 1:
        raise BadValue(f"{text} must be at least 1")
    return value


def positive_float(text: str) -> float:
    value = parse_number(text)
    if not value > 0:
        raise BadValue(f"{text} must be greater than 0")
    return value


def non_negative_float(text: str) -> float:
    value = parse_number(text)
    if not value >= 0:
        raise BadValue(f"{text} must be 0 or more")
    return value


def run_cli(main: Callable[[], int | None], interrupted_hint: str = "files already written are complete") -> None:
    """Run a script's ``main`` turning user errors and Ctrl-C into one line and an exit code."""
    try:
        code = main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_hint}", file=sys.stderr)
        code = 130
    except BrokenPipeError:
        # Output piped into a program that stopped reading; silence the flush at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141
    sys.exit(code or 0)
