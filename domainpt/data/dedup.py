"""Exact (normalised-hash) and near-duplicate (MinHash LSH via datasketch) removal.

Documents are processed in order; the first of a duplicate group is kept.
"""
from __future__ import annotations

import hashlib
import re

from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+", re.UNICODE)


def exact_key(text: str) -> str:
    """Hash of the lower-cased word sequence: whitespace and punctuation changes still match."""
    return hashlib.sha1(" ".join(_WORD.findall(text.lower())).encode()).hexdigest()


def shingles(text: str, n: int) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) <= n:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)}


class NearDuplicateIndex:
    """Streaming near-duplicate detector: `is_duplicate(text)` answers and, if not, remembers the text."""

    def __init__(self, threshold: float, num_perm: int = 128, shingle_words: int = 5, seed: int = 1):
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self.num_perm, self.n, self.seed, self.count = num_perm, shingle_words, seed, 0

    def signature(self, text: str) -> MinHash:
        m = MinHash(num_perm=self.num_perm, seed=self.seed)
        m.update_batch(list(shingles(text, self.n)))
        return m

    def is_duplicate(self, text: str) -> bool:
        m = self.signature(text)
        if self.lsh.query(m):
            return True
        self.lsh.insert(str(self.count), m)
        self.count += 1
        return False
