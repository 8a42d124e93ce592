"""Peak memory and speed of the chunked cross-entropy (`train.loss_chunk_tokens`) vs the model's own loss.

    python bench/chunked_loss.py          # ~3 minutes on 2 cores; last line: `ratio <float>` (peak memory, chunked ÷ default)

A small Llama with SmolLM2's 49,152-word vocabulary (2 layers x 256 wide: the logits dominate, as they
do for small models with big vocabularies), 8 x 1024 tokens per step, through the real pretrain loop.
Each variant runs in its own process (peak resident memory of that process), interleaved, 2 repeats.
"""
from __future__ import annotations

import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPE = dict(vocab_size=49152, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, tie_word_embeddings=True)
SEQ, BATCH, STEPS, CHUNK = 1024, 8, 4, 2048


def child(chunk: int, work: Path) -> None:
    from bench.common import prepared_run, run_logged

    recipe, _ = prepared_run(work, SHAPE, SEQ, [f"train.max_steps={STEPS}", f"train.batch_size={BATCH}",
                                                f"train.loss_chunk_tokens={chunk}"], n_docs=200, doc_len=(100, 2000))
    rows = run_logged(recipe)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                      "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rows[1:]),
                      "losses": [r["loss"] for r in rows]}))


def main() -> None:
    results = {0: [], CHUNK: []}
    with tempfile.TemporaryDirectory() as d:
        for rep in range(2):
            for chunk in results:
                out = subprocess.run([sys.executable, __file__, "--child", str(chunk), str(Path(d) / f"{chunk}_{rep}")],
                                     capture_output=True, text=True, check=True)
                results[chunk].append(json.loads(out.stdout.strip().splitlines()[-1]))
    for chunk, rows in results.items():
        name = f"loss_chunk_tokens={chunk}" + (" (the model's own loss)" if chunk == 0 else "")
        print(f"{name}: peak RSS {[r['peak_rss_mb'] for r in rows]} MB, tokens/s {[round(r['tokens_per_s']) for r in rows]}, "
              f"losses {rows[0]['losses']}")
    peak = {c: statistics.median(r["peak_rss_mb"] for r in rows) for c, rows in results.items()}
    speed = {c: statistics.median(r["tokens_per_s"] for r in rows) for c, rows in results.items()}
    print(f"speed ratio (chunked / default tokens/s): {speed[CHUNK] / speed[0]:.3f}")
    print(f"ratio {peak[CHUNK] / peak[0]:.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
