"""Stage 4: score both models the same way — held-out perplexity, zero-shot and fine-tuned task scores.

Decoders are scored by log-likelihood, encoders (masked LMs) by pseudo-log-likelihood (eval/masked.py):
pseudo-perplexity on held-out text, the same for every choice of a task.

    domainpt evaluate recipes/demo/legal.yaml

Writes out_dir/evaluate/scores.json and per-example predictions under
out_dir/evaluate/predictions/<task>/<model>/<zero_shot|seedK>.jsonl (for paired statistics later);
<model> is general_model, domain_model, and control_model when the recipe has compare.control.
With eval.harness_tasks / eval.forgetting_tasks, lm-evaluation-harness also scores every model
(eval/harness.py: out_dir/evaluate/harness/<model>/).
"""
from __future__ import annotations

import hashlib
import json
import time

import torch

from domainpt.encoding import classifier_inputs, end_of_text_id
from domainpt.eval.harness import check_task_names, harness_tasks, load_leaf_tasks, score_checkpoint
from domainpt.config import QA_METRICS
from domainpt.eval.metrics import compute
from domainpt.eval.perplexity import heldout_perplexity, take_documents
from domainpt.eval.scoring import classify_examples, generate_answers, score_examples
from domainpt.layout import model_paths, models_of, read_heldout, task_dir
from domainpt.manifest import atomic_write_json, atomic_write_jsonl, require_done, stage_dir, write_manifest
from domainpt.models import checkpoint_objective, load_classifier, load_model, load_tokenizer
from domainpt.tasks import head_setup, read_split, seeded_rank

SCORING_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # eval.precision


def tokenizer_identity(tok) -> dict:
    """Size and a hash of the vocabulary: per-token perplexities of two models compare only when these match."""
    vocab = json.dumps(sorted(tok.get_vocab().items()), ensure_ascii=False).encode()
    return {"size": len(tok), "sha256": hashlib.sha256(vocab).hexdigest()[:16]}


def task_metric(metric: str, rows: list[dict]) -> dict:
    if metric in QA_METRICS:  # qa: through the shipped module, from the saved answers
        preds, refs = [r["prediction"] for r in rows], [r["answers"] for r in rows]
        return {m: compute(m, preds, refs) for m in QA_METRICS}
    preds, refs = [r["pred"] for r in rows], [r["answer"] for r in rows]
    out = {metric: compute(metric, preds, refs)}
    out["acc_norm"] = compute("accuracy", [r["pred_norm"] for r in rows], refs)
    return out


def with_shots(tests: list[dict], train: list[dict], k: int) -> list[dict]:
    """Test examples with k solved training examples (chosen by a seeded hash) prepended to each prompt."""
    if k <= 0:
        return tests
    shots = sorted(train, key=lambda e: seeded_rank(0, e["id"]))[:k]
    demo = "".join(f"{e['prompt']}{e['choices'][e['answer']]}\n\n" for e in shots)
    return [{**e, "prompt": demo + e["prompt"]} for e in tests]


def score_task(task, model, tok, examples, bos: int | None, batch_size: int, desc: str, objective: str = "clm",
               end_of_text: bool = False, norm_unit: str = "bytes") -> list[dict]:
    """Per-example rows: log-likelihood choice for classification / multiple choice (pseudo-log-likelihood for a
    masked LM), a generated answer for qa (decoders only: preflight refuses qa tasks for an encoder).
    `end_of_text`: a decoder scores each choice followed by end-of-text (score_examples; encoders ignore it)."""
    if task.type == "qa":
        return generate_answers(model, tok, examples, bos, end_of_text_id(tok), task.max_answer_tokens, batch_size, desc)
    return score_examples(model, tok, examples, bos, desc=desc, batch_size=batch_size, encoder=objective == "mlm",
                          end_of_text=end_of_text_id(tok) if end_of_text else None, norm_unit=norm_unit)


def zero_shot_conventions(ec, bos: int, tok) -> tuple[int | None, str]:
    """(BOS id or None, acc_norm unit) for scoring before fine-tuning: domainpt's, or lm-eval's (README). lm-eval
    prepends a BOS only where the tokenizer adds one by default (Llama, Gemma; not SmolLM2 or Qwen2.5)."""
    if ec.zero_shot_convention != "lm-eval":
        return bos, "bytes"
    first = tok("a")["input_ids"][:1]
    return (first[0] if tok.bos_token_id is not None and first == [tok.bos_token_id] else None), "characters"


def run_evaluate(recipe) -> dict:
    started = time.time()
    require_done(recipe, "finetune", "evaluate")
    paths = model_paths(recipe, "evaluate")
    out = stage_dir(recipe, "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    ec = recipe.eval
    named_as = {}  # harness leaf task -> the named task, group or tag it runs for
    if harness_tasks(ec):  # an unknown task, a missing lm-eval or data that cannot load stops us before the long scoring
        check_task_names(ec)
        named_as = {leaf: named for leaf, (named, _, _) in load_leaf_tasks(ec).items()}
    # Every model scores the same documents, cut once by the general model's tokenizer: with an extended
    # vocabulary the domain model would otherwise reach ppl_max_tokens on more text than the general model.
    base_tok = load_tokenizer(paths["general_model"], recipe.model.trust_remote_code)
    heldout = {k: [text for text, _ in take_documents(base_tok, v, ec.ppl_max_tokens)]
               for k, v in read_heldout(stage_dir(recipe, "prepare")).items()}
    tests = {t.name: read_split(task_dir(recipe, t.name), "test") for t in recipe.tasks}
    # k-shot scoring before fine-tuning: the same k training examples in front of every test prompt, for every model.
    before_ft = {t.name: with_shots(tests[t.name], read_split(task_dir(recipe, t.name), "train"), ec.few_shot)
                 for t in recipe.tasks}
    scores = {"perplexity": {}, "tasks": {}}
    tokens = 0
    for model_name in models_of(recipe):  # general, domain (and control, with compare.control)
        tok = load_tokenizer(paths[model_name], recipe.model.trust_remote_code)  # the domain model's may be extended
        scores.setdefault("tokenizers", {})[model_name] = tokenizer_identity(tok)
        objective = checkpoint_objective(paths[model_name], recipe.model.objective, recipe.model.trust_remote_code)
        model = load_model(paths[model_name], objective, recipe.model.trust_remote_code).to(device)
        for kind, texts in heldout.items():
            r = heldout_perplexity(model, tok, texts, objective, ec.ppl_window, ec.ppl_stride, None, ec.batch_size,
                                   end_of_text_id(tok), device)
            scores["perplexity"].setdefault(kind, {})[model_name] = r
            tokens += r["tokens"]
        model = model.to(SCORING_DTYPES[ec.precision])  # perplexity above is always float32
        for task in recipe.tasks:
            entry = scores["tasks"].setdefault(task.name, {"metric": task.metric}).setdefault(model_name, {})
            if ec.zero_shot:
                entry["zero_shot"] = score_before_finetuning(recipe, task, model, tok, objective, model_name,
                                                             before_ft[task.name], out)
        del model
        for task in recipe.tasks:
            scores["tasks"][task.name][model_name]["finetuned"] = score_adapters(
                recipe, task, paths[model_name], tok, objective, model_name, tests[task.name], device, out)
    if harness_tasks(ec):  # each checkpoint with its own tokenizer, in float32 as above
        for model_name in models_of(recipe):
            model = load_model(paths[model_name], "clm", recipe.model.trust_remote_code).to(device)
            tok = load_tokenizer(paths[model_name], recipe.model.trust_remote_code)
            summary = score_checkpoint(model, tok, ec, out / "harness" / model_name, named_as)
            scores.setdefault("harness", {})[model_name] = summary["results"]
            del model
    atomic_write_json(out / "scores.json", scores)
    return write_manifest(recipe, "evaluate", started, tokens=tokens)


def score_before_finetuning(recipe, task, model, tok, objective: str, model_name: str, examples: list[dict], out) -> dict:
    """k-shot scores of the base model on `examples` (test prompts with the k solved examples in front)."""
    ec = recipe.eval
    bos, norm_unit = zero_shot_conventions(ec, end_of_text_id(tok), tok)
    rows = score_task(task, model, tok, examples, bos, ec.batch_size, f"{ec.few_shot}-shot {task.name} {model_name}",
                      objective, ec.zero_shot_end_of_text, norm_unit)
    atomic_write_jsonl(out / "predictions" / task.name / model_name / "zero_shot.jsonl", rows)
    return {**task_metric(task.metric, rows), "shots": ec.few_shot}


def score_adapters(recipe, task, base_path: str, tok, objective: str, model_name: str, tests: list[dict], device, out) -> dict:
    """Seed -> scores of each LoRA adapter of one model on one task, one base model loaded. On a CPU each adapter
    is merged into a float32 copy of the base, then cast to eval.precision (peft's extra LoRA matmuls cost 5-17%
    there, BENCHMARKS.md); on a GPU (where a second copy of a large model may not fit) and on a quantised base the
    adapters run unmerged on a base in eval.precision."""
    ec, q = recipe.eval, recipe.lora.quantize
    bos = end_of_text_id(tok)
    head = head_setup(recipe, task, objective, tok)
    ft_dir = stage_dir(recipe, "finetune") / task.name / model_name
    merge = q == "none" and device.type == "cpu"
    dtype = SCORING_DTYPES[ec.precision]
    base_dtype = torch.float32 if merge else dtype
    # the adapter is scored on the base it was trained against
    base = (load_classifier(base_path, head["num_labels"], head["pad_id"], recipe.model.trust_remote_code, base_dtype,
                            quantize=q)
            if head else load_model(base_path, objective, recipe.model.trust_remote_code, base_dtype, quantize=q))
    base = base.to(device) if q == "none" else base
    finetuned = {}
    for seed, model in adapted_models(base, ft_dir, recipe.lora.seeds, merge, dtype):
        desc = f"lora {task.name} {model_name} seed{seed}"
        if head:
            inputs = [classifier_inputs(tok, e["prompt"], bos, head["encoder"]) for e in tests]
            rows = classify_examples(model, inputs, tests, head["pad_id"], desc, ec.batch_size)
        else:  # with end-of-text, as the adapter was trained (finetune.training_features)
            rows = score_task(task, model, tok, tests, bos, ec.batch_size, desc, objective, end_of_text=True)
        atomic_write_jsonl(out / "predictions" / task.name / model_name / f"seed{seed}.jsonl", rows)
        finetuned[str(seed)] = task_metric(task.metric, rows)
        del model  # a merged copy: freed before the next seed's is made
    return finetuned


def adapted_models(base, ft_dir, seeds, merge: bool, dtype):
    """(seed, the base with that seed's adapter) for each seed. Merged: the adapter folded into a float32 copy of
    the base, then cast to `dtype` (scores like the adapter, without peft's extra matmuls: faster on a CPU).
    Unmerged (on a GPU or a quantised base): one PeftModel that switches adapters."""
    import copy

    from peft import PeftModel

    peft_model = None
    for seed in seeds:
        adapter, name = str(ft_dir / f"seed{seed}" / "adapter"), f"seed{seed}"
        if merge:
            merged = PeftModel.from_pretrained(copy.deepcopy(base), adapter).merge_and_unload().to(dtype)
            # peft leaves the weights frozen, and on this CPU (torch 2.13) bfloat16 layers with frozen weights ran
            # 2.2-3x slower than the same layers unfrozen (bench/adapter_scoring.py); scoring runs under no_grad
            yield seed, merged.requires_grad_(True)
            continue
        if peft_model is None:
            peft_model = PeftModel.from_pretrained(base, adapter, adapter_name=name)
        else:
            peft_model.load_adapter(adapter, adapter_name=name)
        peft_model.set_adapter(name)
        yield seed, peft_model
