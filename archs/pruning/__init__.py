"""Pruning: masks, the plan of a round, criteria, controls, rewinding, one round, transfer.

Everything is a pure function over ``{parameter name: tensor}`` dicts (or a model and such
dicts); the modules import one another in the order masks -> rewind -> criteria -> structure -> plan ->
controls -> prune_types -> round / transfer -> branches, and nothing here imports the training
loop or the API. Importing the package registers every criterion, prune type and branch (and so
how tables and figures name them: data.conditions).
"""
from archs.pruning.controls import State, derived_generator, random_masks, reinitialise_survivors, xavier_normal_std
from archs.pruning.criteria import (CRITERIA, criterion_scores, magnitude_scores, register_criterion,
                                    snip_scores)
from archs.pruning.masks import (PRUNABLE_LAYERS, Masks, apply_masks, count_alive, full_masks, is_denormal,
                                 is_nonzero, layer_table_rows, masks_from_state, percent_remaining,
                                 prunable_names)
from archs.pruning.prune_types import (PRUNE_TYPES, PruneType, control_ticket, cycle_start_state,
                                       register_prune_type)
from archs.pruning.plan import (LayerCollapse, PruningPlan, expected_percent_remaining, first_collapse,
                                layer_sizes, per_round_percent, planned_survivors, prune_by_magnitude,
                                prune_global, prune_layerwise, pruned_count)
from archs.pruning.structure import (Structure, is_n_of_m, n_of_m_mask, parse_structure, structure_column,
                                     unstructured_reason)
from archs.pruning.rewind import RewindPoint, parse_rewind_point, rewind
from archs.pruning.round import keep_pruned, next_ticket
from archs.pruning.transfer import fit_state, pretrained_state, source_ticket, transfer
from archs.pruning import branches  # noqa: E402,F401  (registers every branch, after what they import)
