"""The map half of `prepare`: read 1/N of every source, clean, scrub, hash and tokenize it.

    domainpt prepare RECIPE --shard 3/16      # one of 16 tasks (e.g. a Slurm array job)
    domainpt prepare RECIPE --merge           # once all 16 are done (domainpt/data/merge.py)

Records are dealt to shards in blocks of BLOCK by their position in the source: every shard reads
all records but cleans, hashes and tokenizes only its own. Memory stays bounded by one batch of
documents plus a fixed number of sample texts; what grows with the corpus goes to disk:

    tokens.bin, doc_ends.npy, meta.json  each document's tokens + end-of-text (PackWriter format)
    docs.bin    one DOC_DTYPE row per document: global order, kind, source, exact hash, rank, tokens, task hit
    bands.bin   MinHash LSH band hashes (docs x bands, uint64); sig.bin the signatures (docs x num_perm, uint32)
    sample_{domain,general}.jsonl  the lowest-ranked texts per kind (held-out candidates, vocabulary sample)
    shard.json  counters, bad records, removed-document samples
The folder is written under a temporary name and renamed when complete: a shard folder that exists is finished.
"""
from __future__ import annotations

import hashlib
import heapq
import json
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from domainpt.data import clean, pii
from domainpt.data.decontam import ContaminationIndex
from domainpt.data.dedup import band_hashes, lsh_shape, signatures, word_key_of
from domainpt.data.ingest import BadRecords, iter_source
from domainpt.data.ngrams import ids_of_words, words
from domainpt.data.pack import PackWriter, encode_texts
from domainpt.data.reading_comprehension import KINDS as RC_KINDS
from domainpt.encoding import end_of_text_id
from domainpt.errors import DomainptError
from domainpt.manifest import atomic_write_json

BLOCK = 64  # records dealt to a shard at a time: keeps a file's neighbouring records together
BATCH = 256  # documents tokenized and hashed together
SAMPLE_DOCS = 2000  # lowest-ranked texts kept per kind: held-out candidates and the vocabulary-overlap sample
DOC_DTYPE = np.dtype([("order", "<u8"), ("exact", "<u8"), ("rank", "<u8"), ("ntok", "<u4"),
                      ("source", "<u2"), ("kind", "u1"), ("task_hit", "u1")])
KINDS = ("domain", "general")


def all_sources(data) -> list[tuple[str, object]]:
    """(kind, source) in recipe order; the index in this list is the source number stored per document."""
    return [("domain", s) for s in data.domain] + [("general", s) for s in data.general]


def order_key(source_index: int, record_index: int) -> int:
    """One integer that orders every document of the run the same way however it was sharded."""
    return (source_index << 40) | record_index


def rank_of(seed: int, exact: int) -> int:
    """Seeded pseudo-random rank of a document's normalised text (exact duplicates share it)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{exact}".encode(), digest_size=8).digest(), "little")


def parse_shard(spec: str) -> tuple[int, int]:
    """'3/16' -> (3, 16)."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise DomainptError(f"--shard {spec!r}: expected I/N, e.g. --shard 0/4") from None
    if not (n >= 1 and 0 <= i < n):
        raise DomainptError(f"--shard {spec!r}: need 0 <= I < N")
    return i, n


def shard_dir(prep: Path, i: int, n: int) -> Path:
    return Path(prep) / "shards" / f"{i:05d}-of-{n:05d}"


def clean_text(text: str, cfg) -> tuple[str | None, str | None]:
    """(cleaned text, None) or (None, reason it was removed)."""
    if cfg.clean.enabled:
        text = clean.normalize(text, cfg.clean)
        reason = clean.reject_reason(text, cfg.clean)
    else:
        reason = None if text.strip() else "empty"
    return (None, reason) if reason else (text, None)


class LowestRanked:
    """The k lowest-ranked distinct texts seen, each with its earliest order: bounded memory."""

    def __init__(self, k: int):
        self.k, self.heap, self.items = k, [], {}

    def add(self, rank: int, order: int, text: str) -> None:
        if rank in self.items:
            if order < self.items[rank][0]:
                self.items[rank] = (order, text)
            return
        if len(self.items) < self.k:
            heapq.heappush(self.heap, -rank)
        elif rank < -self.heap[0]:
            del self.items[-heapq.heapreplace(self.heap, -rank)]
        else:
            return
        self.items[rank] = (order, text)

    def write(self, path: Path) -> None:
        """One JSON line per text, in rank order (the merge streams these files side by side)."""
        with open(path, "w", encoding="utf-8") as f:
            for r, (o, t) in sorted(self.items.items()):
                f.write(json.dumps({"rank": r, "order": o, "text": t}, ensure_ascii=False) + "\n")


def process_shard(recipe, tokenizer, index: int, count: int, prep: Path, fingerprint: str, eval_texts: list[str],
                  miner=None) -> Path:
    """Write shard `index` of `count` under prep/shards/ and return its folder (kept if already finished)."""
    target = shard_dir(prep, index, count)
    if (target / "shard.json").is_file():
        if json.loads((target / "shard.json").read_text()).get("fingerprint") == fingerprint:
            return target
        shutil.rmtree(target)  # made under another recipe
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        info = _write_shard(recipe, tokenizer, index, count, tmp, eval_texts, miner)
        atomic_write_json(tmp / "shard.json", {"fingerprint": fingerprint, "index": index, "count": count, **info})
        try:
            tmp.rename(target)
        except OSError:  # the same shard finished by another task meanwhile: identical by construction
            if not (target / "shard.json").is_file():
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def _write_shard(recipe, tok, index: int, count: int, out: Path, eval_texts: list[str], miner=None) -> dict:
    """`miner` (data.transform: reading_comprehension) appends exercises to domain documents: their training tokens
    and the contamination check see the exercises; dedup keys, ranks and held-out candidates the raw text."""
    cfg = recipe.data
    bad = BadRecords(max_share=cfg.max_bad_share, max_record_bytes=cfg.max_record_mb * 1024 ** 2)
    contam = ContaminationIndex(cfg.decontam.ngram)
    if cfg.decontam.enabled:
        for text in eval_texts:  # the tasks' test texts are what training data must not contain
            contam.add(text)
    bands, rows = lsh_shape(cfg.dedup.threshold, cfg.dedup.num_perm)
    writer = PackWriter(out, len(tok), end_of_text_id(tok), fault_point="shard.document")
    files = {name: open(out / name, "wb") for name in ("docs.bin", "bands.bin", "sig.bin") + (("rc.bin",) if miner else ())}
    counters = {"documents_in": 0, "cleaning_removed": Counter(), "pii_replaced": Counter()}
    samples: list = []
    rc_samples: list = []
    lowest = {k: LowestRanked(max(cfg.heldout_docs, SAMPLE_DOCS)) for k in KINDS}
    batch: list = []

    def flush():
        texts = [b[3] for b in batch]
        split = [words(t) for t in texts]  # one regex pass per document: exact key, shingles, contamination
        ids_w = [ids_of_words(ws) for ws in split]
        sig = signatures(ids_w, cfg.dedup.num_perm, cfg.dedup.shingle_words) if cfg.dedup.near else \
            np.zeros((len(texts), cfg.dedup.num_perm), np.uint32)
        exact = [word_key_of(ws) for ws in split]
        train_texts, rc = list(texts), np.zeros((len(batch), 1 + len(RC_KINDS)), np.uint32)
        if miner:  # exercises appended to domain documents (seeded by the document's own key: any sharding agrees)
            for j, (order, kind, _, text) in enumerate(batch):
                if kind == "domain":
                    train_texts[j], per_kind = miner.transform(text, exact[j])
                    if sum(per_kind):
                        rc[j, 1:] = per_kind
                        rc[j, 0] = len(encode_texts(tok, [train_texts[j][len(text):]])[0])  # the exercises' tokens
                        _sample(rc_samples, "reading_comprehension", order, train_texts[j], chars=2500, tail=True)
        ids = encode_texts(tok, train_texts)
        docs = np.zeros(len(batch), DOC_DTYPE)
        for j, (order, kind, src_i, text) in enumerate(batch):
            rank = rank_of(cfg.seed, exact[j])
            hit = cfg.decontam.enabled and contam.hits(ids_w[j] if train_texts[j] is text else
                                                       ids_of_words(words(train_texts[j])))
            docs[j] = (order, exact[j], rank, len(ids[j]) + 1, src_i, KINDS.index(kind), hit)
            lowest[kind].add(rank, order, text)  # held-out candidates stay raw text
        writer.add(ids)
        if miner:
            files["rc.bin"].write(rc.tobytes())
        files["docs.bin"].write(docs.tobytes())
        files["bands.bin"].write(band_hashes(sig, bands, rows).tobytes())
        files["sig.bin"].write(sig.tobytes())
        batch.clear()

    for src_i, (kind, src) in enumerate(all_sources(cfg)):
        for rec_i, rec in enumerate(tqdm(iter_source(src, bad), desc=f"prepare {kind}:{src.name} [{index + 1}/{count}]",
                                         unit="doc", leave=False, disable=None)):
            if (rec_i // BLOCK) % count != index:
                continue
            counters["documents_in"] += 1
            text, reason = clean_text(rec["text"], cfg)
            if reason:
                counters["cleaning_removed"][reason] += 1
                _sample(samples, reason, order_key(src_i, rec_i), rec["text"])
                continue
            if cfg.pii.enabled:
                text, found = pii.scrub(text, cfg.pii.types)
                counters["pii_replaced"].update(found)
            batch.append((order_key(src_i, rec_i), kind, src_i, text))
            if len(batch) >= BATCH:
                flush()
        if batch:
            flush()
    for f in files.values():
        f.close()
    meta = writer.close(cfg.seq_len)
    for kind, sample in lowest.items():
        sample.write(out / f"sample_{kind}.jsonl")
    return {"documents": meta["documents"], "source_names": [s.name for _, s in all_sources(cfg)], "bands": bands, "rows": rows, "num_perm": cfg.dedup.num_perm,
            "documents_in": counters["documents_in"], "cleaning_removed": dict(counters["cleaning_removed"]),
            "pii_replaced": dict(counters["pii_replaced"]), "bad_records": bad.total, "bad_record_reasons": dict(bad.counts),
            "bad_record_examples": bad.examples, "removed_samples": samples, "reading_comprehension_samples": rc_samples,
"eval_texts_too_short_to_check": contam.unchecked}


def _sample(samples: list, why: str, order: int, text: str, per_reason: int = 3, chars: int = 400, tail: bool = False) -> None:
    """Keep the first few documents per reason (by global order, so merges agree); with `tail`, a long text keeps
    its start and mostly its end (where a transform appends its exercises)."""
    same = [s for s in samples if s["reason"] == why]
    if len(same) < per_reason:
        cut = text[:chars] if not tail or len(text) <= chars else text[:chars // 5] + "\n[...]\n" + text[-(chars - chars // 5):]
        samples.append({"reason": why, "order": order, "text": cut})


def read_shard(folder: Path) -> dict:
    """A finished shard's arrays (memory-mapped) and its shard.json."""
    folder = Path(folder)
    info = json.loads((folder / "shard.json").read_text())
    n = info["documents"]
    docs = np.fromfile(folder / "docs.bin", dtype=DOC_DTYPE)
    if len(docs) != n:
        raise DomainptError(f"{folder}: docs.bin holds {len(docs)} documents, shard.json says {n}; delete the folder and rerun its shard")
    mm = (lambda name, dtype, width: np.memmap(folder / name, dtype=dtype, mode="r", shape=(n, width)) if n else
          np.zeros((0, width), dtype))
    return {"info": info, "docs": docs, "bands": mm("bands.bin", np.uint64, info["bands"]),
            "sig": mm("sig.bin", np.uint32, info["num_perm"]), "folder": folder}

