"""GPU continued pre-training throughput and MFU of domainpt's real pretrain loop (one short call on an H100).

    python bench/gpu_pretrain.py [--steps 12] [--shape 0.5b|1b] [--variants default,varlen,...]

A ~0.5B (or ~1B) Llama-shaped model with random weights (no hub access on the GPU machine) trains on random
packed documents through `run_pretrain`; MFU is what the loop logs (6N + 12·L·H·T FLOPs per token
over the card's dense bf16 peak). Each variant flips fast-path switches from the recipe. Every variant
starts from the same weights and data, so its first losses must match the default's (bf16 tolerance):
`CHECK` lines print the largest relative difference over the first three steps.
"""
from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import prepared_run, run_logged  # noqa: E402

SHAPES = {  # Llama-shaped, SmolLM2's 49,152-word vocabulary, tied embeddings
    "0.5b": dict(vocab_size=49152, hidden_size=1280, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=20,
                 num_key_value_heads=4, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=True),
    "1b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=True),  # Llama-3.2-1B's body
}
VARIANTS = {
    "default": [],                                   # bf16, SDPA, document isolation on
    "no_isolation": ["train.doc_isolation=false"],   # plain causal mask over the packed row
    "grad_ckpt": ["train.gradient_checkpointing=true"],
    "compile": ["train.compile=true"],             # torch.compile (inductor); the median skips the compiling steps
    "chunked_loss": ["train.loss_chunk_tokens=4096"],  # no whole fp32 logit matrix
    "flex_attention": ["train.attention=flex_attention"],  # documents as a sparse BlockMask
    "varlen": ["train.attention=varlen"],            # flattened batch, torch's variable-length flash kernel
    "varlen_compile": ["train.attention=varlen", "train.compile=true"],
    # The memory the chunked loss frees, spent on a twice larger micro-batch (different data: no CHECK line).
    "varlen_chunked_b16": ["train.attention=varlen", "train.loss_chunk_tokens=4096", "train.batch_size=16"],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--shape", default="0.5b", choices=SHAPES)
    a = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    first = {}
    with tempfile.TemporaryDirectory() as d:
        for name in a.variants.split(","):
            try:  # one variant failing (a kernel missing on this card) must not cost the others' numbers
                rows = run_variant(Path(d) / name, a, VARIANTS[name])
            except Exception as e:
                print(f"FAILED variant={name}: {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}", flush=True)
                continue
            finally:
                gc.collect()
                torch.cuda.empty_cache()
            first[name] = [r["loss"] for r in rows[:3]]
            timed = rows[3:]  # skip warm-up steps
            tps = statistics.median(r["tokens_per_s"] for r in timed)
            mfu = statistics.median(r["mfu"] for r in timed if r["mfu"] is not None) if timed[0]["mfu"] is not None else float("nan")
            print(f"RESULT shape={a.shape} variant={name} tokens_per_s={tps:.0f} mfu={mfu:.3f} "
                  f"peak_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.1f} "
                  f"loss_first={timed[0]['loss']:.3f} loss_last={timed[-1]['loss']:.3f}", flush=True)
            same_data = not any(o.startswith("train.batch_size=") for o in VARIANTS[name])
            if name not in ("default", "no_isolation") and same_data and "default" in first:  # no_isolation changes the attention
                diff = max(abs(x - y) / abs(y) for x, y in zip(first[name], first["default"]))
                print(f"CHECK variant={name} first-steps loss vs default: max relative difference {diff:.2e}", flush=True)


def run_variant(work: Path, a, overrides: list[str]) -> list[dict]:
    from accelerate.state import AcceleratorState

    recipe, _ = prepared_run(work, SHAPES[a.shape], a.seq, [f"train.max_steps={a.steps}", f"train.batch_size={a.batch}",
                                                           *overrides], n_docs=4000, doc_len=(200, 4000),
                             base=work.parent / f"base_{a.shape}")  # one random model for all variants
    AcceleratorState._reset_state(reset_partial_state=True)
    torch.cuda.reset_peak_memory_stats()
    return run_logged(recipe)


if __name__ == "__main__":
    main()
