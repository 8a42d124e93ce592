"""Stage 3: LoRA fine-tuning of the general AND the domain model on every task, same settings and seeds.

    domainpt finetune recipes/demo/legal.yaml

For each task, model and seed: train a LoRA adapter (peft) to produce the right choice's words after
the prompt (loss on those words only; an encoder predicts each of them masked, the pseudo-log-likelihood
that evaluate scores) — or, for a classification task with `scoring: head`, a classification head on the
prompt together with the adapter — and save it in peft's format under
out_dir/finetune/<task>/<model>/seed<k>/adapter. Both models see the same examples in the same order
for a given seed, the same steps and the same hyper-parameters: only the starting weights differ.
With compare.control=continued_general a third model, control_model (out_dir/pretrain_control/model), is
fine-tuned in exactly the same way.
"""
from __future__ import annotations

import functools
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from domainpt.encoding import answer_sequence, classifier_inputs, end_of_text_id, pad_left, pad_right, prompt_ids, special_ids
from domainpt.eval.masked import masked_batch, masked_logprobs
from domainpt.jobs.grid import finetune_jobs
from domainpt.jobs.runner import JobBook, job_records, merged_start, parallel_summary, run_share, this_worker
from domainpt.layout import model_paths, model_stages, task_dir
from domainpt.lora_targets import resolve_targets
from domainpt.manifest import atomic_write_json, require_done, stage_dir, write_manifest
from domainpt.models import check_fits_one_gpu, checkpoint_objective, load_classifier, load_model, load_tokenizer, quantization_config
from domainpt.tasks import head_setup, read_split


def lora_config(recipe, model, new_token_ids: list[int] | None = None, head: bool = False, objective: str = "clm"):
    """peft LoraConfig; `new_token_ids` (an extended vocabulary) also get their embedding rows trained;
    with `head`, peft trains and saves the classification head fully (modules_to_save) beside the adapter.
    peft has no masked-LM task type: an encoder's adapter is a plain PeftModel (task_type None)."""
    from peft import LoraConfig, TaskType

    lc = recipe.lora
    targets = resolve_targets(lc.target_modules, model.config.model_type, [n for n, _ in model.named_modules() if n],
                              model.name_or_path)
    extra = {"trainable_token_indices": list(new_token_ids)} if new_token_ids else {}
    return LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=targets,
                      task_type=TaskType.SEQ_CLS if head else None if objective == "mlm" else TaskType.CAUSAL_LM, **extra)


def training_features(tokenizer, examples: list[dict], bos: int, eot: int) -> list[tuple[list[int], int]]:
    """(ids, prompt length): the prompt, the right choice's words, then end-of-text."""
    feats = []
    for ex in examples:
        p = prompt_ids(tokenizer, ex["prompt"], bos)
        a = tokenizer(ex["choices"][ex["answer"]], add_special_tokens=False)["input_ids"] + [eot]
        feats.append((p + a, len(p)))
    return feats


def masked_features(tokenizer, examples: list[dict]) -> list[tuple[list[int], int]]:
    """(ids, answer start) for an encoder: [CLS] prompt answer [SEP]; each answer token is predicted masked."""
    cls, sep, _ = special_ids(tokenizer)
    feats = []
    for ex in examples:
        p = tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        a = tokenizer(ex["choices"][ex["answer"]], add_special_tokens=False)["input_ids"]
        feats.append((answer_sequence(p, a, cls, sep), 1 + len(p)))
    return feats


def head_features(tokenizer, examples: list[dict], bos: int, encoder: bool) -> list[tuple[list[int], int]]:
    """(ids, label index) for a classification head: the prompt alone, the answer as a class."""
    return [(classifier_inputs(tokenizer, ex["prompt"], bos, encoder), ex["answer"]) for ex in examples]


def head_loss(model, feats, pad_id: int, device) -> tuple[torch.Tensor, int]:
    ids, mask = pad_right([ids for ids, _ in feats], pad_id)
    labels = torch.tensor([y for _, y in feats], device=device)
    return F.cross_entropy(model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float(), labels), int(mask.sum())


def masked_answer_loss(model, feats: list[tuple[list[int], int]], mask_id: int, pad_id: int, device) -> tuple[torch.Tensor, int]:
    """An encoder on a likelihood-scored task: the mean negative log-probability of each answer token with that
    token masked (feats from masked_features: (ids, answer start)), the pseudo-log-likelihood evaluate scores."""
    items = [(ids, p) for ids, start in feats for p in range(start, len(ids) - 1)]  # every answer token, [SEP] excluded
    batch = masked_batch(items, mask_id, pad_id)
    return -masked_logprobs(model, batch, device).mean(), int(batch["attention_mask"].sum())


def collate(feats, pad_id: int) -> dict:
    """Left-padded batch, so every answer ends at the last position: the LM head then runs only on the
    last `keep` positions (a 49k-word head over whole prompts would cost a third of the step)."""
    ids, mask, position_ids = pad_left([x for x, _ in feats], pad_id)
    keep = max(len(x) - n_prompt for x, n_prompt in feats) + 1
    labels = torch.full((len(feats), keep - 1), -100, dtype=torch.long)
    for r, (x, n_prompt) in enumerate(feats):
        labels[r, keep - 1 - (len(x) - n_prompt):] = torch.tensor(x[n_prompt:])
    return {"input_ids": ids, "attention_mask": mask, "position_ids": position_ids, "labels": labels, "keep": keep}


def answer_loss(model, batch: dict) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens, computing logits only where answers are predicted."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"],
                   logits_to_keep=batch["keep"], use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch["labels"].reshape(-1), ignore_index=-100)


def train_adapter(recipe, base_path: str, feats, seed: int, out: Path, desc: str, new_token_ids=None,
                  num_labels: int | None = None, pad_id: int = 0, objective: str = "clm", mask_id: int | None = None,
                  task=None) -> dict:
    """One LoRA run; returns its log. Deterministic given the seed (data order, LoRA and head init).
    With `num_labels`, feats are head_features and a classification head is trained with the adapter;
    with objective 'mlm' (no head), feats are masked_features and `mask_id` masks the answer tokens.
    `task` (its TaskConfig) may set its own steps and batch size (lora_steps, lora_batch_size)."""
    from peft import get_peft_model

    lc = recipe.lora.for_task(task) if task is not None else recipe.lora
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    q = lc.quantize
    if num_labels:
        model = load_classifier(base_path, num_labels, pad_id, recipe.model.trust_remote_code, quantize=q)
    else:
        model = load_model(base_path, objective, recipe.model.trust_remote_code, quantize=q)
    if q == "none":
        model = model.to(device)
    else:  # QLoRA: quantised base placed by bitsandbytes; norms in fp32, input grads on, as peft recommends
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    torch.manual_seed(seed)
    model = get_peft_model(model, lora_config(recipe, model, new_token_ids, head=bool(num_labels), objective=objective))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lc.lr, weight_decay=0.0)
    warm = max(1, lc.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (lc.steps - s) / max(1, lc.steps - warm))))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(feats)) for _ in range(lc.steps * lc.batch_size // len(feats) + 1)])
    pad = 0
    losses, t0, tokens = [], time.time(), 0
    bf16 = lc.mixed_precision == "bf16" or (lc.mixed_precision == "auto" and device.type == "cuda")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
    for step in tqdm(range(lc.steps), desc=desc, unit="step", leave=False):
        idx = order[step * lc.batch_size:(step + 1) * lc.batch_size]
        with autocast:
            if num_labels:
                loss, n_tokens = head_loss(model, [feats[i] for i in idx], pad_id, device)
            elif objective == "mlm":
                loss, n_tokens = masked_answer_loss(model, [feats[i] for i in idx], mask_id, pad_id, device)
            else:
                batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in collate([feats[i] for i in idx], pad).items()}
                loss, n_tokens = answer_loss(model, batch), int(batch["attention_mask"].sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 6))
        tokens += n_tokens
    tmp = out.parent / f".{out.name}.tmp"
    model.save_pretrained(tmp)
    tmp.rename(out)
    if lc.merge_export:  # the adapter folded into the base weights: a plain model for serving
        merged, tmp = out.parent / "merged", out.parent / ".merged.tmp"
        model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)
        load_tokenizer(base_path, recipe.model.trust_remote_code).save_pretrained(tmp)
        tmp.rename(merged)
    return {"losses": losses, "tokens": tokens, "wall_s": round(time.time() - t0, 3)}


def run_finetune(recipe, shard: str | None = None, merge: bool = False) -> dict | None:
    """Every process of a launch (or `--shard I/N` task) runs its share of the jobs (jobs/grid.finetune_jobs); the
    main process writes the manifest once all are done. `merge`: only write it, from jobs that --shard tasks ran."""
    started = time.time()
    paths = model_paths(recipe)
    jobs = finetune_jobs(recipe)
    book = JobBook(recipe, "finetune", model_stages(recipe))
    worker = this_worker(shard)
    if not merge:
        quantization_config(recipe.lora.quantize)  # no bitsandbytes or no kernel for this device: say so before any work
        if recipe.lora.quantize == "none":  # float32 weights (train_adapter)
            objective = checkpoint_objective(paths["general_model"], recipe.model.objective, recipe.model.trust_remote_code)
            check_fits_one_gpu(paths, objective, recipe.model.trust_remote_code, 4, "finetune")
        run_share(jobs, lora_job(recipe, paths), book, worker)
    if shard or not worker.main:
        return None
    markers = book.collect(jobs, "run `domainpt finetune RECIPE` to do them here, or rerun the --shard tasks that hold them")
    started, workers = merged_start(markers) if merge else (started, worker.count)
    runs = {j.id: {k: markers[j.id]["result"][k] for k in ("first_loss", "last_loss", "tokens", "wall_s")} for j in jobs}
    return write_manifest(recipe, "finetune", started, tokens=sum(r["tokens"] for r in runs.values()), runs=runs, models=paths,
                          quantize=recipe.lora.quantize, jobs=job_records(markers),
                          **parallel_summary(markers, started, time.time() - started, workers))


def lora_job(recipe, paths: dict):
    """job -> its LoRA run (adapter under out_dir/finetune/<task>/<model>/seed<k>/) and its log. Each model reads
    the examples with its own tokenizer (the domain model's may be extended); features are built once per process."""
    out = stage_dir(recipe, "finetune")
    prep = require_done(recipe, "prepare", "finetune")
    # the domain and control models both start from prepare's (possibly extended) model; the general model has no new rows
    added = prep.get("added_token_ids") if recipe.lora.train_new_tokens else None
    tasks = {t.name: t for t in recipe.tasks}

    @functools.cache
    def features(task_name: str, model_name: str):
        task, tok = tasks[task_name], load_tokenizer(paths[model_name], recipe.model.trust_remote_code)
        examples = read_split(task_dir(recipe, task_name), "train")
        objective = checkpoint_objective(paths[model_name], recipe.model.objective, recipe.model.trust_remote_code)
        bos = eot = end_of_text_id(tok)
        if head := head_setup(recipe, task, objective, tok):
            return head_features(tok, examples, bos, head["encoder"]), {"num_labels": head["num_labels"], "pad_id": head["pad_id"]}
        if objective == "mlm":
            return masked_features(tok, examples), {"objective": "mlm", "mask_id": tok.mask_token_id, "pad_id": tok.pad_token_id}
        return training_features(tok, examples, bos, eot), {}

    def run(job) -> dict:
        feats, how = features(job.task, job.model)
        run_dir = out / job.task / job.model / f"seed{job.seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        adapter = run_dir / "adapter"
        for stale in (adapter, run_dir / "merged"):  # left by a job that was killed before its marker
            if stale.exists():
                shutil.rmtree(stale)
        log = train_adapter(recipe, paths[job.model], feats, job.seed, adapter, desc=f"lora {job.id}",
                            new_token_ids=None if job.model == "general_model" else added, task=tasks[job.task], **how)
        atomic_write_json(run_dir / "train_log.json", log)
        return {"first_loss": log["losses"][0], "last_loss": log["losses"][-1], "tokens": log["tokens"], "wall_s": log["wall_s"]}

    return run
