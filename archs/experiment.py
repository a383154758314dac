"""The training job across seeds: data, resume, checkpoints, saving, summaries."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from archs import build_model
from archs.choices import check_registered
from data.jobs import DEFAULT_SEEDS, TrainingOptions  # noqa: F401  (DEFAULT_SEEDS re-exported)
from data.settings import CYCLE_WEIGHTS  # noqa: F401  (--save_cycle_weights, declared torch-free)
from archs.pruning import LayerCollapse, PruningPlan, first_collapse, full_masks, layer_sizes, parse_structure
from archs.train import SUMMARY_HEADERS, Checkpointer, LotteryRun, starting_point, summary_rows
from archs.train.branch import BranchRun, parent_epochs, parent_ticket
from data.datasets import get_spec, load_dataset, make_splits
from data.energy.emissions import (MIN_POWER_SAMPLES, EmissionsRecorder, describe_phases,
                            describe_provenance, keep_first_rows)
from data.paths import (SAVE_DIR, checkpoint_path, cycle_ticket_path, emissions_csv_path, lock_path,
                        partial_csv_path, results_path, run_dir)
from data.runs import RESULTS_FORMAT_VERSION, RunConfig
from data.selection import group_labels, read_run_settings
from archs.runtime import flush_denormals, pin_threads, resolve_device
from data.store import (atomic_torch_save, check_free_space, load_checkpoint,
                        new_folders_removed_on_failure)
from utils import (ProcessLock, UserError, ensure_writable_dir, format_table, get_logger, library_versions,
                   remove_stale_temporaries, replace_durably)



@dataclass(kw_only=True)
class TrainingJob(TrainingOptions):
    """A ``lottery_ticket.py`` invocation: one configuration, several seeds. Its options are
    declared once, torch-free, in :class:`data.jobs.TrainingOptions` (the script's flags too)."""

    config: RunConfig
    # Extra keys for each run's results file, asked for when the run is about to be saved (the
    # launcher records there what shared the run's hardware: see archs.launch).
    annotate_results: Callable[[RunConfig], dict[str, Any]] | None = None

    def __post_init__(self):
        super().__post_init__()
        repeated = sorted({seed for seed in self.seeds if self.seeds.count(seed) > 1})
        if repeated:
            raise UserError(f"--seeds lists {', '.join(map(str, repeated))} more than once; "
                            "give each seed once")
        if not self.seeds:
            raise UserError("no seed given; pass --seeds with at least one seed")
        if self.cycle_weights not in CYCLE_WEIGHTS:
            raise UserError(f"--save_cycle_weights {self.cycle_weights!r} is not one of "
                            f"{', '.join(CYCLE_WEIGHTS)}")
        check_registered(self.config)
        for seed in self.seeds:
            dataclasses.replace(self.config, seed=seed).validate()
        if (self.config.branch_args or self.config.branch_levels) and not self.config.branch:
            raise UserError("--branch_args and --branch_levels set up a branch: add --branch NAME")


def check_pruning_schedule(config: RunConfig, source_root: Path | str = SAVE_DIR) -> None:
    """Refuse, before any training, a schedule whose rounds would leave a layer with no weight
    (counted from the transferred ticket's survivors for a --ticket_source run, whose files
    under ``source_root`` are checked here too)."""
    spec = get_spec(config.dataset)
    model = build_model(config.arch_type, spec.in_channels, spec.image_size, spec.num_classes, device="meta")
    masks = full_masks(model)
    alive = layer_sizes(masks)
    if config.ticket_source or config.init_from:
        model = build_model(config.arch_type, spec.in_channels, spec.image_size, spec.num_classes)
        start_masks = starting_point(config, model, source_root)
        if start_masks is not None:
            alive = {name: int(mask.sum()) for name, mask in start_masks.items()}
    plan = PruningPlan(config.prune_percent, config.prune_scope, config.output_prune_percent,
                       tuple(config.prune_ignore), parse_structure(config.prune_structure))
    try:
        rates = plan.percent_for_layer(list(masks))
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if config.prune_scope == "global":
        return   # global counts depend on the trained weights: checked at each pruning instead
    collapse = first_collapse(alive, rates, config.prune_iterations - 1)
    if collapse is not None:
        raise LayerCollapse(*collapse)


def run_job(job: TrainingJob) -> list[Path]:
    """Train every seed of ``job``; returns the results files written (or found, on resume).
    A failure leaves no empty folder it made (save folder, dataset folder)."""
    flush_denormals(job.config.flush_denormal)
    pin_threads(job.threads)
    check_pruning_schedule(job.config, job.save_dir)
    device = resolve_device(job.device)
    with new_folders_removed_on_failure(job.data_dir, run_dir(job.save_dir, job.config.arch_type,
                                                              job.config.dataset)):
        ensure_writable_dir(job.save_dir, "save directory")
        return _run_seeds(job, device)


def _run_seeds(job: TrainingJob, device: torch.device) -> list[Path]:
    log = get_logger()
    written: list[Path] = []
    dataset = None
    for seed in job.seeds:
        config = dataclasses.replace(job.config, seed=seed)
        out_path = results_path(job.save_dir, config)
        if config.branch:
            check_parent(job.save_dir, config)
            out_path.parent.mkdir(parents=True, exist_ok=True)
        # One writer per run: a second process on the same run stops here, naming the first.
        with ProcessLock(lock_path(job.save_dir, config), f"run {out_path}"):
            refuse_another_run_at(out_path, config)
            if job.resume and out_path.exists():
                saved = load_checkpoint(out_path)
                if RunConfig.from_dict(saved.get("args", {})).identity() != config.identity():
                    raise UserError(f"{out_path} holds a run with other settings; use another "
                                    "--save_dir or delete it to retrain")
                log.info("Seed %d already finished: %s (skipped)", seed, out_path)
                written.append(out_path)
                continue
            if dataset is None:
                dataset = load_dataset(config.dataset, job.data_dir)
            splits = make_splits(dataset, seed, official_test=config.test_split == "official").to(device)
            written.append(train_seed(config, splits, device, job))
    log.info("\nFinished %d seed(s); results:\n%s", len(written), "\n".join(f"  {p}" for p in written))
    return written


def expected_bytes(model: torch.nn.Module, config: RunConfig, job: TrainingJob) -> int:
    """About how much disk one run writes, from its parameter count P (4 bytes each): results
    (best and final weights, masks: 3P), the checkpoint (weights, two optimiser moments, best
    weights, masks: 5P) and its temporary copy while it is replaced (5P), and each cycle's
    ticket (masks plus the weights kept: up to 3P)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    per_ticket = 1 + len(CYCLE_WEIGHTS[job.cycle_weights])
    return params * (3 + 5 + 5 + per_ticket * config.prune_iterations)


def check_parent(save_dir: Path, config: RunConfig) -> None:
    """A branch needs its parent, a finished winning-ticket run with the settings its flags name."""
    if config.train_type != "lt" or config.prune_type != "lt":
        raise UserError("a branch grows from a winning-ticket run: give an lt run's flags")
    parent = results_path(save_dir, config.parent)
    if not parent.exists():
        raise UserError(f"the branch {config.branch} grows from {parent}, which does not exist: train "
                        "that run first (the same flags without --branch)")
    if read_run_settings(parent).identity() != config.parent.identity():
        raise UserError(f"{parent} holds a run with other settings; retrain it")


def refuse_another_run_at(out_path: Path, config: RunConfig) -> None:
    """Names of results format 1 held no settings beyond the head, so an older file can sit at
    this run's path holding a run of other settings: never replace it with this one."""
    if not out_path.exists():
        return
    try:
        saved = read_run_settings(out_path)
    except UserError:   # a damaged file: retraining replaces it, as it always did
        return
    if saved.identity() != config.identity():
        raise UserError(f"{out_path} holds a run with other settings (made before file names "
                        "carried every setting); move it away or use another --save_dir")


def train_seed(config: RunConfig, splits, device, job: TrainingJob) -> Path:
    log = get_logger()
    out_path = results_path(job.save_dir, config)
    ckpt_path = checkpoint_path(job.save_dir, config)
    final_csv = emissions_csv_path(job.save_dir, config)
    running_csv = partial_csv_path(final_csv)

    def start_recorder():
        return EmissionsRecorder(running_csv, job.tracker, project_name=config.stem, per_task=True)

    # Temporaries of writes a kill interrupted (this process holds the run's lock, so none is
    # another's): results, checkpoint, CodeCarbon CSV and every cycle's ticket.
    for path in (out_path, ckpt_path, final_csv, running_csv,
                 *(cycle_ticket_path(out_path, cycle) for cycle in range(config.prune_iterations))):
        remove_stale_temporaries(path)

    def save_cycle_ticket(ticket: dict) -> None:
        kept = {key: value for key, value in ticket.items()
                if not key.endswith("_state_dict") or key in CYCLE_WEIGHTS[job.cycle_weights]}
        atomic_torch_save({"format_version": RESULTS_FORMAT_VERSION, "args": config.identity(), **kept},
                          cycle_ticket_path(out_path, ticket["cycle"]))

    options = dict(recorder_factory=start_recorder, print_freq=job.print_freq, source_root=job.save_dir,
                   compile_model=job.compile_model, deterministic=job.deterministic)
    if config.branch:
        parent_path = results_path(job.save_dir, config.parent)
        parent = load_checkpoint(parent_path)
        run = BranchRun(config, splits, device, parent_ticket(parent, parent_path), parent_epochs(parent),
                        **options)
    else:
        run = LotteryRun(config, splits, device, on_cycle_end=save_cycle_ticket, **options)
    checkpointer = Checkpointer(ckpt_path)
    check_free_space(out_path.parent, expected_bytes(run.model, config, job),
                     f"training {out_path.name} (results, checkpoint and every cycle's ticket)")
    if job.resume and ckpt_path.exists():
        run.load_state_dict(checkpointer.load())
        # Rows CodeCarbon wrote after the checkpoint (a flush, the stop at the interruption)
        # belong to work that is redone now: keep the CSV one row per recorded flush.
        keep_first_rows(running_csv, len(run.emissions))
        log.info("Seed %d: resuming %s at cycle %d, epoch %d", config.seed, ckpt_path.name,
                 run.cycle + 1, run.epoch + 1)
    else:
        if out_path.exists():
            log.info("Seed %d: %s exists and will be replaced when this run finishes "
                     "(use --resume to keep finished seeds)", config.seed, out_path.name)
        running_csv.unlink(missing_ok=True)
    log.info("Seed %d: training %s %s, %s, %d cycle(s) of %d epoch(s) on %s with %d thread(s)", config.seed,
             config.arch_type, config.dataset, group_labels([config])[config.configuration_id], config.prune_iterations,
             config.end_iter, device, torch.get_num_threads())

    run.run(checkpoint=checkpointer, show_progress=job.show_progress, checkpoint_every=job.checkpoint_every)

    results = run.results(library_versions())
    results["data_dir"] = str(Path(job.data_dir).resolve())  # the inference replay's default
    results["threads"] = torch.get_num_threads()   # pinned by --threads, or torch's choice
    if job.annotate_results is not None:
        results.update(job.annotate_results(config))
    # CSV first: once the results exist, --resume skips the seed and would never move it.
    if running_csv.exists():
        replace_durably(running_csv, final_csv)
    atomic_torch_save(results, out_path)
    checkpointer.remove()
    log.info("\nSeed %d summary (%s, %s on %s):\n%s", config.seed, config.config_name,
             config.arch_type, config.dataset,
             format_table(SUMMARY_HEADERS, summary_rows([dataclasses.asdict(c) for c in run.cycles])))
    if run.emissions:
        total = run.emissions[max(run.emissions)]
        log.info("Energy tracked by CodeCarbon, each phase apart (the training figure is training "
                 "only); rows in %s\n%s\n  %s", final_csv.name,
                 describe_phases(results["energy_by_phase"], results["energy_unmeasured"]),
                 describe_provenance(run.energy_provenance))
        if job.tracker.too_short_to_measure(total["duration"]):
            log.warning("Warning: %.1f s is under %d of CodeCarbon's %g s power samples: this run's "
                        "energy and CO2 are mostly sampling noise", total["duration"], MIN_POWER_SAMPLES,
                        job.tracker.measure_power_secs)
    log.info("Saved %s", out_path)
    return out_path
