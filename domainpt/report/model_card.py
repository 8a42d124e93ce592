"""A Hugging Face model card for a run's domain (or control) model: the metadata the Hub indexes (base model,
datasets, licence, language, tags, model-index results) and a text with the run's own verdict, training, data,
limitations and how to reproduce it — every number read from the run's files (compare/results.json, the stage
manifests, prepare/stats.json), so the card says what the report says, "no reliable difference" included.

    text = model_card(facts)        # facts: run_facts(run_dir, "domain_model", repo_id, language)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from domainpt.config import recipe_from_dict
from domainpt.errors import DomainptError
from domainpt.data.cards import source_facts
from domainpt.models import PACKAGED, PACKAGED_HUB
from domainpt.report.sections import ARM_LABELS, fmt_diff, fmt_p, fmt_score, ppl_label, verdict_section

PIPELINE = {"clm": "text-generation", "mlm": "fill-mask"}
TASK_TYPES = {"classification": "text-classification", "multiple_choice": "multiple-choice", "qa": "question-answering"}


@dataclass
class RunFacts:
    """What a card is written from: the run's results and manifests, and what is published."""

    res: dict
    pretrain: dict
    stats: dict
    arm: str
    repo_id: str | None
    language: list[str]
    adapters: list[str]  # "<task>/seed<k>" folders published beside the model
    manifest_hashes: dict = field(default_factory=dict)  # stage -> SHA-256 of its manifest.json

    @property
    def recipe(self):
        return recipe_from_dict(self.res["recipe"])


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DomainptError(f"{path}: missing; the run is incomplete (rerun `domainpt run RECIPE`)") from None
    except (OSError, ValueError) as e:
        raise DomainptError(f"{path}: unreadable ({e}); rerun the stage that writes it with --force") from None


def run_facts(run: Path, arm: str, repo_id: str | None, language: list[str] | None, adapters: list[str]) -> RunFacts:
    stage = "pretrain_control" if arm == "control_model" else "pretrain"
    res = read_json(run / "compare" / "results.json")
    facts = RunFacts(res, read_json(run / stage / "manifest.json"), read_json(run / "prepare" / "stats.json"), arm, repo_id,
                     [], adapters)
    facts.manifest_hashes = {s: hashlib.sha256((run / s / "manifest.json").read_bytes()).hexdigest()
                             for s in ("prepare", "pretrain", "pretrain_control", "finetune", "evaluate", "compare")
                             if (run / s / "manifest.json").is_file()}
    facts.language = language or sorted({source_facts(s).get("language") for s in facts.recipe.data.domain} - {None})
    return facts


def base_model(recipe) -> tuple[str | None, str | None]:
    """(hub id, licence) of the checkpoint the run started from: a packaged model's own; a hub id's (licence unknown
    offline); none for a local folder or random weights (init=random: only the architecture came from the base)."""
    m = recipe.model
    if m.init == "random":
        return None, None
    if m.base in PACKAGED_HUB:
        return PACKAGED_HUB[m.base]
    looks_like_hub_id = m.base.count("/") == 1 and not m.base.startswith((".", "/", "~")) and not Path(m.base).exists()
    return (m.base, None) if looks_like_hub_id else (None, None)


def hub_datasets(recipe, arm: str) -> list[str]:
    """Hub dataset ids of the text the published model was trained on (the control model: general text only);
    task data trained only the adapters, so it is in model-index, not here."""
    sources = (recipe.data.general if arm == "control_model" else recipe.data.domain + recipe.data.general)
    return sorted({s.hf for s in sources if s.hf})


def eval_results(facts: RunFacts) -> list:
    """model-index entries: each domainpt task's score after LoRA (mean over seeds) and before it, and each lm-eval
    task's primary metric, for the published model; in percent, as the report prints them. The dataset is the test
    set actually scored: a hub dataset's id, config and split (a separate test_source, or domainpt's own test split of
    the source, said so with its size); a local source has no hub id, so its type is the task's plain name."""
    from huggingface_hub import EvalResult

    res, arm, recipe = facts.res, facts.arm, facts.recipe
    tasks = {t.name: t for t in recipe.tasks}
    out = []
    for name, t in res["tasks"].items():
        task = tasks.get(name)
        src = (task.test_source or task.source) if task else None
        own_split = not (task and task.test_source)  # domainpt's test split cut from the task's source
        where = dict(dataset_type=src.hf, dataset_config=src.hf_config, dataset_split=src.split) if src and src.hf else \
            dict(dataset_type=name)
        dataset = f"{name} (domainpt's test split of {src.hf} {src.split})" if src and src.hf and own_split else name
        seeds = len(t[arm]["finetuned"]["seeds"])
        for phase, label in (("finetuned", f"after LoRA, mean of {seeds} seeds"), ("zero_shot", f"{t.get('shots', 0)}-shot, no fine-tuning")):
            if phase in t[arm]:
                out.append(EvalResult(task_type=TASK_TYPES.get(task.type if task else "", "text-classification"),
                                      dataset_name=dataset, metric_type=t["metric"], metric_value=round(100 * t[arm][phase]["mean"], 2),
                                      metric_name=f"{t['metric']} (%), {label}, {t['n_test']} test items", **where))
    for task_name, entries in res.get("harness", {}).items():
        for metric, e in entries.items():  # per-document shares in percent, as the report; lm-eval's other aggregates as is
            if e.get("primary") and "group" not in e and (e.get(arm) or {}).get("mean") is not None:
                value, unit = (100 * e[arm]["mean"], " (%)") if e.get("paired") else (e[arm]["mean"], "")
                out.append(EvalResult(task_type="text-generation", dataset_type=task_name, dataset_name=task_name,
                                      metric_type=metric, metric_value=round(value, 4 if not unit else 2),
                                      metric_name=f"{metric}{unit}, lm-evaluation-harness, {e['n']} documents"))
    return out


def card_data(facts: RunFacts):
    """The card's YAML metadata, as huggingface_hub's ModelCardData (the Hub's model-card spec)."""
    from huggingface_hub import ModelCardData

    recipe = facts.recipe
    hub_id, licence = base_model(recipe)
    meta = dict(library_name="transformers", pipeline_tag=PIPELINE.get(facts.pretrain.get("objective", "clm"), "text-generation"),
                tags=["domainpt", "domain-adaptation", "continued-pretraining", recipe.domain],
                datasets=hub_datasets(recipe, facts.arm) or None, language=facts.language or None,
                model_name=facts.repo_id or f"{recipe.name}-{ARM_LABELS[facts.arm]}", eval_results=eval_results(facts) or None)
    if hub_id:
        meta.update(base_model=hub_id, base_model_relation="finetune")
    # the published weights' licence follows the base model's; unknown is left out and said in the text, not guessed
    meta["license"] = licence
    return ModelCardData(**{k: v for k, v in meta.items() if v is not None})


def model_card(facts: RunFacts) -> str:
    """README.md: the metadata block, then the text."""
    data = card_data(facts)
    body = [*_intro(facts), *_verdict(facts), *_evaluation(facts), *_training(facts), *_data(facts), *_limitations(facts),
            *_usage(facts), *_reproduce(facts)]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"


def _intro(facts: RunFacts) -> list[str]:
    recipe, pt = facts.recipe, facts.pretrain
    hub_id, licence = base_model(recipe)
    packaged = f" (its Q4_1 GGUF from the `{PACKAGED[recipe.model.base][0]}` package, dequantised to float32)" \
        if recipe.model.base in PACKAGED and recipe.model.init != "random" else ""
    start = (f"[{hub_id}](https://huggingface.co/{hub_id}){packaged}" if hub_id else
             f"a randomly initialised model with the architecture of `{recipe.model.base}`" if recipe.model.init == "random"
             else f"`{recipe.model.base}`")
    what = ("continued pre-training on general text only, for the same budget: the run's *control* model, which "
            "separates what domain text taught from what any extra training does" if facts.arm == "control_model"
            else f"continued pre-training on {recipe.domain} text")
    licence_line = (f"Licence: {licence}, the base model's; the training data's licences (below) may add conditions." if licence else
                    "Licence: **none stated** — the weights started from random values, so no base model's licence "
                    "applies; the data's licences (below) may." if recipe.model.init == "random" else
                    "Licence: **unknown** — the base model's licence could not be read offline; check it and the data's "
                    "licences (below) before you use or share this model.")
    return [f"# {facts.repo_id or recipe.name + ' (' + ARM_LABELS[facts.arm] + ' model)'}", "",
            f"{start[0].upper()}{start[1:]} after {what} ({pt['tokens']:,} tokens, {pt['steps']} steps), made with "
            "domainpt, which also LoRA-fine-tuned the general model and this one under identical "
            "settings on the run's domain tasks and compared them with intervals over seeds and test items.", "",
            licence_line, ""]


def _verdict(facts: RunFacts) -> list[str]:
    res = facts.res
    level = int(round(res["confidence"] * 100))
    about = ("This card's model is the control: the verdict below is the domain model's, measured against it and the "
             "general model" if facts.arm == "control_model" else "The domain model against the general model it started "
             "from" + (", and against the control model" if "control_model" in res.get("arms", []) else ""))
    lines = ["## Verdict", "", f"The run's own report, word for word ({about}):", ""]
    return lines + [f"- {line}" for line in verdict_section(res, level).paragraphs] + [""]


def _evaluation(facts: RunFacts) -> list[str]:
    res = facts.res
    arms = res.get("arms", ["general_model", "domain_model"])
    level = int(round(res["confidence"] * 100))
    head = ["task", "metric"] + [f"{ARM_LABELS[a]} + LoRA" for a in arms] + ["domain − general", "p (Holm)"]
    rows = [[name, t["metric"], *[fmt_score(t[a]["finetuned"]) for a in arms], fmt_diff(t["difference"]), fmt_p(t["difference"])]
            for name, t in res["tasks"].items()]
    lines = ["## Evaluation", "", f"After LoRA fine-tuning (mean over seeds, {level}% intervals over seeds and test items; "
             "percent). This model's scores are also in the card's `model-index`.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    # bits per byte when the tokenizers differ (per-token perplexities of two vocabularies do not compare), as the report
    bpb = res.get("tokenizers_differ", False)
    p, what = (res["bits_per_byte"], "bits per byte") if bpb else (res["perplexity"], ppl_label(res))
    lines += ["", f"Held-out {what} (lower is better): " + "; ".join(
        f"{kind} text — " + ", ".join(f"{ARM_LABELS[a]} {p[kind][a]:.{4 if bpb else 2}f}" for a in arms if a in p[kind])
        for kind in p) + "."]
    return lines + [""]


def _training(facts: RunFacts) -> list[str]:
    recipe, pt, cost = facts.recipe, facts.pretrain, facts.res.get("cost", {})
    tc = recipe.train
    # the report's GPU-hour estimate is the domain model's; a control run on CPU has only its FLOPs
    gpu_h = (f"{pt['gpu_hours']:.3g} GPU-hours measured" if pt.get("gpu_hours") else
             f"{cost['pretrain_gpu_hours_estimate']:.3g} {cost.get('gpu_for_estimate', 'GPU')}-hours estimated at "
             f"{cost.get('assumed_mfu', 0.4):.0%} MFU" if facts.arm == "domain_model" and cost.get("pretrain_gpu_hours_estimate")
             else "no GPU-hours (not run on a GPU)")
    return ["## Training", "",
            f"- Continued pre-training ({pt.get('objective', 'clm')}): {pt['steps']} steps x {pt.get('tokens_per_step', 0):,} tokens "
            f"= {pt['tokens']:,} tokens; {tc.schedule} schedule, peak learning rate {tc.lr:g}, {tc.warmup_steps} warm-up "
            f"steps, sequence length {recipe.data.seq_len}, general-text replay {facts.res['data']['replay_share_actual']:.1%} "
            f"of the prepared blocks"
            + (" (this control model: general text only)" if facts.arm == "control_model" else "") + ".",
            f"- Hardware: {pt.get('processes', 1)} process(es) on {pt.get('device_name') or pt.get('device', '?')} "
            f"({pt.get('distributed_type', 'NO')}, mixed precision {pt.get('mixed_precision', 'no')}); "
            f"{pt['wall_s']:.0f} s wall time, {pt.get('flops', 0):.3g} FLOPs, {gpu_h}.",
            f"- Fine-tuning for the comparison: LoRA r={recipe.lora.r}, alpha={recipe.lora.alpha}, seeds {recipe.lora.seeds}, "
            "identical for every model: " + "; ".join(
                f"{name} {t['lora']['steps']} steps x {t['lora']['batch_size']} examples" if "lora" in t else name
                for name, t in facts.res["tasks"].items()) + ".", ""]


def _data(facts: RunFacts) -> list[str]:
    """The sources this model was pre-trained on (the control model: the general text alone), with what prepare kept of
    each; the pre-training run read a part of that (its tokens are in Training)."""
    recipe, stats, d = facts.recipe, facts.stats, facts.res["data"]
    control = facts.arm == "control_model"
    kinds = (("general", recipe.data.general),) if control else (("domain", recipe.data.domain), ("general", recipe.data.general))
    lines = ["## Data", "", f"Pre-training text of this model{' (general text only)' if control else ''}: what prepare kept "
             f"(the run read {facts.pretrain['tokens']:,} tokens of it).", "",
             "| kind | source | where | licence | tokens prepared | share of the domain model's blocks |", "|---|---|---|---|---|---|"]
    for kind, sources in kinds:
        for s in sources:
            f, st = source_facts(s), stats["sources"].get(s.name, {"tokens": 0, "share": 0.0})
            lines.append(f"| {kind} | {s.name} | {f['where']} | {f['licence']} | {st['tokens']:,} | {st['share']:.1%} |")
    pii = ", ".join(f"{kind} {n:,}" for kind, n in (d["pii_replaced"] or {}).items() if n) or "none"
    lines += ["", f"Of {d['documents_in']:,} documents read, {d['documents_out']:,} were kept for training; "
              f"{d['exact_duplicates_removed']} exact and {d['near_duplicates_removed']} near duplicates removed; PII replaced: "
              f"{pii}; {d['contaminated_found']} documents overlapped evaluation texts ({d['contaminated_removed']} dropped). "
              "The run's data card (prepare/data_card.md) has the details.", ""]
    return lines


def _limitations(facts: RunFacts) -> list[str]:
    recipe, res = facts.recipe, facts.res
    notes = [f"**{s.name}**: {b}" for s in recipe.data.domain + recipe.data.general if (b := source_facts(s).get("biases"))]
    unlearned = [n for n, t in res["tasks"].items() if t.get("learned") is False]
    lines = ["## Limitations and bias", "",
             f"- Evaluated only on the tasks above ({', '.join(res['tasks']) or 'none'}) and the held-out text; nothing "
             "here says how it does elsewhere. Differences whose interval includes zero are not evidence either way.",
             f"- Trained on {facts.pretrain['tokens']:,} tokens"
             + (" — a demonstration-sized run, far below what domain adaptation normally uses." if facts.pretrain["tokens"] < 10**7
                else ".")]
    if unlearned:
        lines.append(f"- Not every fine-tuned model learned {', '.join(unlearned)} (at or below the majority baseline): "
                     "those comparisons say little about pre-training.")
    lines += [f"- {n}" for n in notes]
    return lines + ["- It inherits the base model's limitations and biases, and those of its domain text.", ""]


def _usage(facts: RunFacts) -> list[str]:
    where = facts.repo_id or "PATH/TO/THIS/FOLDER"
    auto = "AutoModelForMaskedLM" if facts.pretrain.get("objective") == "mlm" else "AutoModelForCausalLM"
    lines = ["## How to use", "", "```python", f"from transformers import {auto}, AutoTokenizer", "",
             f'model = {auto}.from_pretrained("{where}")', f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```"]
    if facts.adapters:
        lines += ["", "The run's LoRA adapters for this model (one per task and seed, each with its own card) are in "
                  "`adapters/<task>/seed<k>/`: `PeftModel.from_pretrained(model, \"<that folder>\")`.",
                  "", *[f"- `adapters/{a}`" for a in facts.adapters]]
    return lines + [""]


def _reproduce(facts: RunFacts) -> list[str]:
    res = facts.res
    hashes = "; ".join(f"{k} `{v[:16]}`" for k, v in res.get("data_hashes", {}).items())
    manifests = "; ".join(f"{s}/manifest.json `{h[:16]}`" for s, h in facts.manifest_hashes.items())
    commands = [f"- {s}: `{c}`" for s, c in res.get("stage_commands", {}).items() if c]
    return ["## How to reproduce", "", "Run the recipe below with `domainpt run RECIPE` (same package versions: "
            f"{', '.join(f'{k} {v}' for k, v in res['versions'].items() if k in ('domainpt', 'torch', 'transformers', 'peft'))}). "
            "The stages ran as:", "", *commands, "", f"Data (SHA-256, first 16 hex digits): {hashes}.", "",
            f"The run's stage manifests (SHA-256, first 16 hex digits; each records its inputs' hashes): {manifests}.", "",
            "```yaml", yaml.safe_dump(res["recipe"], sort_keys=False).rstrip(), "```"]
