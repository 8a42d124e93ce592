"""The mixture planner against the runs it plans (issue 31): `domainpt plan-mixture` on a recipe, then continued
pre-training at the full budget at the recommended replay share and at the recipe's own, each run's final held-out
losses set against the plan's predictions (extrapolation in tokens, beyond the pilots).

    python bench/mixture_validation.py recipes/demo/medical.yaml out_dir=runs/mixture-medical \\
        'mixture_plan.replay_shares=[0.0,0.05,0.1,0.25,0.5]' mixture_plan.holdout_share=0.1 \\
        mixture_plan.pilot_steps=10 mixture_plan.eval_points=5 train.max_steps=40 --processes 2

The full runs are `domainpt prepare` + `domainpt pretrain` with the overrides, data.replay_share set, compare.control
none and train.ppl_max_tokens = eval.ppl_max_tokens (the pilots' held-out checks), in OUT/full_replay_<share>/, one
process each. Prints the plan's own validation, then per share: predicted loss [interval where the plan has one],
measured, relative error (predicted / measured - 1), and the wall times.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from domainpt.config import load_recipe  # noqa: E402
from domainpt.mixture.analysis import KINDS, mean_loss  # noqa: E402
from domainpt.mixture.law import FORMS  # noqa: E402


def domainpt(*args: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "domainpt", *args], cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if r.returncode:
        sys.exit(f"domainpt {' '.join(args[:2])} failed (exit {r.returncode})")
    return time.perf_counter() - t0


def predicted(plan: dict, kind: str, tokens: float, replay: float) -> float:
    f = plan["fits"][kind]
    share = 1 - replay if kind == "domain" else replay
    return float(FORMS[f["form"]].curve(list(f["params"].values()), tokens / f["d_unit_tokens"], share))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("recipe")
    ap.add_argument("overrides", nargs="*")
    ap.add_argument("--processes", default="1", help="for plan-mixture's pilots")
    a = ap.parse_args()
    recipe = load_recipe(a.recipe, a.overrides)
    out = Path(recipe.out_dir)
    plan_s = domainpt("plan-mixture", a.recipe, *a.overrides, "--processes", a.processes)
    plan = json.loads((out / "plan_mixture" / "plan.json").read_text())
    rec = plan["recommendation"]
    print(f"plan-mixture: {plan_s:.0f} s for {len(plan['pilots'])} pilots; recommended {rec['override']}")
    for kind in KINDS:
        v, x = plan["validation"][kind], plan["validation"]["extrapolation"][kind]
        print(f"  validation {kind}: held-out share {plan['validation']['replay_share']:g} predicted {v['predicted']:.4f} "
              f"measured {v['measured']:.4f} ({v['relative_error']:+.2%}); last check from earlier ones, worst pilot "
              f"(share {x['replay_share']:g}) {x['predicted']:.4f} vs {x['measured']:.4f} ({x['relative_error']:+.2%})")
    shares = [s for s in dict.fromkeys([rec["replay_share"], recipe.data.replay_share]) if s is not None]
    every = max(1, recipe.train.max_steps // 4)
    rows = []
    for share in shares:
        run = out / f"full_replay_{share:g}"
        extra = [f"out_dir={run}", f"data.replay_share={share}", "compare.control=none",
                 f"train.ppl_max_tokens={recipe.eval.ppl_max_tokens}", f"train.eval_every={every}"]
        seconds = domainpt("prepare", a.recipe, *a.overrides, *extra) + domainpt("pretrain", a.recipe, *a.overrides, *extra)
        last = [json.loads(l) for l in (run / "pretrain" / "heldout.jsonl").read_text().splitlines()][-1]
        actual = json.loads((run / "prepare" / "stats.json").read_text())["replay_share_actual"]
        for kind in KINDS:
            p, m = predicted(plan, kind, last["tokens_seen"], actual), mean_loss(last[kind])
            iv = rec.get("interval", {}).get(f"{kind}_loss") if share == rec["replay_share"] else None
            rows.append((share, kind, last["tokens_seen"], p, iv, m, seconds))
    print(f"\n{'replay share':>12} {'loss':>8} {'tokens':>8} {'predicted':>26} {'measured':>9} {'rel. error':>10} {'run s':>6}")
    for share, kind, tokens, p, iv, m, seconds in rows:
        ivs = f" [{iv[0]:.4f}, {iv[1]:.4f}]" if iv else ""
        print(f"{share:>12g} {kind:>8} {tokens:>8,} {f'{p:.4f}{ivs}':>26} {m:>9.4f} {p / m - 1:>+10.2%} {seconds:>6.0f}")
    print(f"base model: domain {plan['base']['domain_loss']:.4f}, general {plan['base']['general_loss']:.4f}; "
          f"bound on general loss {rec['general_bound']:.4f}; budget {rec['budget_tokens']:,} tokens = "
          f"{rec['extrapolation_factor']:.1f}x the longest pilot's")


if __name__ == "__main__":
    main()
