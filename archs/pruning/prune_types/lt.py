"""``lt``: the winning ticket, pruning's masks with the survivors rewound (Frankle & Carbin 2019)."""
from archs.pruning.prune_types.base import PruneType, register_prune_type


@register_prune_type
class WinningTicket(PruneType):
    name = "lt"
    words = "winning ticket"
