"""Stage 5: general vs domain model — results.json, report.md, report.html and plots.

    domainpt compare recipes/demo/legal.yaml

With compare.control on, a third arm (control_model: the general model continued on general text for the same
budget) is scored beside the two, and every task gains domain - control differences.

results.json (schema_version 1) keeps at least: perplexity.{domain,general}.{general_model,domain_model},
tasks.<name>.{metric, general_model.finetuned.{mean,ci,seeds}, domain_model.finetuned..., difference.{mean,ci}},
stages.<stage>.{tokens, wall_s}. Everything else is added information.
"""
from __future__ import annotations

import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from domainpt.config import QA_METRICS
from domainpt.flops import PEAK_FLOPS
from domainpt.manifest import (atomic_write_json, atomic_write_text, file_sha256, read_manifest, require_done, run_stages,
                               stage_dir, versions, write_manifest)
from domainpt.report.arms import ARMS, COMPARISONS
from domainpt.report.harness import general_task_forgetting, harness_results
from domainpt.report.render import to_html, to_markdown
from domainpt.report.sections import ppl_label, sections
from domainpt.report.stats import (POWER, design_to_detect, holm, item_differences, model_score, paired_difference,
                                   paired_document_bootstrap)

SCHEMA_VERSION = 1




def read_predictions(path: Path, metric: str, field: str = "pred") -> tuple[np.ndarray, np.ndarray]:
    """(predictions, references) per example; for qa the per-example scores of `metric` (references unused)."""
    rows = [json.loads(l) for l in open(path)]
    if metric in QA_METRICS:
        return np.array([r[metric] for r in rows], dtype=float), np.zeros(len(rows))
    return np.array([r[field] for r in rows]), np.array([r["answer"] for r in rows])


def prediction_matrices(recipe, task, arms: list[str], field: str = "pred") -> tuple[dict, dict, np.ndarray]:
    """Fine-tuned (seeds x items) and zero-shot (1 x items) predictions per arm, and the references."""
    ev = stage_dir(recipe, "evaluate") / "predictions" / task.name
    finetuned, zero_shot, refs = {}, {}, None
    for arm in arms:
        per_seed = [read_predictions(ev / arm / f"seed{s}.jsonl", task.metric, field) for s in recipe.lora.seeds]
        finetuned[arm], refs = np.stack([p for p, _ in per_seed]), per_seed[0][1]
        if (ev / arm / "zero_shot.jsonl").is_file():
            zero_shot[arm] = read_predictions(ev / arm / "zero_shot.jsonl", task.metric, field)[0][None]
    return finetuned, zero_shot, refs


def score_entries(metric: str, finetuned: dict, zero_shot: dict, refs: np.ndarray, confidence: float) -> dict:
    """Per arm: fine-tuned and zero-shot scores; then every paired difference (domain - general, domain - control)."""
    t = {arm: {"finetuned": model_score(metric, preds, refs, confidence)} for arm, preds in finetuned.items()}
    for arm, preds in zero_shot.items():
        t[arm]["zero_shot"] = model_score(metric, preds, refs, confidence)
    for key, a, b in COMPARISONS:
        if a in finetuned and b in finetuned:
            t[key] = paired_difference(metric, finetuned[a], finetuned[b], refs, confidence=confidence)
        if a in zero_shot and b in zero_shot:
            t["zero_shot_" + key] = paired_difference(metric, zero_shot[a], zero_shot[b], refs, confidence=confidence)
    return t


def task_results(recipe, arms: list[str]) -> dict:
    conf = recipe.report.confidence
    out = {}
    for task in recipe.tasks:
        finetuned, zero_shot, refs = prediction_matrices(recipe, task, arms)
        t = {"metric": task.metric, **score_entries(task.metric, finetuned, zero_shot, refs, conf)}
        if zero_shot:
            t["shots"] = recipe.eval.few_shot  # 0: the zero_shot entries are zero-shot; k: k-shot
        t["n_test"], t["n_seeds"] = int(len(refs)), len(recipe.lora.seeds)
        lc = recipe.lora.for_task(task)
        t["lora"] = {"steps": lc.steps, "batch_size": lc.batch_size}  # the budget every model's adapters got here
        # What always answering the most frequent test label would score: the floor a model must beat.
        t["majority_baseline"] = float(np.bincount(refs.astype(int)).max() / len(refs)) if task.metric == "accuracy" else None
        t["minimum_detectable_difference"] = t["difference"]["mdd"]
        if t["difference"]["mdd"] > recipe.report.target_difference and t["n_seeds"] > 1:  # planned from this run's spread
            d = item_differences(task.metric, finetuned["general_model"], finetuned["domain_model"], refs)
            t["design_to_detect"] = design_to_detect(d, recipe.report.target_difference, conf)
        if t["majority_baseline"] is not None:  # a task neither model learned says nothing about pre-training
            t["learned"] = all(t[arm]["finetuned"]["ci"][0] > t["majority_baseline"] for arm in finetuned)
        if task.metric == "accuracy" and task.scoring == "likelihood" and task.type != "qa":
            # acc_norm: the choice with the highest log-likelihood per byte (less biased towards short choices)
            ft_n, zs_n, _ = prediction_matrices(recipe, task, arms, field="pred_norm")
            t["acc_norm"] = score_entries("accuracy", ft_n, zs_n, refs, conf)
        out[task.name] = t
    return out


def heldout_intervals(scores: dict, arms: list[str], n_resamples: int, confidence: float) -> dict:
    """Per kind of held-out text: paired document-bootstrap intervals for the perplexity ratio and the
    bits-per-byte difference of each comparison (absent for a scores.json without per-document sums)."""
    out = {}
    for kind, per_model in scores["perplexity"].items():
        for key, a, b in COMPARISONS:
            if a not in arms or b not in arms or "per_document" not in per_model.get(a, {}) \
                    or len(per_model[a]["per_document"]["nll"]) < 2:  # one document: nothing to resample
                continue
            da, db = per_model[a]["per_document"], per_model[b]["per_document"]
            ln2 = math.log(2)
            out.setdefault(kind, {})[key] = {
                "ppl_ratio": paired_document_bootstrap(da["nll"], da["tokens"], db["nll"], db["tokens"], n_resamples, confidence),
                "bpb_difference": paired_document_bootstrap(da["nll"], [ln2 * x for x in da["bytes"]], db["nll"],
                                                            [ln2 * x for x in db["bytes"]], n_resamples, confidence,
                                                            stat="difference")}
    return out


def adjust_for_multiple_comparisons(res: dict, alpha: float) -> None:
    """Holm across every p-value the report shows: each comparison gets `p_adjusted` (raw `p_value` kept)."""
    found = []

    def walk(node, path):
        if isinstance(node, dict):
            if "p_value" in node and "ci" in node:
                found.append((path, node))
                return
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else k)

    # acc_norm and the perplexity ratio are descriptive companions of acc and bits per byte: not in the family
    walk({"tasks": {n: {k: v for k, v in t.items() if k != "acc_norm"} for n, t in res["tasks"].items()},
          "heldout_intervals": {kind: {key: {"bpb_difference": c["bpb_difference"]} for key, c in per.items()}
                                for kind, per in res.get("heldout_intervals", {}).items()},
          # a harness task's first metric (acc before acc_norm); its other metrics are descriptive
          # (a task run for a named group or tag is descriptive: its group's documents are already in)
          "harness": {task: {m: {k: e[k] for k, _, _ in COMPARISONS if k in e} for m, e in entries.items()
                             if e["primary"] and "group" not in e}
                      for task, entries in res.get("harness", {}).items()}}, "")
    for (_, node), adj in zip(found, holm([n["p_value"] for _, n in found])):
        node["p_adjusted"] = adj
        node["reliable"] = adj < alpha
    res["multiple_comparisons"] = {"method": "holm", "alpha": alpha, "family_size": len(found),
                                   "comparisons": [p for p, _ in found]}


def stage_costs(recipe) -> dict:
    out = {}
    for s in run_stages(recipe)[:-1]:
        m = read_manifest(recipe, s) or {}
        out[s] = {"tokens": int(m.get("tokens", 0)), "wall_s": float(m.get("wall_s", 0.0))}
        for k in ("flops", "gpu_hours", "processes", "device", "steps", "workers", "job_seconds", "parallel_efficiency"):
            if k in m:
                out[s][k] = m[k]
    return out


def data_hashes(recipe) -> dict:
    """SHA-256 of everything the comparison rests on: the training tokens, held-out texts, task splits."""
    prep = stage_dir(recipe, "prepare")
    files = [prep / "train" / "tokens.bin", *sorted(prep.glob("heldout_*.jsonl")), *sorted((prep / "tasks").rglob("*.jsonl"))]
    return {str(f.relative_to(prep)): file_sha256(f) for f in files if f.is_file()}


def cost_summary(recipe, pre: dict, gains: list[float]) -> dict:
    """Pre-training compute (measured, or estimated at an MFU) and the task gain per unit of it."""
    pre_flops = pre.get("flops", 0.0)
    peak = PEAK_FLOPS.get(recipe.report.gpu)
    est_gpu_h = pre_flops / (peak * 0.4) / 3600 if peak else None  # at 40% MFU, a good large-scale figure
    mfu = recipe.report.assumed_mfu
    est_gpu_h_assumed = pre_flops / (peak * mfu) / 3600 if peak else None
    curve_path = stage_dir(recipe, "pretrain") / "metrics.jsonl"
    measured_mfu = [m["mfu"] for m in (json.loads(l) for l in open(curve_path)) if m.get("mfu")] if curve_path.is_file() else []
    gpu_h = pre.get("gpu_hours") or est_gpu_h_assumed
    mean_gain = float(np.mean(gains)) if gains else None
    return {"pretrain_tokens": pre.get("tokens", 0), "pretrain_flops": pre_flops,
            "pretrain_wall_s": pre.get("wall_s"), "pretrain_device": pre.get("device"),
            "pretrain_gpu_hours": pre.get("gpu_hours", 0.0),
            "gpu_for_estimate": recipe.report.gpu,
            "pretrain_gpu_hours_estimate_at_40pct_mfu": est_gpu_h,
            "mean_task_gain": mean_gain,
            "mean_task_gain_per_pflop": mean_gain / (pre_flops / 1e15) if gains and pre_flops else None,
            "assumed_mfu": mfu, "pretrain_gpu_hours_estimate": est_gpu_h_assumed,
            "measured_mfu": float(np.median(measured_mfu)) if measured_mfu else None,
            "gpu_hours_basis": "measured" if pre.get("gpu_hours") else f"estimate on {recipe.report.gpu} at {mfu:.0%} MFU",
            "mean_task_gain_per_gpu_hour": mean_gain / gpu_h if gains and gpu_h else None}


def forgetting(ppl: dict, bpb: dict, arm: str = "domain_model") -> dict:
    """`arm`'s held-out scores as a share of the general model's (< 1: better). Bits per byte compare across
    tokenizers; per-token perplexity only when both models tokenize alike."""
    out = {}
    for kind in ("general", "domain"):
        if kind in ppl and arm in ppl[kind]:
            out[f"{kind}_ppl_ratio"] = ppl[kind][arm] / ppl[kind]["general_model"]
            out[f"{kind}_bpb_ratio"] = bpb[kind][arm] / bpb[kind]["general_model"]
    out.setdefault("general_ppl_ratio", None)
    return out


def build_results(recipe) -> dict:
    scores = json.loads((stage_dir(recipe, "evaluate") / "scores.json").read_text())
    arms = [a for a in ARMS if a in scores["perplexity"]["domain"]]
    ppl = {k: {m: v[m]["ppl"] for m in v} for k, v in scores["perplexity"].items()}
    bpb = {k: {m: v[m]["bpb"] for m in v} for k, v in scores["perplexity"].items()}
    prep_stats = json.loads((stage_dir(recipe, "prepare") / "stats.json").read_text())
    pre = read_manifest(recipe, "pretrain")
    curve_path = stage_dir(recipe, "pretrain") / "metrics.jsonl"
    curve = [json.loads(l) for l in open(curve_path)] if curve_path.is_file() else []
    tasks = task_results(recipe, arms)
    toks = scores.get("tokenizers", {})
    res = {
        "schema_version": SCHEMA_VERSION,
        "name": recipe.name,
        "domain": recipe.domain,
        "arms": arms,
        "perplexity": ppl,
        "bits_per_byte": bpb,
        "perplexity_method": next(iter(next(iter(scores["perplexity"].values())).values())).get("method", "causal"),
        # per-token perplexities of different vocabularies do not compare: the verdict then uses bits per byte
        "tokenizers_differ": len({json.dumps(v, sort_keys=True) for v in toks.values()}) > 1,
        "heldout_intervals": heldout_intervals(scores, arms, recipe.report.bootstrap_samples, recipe.report.confidence),
        "forgetting": forgetting(ppl, bpb),
        "tasks": tasks,
        "stages": stage_costs(recipe),
        "cost": cost_summary(recipe, pre, [t["difference"]["mean"] for t in tasks.values()]),
        "data": {k: prep_stats.get(k) for k in ("documents_in", "documents_out", "tokens_out", "exact_duplicates_removed",
                                                   "near_duplicates_removed", "contaminated_found", "contaminated_removed",
                                                   "pii_replaced", "replay_share_actual", "sources", "reading_comprehension")},
        "pretrain_eval_history": pre.get("eval_history", []),
        "training_curve": [{"step": m["step"], "loss": m["loss"]} for m in curve],
        "data_hashes": data_hashes(recipe),
        "stage_commands": {s: (read_manifest(recipe, s) or {}).get("command") for s in run_stages(recipe)[:-1]},
        "confidence": recipe.report.confidence,
        "statistics": {"tasks": "crossed random effects over seeds and test items, paired across models; t interval "
                                "and p with Satterthwaite degrees of freedom (report/stats.py)",
                       "heldout": f"paired bootstrap over held-out documents ({recipe.report.bootstrap_samples} resamples)",
                       "minimum_detectable_difference_power": POWER},
        "versions": versions(),
        "recipe": recipe.to_dict(),
        "command": "domainpt " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }
    if prep_stats.get("reading_comprehension_summary"):  # data.transform: what the exercises added (no samples)
        res["data"]["transform"] = recipe.data.transform
        res["data"]["reading_comprehension_summary"] = {k: v for k, v in prep_stats["reading_comprehension_summary"].items()
                                                        if k != "samples"}
    if "control_model" in arms:
        res["forgetting_control"] = forgetting(ppl, bpb, "control_model")
    if "harness" in scores:  # lm-evaluation-harness tasks, paired per document like domainpt's own
        res["harness"] = harness_results(stage_dir(recipe, "evaluate"), arms, recipe.report.confidence)
        summary = json.loads((stage_dir(recipe, "evaluate") / "harness" / arms[0] / "summary.json").read_text())
        res["harness_settings"] = {k: summary.get(k) for k in ("lm_eval_version", "fewshot", "limit", "purpose", "versions")}
        res["forgetting"].update(general_task_forgetting(res["harness"], recipe.report.confidence))
    adjust_for_multiple_comparisons(res, 1 - recipe.report.confidence)
    return res


def render_report(res: dict, out: Path) -> None:
    """report.md and report.html (with PNG plots, inlined in the HTML) from a results.json dict alone."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    secs = sections(res, out)
    title = f"domainpt report: {res['name']} ({res['domain']})"
    atomic_write_text(out / "report.md", to_markdown(title, secs))
    atomic_write_text(out / "report.html", to_html(title, secs))


def run_compare(recipe) -> dict:
    started = time.time()
    require_done(recipe, "evaluate", "compare")
    out = stage_dir(recipe, "compare")
    out.mkdir(parents=True, exist_ok=True)
    res = build_results(recipe)
    atomic_write_json(out / "results.json", res)
    render_report(res, out)
    return write_manifest(recipe, "compare", started, tokens=0)


def summary_lines(recipe) -> list[str]:
    """The verdict in a few terminal lines, read back from results.json."""
    out = stage_dir(recipe, "compare")
    r = json.loads((out / "results.json").read_text())
    p, pl = r["perplexity"], ppl_label(r)
    lines = [f"[domainpt] held-out domain {pl}: general model {p['domain']['general_model']:.2f} -> domain model {p['domain']['domain_model']:.2f}"]
    if "general" in p:
        lines.append(f"[domainpt] held-out general {pl} (forgetting): {p['general']['general_model']:.2f} -> {p['general']['domain_model']:.2f}")
    for name, t in r["tasks"].items():
        d = t["difference"]
        line = (f"[domainpt] {name} ({t['metric']}): general+LoRA {100 * t['general_model']['finetuned']['mean']:.1f}, "
                f"domain+LoRA {100 * t['domain_model']['finetuned']['mean']:.1f}, difference {100 * d['mean']:+.1f} "
                f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]" + (" (interval includes 0)" if d["includes_zero"] else ""))
        if "control_model" in t:
            c = t["difference_vs_control"]
            line += (f"; control+LoRA {100 * t['control_model']['finetuned']['mean']:.1f}, domain - control {100 * c['mean']:+.1f} "
                     f"[{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}]")
        lines.append(line)
    for task, entries in r.get("harness", {}).items():  # lm-eval tasks the recipe named: their first metric
        for metric, e in entries.items():
            if e["primary"] and "group" not in e and "difference" in e:
                d = e["difference"]
                lines.append(f"[domainpt] lm-eval {task} ({metric}{', forgetting' if e['purpose'] == 'forgetting' else ''}): "
                             f"general {100 * e['general_model']['mean']:.1f}, domain {100 * e['domain_model']['mean']:.1f}, "
                             f"difference {100 * d['mean']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]")
    lines.append(f"[domainpt] report: {out / 'report.html'} (also report.md, results.json)")
    return lines
