"""The comparison's statistics: seeds and items both random, one procedure for interval and p, Holm."""
import numpy as np
import pytest

from domainpt.eval.metrics import compute
from domainpt.report.stats import (crossed_variance, holm, item_scores, model_score, paired_difference,
                                   paired_document_bootstrap, planned_mdd, design_to_detect)


def _null_study(rng, seeds: int, items: int, seed_sd: float, shift: float = 0.0):
    """Correct (1) / wrong (0) cells of two models: item difficulty shared, each fine-tuning run (model, seed)
    with its own random bias — runs that drift to their own default behaviour. `shift` moves model b's logit."""
    difficulty = rng.normal(0.0, 1.5, items)
    bias = rng.normal(0.0, seed_sd, (2, seeds))
    logit = difficulty[None, None] + bias[:, :, None]
    logit[1] += shift
    correct = rng.random(logit.shape) < 1 / (1 + np.exp(-logit))
    refs = np.zeros(items, dtype=int)
    return np.where(correct[0], 0, 1), np.where(correct[1], 0, 1), refs  # pred 0 = right


@pytest.mark.parametrize("seed_sd", [0.0, 0.8])
def test_false_positive_rate_is_nominal_when_seeds_disagree(seed_sd):
    """With no true difference, p < 0.05 about 5% of the time — also when each run drifts on its own
    (the case where resampling items alone gave ~20%)."""
    rng = np.random.default_rng(7)
    hits = [paired_difference("accuracy", *_null_study(rng, 5, 60, seed_sd))["p_value"] < 0.05 for _ in range(600)]
    assert 0.025 <= np.mean(hits) <= 0.08, np.mean(hits)


def test_a_planted_difference_is_found():
    rng = np.random.default_rng(3)
    found = [paired_difference("accuracy", *_null_study(rng, 5, 300, 0.2, shift=1.0))["p_value"] < 0.05 for _ in range(50)]
    assert np.mean(found) > 0.9


def test_interval_and_p_never_disagree():
    rng = np.random.default_rng(11)
    for t in range(200):
        a, b, refs = _null_study(rng, 3, 40, 0.5, shift=rng.normal(0, 0.5))
        d = paired_difference("accuracy", a, b, refs, confidence=0.9)
        assert d["includes_zero"] == (d["p_value"] >= 0.1 - 1e-12)


def test_identical_models_give_zero_difference_and_p_one():
    refs = np.arange(20) % 2
    preds = np.stack([refs, 1 - refs])
    d = paired_difference("accuracy", preds, preds, refs, 200, 0.95)
    assert d["mean"] == 0 and d["ci"] == [0.0, 0.0] and d["p_value"] == 1.0 and d["includes_zero"]


def test_public_signature_and_keys():
    refs = np.array([0, 1, 0, 1, 1])
    a = np.array([[0, 1, 1, 1, 0], [0, 0, 0, 1, 1]])
    b = np.array([[0, 1, 0, 1, 1], [0, 1, 0, 1, 0]])
    d = paired_difference(metric="accuracy", preds_a=a, preds_b=b, refs=refs, n_resamples=100, confidence=0.95, seed=0)
    assert {"mean", "ci", "p_value", "includes_zero"} <= set(d)
    assert d["mean"] == pytest.approx(0.9 - 0.7) and d["seeds"] == pytest.approx([0.4, 0.0])


def test_variance_matches_hand_computed_anova():
    x = np.array([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 1.0, 0.0]])
    S, I = x.shape
    g, r, c = x.mean(), x.mean(1), x.mean(0)
    ms_s, ms_i = I * ((r - g) ** 2).sum() / (S - 1), S * ((c - g) ** 2).sum() / (I - 1)
    ms_e = ((x - r[:, None] - c[None] + g) ** 2).sum() / ((S - 1) * (I - 1))
    var, _ = crossed_variance(x)
    # each variance component clamped at 0 on its own
    assert var == pytest.approx((ms_e + max(ms_s - ms_e, 0) + max(ms_i - ms_e, 0)) / (S * I))
    # one seed: the paired t over items
    assert crossed_variance(x[:1])[0] == pytest.approx(x[0].var(ddof=1) / I)


def test_planned_mdd_reproduces_the_pilot_and_predicts_a_larger_design():
    """At the pilot's own size the plan is the analysis's mdd; for a larger design it predicts the mdd that
    such studies go on to report (averaged over simulated studies drawn like the pilot)."""
    rng = np.random.default_rng(2)
    a, b, refs = _null_study(rng, 3, 120, 0.6)
    pilot = item_scores("accuracy", b, refs) - item_scores("accuracy", a, refs)
    assert planned_mdd(pilot, 3, 120) == pytest.approx(paired_difference("accuracy", a, b, refs)["mdd"])
    planned = np.mean([planned_mdd(item_scores("accuracy", b, refs) - item_scores("accuracy", a, refs), 6, 240)
                       for a, b, refs in (_null_study(rng, 3, 120, 0.6) for _ in range(200))])
    realised = np.mean([paired_difference("accuracy", *_null_study(rng, 6, 240, 0.6))["mdd"] for _ in range(200)])
    assert planned == pytest.approx(realised, rel=0.15)
    assert planned < np.mean([paired_difference("accuracy", *_null_study(rng, 3, 120, 0.6))["mdd"] for _ in range(200)])
    with pytest.raises(ValueError, match="pilot"):
        planned_mdd(pilot[:1], 3, 120)


def test_design_to_detect_names_the_fewest_seeds_and_items_and_says_when_items_cannot_help():
    rng = np.random.default_rng(4)
    d = rng.normal(0.0, 0.5, (3, 120)) + rng.normal(0.0, 0.2, 120)  # item and residual spread; seeds agree
    d -= d.mean(1, keepdims=True)
    plan = design_to_detect(d, 0.08)
    s, i = plan["seeds_at_n_test"], plan["items_at_n_seeds"]
    assert planned_mdd(d, 3, 120) > 0.08
    assert planned_mdd(d, s, 120) <= 0.08 < planned_mdd(d, s - 1, 120)
    assert planned_mdd(d, 3, i) <= 0.08 < planned_mdd(d, 3, i - 1)
    # seeds that disagree (each seed shifts every item the same way): at 3 seeds no number of items gets there
    seedy = d + np.array([[0.3], [-0.3], [0.0]])
    assert design_to_detect(seedy, 0.08)["items_at_n_seeds"] is None
    with pytest.raises(ValueError, match="pilot"):
        design_to_detect(d[:1], 0.05)


def test_design_to_detect_finds_items_where_the_mdd_dips_before_rising():
    """At 2 seeds the mdd falls with items, then rises again (the df drops towards 1 while the seeds' share of the
    error stays): a target below the far end but above the dip is still reachable."""
    rng = np.random.default_rng(9)
    d = rng.normal(0.0, 0.4, (2, 400)) + np.array([[0.012], [-0.012]])  # a small seed spread
    far, dip = planned_mdd(d, 2, 100_000), min(planned_mdd(d, 2, n) for n in (400, 800, 1600, 3200, 6400))
    assert dip < far
    target = (dip + far) / 2
    i = design_to_detect(d, target)["items_at_n_seeds"]
    assert i is not None and planned_mdd(d, 2, i) <= target < planned_mdd(d, 2, i - 1)


def test_macro_f1_pseudo_values_average_to_the_shipped_metric():
    rng = np.random.default_rng(5)
    refs = rng.integers(0, 4, 120)
    preds = np.where(rng.random(120) < 0.6, refs, rng.integers(0, 4, 120))
    ps = item_scores("f1", preds, refs)[0]
    # the jackknife estimate is F1 minus its (small) bias estimate
    assert ps.mean() == pytest.approx(compute("f1", preds.tolist(), refs.tolist()), abs=0.02)
    s = model_score("f1", preds[None], refs, 0.95)
    assert s["mean"] == pytest.approx(compute("f1", preds.tolist(), refs.tolist())) and s["ci"][0] < s["mean"] < s["ci"][1]


def test_model_score_keeps_seeds():
    rng = np.random.default_rng(1)
    refs = rng.integers(0, 3, 80)
    preds = np.stack([np.where(rng.random(80) < 0.7, refs, (refs + 1) % 3) for _ in range(3)])
    r = model_score("accuracy", preds, refs, 0.95)
    assert r["ci"][0] <= r["mean"] <= r["ci"][1]
    assert len(r["seeds"]) == 3 and r["mean"] == pytest.approx(np.mean(r["seeds"]))


def test_holm_hand_values():
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.3]) == [0.3]


def test_document_bootstrap_same_model_and_planted_gain():
    rng = np.random.default_rng(2)
    tokens = rng.integers(200, 400, 20).astype(float)
    nll = tokens * rng.normal(3.0, 0.2, 20)
    same = paired_document_bootstrap(nll, tokens, nll, tokens, 500, 0.95)
    assert same["mean"] == 1.0 and same["p_value"] == 1.0 and same["includes_zero"]
    better = paired_document_bootstrap(nll, tokens, nll * 0.9, tokens, 500, 0.95)
    assert better["mean"] < 1 and better["ci"][1] < 1 and 0 < better["p_value"] < 0.05
    bpb = paired_document_bootstrap(nll, tokens * 4, nll * 0.9, tokens * 4, 500, 0.95, stat="difference")
    assert bpb["mean"] < 0 and not bpb["includes_zero"]


def test_negative_variance_components_fall_back_to_the_residual():
    """Cell differences that vary while every seed mean and item mean agree: the variance is the residual's,
    not zero (a review found p = 0 here before)."""
    d = paired_difference("accuracy", np.array([[0, 1], [1, 0]]), np.array([[1, 1], [1, 1]]), np.array([1, 1]))
    assert d["mean"] == 0.5 and d["se"] > 0 and 0 < d["p_value"] < 1


def test_bad_inputs_are_refused_not_reported():
    with pytest.raises(ValueError):
        crossed_variance(np.array([[0.0, np.nan, 1.0]]))
    with pytest.raises(ValueError):
        paired_document_bootstrap([1.0], [2.0], [1.0], [2.0], 100, 0.95)
