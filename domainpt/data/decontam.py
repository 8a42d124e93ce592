"""Decontamination: find training documents that share a long word n-gram with any evaluation text.

Evaluation texts shorter than n words are matched whole when they have at least `min_words`
words; shorter ones cannot be checked reliably and are counted as such.
"""
from __future__ import annotations

import numpy as np

from domainpt.data.ngrams import contains_any, ngram_hashes, word_ids


class ContaminationIndex:
    def __init__(self, n: int = 13, min_words: int = 8):
        self.n, self.min_words = n, min_words
        self._parts: list[np.ndarray] = []
        self._index = np.zeros(0, np.uint64)
        self.short_lengths: set[int] = set()  # lengths of whole short texts indexed
        self.unchecked = 0

    def add(self, text: str) -> None:
        ids = word_ids(text)
        if len(ids) >= self.n:
            self._parts.append(ngram_hashes(ids, self.n))
        elif len(ids) >= self.min_words:
            self._parts.append(ngram_hashes(ids, len(ids)))
            self.short_lengths.add(len(ids))
        else:
            self.unchecked += 1

    def hits(self, text) -> bool:
        """True when the text (a string, or its ngrams.word_ids) contains any indexed n-gram (or any indexed
        short text whole)."""
        if self._parts:
            self._index = np.unique(np.concatenate([self._index, *self._parts]))
            self._parts = []
        ids = word_ids(text) if isinstance(text, str) else text
        return any(contains_any(self._index, ngram_hashes(ids, n)) for n in {self.n, *self.short_lengths})
