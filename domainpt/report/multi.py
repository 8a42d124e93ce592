"""Several finished runs in one report: e.g. the three domains, or one domain at several replay ratios.

    domainpt compare runs/medical runs/legal runs/financial --to runs/comparison

Reads each RUN_DIR/compare/results.json (the single-run contract) and writes, under --to,
results.json (kind "multi_run", schema_version 1: runs[] with name, domain, cost and per-task
difference), report.md, report.html and the cost-vs-gain plot.
"""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from domainpt.errors import DomainptError
from domainpt.manifest import atomic_write_json, atomic_write_text, versions
from domainpt.report import plots
from domainpt.report.render import Section, to_html, to_markdown
from domainpt.report.stats import holm

SCHEMA_VERSION = 1


def load_run(run_dir: Path) -> dict:
    path = Path(run_dir) / "compare" / "results.json"
    if not path.is_file():
        raise DomainptError(f"{run_dir}: no compare/results.json (run `domainpt run RECIPE` for it first)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DomainptError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None


def _cost(r: dict) -> tuple[float, str]:
    """Pre-training compute of a run as (GPU-hours, how it was obtained)."""
    c = r["cost"]
    if c.get("pretrain_gpu_hours"):
        return c["pretrain_gpu_hours"], "measured GPU-hours"
    est = c.get("pretrain_gpu_hours_estimate", c.get("pretrain_gpu_hours_estimate_at_40pct_mfu"))
    return est or 0.0, f"estimated {c.get('gpu_for_estimate', 'GPU')}-hours"


def summarise(run_dir: Path, r: dict) -> dict:
    cost, basis = _cost(r)
    p = r["perplexity"]
    return {"run_dir": str(run_dir), "name": r["name"], "domain": r["domain"],
            "replay_share": r["recipe"]["data"]["replay_share"], "pretrain_tokens": r["cost"]["pretrain_tokens"],
            "pretrain_flops": r["cost"]["pretrain_flops"], "gpu_hours": cost, "gpu_hours_basis": basis,
            "domain_ppl": p["domain"], "general_ppl": p.get("general"),
            "tasks": {n: {"metric": t["metric"], "difference": t["difference"],
                          "general_model": t["general_model"]["finetuned"]["mean"], "domain_model": t["domain_model"]["finetuned"]["mean"],
                          **({"difference_vs_control": t["difference_vs_control"]} if "difference_vs_control" in t else {})}
                      for n, t in r["tasks"].items()}}


def adjust_across_runs(runs: list[dict]) -> None:
    """Holm across every run's task comparisons: more runs in one report means more chances of a false 'win'."""
    family = [d for r in runs for t in r["tasks"].values() for d in (t["difference"], t.get("difference_vs_control")) if d]
    for d, adj in zip(family, holm([d["p_value"] for d in family])):
        d["p_adjusted_across_runs"] = adj


def compare_runs(run_dirs: list[str], out: Path) -> dict:
    if len(run_dirs) < 2:
        raise DomainptError("comparing runs needs at least two run folders")
    runs = [summarise(Path(d), load_run(Path(d))) for d in run_dirs]
    adjust_across_runs(runs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"schema_version": SCHEMA_VERSION, "kind": "multi_run", "runs": runs, "versions": versions(),
           "command": "domainpt " + " ".join(shlex.quote(a) for a in sys.argv[1:])}
    points = [{"name": f"{r['name']}:{n}", "cost": r["gpu_hours"], "gain": t["difference"]["mean"], "ci": t["difference"]["ci"],
               "cost_unit": "pre-training GPU-hours (" + r["gpu_hours_basis"].split(" ")[0] + ")"}
              for r in runs for n, t in r["tasks"].items()]
    secs = [Section("Runs", [f"{len(runs)} runs, each compared with its own general model under identical fine-tuning. "
                             "Differences are domain minus general after LoRA, with their intervals."],
                    (["run", "domain", "replay", "tokens", "GPU-hours", "domain ppl (general → domain)", "general ppl (forgetting)"],
                     [[r["name"], r["domain"], f"{r['replay_share']:.0%}", f"{r['pretrain_tokens']:,}", f"{r['gpu_hours']:.3g} ({r['gpu_hours_basis']})",
                       f"{r['domain_ppl']['general_model']:.2f} → {r['domain_ppl']['domain_model']:.2f}",
                       f"{r['general_ppl']['general_model']:.2f} → {r['general_ppl']['domain_model']:.2f}" if r["general_ppl"] else "—"]
                      for r in runs])),
            Section("Tasks", ["Points: domain minus general after LoRA; an interval that includes 0 is no reliable difference. "
                              "p in parentheses is Holm-adjusted across every comparison of this report."],
                    (["run", "task", "metric", "general + LoRA", "domain + LoRA", "difference [interval]", "p"],
                     [[r["name"], n, t["metric"], f"{100 * t['general_model']:.1f}", f"{100 * t['domain_model']:.1f}",
                       f"{100 * t['difference']['mean']:+.1f} [{100 * t['difference']['ci'][0]:+.1f}, {100 * t['difference']['ci'][1]:+.1f}]",
                       f"{t['difference']['p_value']:.3f} (Holm {t['difference']['p_adjusted_across_runs']:.3f})"]
                      for r in runs for n, t in r["tasks"].items()]),
                    [("cost versus gain", plots.cost_vs_gain(points, out / "cost_vs_gain.png"))]),
            Section("Reproducibility", [f"Command: `{res['command']}`", "Run folders: " + ", ".join(r["run_dir"] for r in runs),
                                        "Each run's own report (recipe, data hashes, stage commands) is in RUN_DIR/compare/."])]
    title = "domainpt comparison: " + ", ".join(r["name"] for r in runs)
    atomic_write_json(out / "results.json", res)
    atomic_write_text(out / "report.md", to_markdown(title, secs))
    atomic_write_text(out / "report.html", to_html(title, secs))
    return res
