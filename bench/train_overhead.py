"""CPU training overhead: domainpt's real pretrain loop vs a minimal hand-written PyTorch loop.

    python bench/train_overhead.py            # < 1 minute on 2 cores; last line: `ratio <float>`

Both train the same small random Llama (SmolLM2 shape, shrunk) on the same packed blocks with the
same batch and sequence length, in one process, interleaved A B A B so machine noise hits both.
domainpt's figure is the median tokens_per_s it logs in metrics.jsonl (the step time includes its
data loading, Accelerate's accumulate/clip and metric reduction); the bare loop times the same span.
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import prepared_run, run_logged  # noqa: E402
from domainpt.data.pack import PackedBlocks  # noqa: E402

STEPS, BATCH, SEQ, REPEATS = 6, 8, 256, 3
SHAPE = dict(vocab_size=8192, hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, head_dim=64, max_position_embeddings=1024, tie_word_embeddings=True)


def setup(work: Path):
    return prepared_run(work, SHAPE, SEQ, [f"train.max_steps={STEPS}", f"train.batch_size={BATCH}"])


def domainpt_tokens_per_s(recipe) -> float:
    return statistics.median(r["tokens_per_s"] for r in run_logged(recipe)[2:])  # first steps warm up


def bare_tokens_per_s(recipe, base: Path) -> float:
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(base)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # the optimizer domainpt uses: overhead only
    blocks = PackedBlocks(Path(recipe.out_dir) / "prepare" / "train", SEQ)
    order = np.random.default_rng(0).permutation(len(blocks))
    rates = []
    for step in range(STEPS):
        t0 = time.perf_counter()
        items = [blocks[int(i)] for i in order[step * BATCH:(step + 1) * BATCH]]
        ids = torch.from_numpy(np.stack([it["input_ids"] for it in items]))
        pos = torch.from_numpy(np.stack([it["position_ids"] for it in items]))
        loss = model(input_ids=ids, position_ids=pos, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # domainpt clips too (train.grad_clip=1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        loss.item()
        rates.append(BATCH * SEQ / (time.perf_counter() - t0))
    return statistics.median(rates[2:])


def main():
    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as d:
        recipe, base = setup(Path(d))
        dp, bare = [], []
        for rep in range(REPEATS):  # interleaved repeats
            dp.append(domainpt_tokens_per_s(recipe))
            bare.append(bare_tokens_per_s(recipe, base))
            print(f"repeat {rep}: domainpt {dp[-1]:.0f} tok/s, bare loop {bare[-1]:.0f} tok/s", flush=True)
    ratio = statistics.median(a / b for a, b in zip(dp, bare))  # median of the paired ratios
    print(f"model {SHAPE['num_hidden_layers']}x{SHAPE['hidden_size']} vocab {SHAPE['vocab_size']}, batch {BATCH}x{SEQ}, {STEPS} steps, "
          f"{torch.get_num_threads()} threads")
    print(f"ratio {ratio:.3f}")


if __name__ == "__main__":
    main()
