"""The pieces of a cycle that :class:`archs.train.cycles.LotteryRun` calls at fixed points: the
per-step hooks of an epoch, the pruning round between cycles, evaluation, the progress text."""
from __future__ import annotations

from typing import TYPE_CHECKING

from archs.pruning import Masks, State, derived_generator, magnitude_scores, next_ticket
from archs.train.loop import augment_batch, clone_state, evaluate
from data.datasets import iterate_batches

if TYPE_CHECKING:
    from archs.train.cycles import LotteryRun


def epoch_hooks(run: LotteryRun) -> dict:
    """The per-step work of the run's next epoch besides the step itself: learning-rate
    schedule, capture of the late-rewinding state, augmentation. Empty for the original's
    setting, so its training loop stays exactly as lean."""
    config, hooks = run.config, {}
    ipe, first = run.iterations_per_epoch, run.epoch * run.iterations_per_epoch
    if config.lr_schedule != "none" or config.warmup != "none":
        hooks["lr_at_step"] = lambda step: run.schedule.lr_at(first + step, ipe, config.end_iter)
    if run.cycle == 0 and run.rewind_state is None:
        at = run.rewind_point.iteration(ipe)

        def capture(step: int) -> None:
            if first + step + 1 == at:
                run.rewind_state = clone_state(run.model)

        hooks["after_step"] = capture
    if config.augment:
        generator = derived_generator(config.seed, "augment", run.cycle * 100_000 + run.epoch)
        hooks["augment"] = lambda images: augment_batch(images, generator)
    return hooks


def pruning_round(run: LotteryRun) -> tuple[Masks, State]:
    """The masks and start state of the run's next cycle: :func:`archs.pruning.next_ticket`,
    the one implementation of a pruning round (the Python API's too). SNIP scores one
    training batch drawn for this cycle."""
    config, cycle = run.config, run.cycle + 1
    if run.rewind_state is None:   # cannot happen: the rewind point is checked to lie in cycle 0
        raise RuntimeError("the late-rewinding state was never captured")
    snip_batches = None
    if config.prune_criterion == "snip":
        batches = iterate_batches(run.splits.train, config.batch_size,
                                  derived_generator(config.seed, "snip", cycle))
        snip_batches = [next(iter(batches))]
    return next_ticket(run.model, run.masks, run.rewind_state, run.plan,
                       prune_type=config.prune_type, criterion=config.prune_criterion,
                       seed=config.seed, cycle=cycle, snip_batches=snip_batches)


def evaluate_splits(run: LotteryRun) -> tuple[float, float, float, float]:
    """(val loss, val accuracy, test loss, test accuracy) of the run's model now."""
    options = dict(autocast_dtype=run.runtime.autocast_dtype, memory_format=run.runtime.memory_format)
    val_loss, val_accuracy = evaluate(run.runtime.forward, run.splits.val, run.eval_batch_size, **options)
    test_loss, test_accuracy = evaluate(run.runtime.forward, run.splits.test, run.eval_batch_size, **options)
    return val_loss, val_accuracy, test_loss, test_accuracy


def record_epoch(run: LotteryRun, loss: float, accuracy: float, remaining: float) -> None:
    """Log the epoch just trained (evaluating it unless in plain CO2 mode) and keep the best
    validation state: the first epoch of a tie (only a strictly higher accuracy replaces it)."""
    key = run.images_seen
    run.logs["time"][key] = run.elapsed()
    run.logs["non_zeros_weights"][key] = remaining
    run.logs["train_loss"][key] = loss
    run.logs["train_accuracy"][key] = accuracy
    if run.evaluates:
        with run.meter.measured("evaluation"):
            val_loss, val_accuracy, test_loss, test_accuracy = evaluate_splits(run)
        run.logs["val_loss"][key], run.logs["val_accuracy"][key] = val_loss, val_accuracy
        run.logs["test_loss"][key], run.logs["test_accuracy"][key] = test_loss, test_accuracy
        if run.best is None or val_accuracy > run.best["val_accuracy"]:
            run.best = {"state": clone_state(run.model), "val_accuracy": val_accuracy,
                        "test_accuracy": test_accuracy, "epoch": run.epoch, "images_seen": key}
    recorder = run.meter.recorder
    if recorder is not None:
        training = run.energy["training"]
        run.emissions[key] = dict(training)
        run.logs["co2"][key] = training["emissions"]
        if run.evaluates:
            run.evaluation_emissions[key] = dict(run.energy["evaluation"])
        recorder.append_row(run.meter.csv_row(key, run.cycle + 1, run.epoch))


def progress_text(run: LotteryRun, loss: float) -> str:
    if run.config.co2_tracking_mode:
        co2 = run.logs["co2"]
        return f"loss {loss:.4f}" + (f"  CO2 {co2[max(co2)]:.2e} kg" if co2 else "")
    val = run.logs["val_accuracy"]
    last = val[max(val)] if val else float("nan")
    best = run.best["val_accuracy"] if run.best else float("nan")
    return f"loss {loss:.4f}  val acc {last:.2f}%  best {best:.2f}%"


def update_early_bird(run: LotteryRun) -> bool:
    """Feed the early-bird detector the masks the dense network would give now; True when the
    ticket is drawn at this epoch (the dense cycle then ends here)."""
    weights = dict(run.model.named_parameters())
    masks = run.plan.prune(magnitude_scores(weights, run.masks), run.masks, run.cycle + 1)
    if not run.early_bird.update(masks):
        return False
    run.early_bird_epoch = run.epoch
    run.log.info("Early-bird ticket drawn at epoch %d of %d (masks stable for %d epochs); %d dense "
                 "epoch(s) saved", run.epoch, run.config.end_iter, run.early_bird.window,
                 run.config.end_iter - run.epoch)
    return True
