import math

import numpy as np
import pytest

from domainpt.eval.metrics import compute
from domainpt.flops import flops_per_token
from domainpt.report.stats import bootstrap_mean, paired_difference
from domainpt.schedules import lr_multiplier


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


def test_bootstrap_interval_covers_true_difference_at_stated_rate():
    """Simulate many test sets where the domain model is truly 5 points better; the 90% interval
    must contain +0.05 about 90% of the time (not once by luck)."""
    rng = np.random.default_rng(0)
    n, trials, covered = 300, 150, 0
    refs = np.zeros(n, dtype=int)
    for t in range(trials):
        a = (rng.random((1, n)) < 0.60).astype(int)  # 1 = correct (pred == ref 1? use 0/1 labels)
        b = (rng.random((1, n)) < 0.65).astype(int)
        pa, pb = np.where(a == 1, 0, 1), np.where(b == 1, 0, 1)
        d = paired_difference("accuracy", pa, pb, refs, n_resamples=300, confidence=0.9, seed=t)
        covered += d["ci"][0] <= 0.05 <= d["ci"][1]
    assert 0.83 <= covered / trials <= 0.97, covered / trials


def test_bootstrap_mean_contains_point_and_keeps_seeds():
    rng = np.random.default_rng(1)
    refs = rng.integers(0, 3, 80)
    preds = np.stack([np.where(rng.random(80) < 0.7, refs, (refs + 1) % 3) for _ in range(3)])
    r = bootstrap_mean("accuracy", preds, refs, 500, 0.95)
    assert r["ci"][0] <= r["mean"] <= r["ci"][1]
    assert len(r["seeds"]) == 3 and r["mean"] == pytest.approx(np.mean(r["seeds"]))


def test_identical_models_give_zero_difference_and_p_one():
    refs = np.arange(20) % 2
    preds = np.stack([refs, 1 - refs])
    d = paired_difference("accuracy", preds, preds, refs, 200, 0.95)
    assert d["mean"] == 0 and d["ci"] == [0.0, 0.0] and d["p_value"] == 1.0 and d["includes_zero"]
