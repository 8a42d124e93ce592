"""Whole-word masking for masked-LM continued pre-training on packed token ids.

transformers' collator finds words through offset mappings, which packed blocks no longer have; here a
word starts at any token the vocabulary marks as a word start (WordPiece: not '##...'; byte-level BPE:
'Ġ...'; SentencePiece: '▁...'), so every piece of a chosen word is masked together. Of the chosen
tokens 80% become the mask token, 10% a random token and 10% stay (BERT, Devlin et al. 2019).
"""
from __future__ import annotations

import numpy as np
import torch


def word_start_table(tokenizer) -> torch.Tensor:
    """Bool per token id: True where the token begins a word (special tokens count as their own word)."""
    vocab = tokenizer.get_vocab()
    table = torch.ones(max(max(vocab.values()) + 1, len(tokenizer)), dtype=torch.bool)
    marks = [m for m in ("Ġ", "▁") if any(t.startswith(m) for t in vocab)]
    for tok, i in vocab.items():
        if tok.startswith("##") or (marks and not tok.startswith(marks[0]) and tok not in tokenizer.all_special_tokens):
            table[i] = False
    return table


class WholeWordMasker:
    """A collate function: items with `input_ids` -> {input_ids, labels} with whole words masked."""

    def __init__(self, tokenizer, probability: float = 0.15):
        self.starts = word_start_table(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
        self.mask_id, self.vocab, self.p = tokenizer.mask_token_id, len(tokenizer), probability

    def __call__(self, items) -> dict:
        ids = torch.from_numpy(np.stack([it["input_ids"] for it in items]))
        special = torch.isin(ids, self.special)
        starts = self.starts[ids] | special
        starts[:, 0] = True
        word = starts.long().cumsum(1) - 1  # word index of every token, per row
        chosen_words = torch.rand(ids.shape[0], int(word.max()) + 1) < self.p
        chosen = torch.gather(chosen_words, 1, word) & ~special
        labels = ids.masked_fill(~chosen, -100)
        r = torch.rand(ids.shape)
        ids = ids.clone()
        ids[chosen & (r < 0.8)] = self.mask_id
        swap = chosen & (r >= 0.8) & (r < 0.9)
        ids[swap] = torch.randint(self.vocab, (int(swap.sum()),))
        return {"input_ids": ids, "labels": labels}
