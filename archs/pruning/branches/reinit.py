"""``reinit``: level K's masks, survivors (and the biases of pruned layers) re-drawn from the
initial distribution with a generator derived from the seed, the branch and the level: the
random-reinitialisation control of Frankle & Carbin (2019)."""
from __future__ import annotations

from archs.pruning.branches.base import Branch, LevelStart, ParentTicket, register_branch
from archs.pruning.controls import derived_generator, reinitialise_survivors


def reinit_start(parent: ParentTicket, level: int) -> LevelStart:
    masks = dict(parent.masks[level])
    generator = derived_generator(parent.seed, "reinit", level)
    state = reinitialise_survivors(parent.initial_state, masks, generator, bias_init=parent.bias_init)
    return LevelStart(masks, state)


@register_branch
class Reinit(Branch):
    name = "reinit"
    description = "the ticket's masks, survivors re-drawn from the initial distribution"
    control, control_rank, style = "random reinit", 0, ("#b2182b", "--")

    def start(self, parent, level, args, copy):
        return reinit_start(parent, level)
