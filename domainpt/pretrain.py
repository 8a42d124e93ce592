"""Stage 2: continued pre-training of the general checkpoint on the packed domain blocks.

    domainpt pretrain recipes/demo/legal.yaml
    torchrun --nproc_per_node 2 -m domainpt pretrain recipes/demo/tiny.yaml
    accelerate launch --config_file recipes/accelerate/fsdp_8gpu.yaml -m domainpt pretrain recipes/legal.yaml

A plain Accelerate loop: set_up, then train_step per optimizer step, the bad-step policy after each, a
checkpoint every train.save_every steps and save_final_model at the end. Global batch = batch_size x
grad_accum x processes blocks, or train.global_batch_size shared out over the processes; the data order is a
seeded permutation fixed before training, so a resumed run (load_state + skip_first_batches) and a run with
more processes and the same global batch see exactly the same blocks per optimizer step. Writes out_dir/pretrain/: metrics.jsonl (one line per optimizer step), events.jsonl (bad steps,
rollbacks), heldout.jsonl (each held-out check's per-document losses), checkpoints/step_N, model/ (safetensors + tokenizer).
With compare.control=continued_general, `domainpt pretrain_control RECIPE` runs the same loop from the same
start on prepare/train_control (general text only) into out_dir/pretrain_control/, same layout.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import math
import os
import shutil
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from domainpt import faults
from domainpt.config import TRACKER_MODULES
from domainpt.data.pack import PackedBlocks
from domainpt.encoding import end_of_text_id
from domainpt.errors import DomainptError
from domainpt.eval.perplexity import heldout_perplexity
from domainpt.flops import device_name, device_peak_flops, model_flops_per_token
from domainpt.layout import read_heldout
from domainpt.manifest import CONTROL_STAGE, read_manifest, require_done, stage_dir, write_manifest
from domainpt.models import load_model, load_tokenizer, objective_for
from domainpt.resources import checkpoint_bytes, ensure_free_space
from domainpt.training.attention import FLATTENED, check_usable, implementation_name
from domainpt.training.bad_steps import BadStepPolicy, bad_step_reason
from domainpt.training.batches import EpochSampler, make_collate, param_groups
from domainpt.training.chunked_loss import check_supported, chunked_lm_loss, head_returns_hidden
from domainpt.training.schedules import lr_multiplier
from domainpt.training.state import (MetricsLog, TrainState, clean_checkpoint_folder, latest_checkpoint, load_checkpoint,
                                     save_checkpoint)

# arm -> (stage folder, prepare's packed blocks it trains on)
ARMS = {"domain": ("pretrain", "train"), "control": (CONTROL_STAGE, "train_control")}


@dataclasses.dataclass
class Run:
    """What stays fixed while the loop runs: the recipe, the prepared objects and the derived numbers."""
    recipe: object
    arm: str
    stage: str
    train_dir: str
    out: Path
    accelerator: object
    model: object
    optimizer: object
    loader: object
    tokenizer: object
    objective: str
    mixed_precision: str
    n_blocks: int
    batch_size: int  # blocks per process per micro-batch (train.batch_size, or train.global_batch_size shared out)
    flops_per_token: float
    peak_flops: float | None
    heldout: dict

    @property
    def tc(self):
        return self.recipe.train

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def ckpt_root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.tc.grad_accum * self.world * self.recipe.data.seq_len

    @property
    def epochs(self) -> float:
        return self.tc.max_steps * self.tc.grad_accum * self.world * self.batch_size / self.n_blocks


@dataclasses.dataclass
class StepResult:
    loss: float
    grad_norm: float | None
    tokens: int
    seconds: float
    data_wait: float
    bad: str | None  # why the update was dropped, or None


def run_pretrain_control(recipe) -> dict:
    """The control arm (compare.control): the same loop from the same start, on prepare's general-only blocks."""
    return run_pretrain(recipe, arm="control")


def run_pretrain(recipe, arm: str = "domain") -> dict:
    started = time.time()
    run = set_up(recipe, arm)
    tc = run.tc
    log = MetricsLog(run.out, run.main)
    state = resume(run, log)
    batches = iter(run.accelerator.skip_first_batches(run.loader, state.micro_batches) if state.micro_batches else run.loader)
    if state.step == 0:
        state.eval_history.append({"step": 0, **evaluate_heldout(run, log, 0, 0)})
    start_general = state.eval_history[0].get("eval_general_ppl") if state.eval_history else None
    policy = BadStepPolicy(tc.on_bad_step, tc.max_bad_steps)
    stop_reason = None
    run.model.train()
    bar = tqdm(total=tc.max_steps, initial=state.step, desc=run.stage, unit="step", disable=not run.main)
    while state.step < tc.max_steps:
        lr = set_learning_rate(run, state.step)
        result = train_step(run, batches, state)
        state.tokens_seen += result.tokens
        if result.bad is not None:
            log.event({"event": "bad_step", "step": state.step + 1, "reason": result.bad, "policy": tc.on_bad_step})
            if run.main:
                tqdm.write(f"[domainpt] {run.stage} step {state.step + 1}: {result.bad} ({tc.on_bad_step})")
            if policy.after_bad_step(state.step + 1, result.bad, latest_checkpoint(run.ckpt_root)) == "rollback":
                state = roll_back(run, log, state)
                bar.n = state.step
                bar.refresh()
                continue
        else:
            policy.after_good_step(state.step + 1)
        rec = step_record(run, state, result, lr)
        last = state.step + 1 == tc.max_steps
        if (tc.eval_every and (state.step + 1) % tc.eval_every == 0) or last:
            ev = evaluate_heldout(run, log, state.step + 1, state.tokens_seen)
            rec.update(ev)
            state.eval_history.append({"step": state.step + 1, **ev})
            stop_reason = general_ppl_stop(tc, start_general, ev.get("eval_general_ppl"))
        log.step(rec)
        if tc.report_to:
            run.accelerator.log({k: v for k, v in rec.items() if isinstance(v, (int, float)) and k != "step"}, step=state.step + 1)
        faults.kill_point(f"{run.stage}.step_end", state.step + 1)  # pretrain.step_end, pretrain_control.step_end
        if (state.step + 1) % tc.log_every == 0 or last:
            bar.set_postfix(loss=f"{result.loss:.3f}", tok_s=f"{rec['tokens_per_s']:.0f}")
        bar.update(1)
        state.step += 1
        if (tc.save_every and state.step % tc.save_every == 0) or last or stop_reason:
            save_checkpoint(run.accelerator, run.model, run.ckpt_root, state, tc.keep_last)
        if stop_reason:
            if run.main:
                print(f"[domainpt] early stop at step {state.step}: {stop_reason}", flush=True)
            break
    bar.close()
    if tc.report_to:
        run.accelerator.end_training()
    save_final_model(run, state.step)
    return finish(run, state, log, policy, stop_reason, started)


def set_up(recipe, arm: str) -> Run:
    """Accelerator, model, optimizer and data loader, prepared; the run's plan printed."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import AutoConfig

    stage, train_dir = ARMS[arm]
    prep = require_done(recipe, "prepare", stage)
    prep_dir = stage_dir(recipe, "prepare")
    if not (prep_dir / train_dir / "meta.json").is_file():
        raise DomainptError(f"{prep_dir / train_dir} is missing: rerun `domainpt prepare RECIPE --force` with this recipe")
    out, tc = stage_dir(recipe, stage), recipe.train
    mp = tc.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    missing = [t for t in tc.report_to if importlib.util.find_spec(TRACKER_MODULES[t]) is None]
    if missing:
        raise DomainptError(f"train.report_to: {missing[0]} is not installed (pip install {TRACKER_MODULES[missing[0]]})")
    # cpu=True on machines without a GPU: only then does Accelerate treat torchrun's processes as MULTI_CPU (gloo).
    accelerator = Accelerator(gradient_accumulation_steps=tc.grad_accum, mixed_precision=mp, cpu=not torch.cuda.is_available(),
                              log_with=list(tc.report_to) or None, project_dir=str(out / "logs"))
    check_launch(accelerator)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        clean_checkpoint_folder(out / "checkpoints", tc.keep_last)
    accelerator.wait_for_everyone()
    set_seed(tc.seed)

    base = prep.get("pretrain_init") or prep["base_model"]  # the extended model when tokenizer.extend is on
    tok = load_tokenizer(base, recipe.model.trust_remote_code)
    objective = objective_for(AutoConfig.from_pretrained(base, trust_remote_code=recipe.model.trust_remote_code),
                              recipe.model.objective)
    check_usable(tc.attention, objective, accelerator.device)
    model = load_model(base, objective, recipe.model.trust_remote_code, attn_implementation=implementation_name(tc.attention))
    if tc.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    # packed documents stay isolated only without the KV cache (tests/test_models_eval.py, packed rows)
    model.config.use_cache = False
    if tc.compile:  # in place: state_dict keys, checkpoints and the saved model stay those of the plain model
        model.compile()

    blocks = PackedBlocks(prep_dir / train_dir, recipe.data.seq_len)
    micro_total = tc.max_steps * tc.grad_accum * accelerator.num_processes
    # Twice the blocks a run needs: rollbacks skip past bad batches and must not run out of data.
    batch_size = tc.process_batch(accelerator.num_processes)
    sampler = EpochSampler(len(blocks), 2 * micro_total * batch_size, tc.seed)
    loader = torch.utils.data.DataLoader(blocks, batch_size=batch_size, sampler=sampler,
                                         collate_fn=make_collate(objective, tok, tc.doc_isolation, tc.whole_word_mask,
                                                                flatten=tc.attention in FLATTENED),
                                         num_workers=0, pin_memory=torch.cuda.is_available())
    # fused: one kernel per step instead of a loop over tensors (3x faster steps measured on CPU, same numbers to 1e-7)
    optimizer = torch.optim.AdamW(param_groups(model, tc.weight_decay), lr=tc.lr, betas=tuple(tc.betas), fused=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    if tc.loss_chunk_tokens:
        if objective != "clm":
            raise DomainptError("train.loss_chunk_tokens is for causal LMs; this model trains with the masked-LM objective")
        ds = accelerator.state.deepspeed_plugin
        check_supported(accelerator.unwrap_model(model), accelerator.distributed_type, ds.zero_stage if ds else None, tc.compile)
    run = Run(recipe, arm, stage, train_dir, out, accelerator, model, optimizer, loader, tok, objective, mp, len(blocks), batch_size,
              model_flops_per_token(accelerator.unwrap_model(model), recipe.data.seq_len), device_peak_flops(accelerator.device),
              read_heldout(prep_dir))
    if tc.report_to:
        accelerator.init_trackers(recipe.name, config={f"train.{k}": v for k, v in dataclasses.asdict(tc).items()
                                                       if isinstance(v, (int, float, str, bool))})
    print_plan(run)
    return run


def print_plan(run: Run) -> None:
    if not run.main:
        return
    tc, n = run.tc, run.tokens_per_step * run.tc.max_steps
    arm_note = f" (control arm: general text only, prepare/{run.train_dir})" if run.arm == "control" else ""
    print(f"[domainpt] {run.stage} plan{arm_note}: objective={run.objective} processes={run.world} "
          f"mixed_precision={run.mixed_precision}\n"
          f"  global batch {run.batch_size * tc.grad_accum * run.world} blocks = {run.tokens_per_step:,} tokens/step, "
          f"{tc.max_steps} steps = {n:,} tokens ({run.epochs:.2f} epochs of {run.n_blocks} blocks)\n"
          f"  ~{run.flops_per_token:.3g} FLOPs/token, ~{run.flops_per_token * n:.3g} FLOPs in all", flush=True)


def check_launch(accelerator) -> None:
    """An FSDP or DeepSpeed accelerate config on a machine without GPUs: Accelerate's cpu mode drops the
    sharding and trains plain data-parallel (measured: MULTI_CPU under fsdp_8gpu.yaml). Refuse, rather
    than run something other than what the config says."""
    got = accelerator.distributed_type.value
    for env, asked in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if os.environ.get(env, "false").lower() in ("1", "true") and got != asked:
            raise DomainptError(f"the accelerate config asks for {asked}, but Accelerate runs {got} here "
                                f"({'no GPU: its CPU mode ignores ' + asked if not torch.cuda.is_available() else 'check the config'}); "
                                "launch on GPUs, or with a DDP config (or torchrun) on CPUs")


def resume(run: Run, log: MetricsLog) -> TrainState:
    """The state of the newest complete checkpoint (weights, optimizer and RNG loaded), or a fresh one."""
    state = TrainState()
    ckpt = latest_checkpoint(run.ckpt_root)
    if ckpt is not None:
        state = load_checkpoint(run.accelerator, ckpt, run.tc.grad_accum)
        # after a rollback to this checkpoint the data stream had moved past the batches that caused it
        state.micro_batches = log.data_position_after_rollback(state.step) or state.micro_batches
        if run.main:
            print(f"[domainpt] resuming from {ckpt} at step {state.step}", flush=True)
    log.restart_at(state.step)
    return state


def roll_back(run: Run, log: MetricsLog, state: TrainState) -> TrainState:
    """Back to the last checkpoint's weights and state, the data stream staying where it is (past the bad batches)."""
    restored = load_checkpoint(run.accelerator, latest_checkpoint(run.ckpt_root), run.tc.grad_accum)
    log.event({"event": "rollback", "at_step": state.step + 1, "to_step": restored.step, "micro_batches": state.micro_batches})
    restored.micro_batches = state.micro_batches
    log.restart_at(restored.step)
    return restored


def set_learning_rate(run: Run, step: int) -> float:
    tc = run.tc
    lr = tc.lr * lr_multiplier(step, tc.max_steps, tc.warmup_steps, tc.schedule, tc.min_lr_ratio, tc.decay_share,
                               tc.warmup_start_lr / tc.lr)
    for g in run.optimizer.param_groups:
        g["lr"] = lr
    return lr


def train_step(run: Run, batches, state: TrainState) -> StepResult:
    """One optimizer step over grad_accum micro-batches; the update is dropped when the step is bad."""
    acc, model, tc = run.accelerator, run.model, run.tc
    t0 = time.perf_counter()
    loss_sum = torch.zeros((), device=acc.device)
    n_tok = torch.zeros((), device=acc.device)
    data_wait = 0.0
    for _ in range(tc.grad_accum):
        t_data = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            raise DomainptError("the data order ran out after rollbacks; lower train.lr or check the data") from None
        data_wait += time.perf_counter() - t_data
        state.micro_batches += 1
        with acc.accumulate(model):
            loss = micro_batch_loss(run, batch)
            if faults.active("nan_loss", state.micro_batches):  # a bad batch at this point of the data stream
                loss = loss * float("nan")
            acc.backward(loss)
        loss_sum += loss.detach().float()
        n_tok += batch["input_ids"].numel()
    # The last micro-batch synchronised the gradients; the norm is global (DDP, FSDP).
    # model.parameters() itself, not a saved list: under FSDP2 the parameters become DTensors.
    grad_norm = acc.clip_grad_norm_(model.parameters(), tc.grad_clip if tc.grad_clip > 0 else float("inf"))
    grad_norm = float(grad_norm) if grad_norm is not None else None
    step_loss = acc.reduce(loss_sum / tc.grad_accum, reduction="mean").item()
    bad = bad_step_reason(step_loss, grad_norm, run.mixed_precision)
    if bad is None or run.mixed_precision == "fp16":  # fp16: the loss scaler itself skips steps with non-finite gradients
        run.optimizer.step()
    run.optimizer.zero_grad(set_to_none=True)
    return StepResult(step_loss, grad_norm, int(acc.reduce(n_tok, reduction="sum").item()), time.perf_counter() - t0,
                      data_wait, bad)


def micro_batch_loss(run: Run, batch: dict) -> torch.Tensor:
    if run.tc.loss_chunk_tokens:  # the head returns hidden states; the loss runs chunk by chunk (chunked_loss.py)
        with head_returns_hidden(run.accelerator.unwrap_model(run.model)) as head:
            hidden = run.model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
        with run.accelerator.autocast():
            return chunked_lm_loss(hidden, head, batch["labels"], run.tc.loss_chunk_tokens)
    return run.model(**batch, use_cache=False).loss


def step_record(run: Run, state: TrainState, r: StepResult, lr: float) -> dict:
    """One line of metrics.jsonl (a public format: add keys, never rename)."""
    rec = {"step": state.step + 1, "loss": round(r.loss, 6) if r.bad is None else None, "lr": lr, "tokens": r.tokens,
           "tokens_seen": state.tokens_seen, "tokens_per_s": round(r.tokens / r.seconds, 2),
           "grad_norm": round(r.grad_norm, 6) if r.grad_norm is not None and math.isfinite(r.grad_norm) else None,
           "mfu": round(run.flops_per_token * r.tokens / r.seconds / (run.peak_flops * run.world), 4) if run.peak_flops else None,
           "step_s": round(r.seconds, 4), "data_wait_s": round(r.data_wait, 5)}
    if r.bad is not None:
        rec["skipped"] = r.bad
    return rec


def general_ppl_stop(tc, start: float | None, now: float | None) -> str | None:
    """train.max_general_ppl_rise: why to stop early (general text forgotten too fast), or None."""
    if tc.max_general_ppl_rise is not None and start and now and now > start * (1 + tc.max_general_ppl_rise):
        return f"general perplexity {now:.2f} rose past {start:.2f} x (1 + {tc.max_general_ppl_rise})"
    return None


def evaluate_heldout(run: Run, log: MetricsLog, step: int, tokens_seen: int) -> dict:
    """Held-out perplexity of each kind on train.ppl_max_tokens tokens (each document's loss to heldout.jsonl); the
    model is back in train mode after."""
    ec, tc = run.recipe.eval, run.tc
    res, scores = {}, {}
    # Eager even under train.compile: held-out windows come in many lengths, each a recompile.
    with torch.compiler.set_stance("force_eager") if tc.compile else contextlib.nullcontext():
        for kind, texts in run.heldout.items():
            if texts:
                r = heldout_perplexity(run.model, run.tokenizer, texts, run.objective, ec.ppl_window, ec.ppl_stride,
                                       tc.ppl_max_tokens, ec.batch_size, end_of_text_id(run.tokenizer), run.accelerator.device)
                res[f"eval_{kind}_ppl"] = round(r["ppl"], 4)
                scores[kind] = r
    log.heldout(step, tokens_seen, scores)
    run.model.train()
    return res


def save_final_model(run: Run, step: int) -> None:
    """out/model (safetensors + tokenizer), written to a temporary folder and renamed: a later stage never sees half."""
    acc = run.accelerator
    acc.wait_for_everyone()
    unwrapped = acc.unwrap_model(run.model)
    state_dict = acc.get_state_dict(run.model)
    if run.main:
        ensure_free_space(run.out, checkpoint_bytes(unwrapped, optimizer_states_per_param=0), "the final model",
                          "free space, then rerun the same command (training resumes from the last checkpoint)")
        tmp = run.out / ".model.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        unwrapped.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
        run.tokenizer.save_pretrained(tmp)
        faults.kill_point(f"{run.stage}.final_model", step)
        if (run.out / "model").exists():
            shutil.rmtree(run.out / "model")
        tmp.rename(run.out / "model")
    acc.wait_for_everyone()


def finish(run: Run, state: TrainState, log: MetricsLog, policy: BadStepPolicy, stop_reason: str | None,
           started: float) -> dict:
    """The stage's manifest.json: tokens, steps, FLOPs, devices, the held-out history."""
    acc, manifest = run.accelerator, None
    if run.main:
        manifest = write_manifest(run.recipe, run.stage, started, arm=run.arm, data=run.train_dir, data_epochs=round(run.epochs, 4),
                                  tokens=state.tokens_seen, steps=log.steps_logged(state.step),
                                  tokens_per_step=run.tokens_per_step, flops=run.flops_per_token * state.tokens_seen,
                                  flops_per_token=run.flops_per_token, processes=run.world, device=str(acc.device),
                                  device_name=device_name(acc.device),
                                  distributed_type=acc.distributed_type.value, mixed_precision=run.mixed_precision,
                                  objective=run.objective, stop_reason=stop_reason, eval_history=state.eval_history,
                                  bad_steps=policy.bad_steps,
                                  gpu_hours=(time.time() - started) * run.world / 3600 if acc.device.type == "cuda" else 0.0)
    acc.wait_for_everyone()
    return manifest or read_manifest(run.recipe, run.stage)
