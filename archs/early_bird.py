"""Early-bird tickets (You et al., 2020): stop the dense cycle once its pruning mask settles.

After every epoch of the dense cycle the training loop computes the mask the coming pruning
round would take from the current weights and gives it to :class:`EarlyBirdDetector`. The
detector keeps the distances between consecutive masks; once the last ``window`` distances
are all below ``threshold`` (the paper: 5 distances under 0.1), the ticket has been drawn and
the cycle may stop and prune. The detector's whole state is a dict of tensors and numbers,
saved with the run so a resumed run stops at the same epoch.
"""
from __future__ import annotations

from typing import Mapping

import torch


def mask_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Normalised Hamming distance: the fraction of all masked entries on which ``a`` and ``b``
    disagree (0: the same masks, 1: complements). The layers are pooled, so a large layer
    weighs in proportion to its size."""
    if list(a) != list(b):
        raise ValueError(f"the masks cover different layers: {list(a)} and {list(b)}")
    differing = total = 0
    for name in a:
        if a[name].shape != b[name].shape:
            raise ValueError(f"{name}: mask shapes differ, {tuple(a[name].shape)} and "
                             f"{tuple(b[name].shape)}")
        differing += int((a[name].bool() ^ b[name].to(a[name].device).bool()).sum())
        total += a[name].numel()
    return differing / total if total else 0.0


class EarlyBirdDetector:
    """Says when the masks given after successive epochs have stopped changing."""

    def __init__(self, threshold: float = 0.1, window: int = 5):
        if not 0 < threshold <= 1:
            raise ValueError(f"the early-bird threshold must be in (0, 1], got {threshold}")
        if window < 1:
            raise ValueError(f"the early-bird window must be at least 1 epoch, got {window}")
        self.threshold = threshold
        self.window = window
        self.previous: dict[str, torch.Tensor] | None = None
        self.distances: list[float] = []   # distance of each epoch's mask to the one before
        # Masks seen when the ticket was found: the epochs trained, with one update per epoch.
        self.found_at: int | None = None

    @property
    def found(self) -> bool:
        return self.found_at is not None

    def update(self, masks: Mapping[str, torch.Tensor]) -> bool:
        """Record the mask of the epoch just finished; True once the ticket is found (and after)."""
        current = {name: mask.detach().bool().cpu().clone() for name, mask in masks.items()}
        if self.previous is not None:
            self.distances.append(mask_distance(self.previous, current))
        self.previous = current
        recent = self.distances[-self.window:]
        if not self.found and len(recent) == self.window and max(recent) < self.threshold:
            self.found_at = len(self.distances) + 1
        return self.found

    def state_dict(self) -> dict:
        return {"threshold": self.threshold, "window": self.window,
                "previous": None if self.previous is None else dict(self.previous),
                "distances": list(self.distances), "found_at": self.found_at}

    def load_state_dict(self, state: Mapping) -> None:
        if (state["threshold"], state["window"]) != (self.threshold, self.window):
            raise ValueError(f"the saved early-bird detector used threshold {state['threshold']} and "
                             f"window {state['window']}, not {self.threshold} and {self.window}")
        self.previous = None if state["previous"] is None else dict(state["previous"])
        self.distances = list(state["distances"])
        self.found_at = state["found_at"]
