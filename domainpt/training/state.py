"""What a pre-training run must remember to resume or roll back, and where it keeps it.

TrainState is saved with every checkpoint (trainer_state.json beside Accelerate's save_state), restored on
resume and on rollback, and read by nothing else: one place for the step, tokens seen, the position in the
data stream and the held-out history. metrics.jsonl and events.jsonl are the run's log (MetricsLog).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch

from domainpt.errors import DomainptError
from domainpt import faults
from domainpt.manifest import atomic_write_json, atomic_write_text
from domainpt.resources import checkpoint_bytes, ensure_free_space


@dataclasses.dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    tokens_seen: int = 0
    micro_batches: int = 0  # batches taken from the data stream (rollbacks skip past bad ones, so not step x grad_accum)
    eval_history: list = dataclasses.field(default_factory=list)  # {"step", "eval_domain_ppl", "eval_general_ppl"}

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict, grad_accum: int) -> "TrainState":
        # checkpoints written before micro_batches was saved: no rollbacks then, so step x grad_accum
        return cls(step=d["step"], tokens_seen=d["tokens_seen"], eval_history=d.get("eval_history", []),
                   micro_batches=d.get("micro_batches", d["step"] * grad_accum))


def latest_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint (one with its trainer_state.json), or None."""
    if not ckpt_root.exists():
        return None
    done = sorted((p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file()),
                  key=lambda p: int(p.name.split("_")[1]))
    return done[-1] if done else None


def load_checkpoint(accelerator, ckpt: Path, grad_accum: int) -> TrainState:
    """Model, optimizer and RNG states into the running objects; the TrainState saved with them."""
    try:
        accelerator.load_state(str(ckpt))
        return TrainState.from_json(json.loads((ckpt / "trainer_state.json").read_text()), grad_accum)
    except Exception as e:  # a corrupted checkpoint must not be trained on silently
        raise DomainptError(f"checkpoint {ckpt} cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}); "
                            f"delete it to resume from the one before") from None


def save_checkpoint(accelerator, model, root: Path, state: TrainState, keep_last: int) -> None:
    """save_state into a temporary folder, then rename: a kill mid-save leaves the previous checkpoint intact."""
    step = state.step
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
    if any_rank(accelerator, bool(short)):
        raise DomainptError(short or "not enough free disk for a checkpoint (see the main process)")
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        faults.kill_point("checkpoint.saved_state", step)
        atomic_write_json(tmp / "trainer_state.json", state.to_json())
        faults.kill_point("checkpoint.before_rename", step)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        faults.kill_point("checkpoint.before_prune", step)
        prune_checkpoints(root, keep_last)
    accelerator.wait_for_everyone()


def prune_checkpoints(root: Path, keep_last: int) -> None:
    done = sorted((p for p in root.glob("step_*")), key=lambda p: int(p.name.split("_")[1]))
    for old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def clean_checkpoint_folder(root: Path, keep_last: int) -> None:
    """What a kill can leave: a checkpoint write cut short, or a save whose pruning never ran."""
    for stale in root.glob(".tmp_step_*"):
        shutil.rmtree(stale, ignore_errors=True)
    prune_checkpoints(root, keep_last)


def any_rank(accelerator, flag: bool) -> bool:
    """True on every process when `flag` is true on any: decisions all ranks must take together."""
    t = torch.tensor(1.0 if flag else 0.0, device=accelerator.device)
    return accelerator.reduce(t, reduction="sum").item() > 0


def metrics_up_to(path: Path, step: int) -> list[str]:
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


class MetricsLog:
    """metrics.jsonl (one line per optimizer step), events.jsonl (bad steps, rollbacks) and heldout.jsonl (each
    held-out check's per-document losses, which intervals over documents need); main process only."""

    def __init__(self, out: Path, main: bool):
        self.metrics, self.events, self.main = out / "metrics.jsonl", out / "events.jsonl", main
        self.heldout_checks = out / "heldout.jsonl"

    def restart_at(self, step: int) -> None:
        """Forget the lines after `step`: a resumed or rolled-back run writes them again."""
        if self.main:
            kept = metrics_up_to(self.metrics, step) if step > 0 else []
            atomic_write_text(self.metrics, "".join(l + "\n" for l in kept))
            checks = metrics_up_to(self.heldout_checks, step) if step > 0 else []
            atomic_write_text(self.heldout_checks, "".join(l + "\n" for l in checks))

    def _append(self, path: Path, rec: dict) -> None:
        if self.main:
            with open(path, "a") as f:
                f.write(json.dumps(rec) + "\n")

    def step(self, rec: dict) -> None:
        self._append(self.metrics, rec)

    def event(self, rec: dict) -> None:
        self._append(self.events, rec)

    def heldout(self, step: int, tokens_seen: int, scores: dict) -> None:
        """One line per held-out check: per kind (domain, general), each document's summed NLL and scored tokens."""
        self._append(self.heldout_checks, {"step": step, "tokens_seen": tokens_seen, **{
            kind: {"nll": r["per_document"]["nll"], "tokens": r["per_document"]["tokens"]} for kind, r in scores.items()}})

    def steps_logged(self, up_to: int) -> int:
        return len(metrics_up_to(self.metrics, up_to))

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
