"""The reduce half of `prepare`: global dedup, held-out split, decontamination, mixing and packing.

Works from the shards' per-document rows (domainpt/data/shard.py), never from the corpus text, so its
memory grows with the number of documents (~100 bytes each, plus one LSH band column at a time),
not with their size. Every decision depends only on a document's content and its global order, so
the result is byte-identical however many shards produced the input.
"""
from __future__ import annotations

import heapq
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from domainpt.data.dedup import candidate_pairs, groups, similar_pairs
from domainpt.data.ngrams import ngram_hashes
from domainpt.data.pack import PackWriter
from domainpt.data.reading_comprehension import KINDS as RC_KINDS
from domainpt.data.shard import KINDS, SAMPLE_DOCS, all_sources, read_shard, shard_dir
from domainpt.errors import DomainptError

_U64 = np.uint64


def find_shards(prep: Path, fingerprint: str) -> list[dict]:
    """All finished shards of one sharding (N found from the folder names), checked to be complete and current."""
    root = Path(prep) / "shards"
    counts = {int(p.name.split("-of-")[1]) for p in root.glob("*-of-*") if not p.name.startswith(".")} if root.is_dir() else set()
    if not counts:
        raise DomainptError(f"no shards in {root}: run `domainpt prepare RECIPE --shard I/N` for I = 0..N-1 first")
    if len(counts) > 1:
        raise DomainptError(f"{root} holds shards of several shardings (N = {sorted(counts)}); delete the stale ones")
    n = counts.pop()
    missing = [i for i in range(n) if not (shard_dir(prep, i, n) / "shard.json").is_file()]
    if missing:
        raise DomainptError(f"shards {', '.join(f'{i}/{n}' for i in missing[:8])}{' ...' if len(missing) > 8 else ''} "
                            f"are not finished in {root}; run `domainpt prepare RECIPE --shard I/{n}` for each")
    shards = [read_shard(shard_dir(prep, i, n)) for i in range(n)]
    stale = [s["folder"].name for s in shards if s["info"]["fingerprint"] != fingerprint]
    if stale:
        raise DomainptError(f"shards {', '.join(stale[:4])} in {root} were made with a different recipe; delete them and rerun")
    return shards


class Corpus:
    """Every document of every shard as one table; `tokens(i)` reads document i's tokens (no end-of-text).

    Tokens are read with pread, not memory-mapped: mapped pages count towards the process's resident
    memory, and the merge touches every token once (measured: +360 MB at a 1 GB corpus with mmap)."""

    def __init__(self, shards: list[dict]):
        self.shards = shards
        self.docs = np.concatenate([s["docs"] for s in shards]) if shards else np.zeros(0)
        self.shard_of = np.concatenate([np.full(len(s["docs"]), k, np.int32) for k, s in enumerate(shards)])
        self.local = np.concatenate([np.arange(len(s["docs"])) for s in shards])
        self.dtype = [np.dtype(json.loads((s["folder"] / "meta.json").read_text())["dtype"]) for s in shards]
        self.fd = [os.open(s["folder"] / "tokens.bin", os.O_RDONLY) for s in shards]
        self.ends = [np.load(s["folder"] / "doc_ends.npy") for s in shards]

    def exercise_counts(self) -> np.ndarray | None:
        """Per document: [exercise tokens, exercises per kind] (data.transform: reading_comprehension), or None."""
        if not all((s["folder"] / "rc.bin").is_file() for s in self.shards) or not self.shards:
            return None
        width = 1 + len(RC_KINDS)
        return np.concatenate([np.fromfile(s["folder"] / "rc.bin", dtype=np.uint32).reshape(-1, width) for s in self.shards])

    def close(self) -> None:
        for fd in self.fd:
            os.close(fd)

    def read(self, k: int, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of shard k's token file."""
        size = self.dtype[k].itemsize
        return np.frombuffer(os.pread(self.fd[k], (stop - start) * size, start * size), dtype=self.dtype[k])

    def shard_tokens(self, k: int) -> int:
        return int(self.ends[k][-1]) if len(self.ends[k]) else 0

    def __len__(self) -> int:
        return len(self.docs)

    def tokens(self, i: int) -> np.ndarray:
        k, j = self.shard_of[i], self.local[i]
        start = 0 if j == 0 else int(self.ends[k][j - 1])
        return self.read(k, start, int(self.ends[k][j]) - 1)

    def band_column(self, b: int, subset: np.ndarray) -> np.ndarray:
        return np.concatenate([np.asarray(s["bands"][:, b]) for s in self.shards])[subset]

    def signature_rows(self, idx: np.ndarray) -> np.ndarray:
        out = np.empty((len(idx), self.shards[0]["info"]["num_perm"]), np.uint32)
        for k, s in enumerate(self.shards):
            m = self.shard_of[idx] == k
            if m.any():
                out[m] = s["sig"][self.local[idx[m]]]
        return out


def exact_firsts(docs) -> np.ndarray:
    """True for the first document (lowest order) of each normalised-text group."""
    o = np.lexsort((docs["order"], docs["exact"]))
    first = np.r_[True, docs["exact"][o][1:] != docs["exact"][o][:-1]] if len(o) else np.zeros(0, bool)
    out = np.zeros(len(docs), bool)
    out[o[first]] = True
    return out


def choose_heldout(docs, unique: np.ndarray, k: int) -> np.ndarray:
    """Per kind, the k distinct texts with the lowest seeded rank (a random sample that no sharding changes)."""
    held = np.zeros(len(docs), bool)
    for kind in range(len(KINDS)):
        idx = np.flatnonzero(unique & (docs["kind"] == kind))
        held[idx[np.argsort(docs["rank"][idx], kind="stable")[:k]]] = True
    return held


class _OrderView:
    """sig[...] indexing in the subset's numbering, for similar_pairs."""

    def __init__(self, corpus: Corpus, subset: np.ndarray):
        self.c, self.subset = corpus, subset

    def __getitem__(self, idx):
        return self.c.signature_rows(self.subset[idx])


def near_duplicates(corpus: Corpus, subset: np.ndarray, held: np.ndarray, threshold: float, bands: int) -> np.ndarray:
    """Mask over `subset`: near duplicates to drop. Each similar group keeps its held-out member(s), else its first."""
    pairs = candidate_pairs(corpus.band_column(b, subset) for b in range(bands))
    pairs = similar_pairs(pairs, _OrderView(corpus, subset), threshold)
    g = groups(len(subset), pairs)
    order = corpus.docs["order"][subset]
    first = np.full(g.max() + 1 if len(g) else 0, np.iinfo(np.uint64).max, dtype=_U64)
    np.minimum.at(first, g, order)
    has_held = np.zeros(len(first), bool)
    has_held[g[held[subset]]] = True
    keep = np.where(has_held[g], held[subset], order == first[g])
    return ~keep


def heldout_ngram_hits(corpus: Corpus, held_idx: np.ndarray, check: np.ndarray, n: int, chunk: int = 1 << 22,
                       appended: np.ndarray | None = None) -> np.ndarray:
    """Mask over all documents: those in `check` that contain any n-token window of a held-out document.
    `appended` (tokens a transform added after each document's text) is cut off first: held-out text is its raw
    text, and the exercises' shared question templates would otherwise match every transformed document."""
    grams = [ngram_hashes(_raw_tokens(corpus, i, appended).astype(_U64), n) for i in held_idx]
    grams = np.unique(np.concatenate(grams)) if grams else np.zeros(0, _U64)
    hit = np.zeros(len(corpus), bool)
    if not len(grams):
        return hit
    offset = 0
    for k in range(len(corpus.shards)):
        total = corpus.shard_tokens(k)
        for s in range(0, total, chunk):
            piece = corpus.read(k, s, min(total, s + chunk + n - 1)).astype(_U64)
            pos = np.flatnonzero(np.isin(ngram_hashes(piece, n), grams)) + s
            hit[offset + np.unique(np.searchsorted(corpus.ends[k], pos, side="right"))] = True
        offset += len(corpus.ends[k])
    return hit & check


def _raw_tokens(corpus: Corpus, i: int, appended: np.ndarray | None) -> np.ndarray:
    t = corpus.tokens(i)
    return t[:len(t) - int(appended[i])] if appended is not None and appended[i] else t


def take_weighted(docs, pool: np.ndarray, weights: dict[int, float]) -> np.ndarray:
    """Indices of domain documents whose token shares follow the source weights, without repeats: each
    source is filled in rank order up to its quota, the quotas scaled so the scarcest source is used whole."""
    by_src = {s: pool[docs["source"][pool] == s] for s in weights}
    by_src = {s: idx[np.argsort(docs["rank"][idx], kind="stable")] for s, idx in by_src.items()}
    avail = {s: int(docs["ntok"][idx].sum()) for s, idx in by_src.items()}
    scale = min(avail[s] / weights[s] for s in weights)
    out = []
    for s, idx in by_src.items():
        before = np.cumsum(docs["ntok"][idx].astype(np.int64)) - docs["ntok"][idx]
        out.append(idx[before < weights[s] * scale])
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def take_replay(docs, pool: np.ndarray, target: int) -> tuple[np.ndarray, int]:
    """General documents in rank order up to `target` tokens; returns them and the token length the last one is cut to."""
    idx = pool[np.argsort(docs["rank"][pool], kind="stable")]
    before = np.cumsum(docs["ntok"][idx].astype(np.int64)) - docs["ntok"][idx]
    idx, before = idx[before < target], before[before < target]
    last_len = int(min(docs["ntok"][idx[-1]], target - before[-1])) if len(idx) else 0
    return idx, last_len


def merge_shards(recipe, tokenizer, eot: int, shards: list[dict], out: Path, fixed_samples: list) -> dict:
    """Select, mix and pack the training documents into out/train; return the numbers for stats.json and the card."""
    corpus = Corpus(shards)
    try:
        m = _merge(recipe, tokenizer, eot, corpus, out, fixed_samples)
        general = m.pop("general_pool")
        if recipe.compare.control != "none":
            m["control"] = pack_control(recipe.data, tokenizer, eot, corpus, general, out / "train_control")
        return m
    finally:
        corpus.close()


def pack_control(cfg, tokenizer, eot: int, corpus: Corpus, general: np.ndarray, folder: Path) -> dict:
    """The control arm's blocks (compare.control): every general document the domain run could train on (not held
    out; after the same cleaning, dedup, PII scrub and decontamination), in a seeded order, packed like train/."""
    docs = corpus.docs
    idx = general[np.lexsort((docs["order"][general], docs["rank"][general]))]  # no sharding changes this order
    idx = idx[np.random.default_rng(cfg.seed).permutation(len(idx))]
    names = corpus.shards[0]["info"]["source_names"]
    per = np.bincount(docs["source"][idx].astype(np.int64), weights=docs["ntok"][idx], minlength=len(names))
    sources = {names[s]: int(n) for s, n in enumerate(per) if n}
    writer = PackWriter(folder, len(tokenizer), eot, fault_point="pack.control_document")
    writer.add(tqdm((corpus.tokens(i) for i in idx), total=len(idx), desc="pack control", unit="doc", leave=False, disable=None))
    return writer.close(cfg.seq_len, {"sources": sources})


def _require_documents_from_every_source(docs, sources: list, shards: list) -> None:
    counts = np.bincount(docs["source"].astype(np.int64), minlength=len(sources)) if len(docs) else np.zeros(len(sources), int)
    for s_i, (kind, src) in enumerate(sources):
        if counts[s_i] == 0:
            cleaned = sum((Counter(s["info"]["cleaning_removed"]) for s in shards), Counter())
            raise DomainptError(f"data source '{src.name}' ({src.path or src.builtin or src.hf}) gave no usable documents "
                                f"(bad records: {shards[0]['info']['bad_records']}, cleaning removed: {dict(cleaned)})")


def _merge(recipe, tokenizer, eot: int, corpus: Corpus, out: Path, fixed_samples: list) -> dict:
    cfg, shards = recipe.data, corpus.shards
    docs = corpus.docs
    sources = all_sources(cfg)
    _require_documents_from_every_source(docs, sources, shards)
    unique = exact_firsts(docs) if cfg.dedup.exact else np.ones(len(docs), bool)
    held = choose_heldout(docs, unique, cfg.heldout_docs)
    for kind in range(len(KINDS)):
        n_kind = int((unique & (docs["kind"] == kind)).sum())
        if 0 < n_kind <= cfg.heldout_docs:
            raise DomainptError(f"{KINDS[kind]} data has only {n_kind} usable documents; need more than data.heldout_docs={cfg.heldout_docs}")
    rc = corpus.exercise_counts()  # data.transform: tokens and exercises appended per document
    near = np.zeros(len(docs), bool)
    if cfg.dedup.near:
        subset = np.flatnonzero(unique)
        near[subset] = near_duplicates(corpus, subset, held, cfg.dedup.threshold, shards[0]["info"]["bands"])
    pool = unique & ~near & ~held
    held_rows = {KINDS[k]: _held_texts(corpus, shards, held, k, tokenizer) for k in range(len(KINDS))}
    held_idx = np.flatnonzero(held)
    # held-out text is matched on tokens: a span as long as `ngram` words of it, measured on the held-out text
    words = sum(len(r["text"].split()) for rows in held_rows.values() for r in rows)
    span = max(cfg.decontam.ngram, round(cfg.decontam.ngram * _tokens(docs, held) / max(words, 1)))
    contaminated = np.zeros(len(docs), bool)
    if cfg.decontam.enabled:
        contaminated = pool & ((docs["task_hit"] > 0) | heldout_ngram_hits(corpus, held_idx, pool, span,
                                                                             appended=rc[:, 0] if rc is not None else None))
        if cfg.decontam.action == "drop":
            pool &= ~contaminated
    domain_pool = np.flatnonzero(pool & (docs["kind"] == 0))
    if not len(domain_pool):
        raise DomainptError("no domain documents left for training after cleaning, dedup and decontamination")

    weights = {i: s.weight for i, (kind, s) in enumerate(sources) if kind == "domain"}
    domain = take_weighted(docs, domain_pool, {s: w for s, w in weights.items() if (docs["source"][domain_pool] == s).any()})
    domain_tokens = int(docs["ntok"][domain].sum())
    replay, last_len = np.zeros(0, np.int64), 0
    if cfg.replay_share > 0:
        target = int(domain_tokens * cfg.replay_share / (1 - cfg.replay_share))
        replay, last_len = take_replay(docs, np.flatnonzero(pool & (docs["kind"] == 1)), target)
        got = int(docs["ntok"][replay].sum()) - (int(docs["ntok"][replay[-1]]) - last_len if len(replay) else 0)
        if got < target:
            print(f"[domainpt] warning: general text gives only {got} replay tokens of {target} wanted", flush=True)
    train = np.concatenate([domain, replay]).astype(np.int64)
    lengths = docs["ntok"][train].astype(np.int64)
    if len(replay):
        lengths[-1] = last_len
    perm = np.random.default_rng(cfg.seed).permutation(len(train))

    def ordered_tokens():
        for p in perm:
            t = corpus.tokens(train[p])
            yield t[:lengths[p] - 1]

    writer = PackWriter(out / "train", len(tokenizer), eot)
    writer.add(tqdm(ordered_tokens(), total=len(train), desc="pack", unit="doc", leave=False, disable=None))
    pack_meta = writer.close(cfg.seq_len)

    per_source = Counter()
    for s, n in zip(docs["source"][train], lengths):
        per_source[sources[int(s)][1].name] += int(n)
    removed = {"exact_duplicate": ~unique, "near_duplicate": near, "contaminated": contaminated}
    return {
        "reading_comprehension": exercise_summary(rc, domain, lengths.sum(), shards) if rc is not None else None,
        "heldout_ngram_tokens": span,
        "tokens_removed": {"exact_duplicates": _tokens(docs, ~unique), "near_duplicates": _tokens(docs, near),
                           "contaminated": _tokens(docs, contaminated) if cfg.decontam.action == "drop" else 0},
        "heldout_too_short_to_check": int((docs["ntok"][held_idx] <= span).sum()) if cfg.decontam.enabled else 0,
        "pack": pack_meta, "held": held_rows,
        "exact_duplicates_removed": int((~unique).sum()), "near_duplicates_removed": int(near.sum()),
        "contaminated_found": int(contaminated.sum()), "documents_out": int(len(train)),
        "per_source_tokens": per_source, "replay_tokens": int(lengths[len(domain):].sum()),
        "general_pool": np.flatnonzero(pool & (docs["kind"] == 1)),  # what a control arm trains on (pack_control)
        "doc_lengths": lengths, "removed_samples": fixed_samples + _removed_samples(corpus, removed, tokenizer),
        "vocab_samples": {KINDS[k]: _lowest_texts(shards, KINDS[k], SAMPLE_DOCS) for k in range(len(KINDS))},
    }


def exercise_summary(rc: np.ndarray, domain: np.ndarray, train_tokens: int, shards) -> dict:
    """What the reading-comprehension transform added to the documents trained on (not the held-out or dropped ones)."""
    per_kind = rc[domain, 1:].sum(0)
    samples = sorted((x for s in shards for x in s["info"].get("reading_comprehension_samples", [])), key=lambda x: x["order"])
    added = int(rc[domain, 0].sum())
    return {"per_kind": {k: int(n) for k, n in zip(RC_KINDS, per_kind)},
            "documents_transformed": int((rc[domain, 1:].sum(1) > 0).sum()), "domain_documents": int(len(domain)),
            "exercise_tokens": added, "share_of_training_tokens": round(added / max(int(train_tokens), 1), 4),
            "samples": [x["text"] for x in samples[:3]]}


def _tokens(docs, mask) -> int:
    return int(docs["ntok"][mask].astype(np.int64).sum())


def _held_texts(corpus: Corpus, shards, held, kind: int, tokenizer) -> list[dict]:
    """Held-out documents in rank order with their original text (from the shards' samples; decoded if not kept there)."""
    docs = corpus.docs
    idx = np.flatnonzero(held & (docs["kind"] == kind))
    idx = idx[np.argsort(docs["rank"][idx], kind="stable")]
    wanted = {(int(docs["rank"][i]), int(docs["order"][i])) for i in idx}
    texts = {}
    for row in _sample_rows(shards, KINDS[kind]):
        if len(texts) == len(wanted):
            break
        if (row["rank"], row["order"]) in wanted:
            texts[(row["rank"], row["order"])] = row["text"]
    names = corpus.shards[0]["info"]["source_names"]
    return [{"text": texts.get((int(docs["rank"][i]), int(docs["order"][i]))) or tokenizer.decode(corpus.tokens(i)),
             "source": names[int(docs["source"][i])]} for i in idx]


def _sample_rows(shards, kind: str):
    """Every shard's sample rows of one kind, merged in rank order, streamed from disk."""
    files = [open(s["folder"] / f"sample_{kind}.jsonl", encoding="utf-8") for s in shards]
    try:
        yield from heapq.merge(*((json.loads(l) for l in f) for f in files), key=lambda r: (r["rank"], r["order"]))
    finally:
        for f in files:
            f.close()


def _lowest_texts(shards, kind: str, k: int) -> list[str]:
    """The k lowest-ranked distinct texts of one kind: a random sample no sharding changes."""
    out, last = [], None
    for row in _sample_rows(shards, kind):
        if len(out) == k:
            break
        if row["rank"] != last:
            out.append(row["text"])
            last = row["rank"]
    return out


def _removed_samples(corpus: Corpus, masks: dict, tokenizer, per_reason: int = 3) -> list[dict]:
    out = []
    for why, mask in masks.items():
        idx = np.flatnonzero(mask)
        for i in idx[np.argsort(corpus.docs["order"][idx], kind="stable")][:per_reason]:
            out.append({"reason": why, "text": tokenizer.decode(corpus.tokens(i)[:200])[:400]})
    return out
