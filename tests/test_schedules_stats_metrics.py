import math

import pytest

from domainpt.eval.metrics import compute
from domainpt.flops import flops_per_token
from domainpt.training.schedules import lr_area, lr_multiplier


def test_cosine_schedule_values():
    f = lambda s: lr_multiplier(s, total=110, warmup=10, schedule="cosine", min_ratio=0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 99)))
    assert f(109) == pytest.approx(0.1)


def test_wsd_and_constant_schedule_values():
    f = lambda s: lr_multiplier(s, total=100, warmup=10, schedule="wsd", min_ratio=0.0, decay_share=0.2)
    assert f(50) == 1.0 and f(79) == 1.0
    assert f(89) == pytest.approx(0.5) and f(99) == pytest.approx(0.0)
    assert lr_multiplier(500, 1000, 10, "constant") == 1.0


def test_rewarm_from_the_checkpoints_final_lr_or_not_at_all():
    # Re-warm from 0.1 x peak (the base model's final LR) over 10 steps: 0.1 + 0.9 * (s + 1) / 10.
    f = lambda s: lr_multiplier(s, total=100, warmup=10, schedule="cosine", min_ratio=0.1, start_ratio=0.1)
    assert f(0) == pytest.approx(0.19) and f(4) == pytest.approx(0.55) and f(9) == pytest.approx(1.0)
    # No warm-up: the first step is already at the peak.
    assert lr_multiplier(0, 100, 0, "cosine") == pytest.approx(1.0)


def test_lr_area_in_closed_form_is_the_sum_of_the_schedule_step_by_step():
    import random

    rng = random.Random(0)
    for _ in range(3000):
        total = rng.randint(1, 200)
        warmup, steps = rng.randint(0, min(total + 3, 30)), rng.randint(0, total)
        args = (rng.choice(["cosine", "wsd", "constant"]), rng.random(), rng.random(), rng.choice([0.0, rng.random()]))
        summed = sum(lr_multiplier(s, total, warmup, *args) for s in range(steps))
        assert lr_area(steps, total, warmup, *args) == pytest.approx(summed, rel=1e-9, abs=1e-9), (total, warmup, steps, args)
    assert lr_area(40, 40, 0, "constant") == 40
    # a cosine to 0 without warm-up has half its steps' worth of learning at its end, more than half mid-way
    assert lr_area(1001, 1001, 0, "cosine", 0.0) == pytest.approx(500.5)
    assert lr_area(500, 1001, 0, "cosine", 0.0) > 0.6 * 500
    with pytest.raises(ValueError, match="steps must be in"):
        lr_area(11, 10, 0, "cosine")


def test_shipped_metrics_match_hand_values():
    assert compute("accuracy", [0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx(0.75)
    # per-label F1: 0 -> 1.0, 1 -> 2/3, 2 -> 2/3
    assert compute("f1", [0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_flops_formula():
    assert flops_per_token(1_000_000, 2, 64, 128) == 6_000_000 + 12 * 2 * 64 * 128
