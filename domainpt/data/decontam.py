"""Decontamination: find training documents that share a long word n-gram with any evaluation text.

Evaluation texts shorter than n words are matched whole when they have at least `min_words`
words; shorter ones cannot be checked reliably and are counted as such.
"""
from __future__ import annotations

import hashlib
import re

_WORD = re.compile(r"\w+", re.UNICODE)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _h(words) -> bytes:
    return hashlib.blake2b(" ".join(words).encode(), digest_size=8).digest()


class ContaminationIndex:
    def __init__(self, n: int = 13, min_words: int = 8):
        self.n, self.min_words = n, min_words
        self.grams: set[bytes] = set()
        self.short_lengths: set[int] = set()  # lengths of whole short texts indexed
        self.unchecked = 0

    def add(self, text: str) -> None:
        w = _words(text)
        if len(w) >= self.n:
            self.grams.update(_h(w[i:i + self.n]) for i in range(len(w) - self.n + 1))
        elif len(w) >= self.min_words:
            self.grams.add(_h(w))
            self.short_lengths.add(len(w))
        else:
            self.unchecked += 1

    def hits(self, text: str) -> bool:
        """True when the text contains any indexed n-gram (or any indexed short text whole)."""
        w = _words(text)
        for n in {self.n, *self.short_lengths}:
            for i in range(len(w) - n + 1):
                if _h(w[i:i + n]) in self.grams:
                    return True
        return False
