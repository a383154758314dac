"""``random``: an iterative run whose every pruned cycle keeps as many weights per layer as
pruning chose, drawn at random among the survivors of the cycle before (N:M where the run's
masks are), rewound."""
from archs.pruning.controls import derived_generator, random_masks
from archs.pruning.prune_types.base import PruneType, register_prune_type


@register_prune_type
class IterativeRandom(PruneType):
    name = "random"
    words = "iterative random pruning"
    style = ("#c2a5cf", ":")

    def masks(self, masks, previous_masks, *, seed, cycle, structure=None):
        return random_masks(masks, previous_masks, derived_generator(seed, "random_mask", cycle), structure)
