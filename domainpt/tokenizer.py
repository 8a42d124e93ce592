"""Vocabulary extension: give frequent domain words that the tokenizer splits into many pieces their own
token, initialised as the mean of the embeddings of the pieces it replaces.

    tokenizer: {extend: true, max_new_tokens: 1000}      # in a recipe; runs inside `domainpt prepare`

Old tokens keep their ids and embeddings; only rows are added. Each new token is the word with its
leading space (" hypertension"), matched as a whole word, so text still decodes to itself.
"""
from __future__ import annotations

import re
from collections import Counter

import torch

WORD = re.compile(r"[^\W\d_]{4,}")  # alphabetic words of 4+ letters: the ones worth a token of their own


def tokens_per_word(tokenizer, texts: list[str]) -> float:
    words = sum(len(t.split()) for t in texts)
    tokens = sum(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) if texts else 0
    return tokens / words if words else 0.0


def candidate_words(tokenizer, texts: list[str], max_new: int, min_count: int, min_pieces: int) -> list[dict]:
    """Frequent words split into >= min_pieces tokens, ranked by the tokens they would save."""
    counts = Counter(w for t in texts for w in WORD.findall(t))
    frequent = [w for w, c in counts.items() if c >= min_count]
    pieces = dict(zip(frequent, tokenizer([" " + w for w in frequent], add_special_tokens=False)["input_ids"])) if frequent else {}
    ranked = sorted(((counts[w] * (len(p) - 1), w) for w, p in pieces.items() if len(p) >= min_pieces), reverse=True)
    return [{"word": w, "count": counts[w], "pieces": len(pieces[w])} for _, w in ranked[:max_new]]


def extend_vocabulary(model, tokenizer, words: list[str]) -> list[int]:
    """Add `words` as tokens (in place, model and tokenizer); return the new token ids."""
    from tokenizers import AddedToken

    old_pieces = {w: tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words}
    tokenizer.add_tokens([AddedToken(" " + w, single_word=True, normalized=False) for w in words])
    new_ids = [tokenizer.convert_tokens_to_ids(" " + w) for w in words]
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # new rows are set just below
    emb_in = model.get_input_embeddings().weight
    out = model.get_output_embeddings()
    tables = [emb_in] + ([out.weight] if out is not None and out.weight is not emb_in else [])
    with torch.no_grad():
        for w, nid in zip(words, new_ids):
            for table in tables:
                table[nid] = table[old_pieces[w]].mean(0)
    return new_ids
