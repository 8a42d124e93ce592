"""Packing efficiency: the share of batch positions that hold real tokens with a training target.

    python bench/packing.py                   # ~20 s; last line: `ratio <float>` (domainpt's share; goal >= 0.99)

Real documents (the legal demo's licence texts, SmolLM2 tokenizer, seq 256, batch 8), three ways:
domainpt's packed blocks through the training collate (no padding; only each document's first token
has no target, as when documents run alone), one document per row padded to the longest in its
batch (length-sorted, truncated at 256), and one document per row padded to 256.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SEQ, BATCH = 256, 8


def main():
    from domainpt.data.builtin import read_builtin
    from domainpt.data.pack import PackedBlocks, PackWriter, encode_batches
    from domainpt.models import load_tokenizer, resolve
    from domainpt.training.batches import make_collate

    tok = load_tokenizer(resolve("smollm2-135m"))
    texts = [r["text"] for r, _ in zip(read_builtin("scancode-licenses"), range(1500)) if r["text"].strip()]
    docs = list(encode_batches(tok, texts))
    with tempfile.TemporaryDirectory() as d:
        w = PackWriter(Path(d), len(tok), eos_id=0)
        w.add(docs)
        meta = w.close(SEQ)
        blocks = PackedBlocks(Path(d), SEQ)
        collate = make_collate("clm", tok, doc_isolation=True)
        slots = targets = 0
        for i in range(0, len(blocks) - BATCH + 1, BATCH):
            b = collate([blocks[j] for j in range(i, i + BATCH)])
            slots += b["labels"][:, 1:].numel()
            targets += int((b["labels"][:, 1:] != -100).sum())
    packed = targets / slots
    lens = np.array([min(len(x) + 1, SEQ) for x in docs])
    sorted_lens = np.sort(lens)
    dyn = sum(sorted_lens[i:i + BATCH].sum() - min(BATCH, len(sorted_lens) - i) for i in range(0, len(lens), BATCH)) / \
        sum(sorted_lens[i:i + BATCH].max() * min(BATCH, len(sorted_lens) - i) for i in range(0, len(lens), BATCH))
    fixed = (lens - 1).sum() / (len(lens) * SEQ)
    truncated = sum(max(0, len(x) + 1 - SEQ) for x in docs) / sum(len(x) + 1 for x in docs)
    print(f"{len(docs)} licence documents, {meta['tokens']:,} tokens, seq {SEQ}, batch {BATCH}")
    print(f"domainpt packed blocks: {packed:.4f} of positions train on a real target "
          f"(tail dropped at the end of the corpus: {meta['tokens_dropped_tail']} tokens)")
    print(f"one document per row, length-sorted dynamic padding: {dyn:.4f} (and {truncated:.1%} of tokens cut by truncation)")
    print(f"one document per row, padded to {SEQ}: {fixed:.4f}")
    print(f"ratio {packed:.4f}")


if __name__ == "__main__":
    main()
