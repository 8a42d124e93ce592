"""Word n-gram hashes as numpy arrays: what near-dedup (MinHash shingles) and decontamination share.

Each lower-cased word (`\\w+`) gets a CRC-32 id (stable across processes, unlike Python's `hash`);
an n-gram's hash mixes its n word ids and goes through splitmix64's finaliser, all vectorised, so a
document costs one regex pass and a few array operations instead of one hash call per n-gram.
"""
from __future__ import annotations

import re
from zlib import crc32

import numpy as np

_WORD = re.compile(r"\w+", re.UNICODE)
_U64 = np.uint64
_P = _U64(0x9E3779B97F4A7C15)


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def word_ids(text: str) -> np.ndarray:
    return ids_of_words(words(text))


def ids_of_words(ws: list[str]) -> np.ndarray:
    """CRC-32 ids of words already split (the shard map splits each document once for all its uses)."""
    return np.fromiter((crc32(w.encode()) for w in ws), dtype=_U64, count=len(ws))


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """64-bit hash of every run of n consecutive word ids (empty when there are fewer than n)."""
    if len(ids) < n:
        return np.zeros(0, _U64)
    h = np.zeros(len(ids) - n + 1, _U64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _P + ids[j:len(ids) - n + 1 + j] + _U64(1)
        h ^= h >> _U64(30)
        h *= _U64(0xBF58476D1CE4E5B9)
        h ^= h >> _U64(27)
        h *= _U64(0x94D049BB133111EB)
        h ^= h >> _U64(31)
    return h


def contains_any(sorted_index: np.ndarray, values: np.ndarray) -> bool:
    """True when any of `values` is in `sorted_index` (a sorted uint64 array)."""
    if not len(sorted_index) or not len(values):
        return False
    pos = np.minimum(np.searchsorted(sorted_index, values), len(sorted_index) - 1)
    return bool((sorted_index[pos] == values).any())
