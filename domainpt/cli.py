"""The `domainpt` command: one subcommand per stage, and `run` to chain them.

    domainpt run recipes/demo/tiny.yaml                 # every stage; finished ones are skipped
    domainpt pretrain recipes/demo/legal.yaml train.max_steps=20
    torchrun --nproc_per_node 2 -m domainpt run recipes/demo/tiny.yaml      # every process works in every stage but
                                                        # prepare and compare (fine-tune and evaluate: jobs shared out)
    domainpt finetune recipes/medical.yaml --shard 3/8  # one of 8 slices of the fine-tuning jobs; then: finetune --merge
    domainpt pretrain_control RECIPE compare.control=continued_general   # the control arm alone (`run` does it too)
    domainpt run recipes/medical.yaml --dry-run --processes 8   # the plan and its cost; nothing runs
    domainpt prepare recipes/medical.yaml --shard 3/16  # one of 16 data tasks; then: prepare --merge
    domainpt compare runs/medical runs/legal --to runs/cmp     # several finished runs in one report
    domainpt plan-mixture recipes/medical.yaml          # pilots at several replay shares -> the share to train with
    domainpt keys                                       # every recipe key with its default and meaning

Problems the user can fix end with a one-line `domainpt: error: ...` and exit code 2.
"""
from __future__ import annotations

import argparse
import functools
import os
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from domainpt.config import field_docs, load_recipe
from domainpt.errors import DomainptError
from domainpt.manifest import (ALL_STAGES, CONTROL_STAGE, has_control, invalidate, is_done, read_manifest, run_lock,
                               run_stages, stage_dir, stage_fingerprint)

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Progress bars of several processes would overwrite each other's line: only the first process of a launch draws
# them (tqdm reads TQDM_* when it is imported, so before anything imports it); the others print a line per job.
if os.environ.get("RANK", "0") != "0":
    os.environ.setdefault("TQDM_DISABLE", "1")
# Stages whose work every process of a launch shares; the others run on the main process while the rest wait.
ALL_PROCESS_STAGES = ("pretrain", CONTROL_STAGE, "finetune", "evaluate")
JOB_STAGES = ("finetune", "evaluate")  # grids of independent jobs: --shard I/N and --merge
MANIFEST_POLL_S = 2.0


def _stage_fn(stage: str):
    if stage == "prepare":
        from domainpt.prepare import run_prepare as fn
    elif stage == "pretrain":
        from domainpt.pretrain import run_pretrain as fn
    elif stage == CONTROL_STAGE:
        from domainpt.pretrain import run_pretrain_control as fn
    elif stage == "finetune":
        from domainpt.finetune import run_finetune as fn
    elif stage == "evaluate":
        from domainpt.eval.stage import run_evaluate as fn
    else:
        from domainpt.report.compare import run_compare as fn
    return fn


@functools.cache
def _process_state():
    """Accelerate's view of this process (rank, number of processes); one process when nothing launched several."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def _rank() -> int:
    return _process_state().process_index


def _world() -> int:
    return _process_state().num_processes


def run_stage(recipe, stage: str, force: bool = False) -> None:
    """Run one stage unless it is finished. Pre-training and the fine-tune and evaluate jobs use every process; prepare
    and compare run on the main process while the others wait for its manifest."""
    if force and _rank() == 0:
        invalidate(recipe, stage)
    if _world() > 1:
        _barrier()
    if is_done(recipe, stage):
        if _rank() == 0:
            print(f"[domainpt] {stage}: finished earlier, skipped ({recipe.out_dir}/{stage}/manifest.json)", flush=True)
        return
    t0 = time.time()
    if _rank() == 0:
        print(f"[domainpt] {stage}: starting", flush=True)
    if stage in ALL_PROCESS_STAGES or _rank() == 0:
        _stage_fn(stage)(recipe)
    else:  # polled, not a barrier: prepare at full scale outlasts a collective's timeout (10 min under NCCL)
        while not is_done(recipe, stage):
            time.sleep(MANIFEST_POLL_S)
    if _world() > 1:
        _barrier()
    if _rank() == 0:
        print(f"[domainpt] {stage}: done in {time.time() - t0:.1f} s", flush=True)


def _barrier() -> None:
    _process_state().wait_for_everyone()


def run_job_stage(recipe, stage: str, shard: str | None, merge: bool, force: bool) -> None:
    """`finetune|evaluate RECIPE --shard I/N` (one slice of the jobs, no manifest; N tasks at once, so no run lock) or
    `--merge` (the manifest from the slices' jobs, naming any that is missing). With either, --force removes the stage's
    manifest (and later ones) but keeps finished jobs' markers: N shard tasks may all do it at once, and a marker of
    another recipe or over other inputs does not count anyway."""
    if shard and merge:
        raise DomainptError(f"{stage} --shard runs one slice of the jobs: --merge goes on a command of its own "
                            f"(`domainpt {stage} RECIPE --merge`)")
    if shard:
        from domainpt.data.shard import parse_shard

        parse_shard(shard)  # a bad I/N stops here, before anything is read or written
        if force and _rank() == 0:
            invalidate(recipe, stage, keep_jobs=True)
        if is_done(recipe, stage):
            print(f"[domainpt] {stage}: finished earlier, skipped ({recipe.out_dir}/{stage}/manifest.json)", flush=True)
            return
        _stage_fn(stage)(recipe, shard=shard)
        if _rank() == 0:
            print(f"[domainpt] {stage} shard {shard}: its jobs are done; once every shard's are: domainpt {stage} RECIPE --merge",
                  flush=True)
        return
    with run_lock(recipe.out_dir):
        if force:
            invalidate(recipe, stage, keep_jobs=True)
        if is_done(recipe, stage):
            print(f"[domainpt] {stage}: finished earlier, skipped ({recipe.out_dir}/{stage}/manifest.json)", flush=True)
            return
        _stage_fn(stage)(recipe, merge=True)
        print(f"[domainpt] {stage}: merged ({recipe.out_dir}/{stage}/manifest.json)", flush=True)


_STAGE_HELP = {"run": "run every stage, skipping finished ones",
               CONTROL_STAGE: "pre-train the control arm (compare.control: the general model on general text, same budget)"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="domainpt", description="Domain-adaptive continued pre-training with an honest comparison report.")
    sub = p.add_subparsers(dest="command", required=True)
    for name in ALL_STAGES + ("run",):
        s = sub.add_parser(name, help=_STAGE_HELP.get(name, f"run the {name} stage"))
        s.add_argument("recipe", help="recipe YAML file" + (" (or, for compare, two or more run folders)" if name == "compare" else ""))
        s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.max_steps=20")
        s.add_argument("--force", action="store_true", help="redo this stage (and invalidate the later ones)")
        if name == "prepare":
            s.add_argument("--shard", default=None, metavar="I/N", help="run only map task I of N (e.g. one Slurm array "
                                                                        "task); then `prepare --merge` once all are done")
            s.add_argument("--merge", action="store_true", help="finish prepare from the shards written by --shard tasks")
        if name in JOB_STAGES:
            s.add_argument("--shard", default=None, metavar="I/N", help="run only slice I of N of the stage's jobs (e.g. one "
                                                                        "Slurm array task); then `--merge` once all are done")
            s.add_argument("--merge", action="store_true", help="write the stage's manifest from the jobs that --shard "
                                                                "tasks ran (names any missing job)")
        if name == "compare":
            s.add_argument("--to", default=None, help="with several RUN_DIRs: the folder for the joint report")
        if name == "run":
            s.add_argument("--dry-run", action="store_true", help="validate the recipe and print the plan: steps, tokens, "
                                                                 "FLOPs, GPU-hours, disk; downloads and writes nothing")
            s.add_argument("--processes", type=int, default=1, help="run every stage as this many processes on this machine "
                                                                   "(one per GPU, or a share of the CPU cores each: torchrun); "
                                                                   "with --dry-run, the number of GPUs (processes) to plan for")
            s.add_argument("--gpu", default=None, help="--dry-run: GPU for the GPU-hour estimate (default: report.gpu)")
    pm = sub.add_parser("plan-mixture", help="pilot runs at several replay shares, a fitted continual pre-training law, "
                                             "and the recommended share for the budget (out_dir/plan_mixture/)")
    pm.add_argument("recipe", help="recipe YAML file (its mixture_plan section)")
    pm.add_argument("overrides", nargs="*", help="dotted overrides, e.g. mixture_plan.pilot_steps=20")
    pm.add_argument("--force", action="store_true", help="redo the plan and every pilot")
    pm.add_argument("--shard", default=None, metavar="I/N", help="run only slice I of N of the pilots; then `--merge`")
    pm.add_argument("--merge", action="store_true", help="fit and write the plan from the pilots that --shard tasks ran")
    pm.add_argument("--dry-run", action="store_true", help="print the pilots' cost beside the full run's; nothing runs")
    pm.add_argument("--processes", type=int, default=1, help="run as this many processes on this machine (torchrun), "
                                                            "pilots shared out; with --dry-run, the GPUs to plan for")
    pm.add_argument("--gpu", default=None, help="--dry-run: GPU for the GPU-hour estimate (default: report.gpu)")
    k = sub.add_parser("keys", help="list every recipe key with its default and meaning")
    k.add_argument("--rules", action="store_true", help="print the checks every recipe value gets, as a markdown table")
    k.add_argument("--markdown", action="store_true", help="print the key reference (docs/keys.md) as markdown")
    pb = sub.add_parser("publish", help="a finished run's domain (or control) model as a Hub-ready folder with a model card")
    pb.add_argument("run_dir", help="the run's out_dir (finished through compare)")
    pb.add_argument("--model", choices=("domain", "control"), default="domain", help="which model (default: domain)")
    pb.add_argument("--adapters", action="store_true", help="also the run's LoRA adapters of that model, per task and seed")
    pb.add_argument("--to", default=None, help="the folder to write (default: RUN_DIR/publish/MODEL); must be new or empty")
    pb.add_argument("--language", action="append", default=None, help="language code for the card (repeatable; "
                                                                      "default: the packaged corpora's)")
    pb.add_argument("--push", action="store_true", help="upload the folder to the Hub (needs --repo-id, network, a token)")
    pb.add_argument("--repo-id", default=None, help="the Hub repository (user/name): named in the card; --push uploads there")
    pb.add_argument("--private", action="store_true", help="with --push: create the repository private")
    sub.add_parser("sources", help="list the corpora that ship inside installed packages (`builtin:` sources)")
    c = sub.add_parser("cards", help="write a data card per packaged corpus the recipes use (with measured counts)")
    c.add_argument("recipes", nargs="+", help="recipe YAML files")
    c.add_argument("--to", default="data_cards", help="output folder")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("keys", "sources", "cards"):
            _describe(args)
            return
        if args.command == "publish":
            _publish(args)
            return
        if args.command == "compare" and Path(args.recipe).is_dir():  # domainpt compare RUN_DIR RUN_DIR ...
            from domainpt.report.multi import compare_runs

            runs = [args.recipe, *args.overrides]
            to = Path(args.to or Path(args.recipe).parent / "comparison")
            compare_runs(runs, to)
            print(f"[domainpt] compared {len(runs)} runs: {to / 'report.html'} (also report.md, results.json, cost_vs_gain.png)")
            return
        recipe = load_recipe(args.recipe, args.overrides)
        if args.command == "plan-mixture":
            _plan_mixture(args, recipe)
            return
        if getattr(args, "dry_run", False):
            from domainpt.plan import build_plan, format_plan

            print(format_plan(build_plan(recipe, args.processes, args.gpu)), flush=True)
            return
        if getattr(args, "processes", 1) > 1 and "WORLD_SIZE" not in os.environ:  # not yet inside a launch
            sys.exit(launch_local(args.processes, ["run", args.recipe, *args.overrides] + ["--force"] * args.force))
        if args.command == "prepare" and args.shard:  # no run lock: N tasks write N different folders at once
            from domainpt.prepare import run_prepare_shard

            run_prepare_shard(recipe, args.shard)
            return
        if args.command == "prepare" and args.merge:
            from domainpt.prepare import run_prepare

            with run_lock(recipe.out_dir):
                if args.force:
                    invalidate(recipe, "prepare")
                if is_done(recipe, "prepare"):
                    print(f"[domainpt] prepare: finished earlier, skipped ({recipe.out_dir}/prepare/manifest.json)", flush=True)
                else:
                    run_prepare(recipe, merge_only=True)
            return
        if args.command in JOB_STAGES and (args.shard or args.merge):
            run_job_stage(recipe, args.command, args.shard, args.merge, args.force)
            return
        if args.command == CONTROL_STAGE and not has_control(recipe):
            raise DomainptError(f"{CONTROL_STAGE}: compare.control is 'none' in {args.recipe}; set compare.control=continued_general")
        stages = run_stages(recipe) if args.command == "run" else (args.command,)
        lock = run_lock(recipe.out_dir) if _rank() == 0 else nullcontext()
        with lock:
            for st in stages:
                run_stage(recipe, st, force=args.force and (args.command != "run" or st == stages[0]))
        if args.command in ("run", "compare") and _rank() == 0:
            from domainpt.report.compare import summary_lines

            print("\n".join(summary_lines(recipe)), flush=True)
    except DomainptError as e:
        _error_line(str(e))
        sys.exit(2)
    except KeyboardInterrupt:
        print("domainpt: interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    except MemoryError:
        _out_of_memory()
    except Exception as e:
        if type(e).__name__ != "OutOfMemoryError":  # torch.cuda.OutOfMemoryError, without importing torch here
            raise
        _out_of_memory()


def _describe(args) -> None:
    """The commands that only print or document: keys, sources, cards."""
    if args.command == "keys" and (args.rules or args.markdown):
        from domainpt.config import keys_markdown, rules_markdown

        print(rules_markdown() if args.rules else keys_markdown())
    elif args.command == "keys":
        for key, default, help_ in field_docs():
            print(f"{key} = {default}\n    {help_}")
    elif args.command == "sources":
        from domainpt.data.builtin import BUILTINS

        for name, b in sorted(BUILTINS.items()):
            f = b.info
            print(f"{name}  ({f['domain']}, {f['licence']}; package {f['package']})\n    {f['description']}")
    else:
        from domainpt.data.cards import write_cards

        for p in write_cards([load_recipe(r) for r in args.recipes], args.to):
            print(f"[domainpt] wrote {p}")


def _plan_mixture(args, recipe) -> None:
    """`domainpt plan-mixture`: --dry-run, a local launch (--processes), one --shard slice, --merge, or the whole plan."""
    from domainpt.mixture.pilots import STAGE
    from domainpt.mixture.stage import pilots_cost_warning, run_plan_mixture

    if args.dry_run:
        from domainpt.plan import format_mixture_plan, mixture_plan

        print(format_mixture_plan(mixture_plan(recipe, args.processes, args.gpu)), flush=True)
        return
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(launch_local(args.processes, ["plan-mixture", args.recipe, *args.overrides] + ["--force"] * args.force))
    if args.shard and args.merge:
        raise DomainptError("plan-mixture --shard runs one slice of the pilots: --merge goes on a command of its own")
    if args.shard:
        from domainpt.data.shard import parse_shard

        parse_shard(args.shard)
    done = stage_dir(recipe, STAGE) / "manifest.json"
    lock = run_lock(recipe.out_dir) if _rank() == 0 and not args.shard else nullcontext()
    with lock:
        if args.force and _rank() == 0:
            invalidate_plan(recipe, keep_pilots=bool(args.shard or args.merge))
        elif _rank() == 0 and not args.shard:  # a slice only runs pilots: the plan is --merge's
            drop_stale_plan(recipe, args.merge)
        if _world() > 1:
            _barrier()
        if is_done(recipe, STAGE):
            if _rank() == 0:
                print(f"[domainpt] plan-mixture: finished earlier, skipped ({done})", flush=True)
            return
        if _rank() == 0 and not args.merge and (warning := pilots_cost_warning(recipe)):
            print(f"[domainpt] plan-mixture: {warning}", flush=True)
        plan = run_plan_mixture(recipe, args.shard, args.merge)
    if plan and _rank() == 0:
        rec = plan["recommendation"]
        where = stage_dir(recipe, STAGE)
        print(f"[domainpt] plan-mixture: {where / 'plan.md'} (also plan.json, plan.png)", flush=True)
        if rec["replay_share"] is None:
            print("[domainpt] no piloted replay share keeps the predicted general loss within the bound (plan.md)", flush=True)
        else:
            print(f"[domainpt] recommended: {rec['override']}", flush=True)


def drop_stale_plan(recipe, merge: bool = False) -> None:
    """A finished plan whose pilots still hold (only what the plan reads changed: the bound, the token axis, ...) is
    refitted, not refused: that takes seconds and keeps every pilot. A change to the pilots themselves is still refused
    by is_done (pass --force to redo them). A plan from before token_axis existed is refitted too. A pilot that the
    plan now asks for and nobody ran (turning length_check on) is named; --merge, which runs none, refuses."""
    import json

    from domainpt.jobs.runner import JobBook
    from domainpt.mixture.pilots import STAGE, pilot_fingerprint, pilot_jobs
    from domainpt.mixture.stage import tokens_per_step

    manifest = read_manifest(recipe, STAGE)
    if not manifest:
        return
    try:
        axis = json.loads((stage_dir(recipe, STAGE) / "plan.json").read_text()).get("token_axis", {}).get("kind")
    except (OSError, json.JSONDecodeError, AttributeError):
        axis = None
    if manifest.get("fingerprint") == stage_fingerprint(recipe, STAGE) and axis == recipe.mixture_plan.token_axis:
        return
    if pilots_made_under(recipe, manifest) != pilot_fingerprint(recipe):
        return
    book = JobBook(recipe, STAGE, [], fingerprint=pilot_fingerprint(recipe))
    missing = [j.id for j in pilot_jobs(recipe, tokens_per_step(recipe)) if not book.finished(j)]
    if missing and merge:
        raise DomainptError(f"plan-mixture --merge: the plan now also needs {', '.join(missing)}, which no --shard task "
                            "ran; run `domainpt plan-mixture RECIPE` (or the --shard tasks) first; the finished plan is kept")
    print("[domainpt] plan-mixture: what the plan reads changed since it was made; refitting it (" +
          (f"pilots kept; to run: {', '.join(missing)}" if missing else "every pilot kept") + ")", flush=True)
    (stage_dir(recipe, STAGE) / "manifest.json").unlink(missing_ok=True)


def pilots_made_under(recipe, manifest: dict) -> str | None:
    """The pilot fingerprint a finished plan's pilots were made under: in its manifest, or (older plans) a job marker's."""
    import json

    from domainpt.mixture.pilots import STAGE

    if manifest.get("pilot_fingerprint"):
        return manifest["pilot_fingerprint"]
    for marker in sorted((stage_dir(recipe, STAGE) / "jobs").rglob("*.json")):
        try:
            return json.loads(marker.read_text()).get("fingerprint")
        except (OSError, json.JSONDecodeError):
            continue
    return None


def invalidate_plan(recipe, keep_pilots: bool) -> None:
    """plan-mixture --force: the plan is redone; so are the pilots, except under --shard/--merge (N tasks at once)."""
    import shutil

    from domainpt.mixture.pilots import STAGE

    (stage_dir(recipe, STAGE) / "manifest.json").unlink(missing_ok=True)
    if not keep_pilots:
        shutil.rmtree(stage_dir(recipe, STAGE) / "jobs", ignore_errors=True)
        shutil.rmtree(stage_dir(recipe, STAGE) / "pilots", ignore_errors=True)


def _publish(args) -> None:
    from domainpt.publish import default_folder, is_published, publish, published_for, push

    if args.push and not args.repo_id:
        raise DomainptError("publish --push needs --repo-id user/name")
    folder = Path(args.to) if args.to else default_folder(args.run_dir, args.model)
    if args.push and is_published(folder):  # an earlier publish whose upload failed: send it as it is
        if published_for(folder) != args.repo_id:  # its card and adapters name another repository (or none)
            raise DomainptError(f"{folder} was published for {published_for(folder)!r}, not {args.repo_id}: "
                                "remove it, or pass another --to")
        print(f"[domainpt] {folder} holds a published model already: pushing it as it is", flush=True)
    else:
        folder = publish(args.run_dir, args.model, args.to, args.adapters, args.repo_id, args.language)
        print(f"[domainpt] published the {args.model} model to {folder} (README.md: its model card)", flush=True)
    if args.push:
        print(f"[domainpt] pushed: {push(folder, args.repo_id, args.private)}", flush=True)


def launch_local(processes: int, argv: list[str]) -> int:
    """`domainpt run RECIPE --processes N`: the same command as N processes of one torchrun launch on this machine; the
    exit code is the first failed process's, whose own one-line error has been printed (torchrun's report is not)."""
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if processes < 1:
        raise DomainptError(f"--processes {processes}: need at least 1")
    # torchrun gives each process 1 thread; with more cores than processes, each takes its share
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    logging.getLogger("torch.distributed").setLevel(logging.CRITICAL)
    try:
        run(parse_args(["--standalone", "--nproc_per_node", str(processes), "-m", "domainpt", *argv]))
    except ChildFailedError as e:
        # the cause, not the processes torchrun then stopped with SIGTERM (ProcessFailure times are whole seconds)
        causes = {r: f for r, f in e.failures.items() if f.exitcode != -signal.SIGTERM} or e.failures
        rank, failure = min(causes.items(), key=lambda rf: (rf[1].timestamp, rf[0]))
        if failure.exitcode >= 0:
            return failure.exitcode
        _error_line(f"process {rank} of {processes} was killed by signal {-failure.exitcode} (out of memory?); rerun the "
                    "same command to resume: finished stages and jobs are kept")
        return 128 - failure.exitcode
    except SignalException:  # Ctrl-C: torchrun stopped the processes, which said how to resume
        return 130
    return 0


def _out_of_memory() -> None:
    _error_line("out of memory; lower train.batch_size (raise train.grad_accum to keep the global batch), "
                "data.seq_len, lora.batch_size or eval.batch_size, or set train.gradient_checkpointing=true")
    sys.exit(2)


def _error_line(message: str) -> None:
    """One line, on a line of its own even when a progress bar was drawing (tqdm.write clears it first)."""
    from tqdm.auto import tqdm

    tqdm.write(f"domainpt: error: {' '.join(message.split())}", file=sys.stderr)
    sys.stderr.flush()


if __name__ == "__main__":
    main()
