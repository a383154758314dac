"""``reinit``: an iterative run whose every pruned cycle keeps pruning's masks and re-draws the
survivors from the initial distribution (a generator derived from seed and cycle)."""
from archs.pruning.controls import derived_generator, reinitialise_survivors
from archs.pruning.prune_types.base import PruneType, register_prune_type
from utils import UserError


@register_prune_type
class IterativeReinit(PruneType):
    name = "reinit"
    words = "iterative reinit"
    style = ("#f4a582", "--")

    def start_state(self, masks, rewind_state, *, seed, cycle):
        return reinitialise_survivors(rewind_state, masks, derived_generator(seed, "reinit", cycle))

    def check(self, config) -> None:
        if config.rewind_to != "init":
            raise UserError("--prune_type reinit re-draws the survivors, so it has no rewind point; "
                            "drop --rewind_to")
