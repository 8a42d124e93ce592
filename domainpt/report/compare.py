"""Stage 5: general vs domain model — results.json, report.md, report.html and plots.

    domainpt compare recipes/demo/legal.yaml

results.json (schema_version 1) keeps at least: perplexity.{domain,general}.{general_model,domain_model},
tasks.<name>.{metric, general_model.finetuned.{mean,ci,seeds}, domain_model.finetuned..., difference.{mean,ci}},
stages.<stage>.{tokens, wall_s}. Everything else is added information.
"""
from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from domainpt.eval.metrics import QA_METRICS
from domainpt.flops import PEAK_FLOPS
from domainpt.manifest import (STAGES, atomic_write_json, atomic_write_text, file_sha256, read_manifest, require_done, stage_dir,
                               versions, write_manifest)
from domainpt.report import plots
from domainpt.report.render import Section, to_html, to_markdown
from domainpt.report.stats import bootstrap_mean, paired_difference

SCHEMA_VERSION = 1


def _preds(path: Path, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, references) per example; for qa the per-example scores of `metric` (references unused)."""
    rows = [json.loads(l) for l in open(path)]
    if metric in QA_METRICS:
        return np.array([r[metric] for r in rows], dtype=float), np.zeros(len(rows))
    return np.array([r["pred"] for r in rows]), np.array([r["answer"] for r in rows])


def task_results(recipe) -> dict:
    ev = stage_dir(recipe, "evaluate") / "predictions"
    rc = recipe.report
    out = {}
    for task in recipe.tasks:
        t = {"metric": task.metric}
        stacks = {}
        for model in ("general_model", "domain_model"):
            per_seed = [_preds(ev / task.name / model / f"seed{s}.jsonl", task.metric) for s in recipe.lora.seeds]
            preds = np.stack([p for p, _ in per_seed])
            refs = per_seed[0][1]
            stacks[model] = preds
            t[model] = {"finetuned": bootstrap_mean(task.metric, preds, refs, rc.bootstrap_samples, rc.confidence)}
            zs = ev / task.name / model / "zero_shot.jsonl"
            if zs.is_file():
                zp, _ = _preds(zs, task.metric)
                t[model]["zero_shot"] = bootstrap_mean(task.metric, zp[None], refs, rc.bootstrap_samples, rc.confidence)
                t["shots"] = recipe.eval.few_shot  # 0: the zero_shot entries are zero-shot; k: k-shot
                stacks[model + "_zs"] = zp[None]
        t["n_test"] = int(len(refs))
        # What always answering the most frequent test label would score: the floor a model must beat.
        t["majority_baseline"] = float(np.bincount(refs.astype(int)).max() / len(refs)) if task.metric == "accuracy" else None
        t["difference"] = paired_difference(task.metric, stacks["general_model"], stacks["domain_model"], refs,
                                            rc.bootstrap_samples, rc.confidence)
        if "general_model_zs" in stacks:
            t["zero_shot_difference"] = paired_difference(task.metric, stacks["general_model_zs"], stacks["domain_model_zs"],
                                                          refs, rc.bootstrap_samples, rc.confidence)
        out[task.name] = t
    return out


def stage_costs(recipe) -> dict:
    out = {}
    for s in STAGES[:-1]:
        m = read_manifest(recipe, s) or {}
        out[s] = {"tokens": int(m.get("tokens", 0)), "wall_s": float(m.get("wall_s", 0.0))}
        for k in ("flops", "gpu_hours", "processes", "device", "steps"):
            if k in m:
                out[s][k] = m[k]
    return out


def data_hashes(recipe) -> dict:
    """SHA-256 of everything the comparison rests on: the training tokens, held-out texts, task splits."""
    prep = stage_dir(recipe, "prepare")
    files = [prep / "train" / "tokens.bin", *sorted(prep.glob("heldout_*.jsonl")), *sorted((prep / "tasks").rglob("*.jsonl"))]
    return {str(f.relative_to(prep)): file_sha256(f) for f in files if f.is_file()}


def build_results(recipe) -> dict:
    scores = json.loads((stage_dir(recipe, "evaluate") / "scores.json").read_text())
    ppl = {k: {m: v[m]["ppl"] for m in v} for k, v in scores["perplexity"].items()}
    bpb = {k: {m: v[m]["bpb"] for m in v} for k, v in scores["perplexity"].items()}
    prep_stats = json.loads((stage_dir(recipe, "prepare") / "stats.json").read_text())
    pre = read_manifest(recipe, "pretrain")
    stages = stage_costs(recipe)
    tasks = task_results(recipe)
    gains = [t["difference"]["mean"] for t in tasks.values()]
    pre_flops = pre.get("flops", 0.0)
    peak = PEAK_FLOPS.get(recipe.report.gpu)
    est_gpu_h = pre_flops / (peak * 0.4) / 3600 if peak else None  # at 40% MFU, a good large-scale figure
    mfu = recipe.report.assumed_mfu
    est_gpu_h_assumed = pre_flops / (peak * mfu) / 3600 if peak else None
    curve = [json.loads(l) for l in open(stage_dir(recipe, "pretrain") / "metrics.jsonl")] \
        if (stage_dir(recipe, "pretrain") / "metrics.jsonl").is_file() else []
    measured_mfu = [m["mfu"] for m in curve if m.get("mfu")]
    gpu_h = pre.get("gpu_hours") or est_gpu_h_assumed
    mean_gain = float(np.mean(gains)) if gains else None
    return {
        "schema_version": SCHEMA_VERSION,
        "name": recipe.name,
        "domain": recipe.domain,
        "perplexity": ppl,
        "bits_per_byte": bpb,
        "perplexity_method": next(iter(next(iter(scores["perplexity"].values())).values())).get("method", "causal"),
        "forgetting": {"general_ppl_ratio": ppl["general"]["domain_model"] / ppl["general"]["general_model"] if "general" in ppl else None,
                       "domain_ppl_ratio": ppl["domain"]["domain_model"] / ppl["domain"]["general_model"]},
        "tasks": tasks,
        "stages": stages,
        "cost": {"pretrain_tokens": pre.get("tokens", 0), "pretrain_flops": pre_flops,
                 "pretrain_wall_s": pre.get("wall_s"), "pretrain_device": pre.get("device"),
                 "pretrain_gpu_hours": pre.get("gpu_hours", 0.0),
                 "gpu_for_estimate": recipe.report.gpu,
                 "pretrain_gpu_hours_estimate_at_40pct_mfu": est_gpu_h,
                 "mean_task_gain": mean_gain,
                 "mean_task_gain_per_pflop": mean_gain / (pre_flops / 1e15) if gains and pre_flops else None,
                 "assumed_mfu": mfu, "pretrain_gpu_hours_estimate": est_gpu_h_assumed,
                 "measured_mfu": float(np.median(measured_mfu)) if measured_mfu else None,
                 "gpu_hours_basis": "measured" if pre.get("gpu_hours") else f"estimate on {recipe.report.gpu} at {mfu:.0%} MFU",
                 "mean_task_gain_per_gpu_hour": mean_gain / gpu_h if gains and gpu_h else None},
        "data": {k: prep_stats.get(k) for k in ("documents_in", "documents_out", "tokens_out", "exact_duplicates_removed",
                                                   "near_duplicates_removed", "contaminated_found", "contaminated_removed",
                                                   "pii_replaced", "replay_share_actual", "sources")},
        "pretrain_eval_history": pre.get("eval_history", []),
        "training_curve": [{"step": m["step"], "loss": m["loss"]} for m in curve],
        "data_hashes": data_hashes(recipe),
        "stage_commands": {s: (read_manifest(recipe, s) or {}).get("command") for s in STAGES[:-1]},
        "confidence": recipe.report.confidence,
        "versions": versions(),
        "recipe": recipe.to_dict(),
        "command": "domainpt " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
    }


def ppl_label(res: dict) -> str:
    """'perplexity' for causal LMs; an encoder's is a pseudo-perplexity (masked one token at a time)."""
    return "pseudo-perplexity" if res.get("perplexity_method") == "pseudo-log-likelihood" else "perplexity"


def _fmt(e: dict | None, pct: bool = True) -> str:
    if not e:
        return "—"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(e['mean'])} [{f(e['ci'][0])}, {f(e['ci'][1])}]"


def sections(res: dict, out: Path) -> list[Section]:
    level = int(round(res["confidence"] * 100))
    p = res["perplexity"]
    secs = []
    verdict = []
    for name, t in res["tasks"].items():
        d = t["difference"]
        sig = ("the interval includes zero: no reliable difference" if d["includes_zero"]
               else ("the domain model is better" if d["mean"] > 0 else "the general model is better"))
        verdict.append(f"**{name}** ({t['metric']}, {t['n_test']} test examples, {len(t['general_model']['finetuned']['seeds'])} seeds): "
                       f"domain minus general after LoRA = {100 * d['mean']:+.1f} points, {level}% interval "
                       f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}], permutation p = {d['p_value']:.3f} — {sig}.")
    dom = p["domain"]
    pl = ppl_label(res)
    verdict.insert(0, f"Held-out **domain** {pl}: general model {dom['general_model']:.2f} → domain model {dom['domain_model']:.2f} "
                      f"({100 * (dom['domain_model'] / dom['general_model'] - 1):+.1f}%).")
    if "general" in p:
        g = p["general"]
        verdict.insert(1, f"Held-out **general** {pl} (forgetting): {g['general_model']:.2f} → {g['domain_model']:.2f} "
                          f"({100 * (g['domain_model'] / g['general_model'] - 1):+.1f}%).")
    secs.append(Section("How to read this report", [
        f"The *general model* is the checkpoint the run started from; the *domain model* is the same checkpoint after continued "
        f"pre-training on {res['domain']} text. Both were then fine-tuned on each task with LoRA (small adapter weights) under "
        "identical settings, and scored on the same held-out test examples.",
        "Perplexity measures how well a model predicts held-out text (lower is better): domain text shows what was gained, "
        "general text what was forgotten. Task differences are domain minus general in percentage points; the interval is "
        f"a {level}% bootstrap interval — when it includes zero, the data do not show a reliable difference."]))
    secs.append(Section("Verdict", verdict + [
        "Both models were fine-tuned with the same LoRA settings, seeds, data order and step budget; only the starting "
        "weights differ. Intervals: percentile bootstrap over test examples, paired across models and averaged over seeds."]))
    rows = []
    for kind in p:
        rows.append([f"{kind} held-out", f"{p[kind]['general_model']:.3f}", f"{p[kind]['domain_model']:.3f}",
                     f"{res['bits_per_byte'][kind]['general_model']:.4f}", f"{res['bits_per_byte'][kind]['domain_model']:.4f}"])
    note = (" Both models are masked LMs: pseudo-perplexity and pseudo bits per byte come from masking each token in turn "
            "(Salazar et al. 2020); compare them with each other, not with a causal LM's perplexity." if pl != "perplexity" else "")
    secs.append(Section("Perplexity and forgetting", ["Lower is better. Bits per byte are comparable across tokenizers." + note],
                        (["text", "ppl general", "ppl domain", "bpb general", "bpb domain"], rows)))
    rows = []
    for name, t in res["tasks"].items():
        rows.append([name + (f" ({t['shots']}-shot before LoRA)" if t.get("shots") else ""), t["metric"],
                     _fmt(t["general_model"].get("zero_shot")), _fmt(t["domain_model"].get("zero_shot")),
                     _fmt(t["general_model"]["finetuned"]), _fmt(t["domain_model"]["finetuned"]),
                     _fmt(t["difference"]), f"{t['difference']['p_value']:.3f}"])
    imgs = [("task scores", plots.task_bars(res["tasks"], out / "tasks.png"))]
    base = [f"{n}: always answering the most frequent label scores {100 * t['majority_baseline']:.1f}" for n, t in res["tasks"].items()
            if t.get("majority_baseline") is not None]
    secs.append(Section("Tasks", [f"Scores in percent with {level}% intervals." + (" Majority-label baseline — " + "; ".join(base) + "." if base else "")],
                        (["task", "metric", "general zero-shot", "domain zero-shot", "general + LoRA", "domain + LoRA",
                          "difference (domain - general)", "p"], rows), imgs))
    if res.get("training_curve"):
        secs.append(Section("Training curve", ["Training loss, and held-out perplexities measured during continued pre-training "
                                               "(the forgetting curve: general perplexity should not climb)."],
                            images=[("training curves", plots.training_curves(res["training_curve"], res["pretrain_eval_history"],
                                                                              out / "training.png"))]))
    c, st = res["cost"], res["stages"]
    rows = [[s, f"{v['tokens']:,}", f"{v['wall_s']:.1f}", f"{v.get('flops', 0):.3g}" if v.get("flops") else "—",
             f"{v.get('gpu_hours', 0):.3f}"] for s, v in st.items()]
    est = c.get("pretrain_gpu_hours_estimate", c["pretrain_gpu_hours_estimate_at_40pct_mfu"])
    cost_lines = [f"Continued pre-training processed {c['pretrain_tokens']:,} tokens ({c['pretrain_flops']:.3g} FLOPs) "
                  f"on {c['pretrain_device']}" + (f", at a median MFU of {c['measured_mfu']:.1%}." if c.get("measured_mfu") else
                                                  f"; the same FLOPs on one {c['gpu_for_estimate']} at {c.get('assumed_mfu', 0.4):.0%} MFU "
                                                  f"would take {(est or 0):.3g} GPU-hours.")]
    if c.get("mean_task_gain_per_gpu_hour") is not None:
        cost_lines.append(f"Mean task gain: {100 * c['mean_task_gain']:+.2f} points, i.e. {100 * c['mean_task_gain_per_gpu_hour']:+.3g} "
                          f"points per GPU-hour of pre-training ({c.get('gpu_hours_basis', '')}); "
                          f"{100 * c['mean_task_gain_per_pflop']:+.3g} points per PFLOP.")
    secs.append(Section("Cost", cost_lines, (["stage", "tokens", "wall s", "FLOPs", "GPU-hours"], rows)))
    d = res["data"]
    secs.append(Section("Data", [f"{d['documents_in']:,} documents read, {d['documents_out']:,} trained on ({d['tokens_out']:,} tokens); "
                                 f"{d['exact_duplicates_removed']} exact and {d['near_duplicates_removed']} near duplicates removed; "
                                 f"{d['contaminated_found']} documents overlapped evaluation texts ({d['contaminated_removed']} dropped); "
                                 f"PII replaced: {d['pii_replaced']}; replay share {d['replay_share_actual']:.1%}. "
                                 "See prepare/data_card.md."]))
    repro = [f"Report command: `{res['command']}`"]
    repro += [f"{s}: `{cmd}`" for s, cmd in res.get("stage_commands", {}).items() if cmd]
    repro += [f"Versions: {json.dumps(res['versions'])}"]
    repro += ["Data (SHA-256): " + "; ".join(f"{k} {v[:16]}" for k, v in res.get("data_hashes", {}).items())]
    secs.append(Section("Reproducibility", repro + ["The recipe:"], code=json.dumps(res["recipe"], indent=2)))
    return secs


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
        lines.append(f"[domainpt] {name} ({t['metric']}): general+LoRA {100 * t['general_model']['finetuned']['mean']:.1f}, "
                     f"domain+LoRA {100 * t['domain_model']['finetuned']['mean']:.1f}, difference {100 * d['mean']:+.1f} "
                     f"[{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]" + (" (interval includes 0)" if d["includes_zero"] else ""))
    lines.append(f"[domainpt] report: {out / 'report.html'} (also report.md, results.json)")
    return lines
