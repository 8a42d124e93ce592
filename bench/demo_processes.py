"""The demo's stages after prepare as P processes x T threads, for several (P, T), one after the other on one host.

    python bench/demo_processes.py runs/medical-demo                     # 1x2 then 2x1 (on a 2-core machine)
    python bench/demo_processes.py runs/medical-demo --arms 1x2 --also runs/medical-demo

Each arm copies RUN's prepare/ into its own out_dir (RUN_bench_<P>x<T>) and runs `domainpt run` from there as
P processes (`--processes P`, torchrun) with OMP_NUM_THREADS=T: pre-training (data-parallel at the recipe's global
batch), the control arm, the fine-tune and evaluate jobs, compare. `--also DIR` adds a finished run's own stage times
as a column (a `make demo` run just before, on the same host). Prints each stage's wall time per arm, the fine-tune
and evaluate stages' parallel efficiency, each arm's verdict lines, and `ratio` = the first arm's stages-after-prepare
time / the last one's (> 1: the last arm is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("pretrain", "pretrain_control", "finetune", "evaluate", "compare")


def stage_times(run: Path) -> dict:
    out = {}
    for s in STAGES:
        p = run / s / "manifest.json"
        if p.is_file():
            m = json.loads(p.read_text())
            out[s] = (m["wall_s"], m.get("parallel_efficiency"))
    return out


def run_arm(src: Path, recipe: str, processes: int, threads: int) -> tuple[Path, float, list[str]]:
    out = src.parent / f"{src.name}_bench_{processes}x{threads}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    shutil.copytree(src / "prepare", out / "prepare")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "domainpt", "run", recipe, f"out_dir={out}", "--processes", str(processes)],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if r.returncode:
        sys.exit(f"arm {processes}x{threads} failed:\n{r.stderr[-3000:]}")
    return out, seconds, [l for l in r.stdout.splitlines() if l.startswith("[domainpt] ") and ("->" in l or "(acc" in l)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path, help="a run whose prepare stage is finished (e.g. runs/medical-demo)")
    ap.add_argument("--arms", default="1x2,2x1", help="comma-separated PROCESSESxTHREADS")
    ap.add_argument("--also", type=Path, default=None, help="a finished run whose own stage times to show beside")
    a = ap.parse_args()
    recipe = json.loads((a.run / "prepare" / "manifest.json").read_text())["recipe"]
    with open(a.run / "bench_recipe.json", "w") as f:  # the run's own recipe (JSON is YAML), as prepare recorded it
        json.dump(recipe, f)
    columns, totals = {}, {}
    for arm in a.arms.split(","):
        p, t = (int(x) for x in arm.split("x"))
        out, seconds, verdict = run_arm(a.run, str(a.run / "bench_recipe.json"), p, t)
        columns[arm], totals[arm] = stage_times(out), seconds
        print(f"arm {arm}: {seconds:.1f} s for the stages after prepare ({out})", flush=True)
        print("\n".join("  " + l for l in verdict), flush=True)
    if a.also:
        columns[f"{a.also.name} (as run)"] = stage_times(a.also)
    print(f"{'stage':<18}" + "".join(f"{c:>26}" for c in columns))
    for s in STAGES:
        cells = []
        for col in columns.values():
            wall, eff = col.get(s, (None, None))
            cells.append("—" if wall is None else f"{wall:.1f} s" + (f" ({eff:.0%} eff.)" if eff else ""))
        print(f"{s:<18}" + "".join(f"{c:>26}" for c in cells))
    arms = list(totals)
    if len(arms) > 1:
        print(f"ratio {totals[arms[0]] / totals[arms[-1]]:.3f}")


if __name__ == "__main__":
    main()
