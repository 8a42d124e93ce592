"""Stage 2: continued pre-training of the general checkpoint on the packed domain blocks.

    domainpt pretrain recipes/demo/legal.yaml
    torchrun --nproc_per_node 2 -m domainpt pretrain recipes/demo/tiny.yaml
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m domainpt pretrain recipes/legal.yaml

A plain Accelerate loop. Global batch = batch_size x grad_accum x processes blocks; the data order is a
seeded permutation fixed before training, so a resumed run (load_state + skip_first_batches) and a
run with more processes see exactly the same blocks per optimizer step. Writes out_dir/pretrain/:
metrics.jsonl (one line per optimizer step), checkpoints/step_N, model/ (safetensors + tokenizer).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from domainpt.data.pack import PackedBlocks
from domainpt.errors import DomainptError
from domainpt.eval.perplexity import perplexity
from domainpt.eval.tasks import read_heldout
from domainpt.flops import device_peak_flops, model_flops_per_token
from domainpt.manifest import atomic_write_json, read_manifest, require_done, stage_dir, write_manifest
from domainpt.models import end_of_text_id, load_model, load_tokenizer, objective_for
from domainpt.schedules import lr_multiplier


def block_order(n_blocks: int, needed: int, seed: int) -> list[int]:
    """Seeded permutations of the blocks, one per epoch, concatenated to `needed` indices."""
    out, epoch = [], 0
    while len(out) < needed:
        out += np.random.default_rng(seed + epoch).permutation(n_blocks).tolist()
        epoch += 1
    return out[:needed]


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases and norm weights (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_collate(objective: str, tokenizer, doc_isolation: bool):
    if objective == "mlm":
        from transformers import DataCollatorForLanguageModeling

        mlm = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
        return lambda items: mlm([{"input_ids": it["input_ids"].tolist()} for it in items])

    def collate(items):
        ids = torch.from_numpy(np.stack([it["input_ids"] for it in items]))
        batch = {"input_ids": ids, "labels": ids.clone()}
        if doc_isolation:
            batch["position_ids"] = torch.from_numpy(np.stack([it["position_ids"] for it in items]))
        return batch

    return collate


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted((p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file()),
                  key=lambda p: int(p.name.split("_")[1]))
    return done[-1] if done else None


def run_pretrain(recipe) -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.time()
    prep = require_done(recipe, "prepare", "pretrain")
    prep_dir = stage_dir(recipe, "prepare")
    out = stage_dir(recipe, "pretrain")
    tc = recipe.train
    mp = tc.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # cpu=True on machines without a GPU: only then does Accelerate treat torchrun's processes as MULTI_CPU (gloo).
    accelerator = Accelerator(gradient_accumulation_steps=tc.grad_accum, mixed_precision=mp, cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    set_seed(tc.seed)

    base = prep["base_model"]
    tok = load_tokenizer(base, recipe.model.trust_remote_code)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, trust_remote_code=recipe.model.trust_remote_code)
    objective = objective_for(config, recipe.model.objective)
    model = load_model(base, objective, recipe.model.trust_remote_code)
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False  # packed documents stay isolated only without the KV cache (see DESIGN.md)

    blocks = PackedBlocks(prep_dir / "train", recipe.data.seq_len)
    world = accelerator.num_processes
    micro_total = tc.max_steps * tc.grad_accum * world
    order = block_order(len(blocks), micro_total * tc.batch_size, tc.seed)
    loader = torch.utils.data.DataLoader(blocks, batch_size=tc.batch_size, sampler=order,
                                         collate_fn=make_collate(objective, tok, tc.doc_isolation),
                                         num_workers=0, pin_memory=torch.cuda.is_available())
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas))
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    flops_tok = model_flops_per_token(accelerator.unwrap_model(model), recipe.data.seq_len)
    peak = device_peak_flops(accelerator.device)
    tokens_per_step = tc.batch_size * tc.grad_accum * world * recipe.data.seq_len
    if main:
        epochs = micro_total * tc.batch_size / len(blocks)
        print(f"[domainpt] pretrain plan: objective={objective} processes={world} mixed_precision={mp}\n"
              f"  global batch {tc.batch_size * tc.grad_accum * world} blocks = {tokens_per_step:,} tokens/step, "
              f"{tc.max_steps} steps = {tokens_per_step * tc.max_steps:,} tokens ({epochs:.2f} epochs of {len(blocks)} blocks)\n"
              f"  ~{flops_tok:.3g} FLOPs/token, ~{flops_tok * tokens_per_step * tc.max_steps:.3g} FLOPs in all", flush=True)

    # Resume from the newest complete checkpoint, if any.
    ckpt_root = out / "checkpoints"
    start_step, tokens_seen, history = 0, 0, []
    ckpt = _latest_checkpoint(ckpt_root) if ckpt_root.exists() else None
    if ckpt is not None:
        try:
            accelerator.load_state(str(ckpt))
            state = json.loads((ckpt / "trainer_state.json").read_text())
        except Exception as e:  # a corrupted checkpoint must not be trained on silently
            raise DomainptError(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {str(e)[:120]}); "
                                f"delete it to resume from the one before") from None
        start_step, tokens_seen, history = state["step"], state["tokens_seen"], state.get("eval_history", [])
        if main:
            print(f"[domainpt] resuming from {ckpt} at step {start_step}", flush=True)
    metrics_path = out / "metrics.jsonl"
    if main:
        kept = []
        if metrics_path.exists() and start_step > 0:
            kept = [l for l in metrics_path.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= start_step]
        metrics_path.write_text("".join(l + "\n" for l in kept))
    batches = iter(accelerator.skip_first_batches(loader, start_step * tc.grad_accum) if start_step else loader)

    heldout = read_heldout(prep_dir)
    bos = end_of_text_id(tok)

    def evaluate_heldout() -> dict:
        res = {}
        for kind, texts in heldout.items():
            if texts and objective == "clm":
                r = perplexity(model, tok, texts, recipe.eval.ppl_window, recipe.eval.ppl_stride, tc.eval_tokens,
                               recipe.eval.batch_size, bos, accelerator.device)
                res[f"eval_{kind}_ppl"] = round(r["ppl"], 4)
        model.train()
        return res

    if start_step == 0 and objective == "clm":
        history.append({"step": 0, **evaluate_heldout()})
    start_general = history[0].get("eval_general_ppl") if history else None

    model.train()
    bar = tqdm(total=tc.max_steps, initial=start_step, desc="pretrain", unit="step", disable=not main)
    stop_reason = None
    for step in range(start_step, tc.max_steps):
        lr = tc.lr * lr_multiplier(step, tc.max_steps, tc.warmup_steps, tc.schedule, tc.min_lr_ratio, tc.decay_share)
        for g in optimizer.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)
        n_tok = torch.zeros((), device=accelerator.device)
        grad_norm = None
        for _ in range(tc.grad_accum):
            batch = next(batches)
            with accelerator.accumulate(model):
                loss = model(**batch, use_cache=False).loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and tc.grad_clip > 0:
                    # model.parameters() itself, not a saved list: under FSDP2 the parameters become DTensors
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            loss_sum += loss.detach().float()
            n_tok += batch["input_ids"].numel()
        step_loss = accelerator.reduce(loss_sum / tc.grad_accum, reduction="mean").item()
        step_tokens = int(accelerator.reduce(n_tok, reduction="sum").item())
        if not math.isfinite(step_loss):
            raise DomainptError(f"loss is {step_loss} at step {step + 1}; lower train.lr or check the data "
                                f"(last good checkpoint: {_latest_checkpoint(ckpt_root) if ckpt_root.exists() else 'none'})")
        dt = time.perf_counter() - t0
        tokens_seen += step_tokens
        rec = {"step": step + 1, "loss": round(step_loss, 6), "lr": lr, "tokens": step_tokens,
               "tokens_seen": tokens_seen, "tokens_per_s": round(step_tokens / dt, 2),
               "grad_norm": round(float(grad_norm), 6) if grad_norm is not None else None,
               "mfu": round(flops_tok * step_tokens / dt / (peak * world), 4) if peak else None,
               "step_s": round(dt, 4)}
        last = step + 1 == tc.max_steps
        if (tc.eval_every and (step + 1) % tc.eval_every == 0) or last:
            ev = evaluate_heldout()
            rec.update(ev)
            history.append({"step": step + 1, **ev})
            g = ev.get("eval_general_ppl")
            if tc.max_general_ppl_rise is not None and start_general and g and g > start_general * (1 + tc.max_general_ppl_rise):
                stop_reason = f"general perplexity {g:.2f} rose past {start_general:.2f} x (1 + {tc.max_general_ppl_rise})"
        if main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if (step + 1) % tc.log_every == 0 or last:
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        bar.update(1)
        if (tc.save_every and (step + 1) % tc.save_every == 0) or last or stop_reason:
            save_checkpoint(accelerator, ckpt_root, step + 1, tokens_seen, history, tc.keep_last)
        if stop_reason:
            if main:
                print(f"[domainpt] early stop at step {step + 1}: {stop_reason}", flush=True)
            break
    bar.close()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    if main:
        tmp = out / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tok.save_pretrained(tmp)
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        tmp.rename(out / "model")
    accelerator.wait_for_everyone()
    manifest = None
    if main:
        steps_done = len([l for l in metrics_path.read_text().splitlines() if l.strip()])
        manifest = write_manifest(recipe, "pretrain", started, tokens=tokens_seen, steps=steps_done,
                                  flops=flops_tok * tokens_seen, flops_per_token=flops_tok, processes=world,
                                  device=str(accelerator.device), mixed_precision=mp, objective=objective,
                                  stop_reason=stop_reason, eval_history=history,
                                  gpu_hours=(time.time() - started) * world / 3600 if accelerator.device.type == "cuda" else 0.0)
    accelerator.wait_for_everyone()
    return manifest or read_manifest(recipe, "pretrain")


def save_checkpoint(accelerator, root: Path, step: int, tokens_seen: int, history: list, keep_last: int) -> None:
    """save_state into a temporary folder, then rename: a kill mid-save leaves the previous checkpoint intact."""
    tmp, final = root / f".tmp_step_{step}", root / f"step_{step}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        atomic_write_json(tmp / "trainer_state.json", {"step": step, "tokens_seen": tokens_seen, "eval_history": history})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        done = sorted((p for p in root.glob("step_*")), key=lambda p: int(p.name.split("_")[1]))
        for old in done[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
