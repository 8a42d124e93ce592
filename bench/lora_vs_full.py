"""LoRA vs full fine-tuning throughput on the same model, batch and sequence length.

    python bench/lora_vs_full.py              # < 1 minute on 2 cores; last line: `ratio <float>` (LoRA ÷ full tokens/s)

The small Llama of train_overhead.py, batch 8 x 256, AdamW; LoRA r=16 on all linear layers (peft),
the base frozen. Interleaved repeats, median tokens/s over steps after warm-up.
"""
from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.train_overhead import SHAPE  # noqa: E402

STEPS, BATCH, SEQ = 8, 8, 256


def tokens_per_s(lora: bool) -> float:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE))
    model.config.use_cache = False
    if lora:
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(1, SHAPE["vocab_size"], (BATCH, SEQ))
    rates = []
    for _ in range(STEPS):
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        rates.append(BATCH * SEQ / (time.perf_counter() - t0))
    return statistics.median(rates[2:])


def main():
    lora, full = [], []
    for rep in range(3):
        full.append(tokens_per_s(False))
        lora.append(tokens_per_s(True))
        print(f"repeat {rep}: full {full[-1]:.0f} tok/s, LoRA {lora[-1]:.0f} tok/s", flush=True)
    print(f"model {SHAPE['num_hidden_layers']}x{SHAPE['hidden_size']} vocab {SHAPE['vocab_size']}, batch {BATCH}x{SEQ}, "
          f"{torch.get_num_threads()} threads")
    print(f"ratio {statistics.median(lora) / statistics.median(full):.3f}")


if __name__ == "__main__":
    main()
