"""Stage bookkeeping: atomic writes, `manifest.json` (written last = "finished"), the run lock.

A stage directory without a manifest is unfinished work: `run` redoes (or resumes) it. A manifest
records the recipe fingerprint; reusing a finished stage under a changed recipe is refused.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shlex
import shutil
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

from domainpt.errors import DomainptError

STAGES = ("prepare", "pretrain", "finetune", "evaluate", "compare")
# The control arm's pre-training (compare.control): a sibling of pretrain, run only when the recipe asks for it.
CONTROL_STAGE = "pretrain_control"
ALL_STAGES = ("prepare", "pretrain", CONTROL_STAGE, "finetune", "evaluate", "compare")
# Which recipe sections each stage depends on: changing one invalidates the stage and all after it.
# `compare` (the control arm) counts only when set: left at its default it changes no fingerprint.
STAGE_SECTIONS = {
    "prepare": ("model", "data", "tasks", "tokenizer", "compare"),
    "pretrain": ("model", "data", "tasks", "tokenizer", "train", "compare"),
    CONTROL_STAGE: ("model", "data", "tasks", "tokenizer", "train", "compare"),
    "finetune": ("model", "data", "tasks", "tokenizer", "train", "lora", "compare"),
    "evaluate": ("model", "data", "tasks", "tokenizer", "train", "lora", "eval", "compare"),
    "compare": ("model", "data", "tasks", "tokenizer", "train", "lora", "eval", "report", "compare"),
    # `domainpt plan-mixture` (not a stage of `run`): pilots of the recipe's model, data and training, held-out checks
    "plan_mixture": ("model", "data", "tasks", "tokenizer", "train", "eval", "report", "mixture_plan"),
}

COMMANDS = {"plan_mixture": "plan-mixture"}  # the command that redoes a stage, where its name is not the stage's


def has_control(recipe) -> bool:
    return recipe.compare.control != "none"


def run_stages(recipe) -> tuple[str, ...]:
    """The stages `domainpt run` goes through: pretrain_control only when the recipe has a control arm."""
    return tuple(s for s in ALL_STAGES if s != CONTROL_STAGE or has_control(recipe))


_PACKAGES = ("domainpt", "torch", "transformers", "peft", "accelerate", "datasets", "evaluate", "numpy", "lm_eval", "pysbd")


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def atomic_write_jsonl(path: Path, rows) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in _PACKAGES:
        try:
            out[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            pass
    return out


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def stage_dir(recipe, stage: str) -> Path:
    return Path(recipe.out_dir) / stage


def stage_fingerprint(recipe, stage: str) -> str:
    return recipe.fingerprint(STAGE_SECTIONS[stage])


def read_manifest(recipe, stage: str) -> dict | None:
    p = stage_dir(recipe, stage) / "manifest.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise DomainptError(f"{p}: corrupted manifest; delete the folder {p.parent} to redo the stage") from None


def is_done(recipe, stage: str) -> bool:
    """True when the stage finished under the same recipe; a finished stage with another recipe is an error."""
    m = read_manifest(recipe, stage)
    if m is None:
        return False
    if m.get("fingerprint") != stage_fingerprint(recipe, stage):
        raise DomainptError(
            f"{stage_dir(recipe, stage)} was finished with a different recipe "
            f"(sections {', '.join(STAGE_SECTIONS[stage])}); use another out_dir or redo it: "
            f"domainpt {COMMANDS.get(stage, stage)} RECIPE --force"
        )
    return True


def require_done(recipe, stage: str, needed_by: str) -> dict:
    if not is_done(recipe, stage):
        raise DomainptError(f"'{needed_by}' needs the '{stage}' stage first: run `domainpt {stage} RECIPE` (or `domainpt run`)")
    return read_manifest(recipe, stage)


def invalidate(recipe, stage: str, keep_jobs: bool = False) -> None:
    """Remove the manifest of this stage and every later one (their inputs are about to change), and the markers of
    their finished jobs (jobs/: fine-tune and evaluate), so that they are redone rather than kept. `keep_jobs` (the
    --shard and --merge commands) leaves the markers: they check their own recipe and inputs."""
    for s in ALL_STAGES[ALL_STAGES.index(stage):]:
        if stage == "pretrain" and s == CONTROL_STAGE:  # a sibling arm: it does not read the domain model
            continue
        (stage_dir(recipe, s) / "manifest.json").unlink(missing_ok=True)
        if not keep_jobs:
            shutil.rmtree(stage_dir(recipe, s) / "jobs", ignore_errors=True)


def write_manifest(recipe, stage: str, started: float, **extra) -> dict:
    m = {
        "stage": stage,
        "fingerprint": stage_fingerprint(recipe, stage),
        "recipe": recipe.to_dict(),
        "versions": versions(),
        "host": socket.gethostname(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "wall_s": round(time.time() - started, 3),
        "command": " ".join(["domainpt"] + [shlex.quote(a) for a in sys.argv[1:]]),
        **extra,
    }
    atomic_write_json(stage_dir(recipe, stage) / "manifest.json", m)
    return m


@contextmanager
def run_lock(out_dir: Path):
    """Refuse a second process writing the same out_dir; a lock left by a dead process is taken over."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / ".lock"
    me = f"{socket.gethostname()}:{os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            os.write(fd, me.encode())
            os.close(fd)
            break
        except FileExistsError:
            owner = lock.read_text().strip() if lock.exists() else ""
            host, _, pid = owner.partition(":")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                lock.unlink(missing_ok=True)  # stale: its process is gone
                continue
            raise DomainptError(f"{out_dir} is in use by another run ({owner}); wait for it or remove {lock}") from None
    try:
        yield
    finally:
        if lock.exists() and lock.read_text().strip() == me:
            lock.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

