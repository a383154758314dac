"""``lr_rewind`` (Renda et al. 2020) and its comparison ``finetune``: instead of rewinding the
weights, level K starts from level K-1's trained (final) weights pruned to level K's masks;
``lr_rewind`` plays the learning-rate schedule again from its start, ``finetune`` keeps
training at the schedule's final rate. With a constant learning rate the two are the same
procedure (a fresh optimiser from the pruned trained weights)."""
from __future__ import annotations

from archs.pruning.branches.base import Branch, LevelStart, register_branch
from utils import UserError


def pruned_trained_start(parent, level: int) -> LevelStart:
    if level < 1:
        raise UserError("lr_rewind and finetune start from the level before: give --branch_levels "
                        "of 1 or more")
    return LevelStart(dict(parent.masks[level]), dict(parent.final_state(level - 1)))


@register_branch
class LrRewind(Branch):
    name = "lr_rewind"
    description = "level K-1's trained weights pruned to level K, learning-rate schedule replayed"
    style = ("#1b7837", "-.")

    def start(self, parent, level, args, copy):
        return pruned_trained_start(parent, level)


@register_branch
class Finetune(Branch):
    name = "finetune"
    description = "level K-1's trained weights pruned to level K, trained on at the final learning rate"
    style = ("#8c510a", "-.")
    lr = "final"

    def start(self, parent, level, args, copy):
        return pruned_trained_start(parent, level)
