"""Where a run starts: a pretrained state and/or a transferred ticket instead of the seed's draw."""
from __future__ import annotations

from pathlib import Path

from torch import nn

from archs.pruning import Masks, pretrained_state, rewind, source_ticket, transfer
from data.runs import RunConfig
from data.sources import find_referenced_file, parse_reference
from data.store import load_checkpoint
from utils import UserError


def starting_point(config: RunConfig, model: nn.Module, source_root: Path | str) -> Masks | None:
    """Load into ``model`` the pretrained state (``init_from``) and then the transferred ticket
    (``ticket_source``) the run starts from; returns the ticket's masks (None: dense start).
    The files are found under ``source_root`` (the save folder) by name and content."""
    if config.init_from:
        path = find_referenced_file(config.init_from, source_root, "pretrained state")
        model.load_state_dict(pretrained_state(load_checkpoint(path), model))
    if not config.ticket_source:
        return None
    path = find_referenced_file(config.ticket_source, source_root, "ticket source")
    results = load_checkpoint(path)
    source_arch = results.get("args", {}).get("arch_type")
    if source_arch != config.arch_type:
        raise UserError(f"the ticket source {path.name} is a {source_arch} run; this run trains "
                        f"{config.arch_type}: a ticket transfers between datasets, not networks")
    masks, start = source_ticket(results, parse_reference(config.ticket_source)[2])
    masks, state = transfer(masks, start, model)
    rewind(model, state, masks)
    return masks
