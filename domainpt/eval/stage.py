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

import functools
import hashlib
import json
import time
from pathlib import Path

import torch

from domainpt.encoding import classifier_inputs, end_of_text_id
from domainpt.eval.harness import check_task_names, harness_tasks, load_leaf_tasks, merge_summaries, score_checkpoint
from domainpt.config import QA_METRICS
from domainpt.eval.metrics import compute
from domainpt.eval.perplexity import heldout_perplexity, take_documents
from domainpt.eval.scoring import classify_examples, generate_answers, score_examples
from domainpt.jobs.grid import evaluate_jobs
from domainpt.jobs.runner import JobBook, job_records, merged_start, parallel_summary, run_share, this_worker
from domainpt.layout import model_paths, model_stages, read_heldout, task_dir
from domainpt.manifest import atomic_write_json, atomic_write_jsonl, require_done, stage_dir, write_manifest
from domainpt.models import check_fits_one_gpu, checkpoint_objective, load_classifier, load_model, load_tokenizer
from domainpt.tasks import head_setup, read_split, seeded_rank

SCORING_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # eval.precision


def scoring_dtype(precision: str, device) -> torch.dtype:
    """eval.precision as a dtype; 'auto' is bfloat16 only where the device computes it natively: on a CPU without
    oneDNN's bf16 kernels (AVX2 only) bfloat16 is emulated and scored 5.7x slower than float32 (BENCHMARKS.md)."""
    if precision != "auto":
        return SCORING_DTYPES[precision]
    if torch.device(device).type == "cuda":
        native = torch.cuda.is_bf16_supported()
    else:
        native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return torch.bfloat16 if native else torch.float32


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
    """(BOS id or None, acc_norm unit) for scoring before fine-tuning: domainpt's, or lm-eval's (docs/harness.md). lm-eval
    prepends a BOS only where the tokenizer adds one by default (Llama, Gemma; not SmolLM2 or Qwen2.5)."""
    if ec.zero_shot_convention != "lm-eval":
        return bos, "bytes"
    first = tok("a")["input_ids"][:1]
    return (first[0] if tok.bos_token_id is not None and first == [tok.bos_token_id] else None), "characters"


def run_evaluate(recipe, shard: str | None = None, merge: bool = False) -> dict | None:
    """Every process of a launch (or `--shard I/N` task) runs its share of the jobs (jobs/grid.evaluate_jobs); the
    main process writes scores.json and the manifest once all are done. `merge`: only those, from --shard tasks' jobs."""
    started = time.time()
    require_done(recipe, "finetune", "evaluate")
    paths = model_paths(recipe, "evaluate")
    objective = checkpoint_objective(paths["general_model"], recipe.model.objective, recipe.model.trust_remote_code)
    jobs = evaluate_jobs(recipe, objective)
    book = JobBook(recipe, "evaluate", model_stages(recipe) + ["finetune"])
    worker = this_worker(shard)
    if not merge:
        if harness_tasks(recipe.eval):  # an unknown task, a missing lm-eval or data that cannot load stops us first
            check_task_names(recipe.eval)
        # perplexity, k-shot and harness jobs hold a whole float32 model, also when LoRA's base is quantised
        check_fits_one_gpu(paths, objective, recipe.model.trust_remote_code, 4, "evaluate")
        run_share(jobs, scoring_job(recipe, paths), book, worker)
    if shard or not worker.main:
        return None
    markers = book.collect(jobs, "run `domainpt evaluate RECIPE` to do them here, or rerun the --shard tasks that hold them")
    started, workers = merged_start(markers) if merge else (started, worker.count)
    scores = assemble_scores(recipe, jobs, {j: m["result"] for j, m in markers.items()})
    atomic_write_json(stage_dir(recipe, "evaluate") / "scores.json", scores)
    tokens = sum(r["tokens"] for per_model in scores["perplexity"].values() for r in per_model.values())
    scored_on = next(m["device"] for m in markers.values()).split(":")[0]  # the jobs' device kind (a merge may run elsewhere)
    precision = str(scoring_dtype(recipe.eval.precision, scored_on)).removeprefix("torch.")
    return write_manifest(recipe, "evaluate", started, tokens=tokens, jobs=job_records(markers), scoring_precision=precision,
                          **parallel_summary(markers, started, time.time() - started, workers))


def assemble_scores(recipe, jobs, results: dict[str, dict]) -> dict:
    """scores.json from the jobs' results, in the jobs' order: perplexity per kind and model, per task and model the
    k-shot scores before fine-tuning and each seed's after, each model's tokenizer, lm-eval's results (and each
    model's harness/<model>/summary.json)."""
    scores = {"perplexity": {}, "tasks": {t.name: {"metric": t.metric} for t in recipe.tasks}, "tokenizers": {}}
    harness = {}
    for job in jobs:
        r = results[job.id]
        if job.kind == "perplexity":
            for kind, ppl in r["perplexity"].items():
                scores["perplexity"].setdefault(kind, {})[job.model] = ppl
            scores["tokenizers"][job.model] = r["tokenizer"]
        elif job.kind == "zero_shot":
            scores["tasks"][job.task].setdefault(job.model, {})["zero_shot"] = r
        elif job.kind == "finetuned":
            scores["tasks"][job.task].setdefault(job.model, {}).setdefault("finetuned", {})[str(job.seed)] = r
        else:
            harness.setdefault(job.model, []).append(r)
    for model, parts in harness.items():  # a checkpoint's summary of its harness jobs (one named lm-eval task each)
        summary = merge_summaries(parts)
        atomic_write_json(stage_dir(recipe, "evaluate") / "harness" / model / "summary.json", summary)
        scores.setdefault("harness", {})[model] = summary["results"]
    return scores


def scoring_job(recipe, paths: dict):
    """job -> its scores (and its predictions under out_dir/evaluate/predictions/ or harness/). Every model scores the
    same held-out documents and the same k-shot prompts, built once per process."""
    ec, out = recipe.eval, stage_dir(recipe, "evaluate")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # this process's GPU (jobs.runner.this_worker)
    tasks = {t.name: t for t in recipe.tasks}

    @functools.cache
    def heldout():
        # Cut once by the general model's tokenizer: with an extended vocabulary the domain model would otherwise
        # reach ppl_max_tokens on more text than the general model.
        base_tok = load_tokenizer(paths["general_model"], recipe.model.trust_remote_code)
        return {k: [text for text, _ in take_documents(base_tok, v, ec.ppl_max_tokens)]
                for k, v in read_heldout(stage_dir(recipe, "prepare")).items()}

    @functools.cache
    def split(task_name: str, which: str):
        return read_split(task_dir(recipe, task_name), which)

    @functools.cache
    def harness_named_as() -> dict:  # harness leaf task -> the named task, group or tag it runs for
        return {leaf: named for leaf, (named, _, _) in load_leaf_tasks(ec).items()}

    @functools.cache
    def model_setup(model_name: str):
        tok = load_tokenizer(paths[model_name], recipe.model.trust_remote_code)  # the domain model's may be extended
        return tok, checkpoint_objective(paths[model_name], recipe.model.objective, recipe.model.trust_remote_code)

    def run(job) -> dict:
        tok, objective = model_setup(job.model)
        path, trust = paths[job.model], recipe.model.trust_remote_code
        if job.kind == "perplexity":  # always float32
            model = load_model(path, objective, trust).to(device)
            ppl = {kind: heldout_perplexity(model, tok, texts, objective, ec.ppl_window, ec.ppl_stride, None, ec.batch_size,
                                            end_of_text_id(tok), device) for kind, texts in heldout().items()}
            return {"perplexity": ppl, "tokenizer": tokenizer_identity(tok)}
        if job.kind == "harness":  # each checkpoint with its own tokenizer, in float32; job.task: the named lm-eval task
            model = load_model(path, "clm", trust).to(device)
            return score_checkpoint(model, tok, ec, out / "harness" / job.model, harness_named_as(), [job.task])
        task = tasks[job.task]
        if job.kind == "zero_shot":  # k shots: the same k training examples in front of every test prompt, for every model
            model = load_model(path, objective, trust).to(device).to(scoring_dtype(ec.precision, device))
            examples = with_shots(split(task.name, "test"), split(task.name, "train"), ec.few_shot)
            return score_before_finetuning(recipe, task, model, tok, objective, job.model, examples, out)
        return score_adapter(recipe, task, path, tok, objective, job.model, job.seed, split(task.name, "test"), device, out)

    return run


def score_before_finetuning(recipe, task, model, tok, objective: str, model_name: str, examples: list[dict], out) -> dict:
    """k-shot scores of the base model on `examples` (test prompts with the k solved examples in front)."""
    ec = recipe.eval
    bos, norm_unit = zero_shot_conventions(ec, end_of_text_id(tok), tok)
    rows = score_task(task, model, tok, examples, bos, ec.batch_size, f"{ec.few_shot}-shot {task.name} {model_name}",
                      objective, ec.zero_shot_end_of_text, norm_unit)
    atomic_write_jsonl(out / "predictions" / task.name / model_name / "zero_shot.jsonl", rows)
    return {**task_metric(task.metric, rows), "shots": ec.few_shot}


def score_adapter(recipe, task, base_path: str, tok, objective: str, model_name: str, seed: int, tests: list[dict], device,
                  out) -> dict:
    """Scores of one LoRA adapter (one model, task and seed) on the test items, on the base it was trained against. On a
    CPU the adapter is merged into a float32 copy of the base, then cast to eval.precision (peft's extra LoRA matmuls
    cost 5-17% there, BENCHMARKS.md); on a GPU (where a second copy of a large model may not fit) and on a quantised
    base the adapter runs unmerged on a base in eval.precision."""
    ec, q = recipe.eval, recipe.lora.quantize
    bos = end_of_text_id(tok)
    head = head_setup(recipe, task, objective, tok)
    merge = q == "none" and device.type == "cpu"
    dtype = scoring_dtype(ec.precision, device)
    base_dtype = torch.float32 if merge else dtype
    base = (load_classifier(base_path, head["num_labels"], head["pad_id"], recipe.model.trust_remote_code, base_dtype,
                            quantize=q)
            if head else load_model(base_path, objective, recipe.model.trust_remote_code, base_dtype, quantize=q))
    base = base.to(device) if q == "none" else base
    adapter = stage_dir(recipe, "finetune") / task.name / model_name / f"seed{seed}" / "adapter"
    model = adapted_model(base, adapter, merge, dtype)
    desc = f"lora {task.name} {model_name} seed{seed}"
    if head:
        inputs = [classifier_inputs(tok, e["prompt"], bos, head["encoder"]) for e in tests]
        rows = classify_examples(model, inputs, tests, head["pad_id"], desc, ec.batch_size)
    else:  # with end-of-text, as the adapter was trained (finetune.training_features)
        rows = score_task(task, model, tok, tests, bos, ec.batch_size, desc, objective, end_of_text=True)
    atomic_write_jsonl(out / "predictions" / task.name / model_name / f"seed{seed}.jsonl", rows)
    return task_metric(task.metric, rows)


def score_adapters(recipe, task, base_path: str, tok, objective: str, model_name: str, tests: list[dict], device, out) -> dict:
    """Seed -> score_adapter's scores, for every seed of the recipe (bench/finetune_stability.py)."""
    return {str(seed): score_adapter(recipe, task, base_path, tok, objective, model_name, seed, tests, device, out)
            for seed in recipe.lora.seeds}


def adapted_model(base, adapter: Path, merge: bool, dtype):
    """The base with the adapter. Merged: the adapter folded into the (float32) base, then cast to `dtype` (scores like
    the adapter, without peft's extra matmuls: faster on a CPU). Unmerged (on a GPU or a quantised base): a PeftModel."""
    from peft import PeftModel

    model = PeftModel.from_pretrained(base, str(adapter))
    if not merge:
        return model
    # peft leaves the weights frozen, and on this CPU (torch 2.13) bfloat16 layers with frozen weights ran 2.2-3x
    # slower than the same layers unfrozen (bench/adapter_scoring.py); scoring runs under no_grad
    return model.merge_and_unload().to(dtype).requires_grad_(True)
