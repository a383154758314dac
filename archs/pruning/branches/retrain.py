"""``retrain``: level K's ticket trained again with other training settings (optimiser,
learning rate, schedule, epochs...), given as branch settings: ``--branch_args lr=0.01,
optimizer=sgd``. Without settings it replays the parent's own cycle (same start, same
batches): the check that a branch trains exactly as the run did."""
from __future__ import annotations

from data.runs import parse_setting

from archs.pruning.branches.base import Branch, register_branch, ticket_start

TRAINING_SETTINGS = ("lr", "optimizer", "momentum", "decay", "lr_schedule", "warmup", "end_iter", "batch_size")


def _parser(name: str):
    return lambda text: parse_setting(name, text)


@register_branch
class Retrain(Branch):
    name = "retrain"
    description = "the ticket trained again with other training settings"
    style = ("#01665e", "-.")
    settings = {name: _parser(name) for name in TRAINING_SETTINGS}
    includes_dense = True

    def training_overrides(self, args):
        return dict(args)

    def start(self, parent, level, args, copy):
        return ticket_start(parent, level)
