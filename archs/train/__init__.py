"""Training a run: the epoch loop (``loop``), the cycle state machine (``cycles``: LotteryRun),
checkpoints (``checkpoint``), energy phases (``energy``), runtime flags (``runtime``), the
start of a run (``start``), the per-cycle steps (``steps``) and what a run reports
(``summary``). Modules import each other directly; this package re-exports the main names."""
from archs.train.checkpoint import Checkpointer, restore_run, run_state
from archs.train.cycles import LotteryRun
from archs.train.energy import EnergyPhases
from archs.train.loop import (augment_batch, autocast, clone_state, cpu_state, evaluate, state_fingerprint,
                              train_epoch)
from archs.train.start import starting_point
from archs.train.summary import SUMMARY_HEADERS, CycleSummary, summary_rows
