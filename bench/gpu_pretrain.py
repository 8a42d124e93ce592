"""GPU continued pre-training throughput and MFU of domainpt's real pretrain loop (one short call on an H100).

    python bench/gpu_pretrain.py [--steps 12] [--variants default,varlen,...]

A ~0.5B Llama-shaped model with random weights (no hub access on the GPU machine) trains on random
packed documents through `run_pretrain`; MFU is what the loop logs (6N + 12·L·H·T FLOPs per token
over the card's dense bf16 peak). Each variant flips fast-path switches from the recipe. Every variant
starts from the same weights and data, so its first losses must match the default's (bf16 tolerance):
`CHECK` lines print the largest relative difference over the first three steps.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import prepared_run, run_logged  # noqa: E402

SHAPE = dict(vocab_size=49152, hidden_size=1280, intermediate_size=3584, num_hidden_layers=24, num_attention_heads=20,
             num_key_value_heads=4, head_dim=64, max_position_embeddings=4096, tie_word_embeddings=True)
VARIANTS = {
    "default": [],                                   # bf16, SDPA, document isolation on
    "no_isolation": ["train.doc_isolation=false"],   # plain causal mask over the packed row
    "grad_ckpt": ["train.gradient_checkpointing=true"],
    "compile": ["train.compile=true"],             # torch.compile (inductor); the median skips the compiling steps
    "chunked_loss": ["train.loss_chunk_tokens=4096"],  # no whole fp32 logit matrix
    "flex_attention": ["train.attention=flex_attention"],  # documents as a sparse BlockMask
    "varlen": ["train.attention=varlen"],            # flattened batch, torch's variable-length flash kernel
    "varlen_compile": ["train.attention=varlen", "train.compile=true"],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=2048)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    assert torch.cuda.is_available(), "this benchmark needs a GPU"
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", flush=True)
    first = {}
    with tempfile.TemporaryDirectory() as d:
        for name in a.variants.split(","):
            recipe, _ = prepared_run(Path(d) / name, SHAPE, a.seq, [f"train.max_steps={a.steps}", f"train.batch_size={a.batch}",
                                                                    *VARIANTS[name]], n_docs=4000, doc_len=(200, 4000))
            torch.cuda.reset_peak_memory_stats()
            all_rows = run_logged(recipe)
            first[name] = [r["loss"] for r in all_rows[:3]]
            rows = all_rows[3:]  # skip warm-up steps
            tps = statistics.median(r["tokens_per_s"] for r in rows)
            mfu = statistics.median(r["mfu"] for r in rows if r["mfu"] is not None) if rows[0]["mfu"] is not None else float("nan")
            print(f"RESULT variant={name} tokens_per_s={tps:.0f} mfu={mfu:.3f} peak_mem_gib={torch.cuda.max_memory_allocated() / 2**30:.1f} "
                  f"loss_first={rows[0]['loss']:.3f} loss_last={rows[-1]['loss']:.3f}", flush=True)
            if name not in ("default", "no_isolation") and "default" in first:  # no_isolation changes the attention
                diff = max(abs(a - b) / abs(b) for a, b in zip(first[name], first["default"]))
                print(f"CHECK variant={name} first-steps loss vs default: max relative difference {diff:.2e}", flush=True)


if __name__ == "__main__":
    main()
