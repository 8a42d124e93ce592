"""Is bfloat16 scoring faster or slower than float32 on this CPU? (what `eval.precision: auto` decides)

    python bench/cpu_bf16.py [REPEATS]

SmolLM2-135M (the packaged model), forward passes over a batch of 16 x 40 tokens in float32 and bfloat16,
alternated, REPEATS (default 2) rounds of two timed passes each after a warm-up. Prints whether oneDNN has bf16
kernels here (torch.ops.mkldnn._is_mkldnn_bf16_supported: AVX-512), the per-batch times, the dtype 'auto' picks,
and `ratio` = bfloat16 time / float32 time (> 1: bfloat16 is slower here).
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(repeats: int = 2) -> None:
    from domainpt.eval.stage import scoring_dtype
    from domainpt.models import load_model, resolve

    model = load_model(resolve("smollm2-135m"), "clm").eval()
    ids = torch.randint(0, 49000, (16, 40), generator=torch.Generator().manual_seed(0))
    times = {torch.float32: [], torch.bfloat16: []}
    with torch.no_grad():
        for _ in range(repeats):
            for dtype in times:
                model.to(dtype)
                model(input_ids=ids)  # warm-up for this dtype
                t = time.perf_counter()
                model(input_ids=ids)
                model(input_ids=ids)
                times[dtype].append((time.perf_counter() - t) / 2)
    native = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"cpu capability {torch.backends.cpu.get_cpu_capability()}, oneDNN bf16 kernels: {native}; "
          f"eval.precision=auto picks {scoring_dtype('auto', 'cpu')}")
    for dtype, ts in times.items():
        print(f"{str(dtype):<16} {', '.join(f'{t:.3f}' for t in ts)} s per batch of 16 x 40 tokens")
    print(f"ratio {statistics.median(times[torch.bfloat16]) / statistics.median(times[torch.float32]):.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
