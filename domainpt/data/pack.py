"""Tokenize and pack documents into fixed-length blocks stored as a memory-mapped token file.

Layout of a packed folder:
    tokens.bin     every document's tokens followed by the end-of-text id, concatenated (uint16/uint32)
    doc_ends.npy   uint64 offset just past each document's end-of-text token
    meta.json      dtype, seq_len, counts
Block i is tokens[i*seq_len:(i+1)*seq_len]; the tail that does not fill a block is dropped (counted).
"""
from __future__ import annotations

import json
from array import array
from pathlib import Path
from typing import Iterable

import numpy as np

from domainpt import faults
from domainpt.manifest import atomic_write_json
from domainpt.resources import ensure_free_space


def token_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32


class PackWriter:
    """Streams documents (token id lists) to disk; memory stays bounded by one batch.

    Files are written under temporary names and renamed by close(), meta.json last; free disk is
    checked every `check_every` bytes so a full disk stops the run with a message, not a cut file."""

    def __init__(self, folder: Path, vocab_size: int, eos_id: int, reserve_bytes: int = 256 * 1024 ** 2,
                 check_every: int = 64 * 1024 ** 2, fault_point: str = "pack.document"):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dtype, self.eos = token_dtype(vocab_size), eos_id
        self._fh = open(self.folder / "tokens.bin.tmp", "wb")
        self.doc_ends = array("Q")  # 8 bytes per document, not a Python int's 28+
        self.n_tokens = 0
        self.reserve, self.check_every, self._next_check = reserve_bytes, check_every, 0
        self.fault_point = fault_point

    def add(self, docs: Iterable) -> None:
        """Append documents (lists or arrays of token ids); each gets the end-of-text id after it."""
        for ids in docs:
            arr = np.empty(len(ids) + 1, dtype=self.dtype)
            arr[:-1] = ids
            arr[-1] = self.eos
            if self._fh.tell() >= self._next_check:
                ensure_free_space(self.folder, self.reserve, "token shards",
                                  "free space or point out_dir at a larger disk, then rerun prepare")
                self._next_check = self._fh.tell() + self.check_every
            self._fh.write(arr.data)
            self.n_tokens += len(arr)
            self.doc_ends.append(self.n_tokens)
            faults.kill_point(self.fault_point, len(self.doc_ends))

    def close(self, seq_len: int, extra: dict | None = None) -> dict:
        self._fh.close()
        (self.folder / "tokens.bin.tmp").replace(self.folder / "tokens.bin")
        with open(self.folder / "doc_ends.npy.tmp", "wb") as f:
            np.save(f, np.frombuffer(self.doc_ends, dtype=np.uint64) if self.doc_ends else np.zeros(0, np.uint64))
        (self.folder / "doc_ends.npy.tmp").replace(self.folder / "doc_ends.npy")
        meta = {"dtype": np.dtype(self.dtype).name, "seq_len": seq_len, "tokens": self.n_tokens,
                "documents": len(self.doc_ends), "blocks": self.n_tokens // seq_len,
                "tokens_dropped_tail": self.n_tokens % seq_len, **(extra or {})}
        atomic_write_json(self.folder / "meta.json", meta)
        return meta


class PackedBlocks:
    """Zero-copy reader: `blocks[i]` -> dict(input_ids, position_ids) as int64 numpy arrays.

    position_ids restart at 0 at each document start, which lets the model keep attention inside
    documents (transformers detects packed sequences from position ids when use_cache=False).
    """

    def __init__(self, folder: Path, seq_len: int | None = None):
        folder = Path(folder)
        self.meta = json.loads((folder / "meta.json").read_text())
        self.seq_len = seq_len or self.meta["seq_len"]
        self.tokens = np.memmap(folder / "tokens.bin", dtype=self.meta["dtype"], mode="r")
        self.doc_ends = np.load(folder / "doc_ends.npy")

    def __len__(self) -> int:
        return len(self.tokens) // self.seq_len

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        s, e = i * self.seq_len, (i + 1) * self.seq_len
        pos = np.arange(s, e, dtype=np.int64)
        k = np.searchsorted(self.doc_ends, pos, side="right")
        starts = np.where(k > 0, self.doc_ends[np.maximum(k - 1, 0)].astype(np.int64), 0)
        return {"input_ids": self.tokens[s:e].astype(np.int64), "position_ids": pos - starts}

    def document(self, j: int) -> np.ndarray:
        """Tokens of document j without its end-of-text id (used to check the round trip)."""
        start = 0 if j == 0 else int(self.doc_ends[j - 1])
        return np.asarray(self.tokens[start:int(self.doc_ends[j]) - 1])


def encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """Token ids of each text, no special tokens (documents are joined by end-of-text later).

    transformers' batch call on the fast tokenizer; measured here it is as fast as calling the Rust
    `encode_batch` directly (and faster than `encode_batch_fast`), see bench/data_prepare.py."""
    return tokenizer(texts, add_special_tokens=False, return_attention_mask=False)["input_ids"]


def encode_batches(tokenizer, texts: list[str], batch_size: int = 256):
    """encode_texts in batches, as a generator."""
    for i in range(0, len(texts), batch_size):
        yield from encode_texts(tokenizer, texts[i:i + batch_size])
