"""Stage 2: continued pre-training of the general checkpoint on the packed domain blocks.

    domainpt pretrain recipes/demo/legal.yaml
    torchrun --nproc_per_node 2 -m domainpt pretrain recipes/demo/tiny.yaml
    accelerate launch --config_file recipes/accelerate/fsdp.yaml -m domainpt pretrain recipes/legal.yaml

A plain Accelerate loop. Global batch = batch_size x grad_accum x processes blocks; the data order is a
seeded permutation fixed before training, so a resumed run (load_state + skip_first_batches) and a
run with more processes see exactly the same blocks per optimizer step. Writes out_dir/pretrain/:
metrics.jsonl (one line per optimizer step), checkpoints/step_N, model/ (safetensors + tokenizer).
With compare.control=continued_general, `domainpt pretrain_control RECIPE` runs the same loop from the same
start on prepare/train_control (general text only) into out_dir/pretrain_control/, same layout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from domainpt import faults
from domainpt.attention import FLATTENED, check_usable, flatten_rows, implementation_name
from domainpt.chunked_loss import check_supported, chunked_lm_loss, head_returns_hidden
from domainpt.config import TRACKER_MODULES
from domainpt.data.pack import PackedBlocks
from domainpt.errors import DomainptError
from domainpt.eval.perplexity import heldout_perplexity
from domainpt.eval.tasks import read_heldout
from domainpt.flops import device_peak_flops, model_flops_per_token
from domainpt.manifest import (CONTROL_STAGE, atomic_write_json, atomic_write_text, read_manifest, require_done, stage_dir,
                               write_manifest)
from domainpt.models import end_of_text_id, load_model, load_tokenizer, objective_for
from domainpt.resources import checkpoint_bytes, ensure_free_space
from domainpt.schedules import lr_multiplier


class EpochSampler(torch.utils.data.Sampler):
    """Block indices: a seeded permutation per epoch, concatenated, cut to `length`. Lazy, so the
    margin kept for rollbacks costs no memory."""

    def __init__(self, n_blocks: int, length: int, seed: int):
        self.n_blocks, self.length, self.seed = n_blocks, length, seed

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        given, epoch = 0, 0
        while given < self.length:
            for i in np.random.default_rng(self.seed + epoch).permutation(self.n_blocks)[:self.length - given].tolist():
                yield i
                given += 1
            epoch += 1


def block_order(n_blocks: int, needed: int, seed: int) -> list[int]:
    """The first `needed` indices of EpochSampler (the data order of a run)."""
    return list(EpochSampler(n_blocks, needed, seed))


def param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases and norm weights (1-D parameters)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_collate(objective: str, tokenizer, doc_isolation: bool, whole_word_mask: bool = False, flatten: bool = False):
    if objective == "mlm" and whole_word_mask:
        from domainpt.masking import WholeWordMasker

        return WholeWordMasker(tokenizer)
    if objective == "mlm":
        from transformers import DataCollatorForLanguageModeling

        mlm = DataCollatorForLanguageModeling(tokenizer, mlm=True, mlm_probability=0.15)
        return lambda items: mlm([{"input_ids": it["input_ids"].tolist()} for it in items])

    def collate(items):
        ids = torch.from_numpy(np.stack([it["input_ids"] for it in items]))
        batch = {"input_ids": ids, "labels": ids.clone()}
        if doc_isolation:
            pos = torch.from_numpy(np.stack([it["position_ids"] for it in items]))
            batch["position_ids"] = pos
            # A document's first token is not predicted from the previous document (its end-of-text):
            # the packed loss is then exactly the mean over documents run one by one.
            batch["labels"][pos == 0] = -100
        return flatten_rows(batch, doc_isolation) if flatten else batch

    return collate


def _check_launch(accelerator) -> None:
    """An FSDP or DeepSpeed accelerate config on a machine without GPUs: Accelerate's cpu mode drops the
    sharding and trains plain data-parallel (measured: MULTI_CPU under fsdp_8gpu.yaml). Refuse, rather
    than run something other than what the config says."""
    got = accelerator.distributed_type.value
    for env, asked in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if os.environ.get(env, "false").lower() in ("1", "true") and got != asked:
            raise DomainptError(f"the accelerate config asks for {asked}, but Accelerate runs {got} here "
                                f"({'no GPU: its CPU mode ignores ' + asked if not torch.cuda.is_available() else 'check the config'}); "
                                "launch on GPUs, or with a DDP config (or torchrun) on CPUs")


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    done = sorted((p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file()),
                  key=lambda p: int(p.name.split("_")[1]))
    return done[-1] if done else None


def _metrics_up_to(path: Path, step: int) -> list[str]:
    """Lines of metrics.jsonl for steps <= `step`; a last line cut short by a kill is dropped."""
    kept = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return kept


def _any_rank(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any: decisions all ranks must take together."""
    t = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


class _Log:
    """metrics.jsonl (one line per optimizer step) and events.jsonl (bad steps, rollbacks); main process only."""

    def __init__(self, out: Path, main: bool):
        self.metrics, self.events, self.main = out / "metrics.jsonl", out / "events.jsonl", main

    def restart_at(self, step: int) -> None:
        if self.main:
            kept = _metrics_up_to(self.metrics, step) if step > 0 else []
            atomic_write_text(self.metrics, "".join(l + "\n" for l in kept))

    def _append(self, path: Path, rec: dict) -> None:
        if self.main:
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def step(self, rec: dict) -> None:
        self._append(self.metrics, rec)

    def event(self, rec: dict) -> None:
        self._append(self.events, rec)

    def data_position_after_rollback(self, to_step: int) -> int | None:
        """Where the data stream stood after the latest rollback to `to_step` (past the batches that caused it)."""
        pos = None
        if self.events.exists():
            for line in self.events.read_text().splitlines():
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if e.get("event") == "rollback" and e.get("to_step") == to_step:
                    pos = e["micro_batches"]
        return pos


def _load_checkpoint(accelerator, ckpt: Path) -> dict:
    try:
        accelerator.load_state(str(ckpt))
        return json.loads((ckpt / "trainer_state.json").read_text())
    except Exception as e:  # a corrupted checkpoint must not be trained on silently
        raise DomainptError(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                            f"delete it to resume from the one before") from None


# arm -> (stage folder, prepare's packed blocks it trains on)
ARMS = {"domain": ("pretrain", "train"), "control": (CONTROL_STAGE, "train_control")}


def run_pretrain_control(recipe) -> dict:
    """The control arm (compare.control): the same loop from the same start, on prepare's general-only blocks."""
    return run_pretrain(recipe, arm="control")


def run_pretrain(recipe, arm: str = "domain") -> dict:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    started = time.time()
    stage, train_dir = ARMS[arm]
    prep = require_done(recipe, "prepare", stage)
    prep_dir = stage_dir(recipe, "prepare")
    if not (prep_dir / train_dir / "meta.json").is_file():
        raise DomainptError(f"{prep_dir / train_dir} is missing: rerun `domainpt prepare RECIPE --force` with this recipe")
    out = stage_dir(recipe, stage)
    tc = recipe.train
    mp = tc.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    # cpu=True on machines without a GPU: only then does Accelerate treat torchrun's processes as MULTI_CPU (gloo).
    missing = [t for t in tc.report_to if importlib.util.find_spec(TRACKER_MODULES[t]) is None]
    if missing:
        raise DomainptError(f"train.report_to: {missing[0]} is not installed (pip install {TRACKER_MODULES[missing[0]]})")
    accelerator = Accelerator(gradient_accumulation_steps=tc.grad_accum, mixed_precision=mp, cpu=not torch.cuda.is_available(),
                              log_with=list(tc.report_to) or None, project_dir=str(out / "logs"))
    _check_launch(accelerator)
    main = accelerator.is_main_process
    ckpt_root = out / "checkpoints"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_root.glob(".tmp_step_*"):  # a checkpoint write cut short by a kill
            shutil.rmtree(stale, ignore_errors=True)
        _prune(ckpt_root, tc.keep_last)  # a kill may have come between a save and its pruning
    accelerator.wait_for_everyone()
    set_seed(tc.seed)

    base = prep.get("pretrain_init") or prep["base_model"]  # the extended model when tokenizer.extend is on
    tok = load_tokenizer(base, recipe.model.trust_remote_code)
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(base, trust_remote_code=recipe.model.trust_remote_code)
    objective = objective_for(config, recipe.model.objective)
    check_usable(tc.attention, objective, accelerator.device)
    model = load_model(base, objective, recipe.model.trust_remote_code, attn_implementation=implementation_name(tc.attention))
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.config.use_cache = False  # packed documents stay isolated only without the KV cache (see DESIGN.md)
    if tc.compile:  # in place: state_dict keys, checkpoints and the saved model stay those of the plain model
        model.compile()

    blocks = PackedBlocks(prep_dir / train_dir, recipe.data.seq_len)
    world = accelerator.num_processes
    micro_total = tc.max_steps * tc.grad_accum * world
    # Twice the blocks a run needs: rollbacks skip past bad batches and must not run out of data.
    sampler = EpochSampler(len(blocks), 2 * micro_total * tc.batch_size, tc.seed)
    loader = torch.utils.data.DataLoader(blocks, batch_size=tc.batch_size, sampler=sampler,
                                         collate_fn=make_collate(objective, tok, tc.doc_isolation, tc.whole_word_mask,
                                                                flatten=tc.attention in FLATTENED),
                                         num_workers=0, pin_memory=torch.cuda.is_available())
    # fused: one kernel per step instead of a loop over tensors (3x faster steps measured on CPU, same numbers to 1e-7)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas), fused=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)

    chunk = tc.loss_chunk_tokens
    if chunk:
        if objective != "clm":
            raise DomainptError("train.loss_chunk_tokens is for causal LMs; this model trains with the masked-LM objective")
        ds = accelerator.state.deepspeed_plugin
        check_supported(accelerator.unwrap_model(model), accelerator.distributed_type, ds.zero_stage if ds else None, tc.compile)
    flops_tok = model_flops_per_token(accelerator.unwrap_model(model), recipe.data.seq_len)
    peak = device_peak_flops(accelerator.device)
    tokens_per_step = tc.batch_size * tc.grad_accum * world * recipe.data.seq_len
    epochs = micro_total * tc.batch_size / len(blocks)
    if main:
        arm_note = f" (control arm: general text only, prepare/{train_dir})" if arm == "control" else ""
        print(f"[domainpt] {stage} plan{arm_note}: objective={objective} processes={world} mixed_precision={mp}\n"
              f"  global batch {tc.batch_size * tc.grad_accum * world} blocks = {tokens_per_step:,} tokens/step, "
              f"{tc.max_steps} steps = {tokens_per_step * tc.max_steps:,} tokens ({epochs:.2f} epochs of {len(blocks)} blocks)\n"
              f"  ~{flops_tok:.3g} FLOPs/token, ~{flops_tok * tokens_per_step * tc.max_steps:.3g} FLOPs in all", flush=True)

    log = _Log(out, main)
    if tc.report_to:
        accelerator.init_trackers(recipe.name, config={f"train.{k}": v for k, v in dataclasses.asdict(tc).items()
                                                       if isinstance(v, (int, float, str, bool))})
    # Resume from the newest complete checkpoint, if any.
    step, tokens_seen, history, micro_done = 0, 0, [], 0
    ckpt = _latest_checkpoint(ckpt_root) if ckpt_root.exists() else None
    if ckpt is not None:
        state = _load_checkpoint(accelerator, ckpt)
        step, tokens_seen, history = state["step"], state["tokens_seen"], state.get("eval_history", [])
        micro_done = log.data_position_after_rollback(step) or state.get("micro_batches", step * tc.grad_accum)
        if main:
            print(f"[domainpt] resuming from {ckpt} at step {step}", flush=True)
    log.restart_at(step)
    batches = iter(accelerator.skip_first_batches(loader, micro_done) if micro_done else loader)

    heldout = read_heldout(prep_dir)
    bos = end_of_text_id(tok)

    def evaluate_heldout() -> dict:
        # Eager even under train.compile: held-out windows come in many lengths, each a recompile.
        with torch.compiler.set_stance("force_eager") if tc.compile else contextlib.nullcontext():
            return _evaluate_heldout()

    def _evaluate_heldout() -> dict:
        res = {}
        for kind, texts in heldout.items():
            if texts:
                r = heldout_perplexity(model, tok, texts, objective, recipe.eval.ppl_window, recipe.eval.ppl_stride,
                                       tc.eval_tokens, recipe.eval.batch_size, bos, accelerator.device)
                res[f"eval_{kind}_ppl"] = round(r["ppl"], 4)
        model.train()
        return res

    if step == 0:
        history.append({"step": 0, **evaluate_heldout()})
    start_general = history[0].get("eval_general_ppl") if history else None

    model.train()
    bar = tqdm(total=tc.max_steps, initial=step, desc="pretrain", unit="step", disable=not main)
    stop_reason, bad_in_a_row, bad_steps, last_bad_at = None, 0, 0, 0
    while step < tc.max_steps:
        lr = tc.lr * lr_multiplier(step, tc.max_steps, tc.warmup_steps, tc.schedule, tc.min_lr_ratio, tc.decay_share,
                                   tc.warmup_start_lr / tc.lr)
        for g in optimizer.param_groups:
            g["lr"] = lr
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=accelerator.device)
        n_tok = torch.zeros((), device=accelerator.device)
        data_wait = 0.0
        for _ in range(tc.grad_accum):
            t_data = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                raise DomainptError("the data order ran out after rollbacks; lower train.lr or check the data") from None
            data_wait += time.perf_counter() - t_data
            micro_done += 1
            with accelerator.accumulate(model):
                if chunk:  # the head returns hidden states; the loss runs chunk by chunk (chunked_loss.py)
                    with head_returns_hidden(accelerator.unwrap_model(model)) as head:
                        hidden = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
                    with accelerator.autocast():
                        loss = chunked_lm_loss(hidden, head, batch["labels"], chunk)
                else:
                    loss = model(**batch, use_cache=False).loss
                if faults.active("nan_loss", micro_done):  # a bad batch at this point of the data stream
                    loss = loss * float("nan")
                accelerator.backward(loss)
            loss_sum += loss.detach().float()
            n_tok += batch["input_ids"].numel()
        # The last micro-batch synchronised the gradients; the norm is global (DDP, FSDP).
        # model.parameters() itself, not a saved list: under FSDP2 the parameters become DTensors.
        grad_norm = accelerator.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
        grad_norm = float(grad_norm) if grad_norm is not None else None
        step_loss = accelerator.reduce(loss_sum / tc.grad_accum, reduction="mean").item()
        step_tokens = int(accelerator.reduce(n_tok, reduction="sum").item())
        bad = _bad_step_reason(step_loss, grad_norm, mp)
        if bad is None or mp == "fp16":  # fp16: the loss scaler itself skips steps with non-finite gradients
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        tokens_seen += step_tokens

        if bad is not None:
            bad_steps += 1
            bad_in_a_row += 1
            last_bad_at = step + 1
            log.event({"event": "bad_step", "step": step + 1, "reason": bad, "policy": tc.on_bad_step})
            if main:
                tqdm.write(f"[domainpt] step {step + 1}: {bad} ({tc.on_bad_step})")
            last_ckpt = _latest_checkpoint(ckpt_root) if ckpt_root.exists() else None
            if tc.on_bad_step == "stop" or bad_in_a_row >= tc.max_bad_steps:
                why = "train.on_bad_step=stop" if tc.on_bad_step == "stop" else \
                    f"{bad_in_a_row} bad steps without getting past step {last_bad_at}, train.max_bad_steps={tc.max_bad_steps}"
                raise DomainptError(f"{bad} at step {step + 1} ({why}); lower train.lr or check the data; "
                                    f"the last good checkpoint is {last_ckpt or 'none'}")
            if tc.on_bad_step == "rollback":
                if last_ckpt is None:
                    raise DomainptError(f"{bad} at step {step + 1}: train.on_bad_step=rollback needs a checkpoint to go back to; "
                                        f"set train.save_every")
                state = _load_checkpoint(accelerator, last_ckpt)
                log.event({"event": "rollback", "at_step": step + 1, "to_step": state["step"], "micro_batches": micro_done})
                step, tokens_seen, history = state["step"], state["tokens_seen"], state.get("eval_history", [])
                log.restart_at(step)
                bar.n = step
                bar.refresh()
                continue
        elif step + 1 > last_bad_at:  # progress past the last bad step (after a rollback, only then)
            bad_in_a_row = 0

        rec = {"step": step + 1, "loss": round(step_loss, 6) if bad is None else None, "lr": lr, "tokens": step_tokens,
               "tokens_seen": tokens_seen, "tokens_per_s": round(step_tokens / dt, 2),
               "grad_norm": round(grad_norm, 6) if grad_norm is not None and math.isfinite(grad_norm) else None,
               "mfu": round(flops_tok * step_tokens / dt / (peak * world), 4) if peak else None,
               "step_s": round(dt, 4), "data_wait_s": round(data_wait, 5)}
        if bad is not None:
            rec["skipped"] = bad
        last = step + 1 == tc.max_steps
        if (tc.eval_every and (step + 1) % tc.eval_every == 0) or last:
            ev = evaluate_heldout()
            rec.update(ev)
            history.append({"step": step + 1, **ev})
            g = ev.get("eval_general_ppl")
            if tc.max_general_ppl_rise is not None and start_general and g and g > start_general * (1 + tc.max_general_ppl_rise):
                stop_reason = f"general perplexity {g:.2f} rose past {start_general:.2f} x (1 + {tc.max_general_ppl_rise})"
        log.step(rec)
        if tc.report_to:
            accelerator.log({k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}, step=step + 1)
        faults.kill_point(f"{stage}.step_end", step + 1)  # pretrain.step_end, pretrain_control.step_end
        if (step + 1) % tc.log_every == 0 or last:
            bar.set_postfix(loss=f"{step_loss:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        bar.update(1)
        step += 1
        if (tc.save_every and step % tc.save_every == 0) or last or stop_reason:
            save_checkpoint(accelerator, model, ckpt_root, step, {"tokens_seen": tokens_seen, "eval_history": history,
                                                           "micro_batches": micro_done}, tc.keep_last)
        if stop_reason:
            if main:
                print(f"[domainpt] early stop at step {step}: {stop_reason}", flush=True)
            break
    bar.close()
    if tc.report_to:
        accelerator.end_training()

    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    state_dict = accelerator.get_state_dict(model)
    if main:
        ensure_free_space(out, checkpoint_bytes(unwrapped, optimizer_states_per_param=0), "the final model",
                          "free space, then rerun the same command (training resumes from the last checkpoint)")
        tmp = out / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        tok.save_pretrained(tmp)
        faults.kill_point(f"{stage}.final_model", step)
        if (out / "model").exists():
            shutil.rmtree(out / "model")
        tmp.rename(out / "model")
    accelerator.wait_for_everyone()
    manifest = None
    if main:
        steps_done = len(_metrics_up_to(log.metrics, step))
        manifest = write_manifest(recipe, stage, started, arm=arm, data=train_dir, data_epochs=round(epochs, 4),
                                  tokens=tokens_seen, steps=steps_done, tokens_per_step=tokens_per_step,
                                  flops=flops_tok * tokens_seen, flops_per_token=flops_tok, processes=world,
                                  device=str(accelerator.device), distributed_type=accelerator.distributed_type.value,
                                  mixed_precision=mp, objective=objective,
                                  stop_reason=stop_reason, eval_history=history, bad_steps=bad_steps,
                                  gpu_hours=(time.time() - started) * world / 3600 if accelerator.device.type == "cuda" else 0.0)
    accelerator.wait_for_everyone()
    return manifest or read_manifest(recipe, stage)


def _bad_step_reason(loss: float, grad_norm: float | None, mixed_precision: str) -> str | None:
    if not math.isfinite(loss):
        return f"loss is {loss}"
    if grad_norm is not None and not math.isfinite(grad_norm) and mixed_precision != "fp16":
        return f"gradient norm is {grad_norm}"
    return None


def save_checkpoint(accelerator, model, root: Path, step: int, state: dict, keep_last: int) -> None:
    """save_state into a temporary folder, then rename: a kill mid-save leaves the previous checkpoint intact."""
    tmp, final = root / f".tmp_step_{step}", root / f"step_{step}"
    short = False
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            ensure_free_space(root, checkpoint_bytes(accelerator.unwrap_model(model)), f"checkpoint step_{step}",
                              "free space or lower train.keep_last, then rerun the same command")
        except DomainptError as e:
            short = str(e)
    if _any_rank(accelerator, bool(short)):
        raise DomainptError(short or "not enough free disk for a checkpoint (see the main process)")
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        faults.kill_point("checkpoint.saved_state", step)
        atomic_write_json(tmp / "trainer_state.json", {"step": step, **state})
        faults.kill_point("checkpoint.before_rename", step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        faults.kill_point("checkpoint.before_prune", step)
        _prune(root, keep_last)
    accelerator.wait_for_everyone()


def _prune(root: Path, keep_last: int) -> None:
    done = sorted((p for p in root.glob("step_*")), key=lambda p: int(p.name.split("_")[1]))
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
