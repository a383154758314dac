"""The experiment space wired into training: controls, late rewinding, scopes, rates, criteria,
optimisers, schedules, augmentation, early-bird tickets, each resumable to the same result."""
import math

import pytest
import torch

import archs.train.cycles as training
import archs.train.loop as loop
from archs.experiment import TrainingJob, run_job
from archs.pruning import prunable_names
from data.paths import checkpoint_path, results_path
from data.runs import RunConfig
from utils import UserError

TINY = dict(end_iter=3, batch_size=64, prune_iterations=3, prune_percent=50.0)
N_TRAIN = 105   # training images of the small_mnist_dir fixture (70% of 150)


def job(tmp_path, small_mnist_dir, **changes):
    return TrainingJob(config=RunConfig(**{**TINY, **changes}), seeds=[0], data_dir=small_mnist_dir,
                       save_dir=tmp_path / "saves", device="cpu", show_progress=False)


def load(path):
    return torch.load(path, weights_only=True)


def train(tmp_path, small_mnist_dir, **changes):
    [path] = run_job(job(tmp_path, small_mnist_dir, **changes))
    return load(path)


@pytest.fixture(scope="module")
def winning(tmp_path_factory, small_mnist_dir):
    return train(tmp_path_factory.mktemp("lt"), small_mnist_dir)


def layer_counts(masks):
    return {name: int(mask.sum()) for name, mask in masks.items()}


def test_reinit_control_keeps_the_masks_and_redraws_the_survivors(winning, tmp_path, small_mnist_dir):
    control = train(tmp_path, small_mnist_dir, prune_type="reinit")
    # The first cycle is the same dense training, so the first pruning takes the same masks.
    for name, mask in winning["masks"][1].items():
        assert torch.equal(control["masks"][1][name], mask)
    ticket = load(results_path(tmp_path / "saves", RunConfig(**TINY, prune_type="reinit")).parent / "tickets"
                  / RunConfig(**TINY, prune_type="reinit").stem / "cycle1.pt")
    assert set(ticket["masks"]) == set(winning["masks"][1])
    # Survivors start elsewhere than the original initialisation, pruned weights at zero.
    first = next(iter(winning["masks"][1]))
    assert not torch.equal(control["final_state_dict"][first], winning["final_state_dict"][first])
    assert bool((control["final_state_dict"][first][~control["masks"][-1][first]] == 0).all())



def test_reinit_refuses_a_rewind_point_before_any_training(tmp_path):
    """The prune type's own check (archs/pruning/prune_types/reinit.py), made by the job."""
    with pytest.raises(UserError, match="--prune_type reinit re-draws the survivors, so it has no rewind point"):
        TrainingJob(config=RunConfig(**TINY, prune_type="reinit", rewind_to="1ep"), seeds=[0], save_dir=tmp_path)
    assert not any(tmp_path.iterdir())

def test_random_control_has_the_magnitude_masks_per_layer_counts(winning, tmp_path, small_mnist_dir):
    control = train(tmp_path, small_mnist_dir, prune_type="random")
    for cycle in (1, 2):
        assert layer_counts(control["masks"][cycle]) == layer_counts(winning["masks"][cycle])
        assert any(not torch.equal(control["masks"][cycle][n], winning["masks"][cycle][n])
                   for n in winning["masks"][cycle])
    # Masks only shrink.
    later, earlier = control["masks"][2], control["masks"][1]
    assert all(not (later[n] & ~earlier[n]).any() for n in earlier)


@pytest.mark.parametrize("point, kind", [("1ep", "epoch"), ("3it", "iteration")])
def test_late_rewinding_restores_exactly_the_state_saved_at_that_step(tmp_path, small_mnist_dir, monkeypatch,
                                                                      point, kind):
    results = train(tmp_path, small_mnist_dir, rewind_to=point, prune_iterations=2)
    rewind_state = results["rewind_state_dict"]
    assert rewind_state is not None
    # The state is neither the initial one nor the final one of cycle 0.
    name = results["prunable"][0]
    assert not torch.equal(rewind_state[name], results["initial_state_dict"][name])
    # Replaying cycle 0 up to the rewind point reproduces it exactly.
    steps = 1 * math.ceil(N_TRAIN / 64) if kind == "epoch" else 3
    reference = RunConfig(**{**TINY, "prune_iterations": 2, "rewind_to": point})
    from data.datasets import load_dataset, make_splits
    splits = make_splits(load_dataset("mnist", small_mnist_dir), 0)
    run = training.LotteryRun(reference, splits, torch.device("cpu"))
    taken = {"n": 0}

    class Reached(Exception):
        pass

    def stop_after(step):
        taken["n"] += 1
        if taken["n"] == steps:
            raise Reached

    with pytest.raises(Reached):
        for _ in range(TINY["end_iter"]):
            training.train_epoch(run.model, run.optimizer, splits.train, 64, run.generator, [],
                                 after_step=stop_after)
    for key, value in run.model.state_dict().items():
        assert torch.equal(value, rewind_state[key]), key


def test_a_rewind_point_past_the_dense_cycle_is_refused(tmp_path, small_mnist_dir):
    with pytest.raises(UserError, match="past the end of the dense cycle"):
        run_job(job(tmp_path, small_mnist_dir, rewind_to="9ep"))


def test_global_scope_removes_the_global_count(tmp_path, small_mnist_dir):
    results = train(tmp_path, small_mnist_dir, prune_scope="global", prune_iterations=2)
    total = sum(m.numel() for m in results["masks"][0].values())
    alive = sum(int(m.sum()) for m in results["masks"][1].values())
    assert alive == total - round(total * 0.5)
    # Layers are ranked together, so their survival rates differ.
    rates = {n: float(m.float().mean()) for n, m in results["masks"][1].items()}
    assert max(rates.values()) - min(rates.values()) > 0.05


def test_output_rate_and_ignored_layers(tmp_path, small_mnist_dir):
    results = train(tmp_path, small_mnist_dir, output_prune_percent=25.0, prune_ignore=("1",),
                    prune_iterations=2)
    names = results["prunable"]
    counts, sizes = layer_counts(results["masks"][1]), {n: m.numel() for n, m in results["masks"][0].items()}
    assert counts["1.weight"] == sizes["1.weight"]                      # ignored: dense
    assert counts[names[-1]] == sizes[names[-1]] - round(sizes[names[-1]] * 0.25)   # output: 25%
    middle = [n for n in names if n not in ("1.weight", names[-1])]
    assert all(counts[n] == sizes[n] - round(sizes[n] * 0.5) for n in middle)


def test_an_unknown_ignored_layer_is_one_line(tmp_path, small_mnist_dir):
    with pytest.raises(UserError, match="nosuch"):
        run_job(job(tmp_path, small_mnist_dir, prune_ignore=("nosuch",)))


def test_target_sparsity_sets_the_per_round_rate(tmp_path, small_mnist_dir):
    config = RunConfig(**{**TINY, "target_sparsity": 75.0})
    assert config.prune_percent == pytest.approx(50.0)      # 1 - (1 - 0.75)^(1/2)
    assert RunConfig(target_sparsity=96.4, prune_iterations=5).prune_percent == pytest.approx(
        100 * (1 - 0.036 ** 0.25))
    results = train(tmp_path, small_mnist_dir, target_sparsity=75.0)
    assert 100 * sum(int(m.sum()) for m in results["masks"][-1].values()) / sum(
        m.numel() for m in results["masks"][-1].values()) == pytest.approx(25.0, abs=0.01)


def test_snip_prunes_by_sensitivity_not_magnitude(winning, tmp_path, small_mnist_dir):
    results = train(tmp_path, small_mnist_dir, prune_criterion="snip", prune_iterations=2)
    assert layer_counts(results["masks"][1]) == layer_counts(winning["masks"][1])
    assert any(not torch.equal(results["masks"][1][n], winning["masks"][1][n]) for n in winning["masks"][1])


def test_sgd_schedule_and_warmup_set_the_learning_rate_of_every_step(tmp_path, small_mnist_dir, monkeypatch):
    seen = []
    real = loop.set_learning_rate

    def record(optimizer, lr):
        seen.append(lr)
        real(optimizer, lr)

    monkeypatch.setattr(loop, "set_learning_rate", record)
    results = train(tmp_path, small_mnist_dir, optimizer="sgd", momentum=0.9, lr=0.05, lr_schedule="step",
                    warmup="2it", prune_iterations=2, end_iter=4)
    ipe = math.ceil(N_TRAIN / 64)
    cycle = seen[:4 * ipe]
    assert cycle[0] == pytest.approx(0.025) and cycle[1] == pytest.approx(0.05)     # warmup (i+1)/2
    assert cycle[2 * ipe - 1] == pytest.approx(0.05) and cycle[2 * ipe] == pytest.approx(0.005)   # x0.1 at 50%
    assert cycle[3 * ipe] == pytest.approx(0.0005)                                   # and at 75%
    assert seen[4 * ipe:] == cycle                                                   # every cycle again
    assert results["args"]["optimizer"] == "sgd"


def test_momentum_with_adam_is_refused(tmp_path, small_mnist_dir):
    with pytest.raises(UserError, match="--momentum applies to --optimizer sgd"):
        run_job(job(tmp_path, small_mnist_dir, momentum=0.9))


def test_augmentation_crops_and_flips_on_the_device():
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    generator = torch.Generator().manual_seed(0)
    out = loop.augment_batch(images, generator, padding=1)
    assert out.shape == images.shape
    # Each output is the input shifted by at most one pixel (zeros brought in) and maybe mirrored.
    for original, moved in zip(images, out):
        candidates = []
        padded = torch.nn.functional.pad(original, (1, 1, 1, 1))
        for dy in range(3):
            for dx in range(3):
                crop = padded[:, dy:dy + 4, dx:dx + 4]
                candidates += [crop, crop.flip(-1)]
        assert any(torch.equal(moved, c) for c in candidates)


def test_early_bird_stops_the_dense_cycle_when_masks_stop_changing(tmp_path, small_mnist_dir, monkeypatch):
    distances = iter([0.5, 0.05, 0.05, 0.05, 0.05, 0.05])

    def fake_distance(a, b):
        return next(distances)

    import archs.early_bird as early_bird
    monkeypatch.setattr(early_bird, "mask_distance", fake_distance)
    results = train(tmp_path, small_mnist_dir, early_bird=True, end_iter=10, prune_iterations=2)
    # Distances start at epoch 2; five in a row under 0.1 end at epoch 7.
    assert results["early_bird"]["epoch"] == 7 and results["early_bird"]["epochs_saved"] == 3
    assert results["cycles"][0]["best_epoch"] <= 7
    assert max(results["train_loss"]) == 7 * N_TRAIN + 10 * N_TRAIN   # 7 dense epochs, then 10


SETTINGS = [
    dict(prune_type="reinit"), dict(prune_type="random"), dict(rewind_to="1ep"), dict(rewind_to="3it"),
    dict(prune_scope="global"), dict(output_prune_percent=25.0), dict(target_sparsity=75.0),
    dict(prune_criterion="snip"), dict(optimizer="sgd", momentum=0.9, lr=0.01),
    dict(lr_schedule="cosine", warmup="1ep"), dict(augment=True), dict(early_bird=True, end_iter=8),
]


@pytest.mark.parametrize("changes", SETTINGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_resume_mid_cycle_gives_identical_results(tmp_path, small_mnist_dir, monkeypatch, changes):
    reference = train(tmp_path / "reference", small_mnist_dir, **changes)
    the_job = job(tmp_path / "resumed", small_mnist_dir, **changes)
    real_train_epoch = training.train_epoch
    calls = {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 or calls["n"] == TINY["end_iter"] + 2:   # in cycle 0, then in cycle 1
            raise KeyboardInterrupt
        return real_train_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_job(the_job)
    the_job.resume = True
    with pytest.raises(KeyboardInterrupt):
        run_job(the_job)
    assert checkpoint_path(the_job.save_dir, the_job.config).exists()
    monkeypatch.setattr(training, "train_epoch", real_train_epoch)
    [path] = run_job(the_job)
    resumed = load(path)
    for key in ("train_loss", "val_accuracy", "test_accuracy", "non_zeros_weights"):
        assert resumed[key] == reference[key], key
    for name, value in reference["final_state_dict"].items():
        assert torch.equal(resumed["final_state_dict"][name], value), name
    for cycle_masks, reference_masks in zip(resumed["masks"], reference["masks"]):
        assert all(torch.equal(cycle_masks[n], reference_masks[n]) for n in reference_masks)


def test_bf16_autocast_trains_with_the_same_masks_and_zeros(winning, tmp_path, small_mnist_dir):
    results = train(tmp_path, small_mnist_dir, precision="bf16")
    assert results["args"]["precision"] == "bf16"
    # Other arithmetic, same procedure: the pruned weights are still exactly zero, and the
    # run is named apart from the fp32 one.
    for name, mask in results["masks"][-1].items():
        assert bool((results["final_state_dict"][name][~mask] == 0).all())
    assert results_path(tmp_path, RunConfig(**TINY, precision="bf16")).name.endswith("_precbf16.pt")
    losses = results["train_loss"]
    assert losses[3 * N_TRAIN] < losses[N_TRAIN]   # it learns: the dense cycle's loss falls


def test_flush_denormal_is_a_setting_of_the_run_and_sets_the_arithmetic(tmp_path, small_mnist_dir):
    tiny = torch.tensor([1e-40])          # a denormal float32
    try:
        results = train(tmp_path, small_mnist_dir, flush_denormal=True)
        assert bool((tiny * 1.0 == 0).all())          # flushed while (and after) it ran
        assert results["args"]["flush_denormal"] is True
        name = results_path(tmp_path, RunConfig(**TINY, flush_denormal=True)).name
        assert "_ftz" in name and name != results_path(tmp_path, RunConfig(**TINY)).name
        train(tmp_path / "ieee", small_mnist_dir)     # the next run sets it back
        assert float(tiny * 1.0) == pytest.approx(1e-40, rel=1e-3)
    finally:
        torch.set_flush_denormal(False)
