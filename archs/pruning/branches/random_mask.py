"""``random_mask``: level K's per-layer counts, positions drawn uniformly among all of each
layer's weights (a generator derived from seed, branch and level), starting from the run's
rewind state: the random-pruning control, for layer-wise and global pruning alike (the
counts are the ticket's own, whatever ranking produced them; an N:M ticket's are N:M)."""
from __future__ import annotations

import torch

from archs.pruning.branches.base import Branch, LevelStart, ParentTicket, register_branch, ticket_start
from archs.pruning.controls import derived_generator, random_masks


def random_mask_start(parent: ParentTicket, level: int) -> LevelStart:
    ticket = ticket_start(parent, level)
    dense = {name: torch.ones_like(mask, dtype=torch.bool) for name, mask in ticket.masks.items()}
    masks = random_masks(ticket.masks, dense, derived_generator(parent.seed, "random_mask", level),
                         parent.structure)
    return LevelStart(masks, ticket.state)


@register_branch
class RandomMask(Branch):
    name = "random_mask"
    description = "the ticket's per-layer counts at random positions, rewound"
    control, control_rank, style = "random mask", 1, ("#6a3d9a", ":")

    def start(self, parent, level, args, copy):
        return random_mask_start(parent, level)
