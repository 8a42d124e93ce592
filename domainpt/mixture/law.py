"""Continual pre-training laws for one model size: held-out loss as a function of training tokens D and the share r
of the mixture that is the loss's own kind of text (the domain share for domain loss, the replay share for general
loss: each loss falls with more of its own text, as D-CPT's figures draw them).

    dcpt  Que et al. 2024 (D-CPT Law, arXiv 2406.01375), its preferred form with N fixed (A/N^alpha folds into E),
          eps also in the token term: with r^eta a share of 0 (no replay) would have no token dependence left, and
          that is where general loss moves most (forgetting):
              L = E + B (r + eps)^eta / D^beta + C / (r + eps)^gamma
    cmr   Gu et al. 2024 (CMR law, arXiv 2407.17467): per mixture, a power law in tokens; its coefficients here vary
          linearly with r, so that one fit covers every share (and can be asked about a share it was not fitted on):
              L = (E0 + E1 r) + (A0 + A1 r) / D^alpha

B, A0 and A1 may be negative: general loss *rises* with tokens when little general text is replayed (forgetting),
which a falling power law cannot draw. D is measured in `d_unit` tokens (the longest pilot's) so every parameter is
O(1). Both are fitted as the papers do: the Huber loss of log-loss residuals, minimised by L-BFGS from several starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy.optimize import minimize

HUBER_DELTA = 1e-3  # on log-loss residuals (Chinchilla's and D-CPT's choice): points off the law by >0.1% count linearly


@dataclass(frozen=True)
class Form:
    name: str
    formula: str
    params: tuple[str, ...]
    curve: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]  # (params, d, r) -> loss
    starts: Callable[[np.ndarray], list[np.ndarray]]                  # observed losses -> initial params
    bounds: Callable[[np.ndarray], list[tuple]]                       # observed losses -> L-BFGS-B bounds


def _dcpt(p, d, r):
    e, b, beta, eta, c, gamma, eps = p
    return e + b * (r + eps) ** eta / d ** beta + c / (r + eps) ** gamma


def _dcpt_starts(y):
    lo = float(np.min(y))
    return [np.array([0.9 * lo, sign * 0.05 * lo, beta, eta, 0.02 * lo, gamma, 0.1])
            for sign in (1, -1) for beta in (0.3, 1.0) for eta, gamma in ((0.0, 0.2), (0.5, 1.0))]


def _dcpt_bounds(y):
    hi = 10 * float(np.max(y))
    return [(1e-6, hi), (-hi, hi), (0, 4), (0, 4), (0, hi), (0, 4), (1e-3, 1)]


def _cmr(p, d, r):
    e0, e1, a0, a1, alpha = p
    return e0 + e1 * r + (a0 + a1 * r) / d ** alpha


def _cmr_starts(y):
    mid = float(np.mean(y))
    return [np.array([mid, 0.0, sign * 0.05 * mid, 0.0, alpha]) for sign in (1, -1) for alpha in (0.3, 1.0)]


def _cmr_bounds(y):
    hi = 10 * float(np.max(y))
    return [(-hi, hi), (-hi, hi), (-hi, hi), (-hi, hi), (0, 4)]


FORMS = {
    "dcpt": Form("dcpt", "L = E + B*(r+eps)^eta/D^beta + C/(r+eps)^gamma", ("E", "B", "beta", "eta", "C", "gamma", "eps"),
                 _dcpt, _dcpt_starts, _dcpt_bounds),
    "cmr": Form("cmr", "L = (E0 + E1*r) + (A0 + A1*r)/D^alpha", ("E0", "E1", "A0", "A1", "alpha"),
                _cmr, _cmr_starts, _cmr_bounds),
}


class FitError(ValueError):
    """No parameters of the form give a curve through the points (every start failed)."""


@dataclass
class Fit:
    form: Form
    params: np.ndarray
    d_unit: float
    r2: float
    objective: float

    def predict(self, tokens, share) -> np.ndarray:
        d = np.asarray(tokens, float) / self.d_unit
        return self.form.curve(self.params, d, np.asarray(share, float))

    def as_dict(self) -> dict:
        return {"form": self.form.name, "formula": self.form.formula, "d_unit": self.d_unit,
                "params": {k: round(float(v), 6) for k, v in zip(self.form.params, self.params)},
                "r2": round(self.r2, 6) if np.isfinite(self.r2) else None}


def huber(x: np.ndarray, delta: float = HUBER_DELTA) -> np.ndarray:
    a = np.abs(x)
    return np.where(a <= delta, 0.5 * x * x, delta * (a - 0.5 * delta))


def _objective(form: Form, d, r, log_y):
    def f(p):
        pred = form.curve(p, d, r)
        if not np.all(np.isfinite(pred)) or np.any(pred <= 0):
            return 1e6  # a loss is positive: such parameters are no curve at all
        return float(np.sum(huber(np.log(pred) - log_y)))
    return f


def fit(form: Form | str, tokens, share, loss, d_unit: float | None = None, starts: list[np.ndarray] | None = None) -> Fit:
    """The least-Huber fit of `form` to points (tokens, share, loss): the best of L-BFGS-B runs from several starts."""
    form = FORMS[form] if isinstance(form, str) else form
    tokens, r, y = (np.asarray(a, float) for a in (tokens, share, loss))
    if len(y) < len(form.params):
        raise ValueError(f"{form.name}: {len(y)} points cannot fit {len(form.params)} parameters")
    d_unit = d_unit or float(tokens.max())
    d, log_y = tokens / d_unit, np.log(y)
    f = _objective(form, d, r, log_y)
    best = None
    for p0 in starts or form.starts(y):
        res = minimize(f, p0, method="L-BFGS-B", bounds=form.bounds(y), options={"maxiter": 2000})
        if best is None or res.fun < best.fun:
            best = res
    if best is None or best.fun >= 1e6 or not np.all(np.isfinite(best.x)):
        raise FitError(f"{form.name}: no curve of this form fits the {len(y)} points (every start failed)")
    pred = form.curve(best.x, d, r)
    ss_res, ss_tot = float(np.sum((y - pred) ** 2)), float(np.sum((y - y.mean()) ** 2))
    return Fit(form, best.x, d_unit, 1 - ss_res / ss_tot if ss_tot > 0 else float("nan"), float(best.fun))


def leave_one_share_out(form: Form | str, tokens, share, loss) -> float:
    """Mean relative error of each interior share's last point (most tokens) predicted by a fit on the other shares:
    how well the form interpolates to a share it has not seen, which is what a recommendation between the piloted
    shares asks of it (leaving out the smallest or largest share would test extrapolation in the share instead)."""
    tokens, share, loss = (np.asarray(a, float) for a in (tokens, share, loss))
    if len(np.unique(share)) < 3:
        raise FitError(f"leaving a share out needs 3 shares or more, got {len(np.unique(share))}")
    errors = []
    for s in np.unique(share)[1:-1]:
        out = share == s
        f = fit(form, tokens[~out], share[~out], loss[~out], d_unit=float(tokens.max()))
        last = np.flatnonzero(out)[np.argmax(tokens[out])]
        errors.append(abs(float(f.predict(tokens[last], s)) / loss[last] - 1))
    return float(np.mean(errors))


def choose_form(tokens, share, loss, forms=tuple(FORMS)) -> tuple[str, dict[str, float]]:
    """The form with the lowest leave-one-share-out error (not the highest R^2: a form with more parameters always fits
    its own points better), and every form's error (None: too few points, or no fit, once a share is left out)."""
    errors = {}
    for name in forms:  # None: too few points for the form once a share is left out
        fits = len(loss) - np.max(np.unique(share, return_counts=True)[1]) >= len(FORMS[name].params)
        try:
            errors[name] = leave_one_share_out(name, tokens, share, loss) if fits else None
        except FitError:
            errors[name] = None
    known = {k: e for k, e in errors.items() if e is not None}
    if not known:
        raise FitError("no form fits the pilots once a share is left out (too few points, or none that fits)")
    return min(known, key=known.get), errors
