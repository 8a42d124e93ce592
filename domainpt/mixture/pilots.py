"""The mixture planner's pilot runs: the recipe's own model and data, one short continued pre-training per replay share,
each a job (jobs/runner.py) that runs `domainpt prepare` and `domainpt pretrain` on a recipe of its own in
out_dir/plan_mixture/pilots/replay_<share>/ (the length check's, LENGTH_FACTOR times as long: replay_<share>_x2/). Each
runs as a process of its own, so a pilot is an ordinary one-process run whichever launch started it, on the device of
the process that runs it (its GPU, or its share of the CPU cores).

A pilot's recipe is the run's with: out_dir, data.replay_share, train.max_steps = mixture_plan.pilot_steps (x2 for the
length check; the schedule stretched over it, the warm-up too: warmup_steps x its steps / max_steps), train.eval_every
(eval_points held-out checks along an ordinary pilot, as far apart along the long one), train.ppl_max_tokens =
eval.ppl_max_tokens (the final evaluation's held-out size), compare.control 'none', no trackers. Held-out documents are
chosen by content, not by share (data/merge.py: choose_heldout), so every pilot is checked on the same documents.
Pilots of the launch's main process print on the terminal, the others' go to their folder's pilot.log.
A pilot killed midway starts again; finished pilots are kept (their job markers). Once a pilot is finished its
checkpoint and model are deleted: the plan needs only its held-out losses (pretrain/heldout.jsonl).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

from domainpt.errors import DomainptError
from domainpt.jobs.runner import Job, Worker
from domainpt.manifest import STAGE_SECTIONS, atomic_write_json, read_jsonl, stage_dir
from domainpt.mixture.axis import stretched_warmup

STAGE = "plan_mixture"
KINDS = ("domain", "general")
# What a launcher (torchrun, accelerate launch) tells its processes: a pilot is a launch of its own, so none of it.
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                    "ROLE_RANK", "ROLE_NAME", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


# What the plan reads from the pilots rather than what a pilot is: changing one refits the plan and keeps every pilot.
ANALYSIS_KEYS = ("holdout_share", "budget_tokens", "max_general_increase", "min_gain_per_doubling", "bootstrap_samples",
                 "token_axis", "length_check")
LENGTH_FACTOR = 2  # the length check's pilot is this many times mixture_plan.pilot_steps


def pilot_fingerprint(recipe) -> str:
    """The pilots' job markers hold while this holds: the plan stage's sections without the analysis's own keys (and
    report, which only the plan reads), so a new bound or confidence does not rerun hours of pilots."""
    return recipe.fingerprint(STAGE_SECTIONS[STAGE], ignore=(("report", None), *(("mixture_plan", k) for k in ANALYSIS_KEYS)))


def same_pilot(a: dict, b: dict) -> bool:
    """Two pilot recipes (recipe.json) that run the same pilot: equal but for the plan's analysis keys and report."""
    def runs(d: dict) -> dict:
        d = json.loads(json.dumps(d))
        d.pop("report", None)
        for k in ANALYSIS_KEYS:
            d.get("mixture_plan", {}).pop(k, None)
        return d
    return runs(a) == runs(b)


def share_name(share: float, factor: int = 1) -> str:
    return f"replay_{share:g}" + (f"_x{factor}" if factor > 1 else "")


def pilot_dir(recipe, share: float, factor: int = 1) -> Path:
    return stage_dir(recipe, STAGE) / "pilots" / share_name(share, factor)


def length_share(recipe) -> float:
    """The length check's share: the piloted share nearest the recipe's own data.replay_share (ties: the smaller). It
    does not depend on the analysis keys (holdout_share among them), so changing one never calls for a new pilot."""
    shares = recipe.mixture_plan.replay_shares
    return min(shares, key=lambda s: (round(abs(s - recipe.data.replay_share), 9), s))


def check_every(mp) -> int:
    """Steps between a pilot's held-out checks: eval_points of them, the last at pilot_steps."""
    return max(1, mp.pilot_steps // mp.eval_points)


def pilot_jobs(recipe, tokens_per_step: int) -> list[Job]:
    """One job per replay share, and with mixture_plan.length_check one LENGTH_FACTOR times as long (last); the planned
    cost is a pilot's training tokens (shared out longest first; each process runs its own in list order)."""
    mp = recipe.mixture_plan

    def job(share: float, factor: int = 1) -> Job:
        name = share_name(share, factor)
        return Job(f"pilot/{name}", "pilot", "general", name, None, float(factor * mp.pilot_steps * tokens_per_step))
    return [job(s) for s in mp.replay_shares] + ([job(length_share(recipe), LENGTH_FACTOR)] if mp.length_check else [])


def share_of(job: Job) -> float:
    return float(job.task.removeprefix("replay_").split("_x")[0])


def factor_of(job: Job) -> int:
    return int(job.task.split("_x")[1]) if "_x" in job.task else 1


def pilot_warmup(recipe, steps: int | None = None) -> int:
    """The recipe's warm-up stretched over a pilot of `steps` (mixture_plan.pilot_steps by default)."""
    return stretched_warmup(recipe.train.warmup_steps, steps or recipe.mixture_plan.pilot_steps, recipe.train.max_steps)


def pilot_recipe(recipe, share: float, factor: int = 1) -> dict:
    """The run's recipe as a pilot at `share`, `factor` x pilot_steps long with its checks as far apart (a plain dict:
    written as the pilot's recipe.json, which is YAML)."""
    mp, d = recipe.mixture_plan, recipe.to_dict()
    steps = factor * mp.pilot_steps
    d["name"] = f"{recipe.name}-pilot-{share_name(share, factor)}"
    d["out_dir"] = str(pilot_dir(recipe, share, factor))
    d["data"]["replay_share"] = share
    d["train"].update(max_steps=steps, eval_every=check_every(mp), save_every=0, keep_last=1,
                      warmup_steps=pilot_warmup(recipe, steps), ppl_max_tokens=recipe.eval.ppl_max_tokens,
                      max_general_ppl_rise=None, report_to=[])
    d["compare"]["control"] = "none"
    return d


def pilot_env(worker: Worker) -> dict:
    """This process's environment for a pilot: no launch variables, and this process's device only."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARIABLES and not k.startswith("TORCHELASTIC_")}
    if worker.device.startswith("cuda"):
        index = int(worker.device.split(":")[1]) if ":" in worker.device else 0
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        env["CUDA_VISIBLE_DEVICES"] = visible.split(",")[index] if visible else str(index)
    elif worker.world > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // worker.world))
    return env


def run_pilot(recipe, job: Job, worker: Worker) -> dict:
    """Prepare and pre-train one pilot (each a `domainpt` command of its own; finished stages are skipped), then its
    held-out losses along the way."""
    share, factor = share_of(job), factor_of(job)
    folder = pilot_dir(recipe, share, factor)
    recipe_file, wanted = folder / "recipe.json", pilot_recipe(recipe, share, factor)
    if recipe_file.is_file() and not same_pilot(json.loads(recipe_file.read_text()), wanted):
        shutil.rmtree(folder)  # a pilot of an earlier mixture_plan or recipe: its stages would refuse this one
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(recipe_file, wanted)
    log = folder / "pilot.log"
    for stage in ("prepare", "pretrain"):
        # the main process's pilots draw on the terminal; the others' would tangle with them, so they go to pilot.log
        with open(log, "a") if not worker.main else nullcontext() as sink:
            done = subprocess.run([sys.executable, "-m", "domainpt", stage, str(recipe_file)], env=pilot_env(worker),
                                  stdout=sink, stderr=subprocess.STDOUT if sink else None)
        if done.returncode:
            if not worker.main:
                sys.stderr.write("".join(log.read_text().splitlines(keepends=True)[-5:]))
            raise DomainptError(f"plan-mixture: the pilot {share_name(share, factor)} stopped in {stage} (exit "
                                f"{done.returncode}; its own error is above); rerun the same command: finished pilots are kept")
    result = read_pilot(folder, share, factor)
    for big in ("checkpoints", "model"):  # gigabytes per pilot that nothing reads again
        shutil.rmtree(folder / "pretrain" / big, ignore_errors=True)
    return result


def read_pilot(folder: Path, share: float, factor: int = 1) -> dict:
    """A finished pilot: its steps and tokens per step, and each held-out check's per-document losses; length_factor > 1
    for the length check's."""
    manifest = json.loads((folder / "pretrain" / "manifest.json").read_text())
    checks = {}
    for row in read_jsonl(folder / "pretrain" / "heldout.jsonl"):
        checks[row["step"]] = row  # a resumed run wrote its checks again: the last one counts
    missing = [k for k in KINDS if any(k not in c for c in checks.values())]
    if not checks or missing:
        raise DomainptError(f"{folder}/pretrain/heldout.jsonl has no held-out {missing[0] if missing else 'checks'} "
                            "losses: plan-mixture needs domain and general held-out text (data.general)")
    stats = json.loads((folder / "prepare" / "stats.json").read_text())
    return {"replay_share": share, "replay_share_actual": stats["replay_share_actual"], "length_factor": factor,
            "steps": manifest["steps"], "tokens_per_step": manifest["tokens_per_step"],
            "tokens": manifest["tokens"], "seconds": manifest["wall_s"],
            "checks": [{"step": c["step"], "tokens": c["tokens_seen"], **{k: c[k] for k in KINDS}}
                       for _, c in sorted(checks.items())]}
