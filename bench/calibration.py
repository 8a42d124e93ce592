"""Is the comparison's p-value honest? Null comparisons simulated from a demo's real prediction matrices.

    python bench/calibration.py                       # the shipped matrices (bench/data/), 2,000 nulls
    python bench/calibration.py --run runs/medical-demo [--task NAME]  # matrices of any finished run
    python bench/calibration.py --save                 # refresh bench/data/ from --run

A generative model is fitted to a task's fine-tuned predictions (every model x seed is one "run"):
  - item difficulty: each test item's logit of being right, from its share of right answers over all runs;
  - run behaviour: each run's accuracy *per true label* (a run that drifted to its own default label is
    right on every item of that label and wrong elsewhere) as a logit shift, and the labels it answers
    when wrong.
A null comparison draws test items (with replacement) and, per seed, a run profile for model a and an
independent one for model b from the same pool: no true difference, realistic seed and item variation.
A planted comparison shifts model b's logits so its expected accuracy is 5 points higher.

Printed side by side, on the same simulated data: the false-positive rate at alpha = 0.05 and the power
of domainpt's procedure (crossed random effects, t with Satterthwaite df), of a two-level bootstrap
(seeds and items resampled, percentile interval) and of the old procedure (items only, seeds
averaged). The last line is `ratio <false-positive rate of domainpt's procedure>` (goal 0.03-0.07).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy.optimize import brentq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from domainpt.report.stats import paired_difference  # noqa: E402

SHIPPED = ROOT / "bench" / "data" / "demo_prediction_matrices.json"
ALPHA = 0.05


def read_run(run: Path, task: str | None = None) -> dict:
    """{task, refs (items), preds (runs x items)} of a finished run's task (default: its first)."""
    pred_root = run / "evaluate" / "predictions"
    task = task or sorted(p.name for p in pred_root.iterdir())[0]
    preds, refs, seeds = [], None, 0
    for model in sorted(p.name for p in (pred_root / task).iterdir()):
        files = sorted((pred_root / task / model).glob("seed*.jsonl"))
        seeds = len(files)
        for f in files:
            rows = [json.loads(l) for l in open(f)]
            preds.append([r["pred"] for r in rows])
            refs = [r["answer"] for r in rows]
    return {"run": str(run), "task": task, "refs": refs, "preds": preds, "seeds_per_model": seeds}


def logit(p):
    p = np.clip(p, 1e-4, 1 - 1e-4)
    return np.log(p / (1 - p))


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def fit(m: dict) -> dict:
    """Item difficulties, per-run per-label logit shifts and per-run wrong-answer label distributions."""
    refs, preds = np.asarray(m["refs"]), np.asarray(m["preds"])
    n_labels = int(max(refs.max(), preds.max())) + 1
    right = preds == refs[None]
    beta = logit((right.sum(0) + 0.5) / (right.shape[0] + 1))
    shift = np.zeros((len(preds), n_labels))
    wrong_dist = np.zeros((len(preds), n_labels))
    for r in range(len(preds)):
        for lab in range(n_labels):
            items = refs == lab
            if not items.any():
                continue
            target = (right[r, items].sum() + 0.5) / (items.sum() + 1)  # smoothed accuracy of run r on label lab
            shift[r, lab] = brentq(lambda g: sigmoid(beta[items] + g).mean() - target, -30, 30)
        wrong = preds[r][~right[r]]
        wrong_dist[r] = np.bincount(wrong, minlength=n_labels) + 0.5  # smoothed: every label stays possible
    return {"beta": beta, "refs": refs, "shift": shift, "wrong": wrong_dist / wrong_dist.sum(1, keepdims=True),
            "n_labels": n_labels}


def planted_delta(g: dict, points: float) -> float:
    """The logit shift that raises a run's expected accuracy by `points` (averaged over runs and items)."""
    base_logits = g["beta"][None] + g["shift"][:, g["refs"]]
    base = sigmoid(base_logits).mean()
    return brentq(lambda d: sigmoid(base_logits + d).mean() - base - points, -10, 10)


def simulate(g: dict, rng, seeds: int, items: int, delta: float = 0.0):
    """Predictions (seeds x items) of models a and b, and the references, for one simulated comparison."""
    idx = rng.integers(0, len(g["refs"]), items)
    refs, beta = g["refs"][idx], g["beta"][idx]
    out = []
    for model_shift in (0.0, delta):
        runs = rng.integers(0, len(g["shift"]), seeds)
        p_right = sigmoid(beta[None] + g["shift"][runs][:, refs] + model_shift)
        right = rng.random(p_right.shape) < p_right
        preds = np.empty((seeds, items), dtype=int)
        for s, r in enumerate(runs):
            w = np.tile(g["wrong"][r], (items, 1))
            w[np.arange(items), refs] = 0  # a wrong answer is any label but the right one
            cum = np.cumsum(w / w.sum(1, keepdims=True), 1)
            wrong_pick = (rng.random(items)[:, None] > cum).sum(1)
            preds[s] = np.where(right[s], refs, np.minimum(wrong_pick, g["n_labels"] - 1))
        out.append(preds)
    return out[0], out[1], refs


def bootstrap_rejects(d: np.ndarray, rng, n_resamples: int, two_level: bool) -> bool:
    """Percentile interval of the mean difference excludes zero? Items only (the old procedure), or
    seeds and items resampled independently (a two-level, 'pigeonhole' bootstrap)."""
    S, I = d.shape
    u = rng.multinomial(I, np.full(I, 1 / I), size=n_resamples)  # item counts per resample
    w = rng.multinomial(S, np.full(S, 1 / S), size=n_resamples) if two_level else np.ones((n_resamples, S), dtype=int)
    means = np.einsum("bi,bi->b", w @ d, u) / (w.sum(1) * I)
    lo, hi = np.quantile(means, [ALPHA / 2, 1 - ALPHA / 2])
    return bool(lo > 0 or hi < 0)


def rates(g: dict, rng, n: int, seeds: int, items: int, delta: float, n_resamples: int) -> dict:
    hits = {"domainpt (crossed random effects, t)": 0, "two-level bootstrap (seeds x items)": 0, "old: items-only bootstrap": 0}
    for _ in range(n):
        a, b, refs = simulate(g, rng, seeds, items, delta)
        res = paired_difference("accuracy", a, b, refs)
        sign_ok = delta == 0 or res["mean"] > 0  # power counts a detection in the planted direction
        hits["domainpt (crossed random effects, t)"] += res["p_value"] < ALPHA and sign_ok
        d = (b == refs[None]).astype(float) - (a == refs[None]).astype(float)
        hits["two-level bootstrap (seeds x items)"] += bootstrap_rejects(d, rng, n_resamples, True) and (delta == 0 or d.mean() > 0)
        hits["old: items-only bootstrap"] += bootstrap_rejects(d, rng, n_resamples, False) and (delta == 0 or d.mean() > 0)
    return {k: v / n for k, v in hits.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, default=None, help="a finished run folder (default: the shipped matrices)")
    ap.add_argument("--task", default=None, help="which task of --run (default: the first)")
    ap.add_argument("--save", action="store_true", help="write --run's matrices to bench/data/ for later runs")
    ap.add_argument("--nulls", type=int, default=2000)
    ap.add_argument("--planted", type=int, default=500)
    ap.add_argument("--seeds", type=int, default=None, help="seeds per model (default: the run's)")
    ap.add_argument("--items", type=int, default=None, help="test items (default: the run's)")
    ap.add_argument("--points", type=float, default=0.05, help="planted difference (accuracy)")
    ap.add_argument("--resamples", type=int, default=1000)
    args = ap.parse_args()
    m = read_run(args.run, args.task) if args.run else json.loads(SHIPPED.read_text())
    if args.save:
        SHIPPED.parent.mkdir(exist_ok=True)
        SHIPPED.write_text(json.dumps(m))
    g = fit(m)
    n_runs = len(m["preds"])
    seeds = args.seeds or m.get("seeds_per_model") or n_runs // 2
    items = args.items or len(m["refs"])
    acc = (np.asarray(m["preds"]) == np.asarray(m["refs"])[None]).mean(1)
    print(f"matrices: {m.get('run', 'shipped')} task {m['task']}: {n_runs} runs x {len(m['refs'])} items, "
          f"run accuracies {np.round(acc, 3).tolist()}")
    print(f"simulated design: {seeds} seeds per model, {items} items; alpha {ALPHA}")
    rng = np.random.default_rng(0)
    t0 = time.time()
    null = rates(g, rng, args.nulls, seeds, items, 0.0, args.resamples)
    delta = planted_delta(g, args.points)
    power = rates(g, rng, args.planted, seeds, items, delta, args.resamples)
    print(f"{'procedure':40s} {'false-positive rate':>20s} {'power at +' + format(100 * args.points, '.0f') + ' points':>22s}")
    for k in null:
        print(f"{k:40s} {null[k]:20.3f} {power[k]:22.3f}")
    se = np.sqrt(0.05 * 0.95 / args.nulls)
    print(f"({args.nulls} nulls: a rate's standard error is about {se:.3f}; {args.planted} planted; {time.time() - t0:.0f} s)")
    print(f"ratio {null['domainpt (crossed random effects, t)']:.3f}")


if __name__ == "__main__":
    main()
