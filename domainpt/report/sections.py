"""The single-run report's sections, from a results.json dict alone (so old results re-render)."""
from __future__ import annotations

import json
from pathlib import Path

from domainpt.layout import MODELS
from domainpt.report import plots
from domainpt.report.render import Section

ARM_LABELS = {"general_model": "general", "domain_model": "domain", "control_model": "control"}


def ppl_label(res: dict) -> str:
    """'perplexity' for causal LMs; an encoder's is a pseudo-perplexity (masked one token at a time)."""
    return "pseudo-perplexity" if res.get("perplexity_method") == "pseudo-log-likelihood" else "perplexity"


def fmt_score(e: dict | None, pct: bool = True) -> str:
    if not e:
        return "—"
    f = (lambda x: f"{100 * x:.1f}") if pct else (lambda x: f"{x:.3f}")
    return f"{f(e['mean'])} [{f(e['ci'][0])}, {f(e['ci'][1])}]"


def fmt_diff(d: dict | None) -> str:
    if not d:
        return "—"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}]"


def fmt_p(d: dict | None) -> str:
    if not d:
        return "—"
    return f"{d['p_value']:.3f}" + (f" (Holm {d['p_adjusted']:.3f})" if "p_adjusted" in d else "")


def design_line(plan: dict, n_test: int, seeds: int) -> str:
    """What would detect the report's target difference in domain minus general, planned from this run's variance
    components (a rough estimate: the seeds' variance rests on seeds - 1 degrees of freedom)."""
    target = f"{100 * plan['target']:.1f} points"
    s, i = plan["seeds_at_n_test"], plan["items_at_n_seeds"]
    how = (f"planned from this run's seed and item variance, a rough estimate from {seeds} seeds; "
           "80% power at the unadjusted level")
    if s is None and i is None:
        return (f"Domain minus general: neither up to {plan['max_seeds']} seeds nor more test items alone "
                f"would detect {target} at this spread ({how}).")
    ways = ([f"about {s} seeds at {n_test} items"] if s else []) + ([f"about {i} items at {seeds} seeds"] if i else [])
    tail = "" if i else f"; at {seeds} seeds more items alone would not (the seeds' spread does not shrink with items)"
    return f"To detect {target} in domain minus general: {' or '.join(ways)} ({how}){tail}."


def reading(d: dict, better: str, worse: str) -> str:
    """What a difference says, by its Holm-adjusted p (the same t gives the interval: they agree unadjusted)."""
    p = d.get("p_adjusted", d["p_value"])
    if d.get("reliable", not d["includes_zero"]):
        return f"{better if d['mean'] > 0 else worse} (adjusted p = {p:.3f})"
    if not d["includes_zero"]:
        return f"the interval excludes zero, but not after adjusting for the report's comparisons (adjusted p = {p:.3f})"
    return "no reliable difference (the interval includes zero)"


def task_verdict(name: str, t: dict, level: int) -> list[str]:
    seeds = len(t["general_model"]["finetuned"]["seeds"])
    d = t["difference"]
    budget = f" of {t['lora']['steps']} LoRA steps" if "lora" in t else ""  # results.json before the key: no budget
    lines = [f"**{name}** ({t['metric']}, {t['n_test']} test items, {seeds} seeds{budget}): domain minus general after LoRA = "
             f"{100 * d['mean']:+.1f} points, {level}% interval [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] — "
             + reading(d, "the domain model is better", "the general model is better") + "."]
    c = t.get("difference_vs_control")
    if c:
        lines.append(f"Net of any extra training, domain minus control = {100 * c['mean']:+.1f} points "
                     f"[{100 * c['ci'][0]:+.1f}, {100 * c['ci'][1]:+.1f}] — "
                     + reading(c, "domain text helped beyond more training", "the control did better") + ".")
    mdd = t.get("minimum_detectable_difference")
    if mdd == 0:
        lines.append("Every seed and item gave the same difference, so no minimum detectable difference can be stated.")
    elif mdd is not None:
        lines.append(f"At {t['n_test']} items and {seeds} seeds this comparison detects a difference of about "
                     f"{100 * mdd:.1f} points with 80% power; smaller true effects may go unseen.")
        plan = t.get("design_to_detect")
        if plan:
            lines.append(design_line(plan, t["n_test"], seeds))
    if t.get("learned") is False:
        lines.append(f"Caution: not every fine-tuned model is reliably above the majority baseline "
                     f"({100 * t['majority_baseline']:.1f}); a task the models did not learn says little about pre-training.")
    return lines


def heldout_verdict(res: dict) -> list[str]:
    """Domain gain and forgetting, in bits per byte when the tokenizers differ (per-token perplexity would not compare)."""
    pl, p, b = ppl_label(res), res["perplexity"], res["bits_per_byte"]
    intervals = res.get("heldout_intervals", {})
    use_bpb = res.get("tokenizers_differ", False)
    lines = []
    for kind, what in (("domain", "domain"), ("general", "general (forgetting)")):
        if kind not in p:
            continue
        iv = intervals.get(kind, {}).get("difference", {})
        if use_bpb:
            g, d = b[kind]["general_model"], b[kind]["domain_model"]
            line = f"Held-out **{what}** bits per byte (the tokenizers differ): general model {g:.4f} → domain model {d:.4f}"
            iv = iv.get("bpb_difference")
            line += f" (difference {iv['mean']:+.4f} [{iv['ci'][0]:+.4f}, {iv['ci'][1]:+.4f}])" if iv else ""
        else:
            g, d = p[kind]["general_model"], p[kind]["domain_model"]
            line = f"Held-out **{what}** {pl}: general model {g:.2f} → domain model {d:.2f} ({100 * (d / g - 1):+.1f}%"
            r = iv.get("ppl_ratio")
            line += f", ratio {r['mean']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}])" if r else ")"
        if "control_model" in p[kind]:
            line += (f"; control model {b[kind]['control_model']:.4f} bits per byte" if use_bpb
                     else f"; control model {p[kind]['control_model']:.2f}")
        lines.append(line + ".")
    return lines


def harness_verdict(res: dict, level: int) -> list[str]:
    """Named lm-eval tasks' primary metric (domain minus general, before any fine-tuning), and the
    forgetting line's general tasks."""
    lines = []
    n_shot = (res.get("harness_settings") or {}).get("n_shot") or {}
    for task, entries in res.get("harness", {}).items():
        for metric, e in entries.items():
            if e["primary"] and e["purpose"] == "domain" and "group" not in e and "difference" in e:
                d = e["difference"]
                shots = f"{n_shot[task]}-shot" if task in n_shot else "few-shot as the task defines"
                lines.append(f"**{task}** (lm-evaluation-harness, {metric}, {e['n']} documents, {shots}, "
                             f"no fine-tuning): domain minus "
                             f"general = {100 * d['mean']:+.1f} points [{100 * d['ci'][0]:+.1f}, {100 * d['ci'][1]:+.1f}] — "
                             + reading(d, "the domain model is better", "the general model is better") + ".")
    f = res.get("forgetting", {})
    if f.get("general_tasks"):
        per = "; ".join(f"{t} {100 * v['difference']:+.1f} [{100 * v['ci'][0]:+.1f}, {100 * v['ci'][1]:+.1f}]"
                        for t, v in f["general_tasks"].items())
        ci = f.get("general_tasks_mean_difference_ci")
        lines.append(f"Forgetting on general tasks (lm-evaluation-harness): domain minus general averages "
                     f"{100 * f['general_tasks_mean_difference']:+.1f} points"
                     + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ci else "")
                     + f" over {len(f['general_tasks'])} tasks ({per}).")
    return lines


def verdict_section(res: dict, level: int) -> Section:
    lines = heldout_verdict(res) + harness_verdict(res, level)
    for name, t in res["tasks"].items():
        lines += task_verdict(name, t, level)
    mc = res.get("multiple_comparisons")
    arms = "the same LoRA settings, seeds, data order and step budget; only the starting weights differ"
    lines.append(f"All models were fine-tuned with {arms}. Intervals and p-values treat both the fine-tuning seeds and the "
                 "test items as samples (a crossed random-effects analysis paired across models; held-out text: a paired "
                 "bootstrap over documents)" + (f"; 'reliable' means a Holm-adjusted p below {mc['alpha']:.2f} across the "
                                                f"report's {mc['family_size']} comparisons" if mc else "") + ".")
    return Section("Verdict", lines)


def arms_of(res: dict) -> list[str]:
    """The models a results.json compares; one written before the control arm has no "arms" key."""
    return res.get("arms", list(MODELS))


def intro_section(res: dict, level: int) -> Section:
    control = ("The *control model* is the general model continued on general text for the same budget: domain minus "
               "control separates what domain text taught from what any extra training does. "
               if "control_model" in res.get("arms", []) else "")
    return Section("How to read this report", [
        f"The *general model* is the checkpoint the run started from; the *domain model* is the same checkpoint after continued "
        f"pre-training on {res['domain']} text. {control}Every model was then fine-tuned on each task with LoRA (small adapter "
        "weights) under identical settings, and scored on the same held-out test items.",
        "Perplexity measures how well a model predicts held-out text (lower is better): domain text shows what was gained, "
        "general text what was forgotten. Task differences are in percentage points with "
        f"{level}% intervals — when an interval includes zero, the data do not show a reliable difference."])


def perplexity_section(res: dict) -> Section:
    p, pl, arms = res["perplexity"], ppl_label(res), arms_of(res)
    head = ["text"] + [f"ppl {ARM_LABELS[a]}" for a in arms] + [f"bpb {ARM_LABELS[a]}" for a in arms]
    head.append("bpb domain - general [interval]")
    rows = []
    for kind in p:
        iv = res.get("heldout_intervals", {}).get(kind, {}).get("difference", {}).get("bpb_difference")
        rows.append([f"{kind} held-out"] + [f"{p[kind][a]:.3f}" for a in arms] +
                    [f"{res['bits_per_byte'][kind][a]:.4f}" for a in arms] +
                    [f"{iv['mean']:+.4f} [{iv['ci'][0]:+.4f}, {iv['ci'][1]:+.4f}]" if iv else "—"])
    note = (" Both models are masked LMs: pseudo-perplexity and pseudo bits per byte come from masking each token in turn "
            "(Salazar et al. 2020); compare them with each other, not with a causal LM's perplexity." if pl != "perplexity" else "")
    return Section("Perplexity and forgetting", ["Lower is better. Bits per byte are comparable across tokenizers; every model "
                                                 "scores the same documents." + note], (head, rows))


def tasks_section(res: dict, out: Path, level: int) -> Section:
    arms = arms_of(res)
    head = ["task", "metric"] + [f"{ARM_LABELS[a]} zero-shot" for a in arms] + [f"{ARM_LABELS[a]} + LoRA" for a in arms]
    head += ["domain - general", "p", "domain - control", "p "]
    rows = []
    for name, t in res["tasks"].items():
        for metric, e in [(t["metric"], t)] + ([("acc_norm", t["acc_norm"])] if t.get("acc_norm") else []):
            label = name + (f" ({t['shots']}-shot before LoRA)" if t.get("shots") else "")
            descriptive = metric == "acc_norm"  # shown beside acc, not part of the verdict: no p
            rows.append([label, metric] + [fmt_score(e[a].get("zero_shot")) for a in arms] +
                        [fmt_score(e[a]["finetuned"]) for a in arms] +
                        [fmt_diff(e["difference"]), "—" if descriptive else fmt_p(e["difference"]),
                         fmt_diff(e.get("difference_vs_control")), "—" if descriptive else fmt_p(e.get("difference_vs_control"))])
    base = [f"{n}: always answering the most frequent label scores {100 * t['majority_baseline']:.1f}" for n, t in res["tasks"].items()
            if t.get("majority_baseline") is not None]
    text = (f"Scores in percent with {level}% intervals; p in parentheses is Holm-adjusted across the report. acc_norm picks "
            "the choice with the highest log-likelihood per byte (descriptive, not part of the verdict)."
            + (" Majority-label baseline — " + "; ".join(base) + "." if base else ""))
    return Section("Tasks", [text], (head, rows), [("task scores", plots.task_bars(res["tasks"], out / "tasks.png"))])


def harness_section(res: dict, level: int) -> Section:
    """Every lm-eval task and metric, per model, with paired differences where the metric is a mean over documents."""
    arms = arms_of(res)
    head = ["task", "metric", "documents"] + [ARM_LABELS[a] for a in arms] + ["domain - general", "p", "domain - control", "p "]
    rows = []
    for task, entries in res["harness"].items():
        for metric, e in entries.items():
            label = task + (" (forgetting)" if e["purpose"] == "forgetting" and "group" not in e else "")
            # a metric that is not a mean over documents is shown as lm-eval computed it (no interval, not in percent)
            scores = [fmt_score(e[a]) if "ci" in e[a] else f"{e[a]['mean']:.4g}" if isinstance(e[a]["mean"], (int, float))
                      else "—" for a in arms]
            primary = e["primary"] and "group" not in e
            rows.append([label, metric, str(e["n"])] + scores +
                        [fmt_diff(e.get("difference")), fmt_p(e.get("difference")) if primary else "—",
                         fmt_diff(e.get("difference_vs_control")), fmt_p(e.get("difference_vs_control")) if primary else "—"])
    st = res.get("harness_settings") or {}
    shots = "each task's own number of" if st.get("fewshot") is None else str(st["fewshot"])
    text = (f"lm-evaluation-harness {st.get('lm_eval_version')} on each model's checkpoint (no fine-tuning, float32), "
            f"{shots} few-shot examples, prompts and normalisation as lm-eval defines them; compare with published numbers "
            "only at the same number of shots (papers often report MMLU 5-shot)"
            + (f"; only the first {st['limit']} documents per task were scored (eval.harness_limit)" if st.get("limit") else "")
            + f". Scores in percent with {level}% intervals; differences paired per document (one run, items random). "
              "The first metric of each task, group or tag the recipe names is in the report's Holm family; other "
              "metrics, and the tasks inside a named group or tag, are descriptive (their documents are already in it).")
    return Section("lm-evaluation-harness", [text], (head, rows))


def seeds_section(res: dict) -> Section:
    """Each fine-tuning seed's score: how much of a difference is one lucky or unlucky run."""
    arms = arms_of(res)
    rows = []
    for name, t in res["tasks"].items():
        per_arm = [t[a]["finetuned"]["seeds"] for a in arms]
        for k, vals in enumerate(zip(*per_arm)):
            diff = t["difference"].get("seeds")
            rows.append([name, str(k)] + [f"{100 * v:.1f}" for v in vals] + [f"{100 * diff[k]:+.1f}" if diff else "—"])
    return Section("Per-seed scores", ["Fine-tuned scores of each LoRA seed (seed k of every model shares its adapter "
                                       "initialisation and data order)."],
                   (["task", "seed"] + [ARM_LABELS[a] for a in arms] + ["domain - general"], rows))


def cost_section(res: dict) -> Section:
    c, st = res["cost"], res["stages"]
    rows = [[s, f"{v['tokens']:,}", f"{v['wall_s']:.1f}", _job_time(v), f"{v.get('flops', 0):.3g}" if v.get("flops") else "—",
             f"{v.get('gpu_hours', 0):.3f}"] for s, v in st.items()]
    est = c.get("pretrain_gpu_hours_estimate", c["pretrain_gpu_hours_estimate_at_40pct_mfu"])
    lines = [f"Continued pre-training processed {c['pretrain_tokens']:,} tokens ({c['pretrain_flops']:.3g} FLOPs) "
             f"on {c['pretrain_device']}" + (f", at a median MFU of {c['measured_mfu']:.1%}." if c.get("measured_mfu") else
                                             f"; the same FLOPs on one {c['gpu_for_estimate']} at {c.get('assumed_mfu', 0.4):.0%} MFU "
                                             f"would take {(est or 0):.3g} GPU-hours.")]
    if c.get("mean_task_gain_per_gpu_hour") is not None:
        lines.append(f"Mean task gain: {100 * c['mean_task_gain']:+.2f} points, i.e. {100 * c['mean_task_gain_per_gpu_hour']:+.3g} "
                     f"points per GPU-hour of pre-training ({c.get('gpu_hours_basis', '')}); "
                     f"{100 * c['mean_task_gain_per_pflop']:+.3g} points per PFLOP.")
    lines.append("Fine-tuning and evaluation are grids of independent jobs shared out over the processes: 'jobs' is their "
                 "summed time on W processes, and the parallel efficiency that sum / (wall time x W).")
    return Section("Cost", lines, (["stage", "tokens", "wall s", "jobs: summed s on W processes (efficiency)", "FLOPs",
                                    "GPU-hours"], rows))


def _job_time(stage: dict) -> str:
    """'812.4 s on W=2 (93%)' for a job stage; '—' for the others (and for a stage merged from --shard tasks)."""
    if stage.get("parallel_efficiency") is None:
        return "—"
    return f"{stage['job_seconds']:.1f} s on W={stage['workers']} ({stage['parallel_efficiency']:.0%})"


def data_section(res: dict) -> Section:
    d = res["data"]
    return Section("Data", [f"{d['documents_in']:,} documents read, {d['documents_out']:,} trained on ({d['tokens_out']:,} tokens); "
                            f"{d['exact_duplicates_removed']} exact and {d['near_duplicates_removed']} near duplicates removed; "
                            f"{d['contaminated_found']} documents overlapped evaluation texts ({d['contaminated_removed']} dropped); "
                            f"PII replaced: {d['pii_replaced']}; replay share {d['replay_share_actual']:.1%}. "
                            + transform_sentence(d) + "See prepare/data_card.md."])


def transform_sentence(d: dict) -> str:
    """data.transform, named: the domain model read exercises, not only raw text."""
    rc, summary = d.get("reading_comprehension"), d.get("reading_comprehension_summary")
    if not rc or not summary:
        return ""
    kinds = ", ".join(f"{k} {n:,}" for k, n in rc.items() if n)
    return (f"Transform: reading comprehension (AdaptLLM) — {summary['documents_transformed']:,} domain documents carried "
            f"exercises mined from their own text ({kinds}; {summary['share_of_training_tokens']:.1%} of the training "
            "tokens); held-out text is raw. ")


def reproducibility_section(res: dict) -> Section:
    repro = [f"Report command: `{res['command']}`"]
    repro += [f"{s}: `{cmd}`" for s, cmd in res.get("stage_commands", {}).items() if cmd]
    repro += [f"Versions: {json.dumps(res['versions'])}"]
    repro += ["Data (SHA-256): " + "; ".join(f"{k} {v[:16]}" for k, v in res.get("data_hashes", {}).items())]
    return Section("Reproducibility", repro + ["The recipe:"], code=json.dumps(res["recipe"], indent=2))


def sections(res: dict, out: Path) -> list[Section]:
    level = int(round(res["confidence"] * 100))
    secs = [intro_section(res, level), verdict_section(res, level), perplexity_section(res), tasks_section(res, out, level),
            seeds_section(res)]
    if res.get("harness"):
        secs.append(harness_section(res, level))
    if res.get("training_curve"):
        secs.append(Section("Training curve", ["Training loss, and held-out perplexities measured during continued pre-training "
                                               "(the forgetting curve: general perplexity should not climb)."],
                            images=[("training curves", plots.training_curves(res["training_curve"], res["pretrain_eval_history"],
                                                                              out / "training.png"))]))
    return secs + [cost_section(res), data_section(res), reproducibility_section(res)]
