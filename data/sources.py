"""Files a run starts from, named by their content: a source run's ticket, a pretrained state.

A run that trains a transferred ticket (``--ticket_source``) or starts from a pretrained state
(``--init_from``) depends on a file. Its identity records that file as a *reference*,
``{file stem}@{digest}`` (plus ``:c{K}``, the source cycle, for a ticket), never as a path:
moving or renaming the save folder keeps every identity, while retraining the source (other
bytes, another digest) makes a new identity. The file itself is found again by its stem under
the run's ``--save_dir`` and checked against the digest (:func:`find_referenced_file`).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

from utils import UserError

DIGEST_LENGTH = 12
REFERENCE = re.compile(rf"^(?P<stem>[A-Za-z0-9._+-]+)@(?P<digest>[0-9a-f]{{{DIGEST_LENGTH}}})"
                       r"(?::c(?P<cycle>\d+))?$")
STATE_SUFFIXES = (".pt", ".pth")


def file_digest(path: Path | str) -> str:
    """The first hex digits of the SHA-256 of the file's bytes."""
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()[:DIGEST_LENGTH]


def file_reference(path: Path | str, cycle: int | None = None) -> str:
    """``stem@digest`` (``stem@digest:cK`` with a cycle) of an existing file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path} is not a file")
    if not re.match(r"^[A-Za-z0-9._+-]+$", path.stem):
        raise ValueError(f"{path.name}: rename the file with letters, digits and . _ + - only")
    reference = f"{path.stem}@{file_digest(path)}"
    return reference if cycle is None else f"{reference}:c{cycle}"


def parse_reference(reference: str) -> tuple[str, str, int | None]:
    """(stem, digest, cycle or None) of a reference; ValueError if it is not one."""
    match = REFERENCE.match(reference)
    if not match:
        raise ValueError(f"{reference!r} is not a file reference (STEM@DIGEST)")
    return match["stem"], match["digest"], None if match["cycle"] is None else int(match["cycle"])


def reference_stem(reference: str) -> str:
    return reference.split("@", 1)[0]


def find_referenced_file(reference: str, root: Path | str, what: str = "file") -> Path:
    """The file under ``root`` (any depth) named by ``reference`` whose content has its digest.

    UserError when none is there (or only other versions of it, whose digest differs)."""
    stem, digest, _ = parse_reference(reference)
    root = Path(root)
    candidates = sorted(p for suffix in STATE_SUFFIXES for p in root.rglob(f"{stem}{suffix}") if p.is_file())
    for candidate in candidates:
        if file_digest(candidate) == digest:
            return candidate
    if candidates:
        raise UserError(f"the {what} {stem} found under {root} ({candidates[0]}) has other content "
                        f"than the one this run was made from (digest {digest}); it was remade since: "
                        "give its path again to start a new run from it")
    raise UserError(f"no {what} {stem} (.pt or .pth) under {root}: the run's {what} is looked up "
                    f"under --save_dir by name and content; copy it there")
