"""Stage 4: score both models the same way — held-out perplexity, zero-shot and fine-tuned task scores.

    domainpt evaluate recipes/demo/legal.yaml

Writes out_dir/evaluate/scores.json and per-example predictions under
out_dir/evaluate/predictions/<task>/<model>/<zero_shot|seedK>.jsonl (for paired statistics later).
"""
from __future__ import annotations

import time

import torch

from domainpt.eval.metrics import compute
from domainpt.eval.perplexity import perplexity
from domainpt.eval.scoring import score_examples
from domainpt.eval.tasks import read_heldout, read_split
from domainpt.finetune import MODELS, model_paths
from domainpt.manifest import atomic_write_json, atomic_write_jsonl, require_done, stage_dir, write_manifest
from domainpt.models import end_of_text_id, load_model, load_tokenizer


def task_metric(metric: str, rows: list[dict]) -> dict:
    preds, refs = [r["pred"] for r in rows], [r["answer"] for r in rows]
    out = {metric: compute(metric, preds, refs)}
    out["acc_norm"] = compute("accuracy", [r["pred_norm"] for r in rows], refs)
    return out


def run_evaluate(recipe) -> dict:
    from peft import PeftModel

    started = time.time()
    require_done(recipe, "finetune", "evaluate")
    paths = model_paths(recipe)
    prep_dir, ft_dir = stage_dir(recipe, "prepare"), stage_dir(recipe, "finetune")
    out = stage_dir(recipe, "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(paths["general_model"], recipe.model.trust_remote_code)
    bos = end_of_text_id(tok)
    ec = recipe.eval
    heldout = read_heldout(prep_dir)
    tests = {t.name: read_split(prep_dir / "tasks" / t.name, "test") for t in recipe.tasks}
    scores = {"perplexity": {}, "tasks": {}}
    tokens = 0
    for model_name in MODELS:
        model = load_model(paths[model_name], "clm", recipe.model.trust_remote_code).to(device)
        for kind, texts in heldout.items():
            r = perplexity(model, tok, texts, ec.ppl_window, ec.ppl_stride, ec.ppl_max_tokens, ec.batch_size, bos, device)
            scores["perplexity"].setdefault(kind, {})[model_name] = r
            tokens += r["tokens"]
        for task in recipe.tasks:
            entry = scores["tasks"].setdefault(task.name, {"metric": task.metric}).setdefault(model_name, {})
            if ec.zero_shot:
                rows = score_examples(model, tok, tests[task.name], bos, desc=f"zero-shot {task.name} {model_name}",
                                     batch_size=ec.batch_size)
                atomic_write_jsonl(out / "predictions" / task.name / model_name / "zero_shot.jsonl", rows)
                entry["zero_shot"] = task_metric(task.metric, rows)
        del model
        for task in recipe.tasks:
            entry = scores["tasks"][task.name][model_name]
            entry["finetuned"] = {}
            for seed in recipe.lora.seeds:
                base = load_model(paths[model_name], "clm", recipe.model.trust_remote_code).to(device)
                peft_model = PeftModel.from_pretrained(base, str(ft_dir / task.name / model_name / f"seed{seed}" / "adapter"))
                rows = score_examples(peft_model, tok, tests[task.name], bos, desc=f"lora {task.name} {model_name} seed{seed}",
                                     batch_size=ec.batch_size)
                atomic_write_jsonl(out / "predictions" / task.name / model_name / f"seed{seed}.jsonl", rows)
                entry["finetuned"][str(seed)] = task_metric(task.metric, rows)
                del peft_model, base
    atomic_write_json(out / "scores.json", scores)
    return write_manifest(recipe, "evaluate", started, tokens=tokens)
