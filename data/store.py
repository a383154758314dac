"""The toolkit's own files: atomic torch saves and safe loads (tensors and plain containers
only, ``weights_only=True``), free-space checks, and folders a failed command made."""
from __future__ import annotations

import contextlib
import errno
import shutil
from pathlib import Path
from typing import Iterator

import torch

from utils import UserError, atomic_write, first_line

MB = 1024 ** 2


def free_bytes(folder: Path | str) -> int:
    """Free space on the disk holding ``folder`` (or its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def check_free_space(folder: Path | str, needed: int, what: str) -> None:
    """UserError (one line) when the disk holding ``folder`` has less than ``needed`` bytes free."""
    free = free_bytes(folder)
    if free < needed:
        raise UserError(f"{what} needs about {needed / MB:.1f} MB in {folder}, but only "
                        f"{free / MB:.1f} MB are free there; free some space or choose another folder")


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or \
        "file write failed" in text or "No space left" in text


def atomic_torch_save(obj, path: Path | str) -> None:
    """torch.save through :func:`utils.atomic_write`: the previous file stays intact on failure;
    a full disk is one line naming the folder and the size of what did not fit."""
    try:
        atomic_write(path, lambda tmp: torch.save(obj, tmp))
    except (OSError, RuntimeError) as exc:
        if not _is_disk_full(exc):
            raise
        folder = Path(path).parent
        needed = sum(t.numel() * t.element_size() for t in _tensors(obj))
        raise UserError(f"the disk holding {folder} is full: writing {Path(path).name} needs about "
                        f"{needed / MB:.1f} MB, {free_bytes(folder) / MB:.1f} MB are free (the "
                        "previous files are intact); free some space and rerun with --resume") from exc


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def load_checkpoint(path: Path | str) -> dict:
    """Load a file written by this toolkit (tensors and plain containers only)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise UserError(f"{path} is not a readable results file ({first_line(exc)}); "
                        "delete it and rerun the command that made it") from exc
    if not isinstance(obj, dict):
        raise UserError(f"{path} does not hold a results dictionary; was it written by this toolkit?")
    return obj


@contextlib.contextmanager
def new_folders_removed_on_failure(*roots: Path | str) -> Iterator[None]:
    """On an exception, remove the folders made meanwhile at or under ``roots`` (a root's
    missing parents included) that are empty: a command that fails leaves no empty folders
    (``saves/fc1/mnist/``, a dataset's ``MNIST/raw/``) behind."""
    before, tops = set(), []
    for root in roots:
        root = Path(root).absolute()
        top = root
        while not top.parent.exists() and top.parent != top:
            top = top.parent
        tops.append(top if not top.exists() else root)
        if root.is_dir():
            before |= {p for p in root.rglob("*") if p.is_dir()} | {root}
    try:
        yield
    except BaseException:
        for top in tops:
            if not top.is_dir():
                continue
            made = [p for p in [top, *top.rglob("*")] if p.is_dir() and p not in before]
            for folder in sorted(made, key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):   # not empty: kept as it is
                    folder.rmdir()
        raise
