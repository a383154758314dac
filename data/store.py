"""Torch file I/O of the toolkit's own files: atomic saves and safe loads (tensors and plain
containers only, ``weights_only=True``)."""
from __future__ import annotations

from pathlib import Path

import torch

from utils import UserError, atomic_write, first_line


def atomic_torch_save(obj, path: Path | str) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
