"""Data-loader wait: the share of each training step spent waiting for the next batch.

    python bench/loader_wait.py               # < 1 minute on 2 cores; last line: `ratio <float>` (goal < 0.02)

Runs the real pretrain loop on packed random documents (the same small Llama as train_overhead.py);
the loop itself logs `data_wait_s` (time inside next(batches)) and `step_s` per step in metrics.jsonl.
Blocks are read from the memory-mapped token file by index: no tokenisation happens while training.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import prepared_run, run_logged  # noqa: E402
from bench.train_overhead import SHAPE  # noqa: E402


def main():
    with tempfile.TemporaryDirectory() as d:
        for accum in (1, 4):
            recipe, _ = prepared_run(Path(d) / f"ga{accum}", SHAPE, 256,
                                     ["train.max_steps=10", "train.batch_size=8", f"train.grad_accum={accum}"])
            rows = run_logged(recipe)[2:]  # first steps warm up
            wait, total = sum(r["data_wait_s"] for r in rows), sum(r["step_s"] for r in rows)
            print(f"grad_accum {accum}: {len(rows)} steps, waiting for data {1000 * wait / len(rows):.2f} ms of "
                  f"{1000 * total / len(rows):.0f} ms per step = {wait / total:.4f}", flush=True)
    print(f"ratio {wait / total:.4f}")


if __name__ == "__main__":
    main()
