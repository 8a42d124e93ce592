"""The mixture planner against the runs it plans (issue 31): `domainpt plan-mixture` on a recipe under each token axis
(mixture_plan.token_axis: the same pilots, kept between the two), then continued pre-training at the full budget at
the recommended replay shares and at the recipe's own, each full run's held-out checks set against each plan's
predictions (extrapolation in tokens, beyond the pilots), side by side.

    python bench/mixture_validation.py recipes/demo/medical.yaml out_dir=runs/mixture-medical \\
        'mixture_plan.replay_shares=[0.0,0.05,0.1,0.25,0.5]' mixture_plan.holdout_share=0.1 \\
        mixture_plan.pilot_steps=10 mixture_plan.eval_points=5 train.max_steps=40 --processes 2

The full runs are `domainpt prepare` + `domainpt pretrain` with the overrides, data.replay_share set, compare.control
none and train.ppl_max_tokens = eval.ppl_max_tokens (the pilots' held-out checks), checks every max_steps / 4 steps,
in OUT/full_replay_<share>/, one process each; finished ones are kept (rerun the command after a stop). Prints each
plan's own validation, then per share and check: each axis's prediction [interval at the budget where the plan has
one], the measured loss, and the relative error (predicted / measured - 1). Each plan is kept as
OUT/plan_mixture/plan_<axis>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domainpt.config import load_recipe  # noqa: E402
from domainpt.mixture.analysis import KINDS, mean_loss  # noqa: E402
from domainpt.mixture.law import FORMS  # noqa: E402
from domainpt.mixture.stage import token_axis, tokens_per_step  # noqa: E402


def domainpt(*args: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "domainpt", *args], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode:
        sys.exit(f"domainpt {' '.join(args[:2])} failed (exit {r.returncode})")
    return time.perf_counter() - t0


def predicted(plan: dict, axis, kind: str, step: int, total: int, replay: float) -> float:
    """The plan's law at a check `step` of a `total`-step full run on the recipe's schedule."""
    f = plan["fits"][kind]
    share = 1 - replay if kind == "domain" else replay
    x = axis.at(step, total, axis.run)
    return float(FORMS[f["form"]].curve(list(f["params"].values()), x / f["d_unit"], share))


def make_plans(a, recipe, out: Path) -> dict:
    plans = {}
    for kind in a.axes.split(","):
        seconds = domainpt("plan-mixture", a.recipe, *a.overrides, f"mixture_plan.token_axis={kind}", "--processes", a.processes)
        plan = json.loads((out / "plan_mixture" / "plan.json").read_text())
        (out / "plan_mixture" / f"plan_{kind}.json").write_text(json.dumps(plan, indent=1))
        rec = plan["recommendation"]
        print(f"plan-mixture, token_axis={kind}: {seconds:.0f} s for {len(plan['pilots'])} pilots (kept ones skipped); "
              f"recommended {rec['override']}")
        for k in KINDS:
            v, x = plan["validation"][k], plan["validation"]["extrapolation"][k]
            print(f"  validation {k}: held-out share {plan['validation']['replay_share']:g} predicted {v['predicted']:.4f} "
                  f"measured {v['measured']:.4f} ({v['relative_error']:+.2%}); last check from earlier ones, worst pilot "
                  f"(share {x['replay_share']:g}) {x['predicted']:.4f} vs {x['measured']:.4f} ({x['relative_error']:+.2%}); "
                  f"form {plan['fits'][k]['form']}")
        plans[kind] = plan
    return plans


def full_run(a, recipe, out: Path, share: float) -> tuple[Path, float]:
    run = out / f"full_replay_{share:g}"
    extra = [f"out_dir={run}", f"data.replay_share={share}", "compare.control=none",
             f"train.ppl_max_tokens={recipe.eval.ppl_max_tokens}", f"train.eval_every={max(1, recipe.train.max_steps // 4)}"]
    domainpt("prepare", a.recipe, *a.overrides, *extra)
    domainpt("pretrain", a.recipe, *a.overrides, *extra)
    wall = sum(json.loads((run / s / "manifest.json").read_text())["wall_s"] for s in ("prepare", "pretrain"))
    return run, wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--processes", default="1", help="for plan-mixture's pilots")
    ap.add_argument("--axes", default="tokens,lr_area", help="mixture_plan.token_axis values, one plan each")
    a = ap.parse_args()
    recipe = load_recipe(a.recipe, a.overrides)
    out = Path(recipe.out_dir)
    plans = make_plans(a, recipe, out)
    axis = token_axis(recipe, tokens_per_step(recipe))
    shares = list(dict.fromkeys([*(p["recommendation"]["replay_share"] for p in plans.values()), recipe.data.replay_share]))
    total = recipe.train.max_steps
    header = "".join(f"{f'predicted ({k})':>28} {'rel. error':>10}" for k in plans)
    print(f"\n{'replay share':>12} {'loss':>8} {'step':>5} {'tokens':>8} {header} {'measured':>9}")
    for share in (s for s in shares if s is not None):
        run, wall = full_run(a, recipe, out, share)
        actual = json.loads((run / "prepare" / "stats.json").read_text())["replay_share_actual"]
        checks = {r["step"]: r for r in map(json.loads, (run / "pretrain" / "heldout.jsonl").read_text().splitlines())}
        for step, row in sorted(checks.items()):
            if not step:
                continue
            for kind in KINDS:
                m, cells = mean_loss(row[kind]), ""
                for name, plan in plans.items():
                    p = predicted(plan, replace(axis, kind=name), kind, step, total, actual)
                    rec = plan["recommendation"]
                    iv = rec.get("interval", {}).get(f"{kind}_loss") if share == rec["replay_share"] and step == total else None
                    cells += f"{f'{p:.4f}' + (f' [{iv[0]:.4f}, {iv[1]:.4f}]' if iv else ''):>28} {p / m - 1:>+10.2%}"
                print(f"{share:>12g} {kind:>8} {step:>5} {row['tokens_seen']:>8,} {cells} {m:>9.4f}")
        print(f"{'':>12} (prepare + pretrain {wall:.0f} s)")
    base, rec = next(iter(plans.values()))["base"], next(iter(plans.values()))["recommendation"]
    print(f"base model: domain {base['domain_loss']:.4f}, general {base['general_loss']:.4f}; bound on general loss "
          f"{rec['general_bound']:.4f}; budget {rec['budget_tokens']:,} tokens = {rec['extrapolation_factor']:.1f}x the "
          "longest pilot's")


if __name__ == "__main__":
    main()
