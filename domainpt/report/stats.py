"""Paired statistics over test examples (and across seeds) with scipy.

Each model's predictions form a (seeds x examples) matrix; a statistic is the metric computed per
seed and averaged. Intervals come from scipy.stats.bootstrap over examples (paired: the same resampled
examples for both models and all seeds); p-values from scipy.stats.permutation_test swapping the two
models' predictions per example.
"""
from __future__ import annotations

import numpy as np
from scipy import stats

from domainpt.eval.metrics import QA_METRICS, compute


def _metric_fn(metric: str):
    if metric == "accuracy":  # vectorised fast path, same value as the shipped module
        return lambda preds, refs: float(np.mean(preds == refs))
    if metric in QA_METRICS:  # qa: `preds` already hold per-example scores
        return lambda preds, refs: float(np.mean(preds))
    return lambda preds, refs: compute(metric, preds.tolist(), refs.tolist())


def seed_mean(metric: str, preds: np.ndarray, refs: np.ndarray, idx=None) -> float:
    f = _metric_fn(metric)
    idx = np.arange(preds.shape[1]) if idx is None else idx
    return float(np.mean([f(p[idx], refs[idx]) for p in preds]))


def _interval(res, point: float) -> list[float]:
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if np.isnan(lo) or np.isnan(hi):  # every resample gave the same value: the interval is that value
        lo = hi = point
    return [lo, hi]


def bootstrap_mean(metric: str, preds: np.ndarray, refs: np.ndarray, n_resamples: int, confidence: float, seed: int = 0) -> dict:
    preds, refs = np.asarray(preds), np.asarray(refs)
    point = seed_mean(metric, preds, refs)
    idx = np.arange(preds.shape[1])
    res = stats.bootstrap((idx,), lambda i: seed_mean(metric, preds, refs, i), vectorized=False, n_resamples=n_resamples,
                          confidence_level=confidence, method="percentile", rng=np.random.default_rng(seed))
    per_seed = [seed_mean(metric, preds[s:s + 1], refs) for s in range(preds.shape[0])]
    return {"mean": point, "ci": _interval(res, point), "seeds": per_seed}


def paired_difference(metric: str, preds_a: np.ndarray, preds_b: np.ndarray, refs: np.ndarray, n_resamples: int,
                      confidence: float, seed: int = 0) -> dict:
    """b minus a (domain minus general): mean, bootstrap interval, permutation-test p-value."""
    a, b, refs = np.asarray(preds_a), np.asarray(preds_b), np.asarray(refs)
    n = a.shape[1]
    point = seed_mean(metric, b, refs) - seed_mean(metric, a, refs)
    idx = np.arange(n)
    res = stats.bootstrap((idx,), lambda i: seed_mean(metric, b, refs, i) - seed_mean(metric, a, refs, i), vectorized=False,
                          n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                          rng=np.random.default_rng(seed))
    # Permutation test: ids < n point at model a's predictions for that example, ids >= n at model b's.
    table = np.concatenate([a, b], axis=1)

    def stat(x, y):
        xa, yb = table[:, x], table[:, y]
        ref = refs[np.asarray(x) % n]
        f = _metric_fn(metric)
        return float(np.mean([f(yb[s], ref) for s in range(a.shape[0])]) - np.mean([f(xa[s], ref) for s in range(a.shape[0])]))

    if np.array_equal(a, b):
        p = 1.0
    else:
        perm = stats.permutation_test((idx, idx + n), stat, permutation_type="samples", vectorized=False,
                                      n_resamples=n_resamples, alternative="two-sided", rng=np.random.default_rng(seed + 1))
        p = float(perm.pvalue)
    ci = _interval(res, point)
    return {"mean": point, "ci": ci, "p_value": p, "includes_zero": bool(ci[0] <= 0 <= ci[1])}
