"""Optimisers and learning-rate schedules: exact rates at chosen steps, exact SGD updates, resume."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from archs.optim import (Duration, LrSchedule, build_optimizer, parse_duration,
                         set_learning_rate)


def test_sgd_with_momentum_and_weight_decay_makes_the_textbook_updates():
    w = nn.Parameter(torch.tensor([1.0]))
    optimizer = build_optimizer([w], "sgd", lr=0.1, weight_decay=0.01, momentum=0.9)
    assert isinstance(optimizer, torch.optim.SGD)
    for _ in range(2):
        optimizer.zero_grad()
        (3 * w).sum().backward()
        optimizer.step()
    # Step 1: g = 3 + 0.01 x 1 = 3.01, buffer 3.01, w = 1 - 0.301 = 0.699.
    # Step 2: g = 3 + 0.00699, buffer = 0.9 x 3.01 + 3.00699 = 5.71599, w = 0.699 - 0.571599.
    assert w.item() == pytest.approx(0.127401, abs=1e-6)


def test_adam_is_built_with_its_settings_and_refuses_a_momentum():
    w = nn.Parameter(torch.zeros(2))
    adam = build_optimizer([w], "adam", lr=1e-3, weight_decay=1e-4)
    assert isinstance(adam, torch.optim.Adam)
    assert (adam.param_groups[0]["lr"], adam.param_groups[0]["weight_decay"]) == (1e-3, 1e-4)
    with pytest.raises(ValueError, match="--momentum applies to --optimizer sgd only"):
        build_optimizer([w], "adam", lr=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match="adam, sgd"):
        build_optimizer([w], "rmsprop", lr=1e-3)
    with pytest.raises(ValueError, match="momentum must be in"):
        build_optimizer([w], "sgd", lr=1e-3, momentum=1.0)


def rates(schedule, iterations_per_epoch, epochs):
    return [schedule.lr_at(i, iterations_per_epoch, epochs)
            for i in range(iterations_per_epoch * epochs)]


def test_constant_schedule():
    assert rates(LrSchedule(0.5), 3, 2) == [0.5] * 6


def test_step_schedule_divides_by_ten_at_half_and_three_quarters_of_the_cycle():
    lr = rates(LrSchedule(0.1, "step"), 10, 4)   # 40 steps: drops at steps 20 and 30
    assert lr[:20] == [0.1] * 20
    assert lr[20:30] == pytest.approx([0.01] * 10)
    assert lr[30:] == pytest.approx([0.001] * 10)
    lr = rates(LrSchedule(0.1, "step"), 2, 160)  # the drops fall on epochs 80 and 120
    assert (lr[159], lr[160], lr[239], lr[240]) == pytest.approx((0.1, 0.01, 0.01, 0.001))


def test_cosine_schedule_falls_from_lr_towards_zero_over_the_cycle():
    schedule = LrSchedule(0.2, "cosine")
    assert schedule.lr_at(0, 25, 4) == 0.2
    assert schedule.lr_at(25, 25, 4) == pytest.approx(0.1 * (1 + math.cos(math.pi / 4)))
    assert schedule.lr_at(50, 25, 4) == pytest.approx(0.1)
    assert schedule.lr_at(99, 25, 4) == pytest.approx(0.1 * (1 + math.cos(math.pi * 99 / 100)))
    lr = rates(schedule, 25, 4)
    assert all(a > b > 0 for a, b in zip(lr, lr[1:]))


def test_warmup_rises_linearly_from_lr_over_steps_then_follows_the_schedule():
    schedule = LrSchedule(1.0, warmup=parse_duration("4it"))
    assert rates(schedule, 5, 2) == [0.25, 0.5, 0.75, 1.0] + [1.0] * 6
    by_epoch = LrSchedule(0.1, "step", warmup=parse_duration("1ep"))
    lr = rates(by_epoch, 10, 4)                  # warm over the 10 steps of epoch 1
    assert lr[0] == pytest.approx(0.01) and lr[4] == pytest.approx(0.05)
    assert lr[9:20] == pytest.approx([0.1] * 11) and lr[20] == pytest.approx(0.01)
    cosine = LrSchedule(1.0, "cosine", warmup=Duration("iteration", 10))
    assert cosine.lr_at(4, 10, 10) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 4 / 100)))


def test_schedule_checks():
    LrSchedule(0.1, warmup=parse_duration("2ep")).check(10, 2)
    with pytest.raises(ValueError, match="--warmup 3ep lasts 30 iterations, longer than a cycle"):
        LrSchedule(0.1, warmup=parse_duration("3ep")).check(10, 2)
    with pytest.raises(ValueError, match="outside the cycle"):
        LrSchedule(0.1).lr_at(20, 10, 2)
    with pytest.raises(ValueError, match="none, step, cosine"):
        LrSchedule(0.1, "linear")


@pytest.mark.parametrize("text, duration", [("5ep", Duration("epoch", 5)),
                                            ("120it", Duration("iteration", 120)),
                                            (" 2EP ", Duration("epoch", 2))])
def test_durations_parse_and_print_back(text, duration):
    assert parse_duration(text) == duration
    assert parse_duration(str(duration)) == duration
    assert duration.iterations(50) == (duration.count * 50 if duration.kind == "epoch" else duration.count)


@pytest.mark.parametrize("text", ["", "0it", "5", "ep", "1.5ep", "5 epochs", "-3it"])
def test_bad_durations_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match=r"invalid --warmup .*<N>ep.*<N>it"):
        parse_duration(text)


def train(model, optimizer, schedule, batches, start, stop, iterations_per_epoch, epochs):
    for i in range(start, stop):
        set_learning_rate(optimizer, schedule.lr_at(i, iterations_per_epoch, epochs))
        images, labels = batches[i % len(batches)]
        optimizer.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()


def test_a_run_resumed_from_an_iteration_count_matches_an_uninterrupted_run():
    torch.manual_seed(0)
    batches = [(torch.randn(8, 5), torch.randint(0, 3, (8,))) for _ in range(4)]
    schedule = LrSchedule(0.5, "cosine", warmup=parse_duration("1ep"))

    def fresh():
        torch.manual_seed(1)
        model = nn.Linear(5, 3)
        return model, build_optimizer(model.parameters(), "sgd", 0.5, 1e-3, 0.9)

    model, optimizer = fresh()
    train(model, optimizer, schedule, batches, 0, 12, 4, 3)

    interrupted, optimizer = fresh()
    train(interrupted, optimizer, schedule, batches, 0, 6, 4, 3)
    saved = {"model": {k: v.clone() for k, v in interrupted.state_dict().items()},
             "optimizer": optimizer.state_dict()}
    resumed, optimizer = fresh()
    resumed.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    train(resumed, optimizer, schedule, batches, 6, 12, 4, 3)
    assert all(torch.equal(resumed.state_dict()[k], v) for k, v in model.state_dict().items())
    assert not torch.equal(resumed.weight, interrupted.weight)
