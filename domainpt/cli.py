"""The `domainpt` command: one subcommand per stage, and `run` to chain them.

    domainpt run recipes/demo/tiny.yaml                 # every stage; finished ones are skipped
    domainpt pretrain recipes/demo/legal.yaml train.max_steps=20
    torchrun --nproc_per_node 2 -m domainpt pretrain recipes/demo/tiny.yaml
    domainpt pretrain_control RECIPE compare.control=continued_general   # the control arm alone (`run` does it too)
    domainpt run recipes/medical.yaml --dry-run --processes 8   # the plan and its cost; nothing runs
    domainpt prepare recipes/medical.yaml --shard 3/16  # one of 16 data tasks; then: prepare --merge
    domainpt compare runs/medical runs/legal --to runs/cmp     # several finished runs in one report
    domainpt keys                                       # every recipe key with its default and meaning

Problems the user can fix end with a one-line `domainpt: error: ...` and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from contextlib import nullcontext
from pathlib import Path

from domainpt.config import field_docs, load_recipe
from domainpt.errors import DomainptError
from domainpt.manifest import ALL_STAGES, CONTROL_STAGE, has_control, invalidate, is_done, run_lock, run_stages

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def run_stage(recipe, stage: str, force: bool = False) -> None:
    """Run one stage unless it is finished. Only pretrain uses every process; other stages run on rank 0."""
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
    if stage in ("pretrain", CONTROL_STAGE) or _rank() == 0:
        _stage_fn(stage)(recipe)
    if _world() > 1:
        _barrier()
    if _rank() == 0:
        print(f"[domainpt] {stage}: done in {time.time() - t0:.1f} s", flush=True)


def _barrier() -> None:
    import torch
    from accelerate import PartialState

    PartialState(cpu=not torch.cuda.is_available()).wait_for_everyone()


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
        if name == "compare":
            s.add_argument("--to", default=None, help="with several RUN_DIRs: the folder for the joint report")
        if name == "run":
            s.add_argument("--dry-run", action="store_true", help="validate the recipe and print the plan: steps, tokens, "
                                                                 "FLOPs, GPU-hours, disk; downloads and writes nothing")
            s.add_argument("--processes", type=int, default=1, help="--dry-run: number of GPUs (processes) to plan for")
            s.add_argument("--gpu", default=None, help="--dry-run: GPU for the GPU-hour estimate (default: report.gpu)")
    sub.add_parser("keys", help="list every recipe key with its default and meaning")
    sub.add_parser("sources", help="list the corpora that ship inside installed packages (`builtin:` sources)")
    c = sub.add_parser("cards", help="write a data card per packaged corpus the recipes use (with measured counts)")
    c.add_argument("recipes", nargs="+", help="recipe YAML files")
    c.add_argument("--to", default="data_cards", help="output folder")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "keys":
            for key, default, help_ in field_docs():
                print(f"{key} = {default}\n    {help_}")
            return
        if args.command == "sources":
            from domainpt.data.builtin import BUILTINS

            for name, b in sorted(BUILTINS.items()):
                f = b.info
                print(f"{name}  ({f['domain']}, {f['licence']}; package {f['package']})\n    {f['description']}")
            return
        if args.command == "cards":
            from domainpt.data.cards import write_cards

            for p in write_cards([load_recipe(r) for r in args.recipes], args.to):
                print(f"[domainpt] wrote {p}")
            return
        if args.command == "compare" and Path(args.recipe).is_dir():  # domainpt compare RUN_DIR RUN_DIR ...
            from domainpt.report.multi import compare_runs

            runs = [args.recipe, *args.overrides]
            to = Path(args.to or Path(args.recipe).parent / "comparison")
            compare_runs(runs, to)
            print(f"[domainpt] compared {len(runs)} runs: {to / 'report.html'} (also report.md, results.json, cost_vs_gain.png)")
            return
        recipe = load_recipe(args.recipe, args.overrides)
        if getattr(args, "dry_run", False):
            from domainpt.plan import build_plan, format_plan

            print(format_plan(build_plan(recipe, args.processes, args.gpu)), flush=True)
            return
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
