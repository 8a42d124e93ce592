import math

import pytest

from domainpt.eval.metrics import compute
from domainpt.flops import flops_per_token
from domainpt.training.schedules import lr_multiplier


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


def test_shipped_metrics_match_hand_values():
    assert compute("accuracy", [0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx(0.75)
    # per-label F1: 0 -> 1.0, 1 -> 2/3, 2 -> 2/3
    assert compute("f1", [0, 1, 1, 2], [0, 1, 2, 2]) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_flops_formula():
    assert flops_per_token(1_000_000, 2, 64, 128) == 6_000_000 + 12 * 2 * 64 * 128
