"""Seed- and item-aware paired statistics for comparing two training procedures.

A fine-tuned model's predictions form a (seeds x items) matrix. Seed s of both models shares its
LoRA initialisation and data order, and both are scored on the same test items, so the comparison is
a crossed, paired design: the seeds are a sample of fine-tuning runs and the items a sample of test
questions, and a claim about the *method* has to generalise over both.

One procedure gives the interval, the p-value and the minimum detectable difference: the per-cell
differences d[s, i] (model b minus model a) are split by a two-way random-effects ANOVA into seed,
item and residual mean squares; Var(mean) = (MS_seed + MS_item - MS_resid) / (S I) is the unbiased
estimate (each variance component kept >= 0), and the t distribution with Satterthwaite's degrees of
freedom gives both the interval and the two-sided p. So the interval excludes zero exactly when
p < 1 - confidence. This is the Dorfman-Berbaum-Metz analysis that radiology uses for "readers x cases"
studies (Dorfman, Berbaum & Metz 1992), with seeds as readers and test items as cases, and the original
three-term Satterthwaite df (conservative in pure-noise simulations; Hillis 2007 proposes another df).
Metrics that are not a mean over items (macro F1) enter through jackknife pseudo-values per item,
as DBM does for the AUC.

Why not a two-level bootstrap: with 3-5 seeds, resampling seeds shrinks their variance by (S-1)/S
and replaces t(S-1) quantiles by normal ones, so the interval is too narrow when seeds disagree;
bench/calibration.py measures both side by side (BENCHMARKS.md).

Held-out perplexity is a ratio over documents (total NLL / total tokens), so its paired interval
comes from a bootstrap over documents instead (`paired_document_bootstrap`), with the p-value read
from the same resamples.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from domainpt.config import QA_METRICS
from domainpt.eval.metrics import compute

POWER = 0.8  # the power at which the minimum detectable difference is stated
# A metric name for predictions that already are per-item scores in [0, 1] (lm-eval's per-document acc, say).
ITEM_SCORE = "item_score"
_PRESCORED = set(QA_METRICS) | {ITEM_SCORE}


def _metric_fn(metric: str):
    if metric == "accuracy":  # vectorised fast path, same value as the shipped module
        return lambda preds, refs: float(np.mean(preds == refs))
    if metric in _PRESCORED:  # qa and item_score: `preds` already hold per-example scores
        return lambda preds, refs: float(np.mean(preds))
    return lambda preds, refs: compute(metric, preds.tolist(), refs.tolist())


def seed_mean(metric: str, preds: np.ndarray, refs: np.ndarray) -> float:
    """The metric computed on each seed's predictions, averaged over seeds."""
    f = _metric_fn(metric)
    return float(np.mean([f(p, refs) for p in np.atleast_2d(preds)]))


def per_seed(metric: str, preds: np.ndarray, refs: np.ndarray) -> list[float]:
    f = _metric_fn(metric)
    return [f(p, refs) for p in np.atleast_2d(preds)]


def macro_f1(preds: np.ndarray, refs: np.ndarray, labels: np.ndarray) -> float:
    """Macro F1 over `labels` (sklearn's convention: a label never predicted nor present scores 0)."""
    tp = np.array([np.sum((preds == c) & (refs == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((preds == c) & (refs != c)) for c in labels], dtype=float)
    fn = np.array([np.sum((preds != c) & (refs == c)) for c in labels], dtype=float)
    denom = 2 * tp + fp + fn
    return float(np.mean(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0)))


def _f1_pseudo_values(preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """Jackknife pseudo-values of macro F1, one per item: n F1(all) - (n - 1) F1(all but i).
    Leaving item i out changes only the counts of its true and predicted labels."""
    labels = np.unique(np.concatenate([refs, preds]))
    n = len(refs)
    full = macro_f1(preds, refs, labels)
    tp = np.array([np.sum((preds == c) & (refs == c)) for c in labels], dtype=float)
    fp = np.array([np.sum((preds == c) & (refs != c)) for c in labels], dtype=float)
    fn = np.array([np.sum((preds != c) & (refs == c)) for c in labels], dtype=float)
    out = np.empty(n)
    for i in range(n):
        t, p_, f = tp.copy(), fp.copy(), fn.copy()
        r, q = np.searchsorted(labels, refs[i]), np.searchsorted(labels, preds[i])
        if r == q:
            t[r] -= 1
        else:
            f[r] -= 1
            p_[q] -= 1
        denom = 2 * t + p_ + f
        # a label that vanishes with item i drops out of the macro average, as sklearn would do
        present = (t + p_ + f) > 0
        loo = float(np.mean(np.where(denom[present] > 0, 2 * t[present] / np.maximum(denom[present], 1), 0.0)))
        out[i] = n * full - (n - 1) * loo
    return out


def item_scores(metric: str, preds: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(seeds x items) per-item contributions whose mean is the metric (pseudo-values for macro F1)."""
    preds, refs = np.atleast_2d(np.asarray(preds)), np.asarray(refs)
    if metric == "accuracy":
        return (preds == refs[None]).astype(float)
    if metric in _PRESCORED:
        return preds.astype(float)
    if metric == "f1":
        return np.stack([_f1_pseudo_values(p, refs) for p in preds])
    raise ValueError(f"no per-item decomposition for metric {metric!r}")


def mean_squares(x: np.ndarray) -> tuple[float, float, float]:
    """Two-way ANOVA mean squares (seed, item, residual) of a (seeds x items) table, S >= 2 and I >= 2."""
    S, I = x.shape
    grand, rows, cols = x.mean(), x.mean(1), x.mean(0)
    ms_seed = I * np.sum((rows - grand) ** 2) / (S - 1)
    ms_item = S * np.sum((cols - grand) ** 2) / (I - 1)
    resid = x - rows[:, None] - cols[None, :] + grand
    return float(ms_seed), float(ms_item), float(np.sum(resid ** 2) / ((S - 1) * (I - 1)))


def variance_from_mean_squares(ms_seed: float, ms_item: float, ms_res: float, S: int, I: int) -> tuple[float, float]:
    """(variance of the grand mean, Satterthwaite degrees of freedom) from the mean squares of an S x I table.
    S I Var = I s2_seed + S s2_item + s2_res; each component is clamped at 0 on its own:
    s2_seed = (MS_seed - MS_res) / I, s2_item = (MS_item - MS_res) / S."""
    seed_part, item_part = ms_seed > ms_res, ms_item > ms_res
    if seed_part and item_part:
        combo = ms_seed + ms_item - ms_res
        den = ms_seed ** 2 / (S - 1) + ms_item ** 2 / (I - 1) + ms_res ** 2 / ((S - 1) * (I - 1))
        return combo / (S * I), combo ** 2 / den
    if seed_part:
        return ms_seed / (S * I), float(S - 1)
    if item_part:
        return ms_item / (S * I), float(I - 1)
    return ms_res / (S * I), float((S - 1) * (I - 1))


def _checked(x) -> np.ndarray:
    x = np.atleast_2d(np.asarray(x, dtype=float))
    if x.shape[1] < 2:
        raise ValueError("need at least two test items")
    if not np.all(np.isfinite(x)):
        raise ValueError("per-item scores must be finite (a NaN score cannot be compared)")
    return x


def item_differences(metric: str, preds_a: np.ndarray, preds_b: np.ndarray, refs: np.ndarray) -> np.ndarray:
    """(seeds x items) per-item differences, b minus a: what the paired analysis and its planning read."""
    return item_scores(metric, preds_b, refs) - item_scores(metric, preds_a, refs)


def crossed_variance(x: np.ndarray) -> tuple[float, float]:
    """(variance of the grand mean, Satterthwaite degrees of freedom) for a (seeds x items) table with
    seeds and items both random. One seed: a paired t over items."""
    x = _checked(x)
    S, I = x.shape
    if S == 1:
        return float(x.var(ddof=1) / I), float(I - 1)
    var, df = variance_from_mean_squares(*mean_squares(x), S, I)
    return float(var), float(df)


def variance_components(x: np.ndarray) -> tuple[float, float, float]:
    """(seed, item, residual) variance components of a pilot (seeds x items) table of per-item differences, S >= 2;
    seed and item each clamped at 0 on its own, as the analysis does."""
    x = _checked(x)
    S, I = x.shape
    if S < 2:
        raise ValueError("planning needs a pilot with >= 2 seeds (one seed shows no seed variance)")
    ms_seed, ms_item, ms_res = mean_squares(x)
    return max(0.0, (ms_seed - ms_res) / I), max(0.0, (ms_item - ms_res) / S), ms_res


def _mdd_at(components: tuple[float, float, float], seeds: int, items: int, confidence: float) -> float:
    """The mdd at `seeds` x `items`: each expected mean square at those sizes, then the analysis's variance and df."""
    s2_seed, s2_item, s2_res = components
    var, df = variance_from_mean_squares(s2_res + items * s2_seed, s2_res + seeds * s2_item, s2_res, seeds, items)
    return t_summary(0.0, var, df, confidence)["mdd"]


def planned_mdd(x: np.ndarray, seeds: int, items: int, confidence: float = 0.95) -> float:
    """The minimum detectable difference (80% power) a design with `seeds` x `items` would have, given the
    variance components estimated from a pilot (seeds x items) table of per-item differences `x` (S >= 2):
    each expected mean square at the new sizes, then the same variance and df as the analysis itself.
    For planning a run's size from a pilot's spread; it reads no difference, only the variances."""
    components = variance_components(x)
    if seeds < 2 or items < 2:
        raise ValueError("planning needs a pilot with >= 2 seeds and a design with >= 2 seeds and >= 2 items")
    return _mdd_at(components, seeds, items, confidence)


def design_to_detect(x: np.ndarray, target: float, confidence: float = 0.95, max_seeds: int = 20,
                     max_items: int = 100_000) -> dict:
    """How a (seeds x items) pilot of per-item differences would reach an mdd <= `target`: the fewest seeds at its
    items, and the fewest items at its seeds (None where none up to the caps does). Planned as planned_mdd does,
    from variance components estimated once.
    At fixed seeds the mdd is not monotone in items: its standard error levels off at the seeds' share while the
    Satterthwaite df falls towards S - 1, so the search finds the best item count on a grid first and bisects
    only below it, where the mdd falls."""
    components = variance_components(x)
    S, I = np.atleast_2d(x).shape

    def mdd(seeds: int, items: int) -> float:
        return _mdd_at(components, seeds, items, confidence)

    plan = {"target": target, "max_seeds": max_seeds, "max_items": max_items}
    plan["seeds_at_n_test"] = next((s for s in range(2, max_seeds + 1) if mdd(s, I) <= target), None)
    grid = np.unique(np.geomspace(2, max_items, 60).astype(int))
    best = int(grid[np.argmin([mdd(S, int(n)) for n in grid])])
    items = None
    if mdd(S, best) <= target:
        lo, hi = 2, best
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if mdd(S, mid) <= target else (mid + 1, hi)
        items = lo
    plan["items_at_n_seeds"] = items
    return plan


def t_summary(point: float, var: float, df: float, confidence: float) -> dict:
    """Interval, two-sided p and minimum detectable difference from one t distribution."""
    se = math.sqrt(max(var, 0.0))
    q = float(stats.t.ppf(0.5 + confidence / 2, df))
    mdd = (q + float(stats.t.ppf(POWER, df))) * se
    if se == 0.0:  # every seed and item gave the same difference: no sampling variation left to test against
        return {"ci": [point, point], "p_value": 1.0 if point == 0 else 0.0, "se": 0.0, "df": df, "mdd": 0.0,
                "degenerate": True}
    p = float(2 * stats.t.sf(abs(point) / se, df))
    return {"ci": [point - q * se, point + q * se], "p_value": min(1.0, p), "se": se, "df": df, "mdd": mdd}


def model_score(metric: str, preds: np.ndarray, refs: np.ndarray, confidence: float) -> dict:
    """One model's score: mean over seeds, its interval (seeds and items random), and each seed's value."""
    preds, refs = np.atleast_2d(np.asarray(preds)), np.asarray(refs)
    point = seed_mean(metric, preds, refs)
    var, df = crossed_variance(item_scores(metric, preds, refs))
    s = t_summary(point, var, df, confidence)
    ci = [max(0.0, s["ci"][0]), min(1.0, s["ci"][1])]  # every metric here is a share: the interval stays in [0, 1]
    return {"mean": point, "ci": ci, "seeds": per_seed(metric, preds, refs), "se": s["se"], "df": s["df"]}


def paired_difference(metric: str, preds_a: np.ndarray, preds_b: np.ndarray, refs: np.ndarray, n_resamples: int = 0,
                      confidence: float = 0.95, seed: int = 0) -> dict:
    """b minus a (e.g. domain minus general) over paired (seeds x items) predictions.

    Returns mean, ci, p_value, includes_zero (a public API: other tools call it), plus se, df, mdd
    (the difference this design detects with 80% power at this confidence) and per-seed differences.
    `n_resamples` and `seed` are kept for callers of the bootstrap version; the analysis is exact.
    """
    a, b, refs = np.atleast_2d(np.asarray(preds_a)), np.atleast_2d(np.asarray(preds_b)), np.asarray(refs)
    if a.shape != b.shape:
        raise ValueError(f"paired predictions need the same shape (seeds x items): {a.shape} vs {b.shape}")
    point = seed_mean(metric, b, refs) - seed_mean(metric, a, refs)
    var, df = crossed_variance(item_differences(metric, a, b, refs))
    s = t_summary(point, var, df, confidence)
    ci = s["ci"]
    return {"mean": point, "ci": ci, "p_value": s["p_value"], "includes_zero": bool(ci[0] <= 0 <= ci[1]),
            "se": s["se"], "df": s["df"], "mdd": s["mdd"], "method": "crossed random effects (seeds x items), t",
            "seeds": [y - x for x, y in zip(per_seed(metric, a, refs), per_seed(metric, b, refs))]}


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjustment (controls the family-wise error rate under any dependence)."""
    m = len(p_values)
    order = np.argsort(p_values, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted.tolist()


def paired_document_bootstrap(nll_a, units_a, nll_b, units_b, n_resamples: int, confidence: float, seed: int = 0,
                              stat: str = "ratio") -> dict:
    """Paired interval for a held-out ratio statistic of model b against model a, documents resampled.

    Per document: summed NLL and its unit count (tokens for perplexity, bytes x ln 2 for bits per byte).
    stat 'ratio': exp(NLL_b/units_b) / exp(NLL_a/units_a) (a perplexity ratio; 1 = no change);
    stat 'difference': NLL_b/units_b - NLL_a/units_a (bits per byte). Percentile interval; the two-sided
    p-value is twice the share of resamples on the far side of 'no change', so the two agree (up to the
    interpolation of the percentile at the boundary).
    """
    arrs = [np.asarray(v, dtype=float) for v in (nll_a, units_a, nll_b, units_b)]
    n = len(arrs[0])
    if n < 2 or any(len(v) != n for v in arrs):
        raise ValueError("per-document arrays need at least two documents, all of equal length")
    if not all(np.all(np.isfinite(v)) for v in arrs) or min(arrs[1].sum(), arrs[3].sum()) <= 0 or n_resamples < 1:
        raise ValueError("per-document sums must be finite, unit totals positive and n_resamples >= 1")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1 / n), size=n_resamples).astype(float)  # (resamples x documents)

    def statistic(w):
        ra, rb = (w @ arrs[0]) / (w @ arrs[1]), (w @ arrs[2]) / (w @ arrs[3])
        return np.exp(rb - ra) if stat == "ratio" else rb - ra

    point = float(statistic(np.ones(n)))
    boot = statistic(counts)
    null = 1.0 if stat == "ratio" else 0.0
    alpha = 1 - confidence
    lo, hi = (float(x) for x in np.quantile(boot, [alpha / 2, 1 - alpha / 2]))
    # (k + 1) / (B + 1): a bootstrap p-value is never exactly 0 — it is below the resolution of B resamples
    tail = min(np.sum(boot <= null), np.sum(boot >= null))
    p = min(1.0, 2 * (tail + 1) / (n_resamples + 1)) if np.any(boot != null) else 1.0
    return {"mean": point, "ci": [lo, hi], "p_value": float(p), "includes_zero": bool(lo <= null <= hi),
            "null_value": null, "documents": n, "method": "paired bootstrap over documents"}
