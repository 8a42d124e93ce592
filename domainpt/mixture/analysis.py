"""From the pilots' held-out losses to the plan: a law per loss (domain, general), chosen by leave-one-share-out error
on the fitted shares; the two validations; the recommendation at the budget; bootstrap intervals on every prediction.

    interpolation   the law fitted without mixture_plan.holdout_share predicts that pilot's last check
    extrapolation   the law fitted on the other pilots' checks but their last predicts each of their last checks (in
                    tokens; the held-out pilot is in neither); the worst pilot is reported, every pilot is listed
    length          (mixture_plan.length_check) the law fitted on every ordinary pilot predicts the checks of a pilot
                    twice as long, on its own stretched schedule: extrapolation across schedule lengths, which the
                    recommendation relies on and the two checks above cannot see
    recommendation  the law refitted on every ordinary pilot, the held-out one included (not the long one, so that the
                    length check validates this very fit): at the budget, the share
                    (between the smallest and largest piloted, in steps of 0.01) with the lowest predicted domain loss
                    whose predicted general loss stays within the base model's x (1 + max_general_increase); none when
                    no share does

The law's D is mixture_plan.token_axis (mixture/axis.py): by default the tokens weighted by the learning rate, each
pilot check at its step of the pilot's schedule and the budget at the end of the full run's.

A pilot's share in the law is the share prepare measured in its training data (stats.json: replay_share_actual),
which is the requested one unless the general text ran short; its name and the held-out share stay the requested.
relative_error = predicted / measured - 1: positive when the law predicts a higher loss than was measured.

Losses are mean NLL per token (nats) over the held-out documents. An interval is the bootstrap percentile interval over
held-out documents (resampled with replacement, the same documents for every pilot and check, every law refitted),
with the forms kept as chosen and the recommended share kept fixed.
"""
from __future__ import annotations

import math

import numpy as np

from domainpt.mixture.axis import TokenAxis
from domainpt.mixture.law import Fit, FitError, choose_form, fit

KINDS = ("domain", "general")
GRID_STEP = 0.01


def own_share(kind: str, replay: np.ndarray) -> np.ndarray:
    """A loss's law runs on the share of its own kind of text: the domain share for domain loss, the replay share for
    general loss."""
    return 1 - replay if kind == "domain" else replay


class Points:
    """The pilots' checks after step 0 as flat arrays, with each kind's loss over the documents `docs` (all of them by
    default: a bootstrap passes a resample)."""

    def __init__(self, pilots: list[dict], axis: TokenAxis, docs: dict | None = None):
        rows = [(p, c, c is p["checks"][-1]) for p in pilots for c in p["checks"] if c["tokens"] > 0]
        self.axis = axis
        self.share = np.array([p["replay_share"] for p, _, _ in rows])  # as requested: names the pilot
        self.replay = np.array([p.get("replay_share_actual", p["replay_share"]) for p, _, _ in rows])  # as trained
        self.tokens = np.array([c["tokens"] for _, c, _ in rows], float)
        self.x = np.array([axis.pilot_check(c["step"], p["steps"]) for p, c, _ in rows])  # the law's D (mixture/axis.py)
        self.last = np.array([last for _, _, last in rows])
        self.length = np.array([p.get("length_factor", 1) > 1 for p, _, _ in rows])  # the length check's pilot
        self.steps = np.array([c["step"] for _, c, _ in rows])
        self.loss = {k: np.array([mean_loss(c[k], (docs or {}).get(k)) for _, c, _ in rows]) for k in KINDS}
        # the base model: every pilot's step-0 check scores it on the same documents (the ordinary pilots' are used, so
        # that the length check's pilot changes nothing but the length check)
        firsts = [p["checks"][0] for p in pilots if p["checks"][0]["tokens"] == 0 and p.get("length_factor", 1) == 1]
        self.base = {k: float(np.mean([mean_loss(c[k], (docs or {}).get(k)) for c in firsts])) if firsts else None
                     for k in KINDS}


def mean_loss(check: dict, docs: np.ndarray | None = None) -> float:
    nll, tokens = np.asarray(check["nll"], float), np.asarray(check["tokens"], float)
    if docs is not None:
        nll, tokens = nll[docs], tokens[docs]
    return float(nll.sum() / tokens.sum())


def estimate(pts: Points, forms: dict, holdout: float, budget: float, mp, share: float | None = None,
             starts: dict | None = None) -> dict:
    """Every number of the plan from one set of losses. `share` fixes the recommended share (bootstrap resamples
    are read at the point estimate's); `starts` seeds each fit with the point estimate's parameters.

    Fits: interpolation and extrapolation (see the module's text), and `all` on every ordinary pilot: the
    recommendation's, which also predicts the length check's pilot. That pilot stays out of every fit, so the check
    validates the very fit the recommendation extrapolates with."""
    regular = ~pts.length
    hold = np.isclose(pts.share, holdout) & regular
    d_unit = float(pts.x[regular].max())
    out, fits = {"interpolation": {}, "extrapolation": {}, "length": {}}, {}
    for kind in KINDS:
        own, y = own_share(kind, pts.replay), pts.loss[kind]

        def fitted(mask, which):
            s = [starts[(kind, which)]] if starts else None
            return fit(forms[kind], pts.x[mask], own[mask], y[mask], d_unit, s)

        fits[kind] = {"interpolation": fitted(regular & ~hold, "interpolation"),
                      "extrapolation": fitted(regular & ~hold & ~pts.last, "extrapolation"),
                      "all": fitted(regular, "all")}
        f = fits[kind]
        at = np.flatnonzero(hold & pts.last)[0]
        out["interpolation"][kind] = comparison(float(f["interpolation"].predict(pts.x[at], own[at])), float(y[at]))
        lasts = np.flatnonzero(regular & ~hold & pts.last)
        out["extrapolation"][kind] = [{"replay_share": float(pts.share[i]), "tokens": float(pts.tokens[i]),
                                       **comparison(float(f["extrapolation"].predict(pts.x[i], own[i])), float(y[i]))}
                                      for i in lasts]
        if pts.length.any():
            rows = np.flatnonzero(pts.length)
            checks = [{"step": int(pts.steps[i]), "tokens": float(pts.tokens[i]),
                       **comparison(float(f["all"].predict(pts.x[i], own[i])), float(y[i]))} for i in rows]
            out["length"][kind] = {**checks[-1], "per_check": checks}
    out["fits"] = fits
    out["recommendation"] = recommend(fits["domain"]["all"], fits["general"]["all"], pts, budget, mp, share)
    return out


def comparison(predicted: float, measured: float) -> dict:
    return {"predicted": predicted, "measured": measured, "relative_error": predicted / measured - 1}


def share_grid(pts: Points) -> np.ndarray:
    replay = pts.replay[~pts.length]  # the ordinary pilots' shares: the ones the recommendation's fit saw
    lo, hi = float(replay.min()), float(replay.max())
    grid = np.round(np.arange(lo, hi + GRID_STEP / 2, GRID_STEP), 6)
    return np.unique(np.concatenate([grid, np.unique(replay)]))


def recommend(f_dom: Fit, f_gen: Fit, pts: Points, budget: float, mp, share: float | None) -> dict:
    bound = pts.base["general"] * (1 + mp.max_general_increase)
    grid = share_grid(pts) if share is None else np.array([share])
    at = pts.axis.run_end(budget)
    dom, gen = f_dom.predict(at, 1 - grid), f_gen.predict(at, grid)
    ok = np.flatnonzero(gen <= bound)
    if share is None and not len(ok):
        return {"replay_share": None, "general_bound": bound, "feasible": False,
                "least_general_loss": {"replay_share": float(grid[np.argmin(gen)]), "predicted": float(gen.min())}}
    i = ok[np.argmin(dom[ok])] if share is None else 0
    r = float(grid[i])
    tokens, first = saturation(f_dom, 1 - r, budget, mp.min_gain_per_doubling, pts.axis)
    return {"replay_share": r, "predicted_domain_loss": float(dom[i]), "predicted_general_loss": float(gen[i]),
            "general_bound": bound, "feasible": bool(gen[i] <= bound), "saturation_tokens": tokens,
            "saturation_at_or_below": first}


SATURATION_GRID = 2.0 ** np.arange(-6, 11)  # budget/64 .. budget x 1024, doubling


def saturation(f_dom: Fit, domain_share: float, budget: float, min_gain: float, axis: TokenAxis) -> tuple[float | None, bool]:
    """(the fewest tokens on a doubling grid past which doubling them lowers the predicted domain loss by less than
    `min_gain` of it, whether that is the grid's first point: then it is 'at or below'); None when every doubling on
    the grid still pays. Each is the end of a full run of that many tokens."""
    for k, d in enumerate(budget * SATURATION_GRID):
        now, doubled = (float(f_dom.predict(axis.run_end(t), domain_share)) for t in (d, 2 * d))
        if (now - doubled) / now < min_gain:
            return float(d), k == 0
    return None, False


def choose_forms(pts: Points, holdout: float) -> tuple[dict, dict]:
    """Per loss, the form with the lowest leave-one-share-out error on the fitted shares (the held-out share and the
    length check's pilot unseen)."""
    use = ~np.isclose(pts.share, holdout) & ~pts.length
    forms, errors = {}, {}
    for kind in KINDS:
        forms[kind], errors[kind] = choose_form(pts.x[use], own_share(kind, pts.replay[use]), pts.loss[kind][use])
    return forms, errors


def bootstrap(pilots: list[dict], axis: TokenAxis, forms: dict, point: dict, holdout: float, budget: float, mp,
              kinds=KINDS, seed: int = 0) -> list:
    """mp.bootstrap_samples estimates over resampled held-out documents of `kinds` (the others kept as they are; the
    recommended share and forms fixed, each refit started from the point estimate's parameters); None for a resample
    where a law would not fit."""
    n_docs = {k: len(pilots[0]["checks"][0][k]["nll"]) for k in kinds}
    rng = np.random.default_rng(seed)
    starts = {(k, w): f.params for k in KINDS for w, f in point["fits"][k].items()}
    share = point["recommendation"]["replay_share"]
    out = []
    for _ in range(mp.bootstrap_samples):
        docs = {k: rng.integers(0, n, n) for k, n in n_docs.items()}
        try:
            out.append(estimate(Points(pilots, axis, docs), forms, holdout, budget, mp, share, starts))
        except FitError:
            out.append(None)
    return out


def interval(values: list[float], confidence: float) -> list[float] | None:
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)])
    if not len(v):
        return None
    a = (1 - confidence) / 2
    return [float(np.quantile(v, a)), float(np.quantile(v, 1 - a))]
