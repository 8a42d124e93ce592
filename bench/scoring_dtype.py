"""Choice scoring in float32 against bfloat16 on this CPU: time and agreement (issue 17: evaluation is the demo's
largest stage, and more test items or seeds would lower the minimum detectable difference).

    python bench/scoring_dtype.py [RUN_DIR]     # a finished medical demo (default runs/medical-demo)

Scores the run's test items of every task with the general model, zero-shot, in both dtypes, alternating
(noisy machine); prints time per dtype, the share of predictions that agree, the largest log-likelihood
change, and last `ratio <float32 time / bfloat16 time>`.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from domainpt.eval.scoring import score_examples
from domainpt.encoding import end_of_text_id
from domainpt.models import load_model, load_tokenizer


def main(run: Path) -> None:
    prep = json.loads((run / "prepare" / "manifest.json").read_text())
    base = prep["base_model"]
    tok = load_tokenizer(base)
    examples = [json.loads(l) for f in sorted((run / "prepare" / "tasks").glob("*/test.jsonl")) for l in open(f)]
    models = {dt: load_model(base, "clm", dtype=dt) for dt in (torch.float32, torch.bfloat16)}
    times, rows = {dt: 0.0 for dt in models}, {}
    for _ in range(2):  # alternate, twice: the machine's speed drifts
        for dt, m in models.items():
            t = time.perf_counter()
            rows[dt] = score_examples(m, tok, examples, end_of_text_id(tok), batch_size=16)
            times[dt] += time.perf_counter() - t
    a, b = rows[torch.float32], rows[torch.bfloat16]
    agree = np.mean([x["pred"] == y["pred"] for x, y in zip(a, b)])
    diff = max(abs(u - v) for x, y in zip(a, b) for u, v in zip(x["logliks"], y["logliks"]))
    acc = {str(dt): float(np.mean([r["correct"] for r in rows[dt]])) for dt in rows}
    print(f"{len(examples)} items; float32 {times[torch.float32]:.1f} s, bfloat16 {times[torch.bfloat16]:.1f} s (2 passes each)")
    print(f"predictions agree on {agree:.1%}; largest log-likelihood change {diff:.3f}; accuracy {acc}")
    print(f"ratio {times[torch.float32] / times[torch.bfloat16]:.2f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("runs/medical-demo"))
