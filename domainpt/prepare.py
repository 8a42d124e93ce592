"""Stage 1: corpora -> clean, deduplicated, scrubbed, decontaminated, packed token blocks + data card.

    domainpt prepare recipes/demo/legal.yaml

Writes out_dir/prepare/: train/ (packed blocks), heldout_domain.jsonl, heldout_general.jsonl,
tasks/<name>/{train,test}.jsonl, stats.json, data_card.md, manifest.json (last).
"""
from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from domainpt.data import clean, pii
from domainpt.data.cards import write_card
from domainpt.data.decontam import ContaminationIndex
from domainpt.data.dedup import NearDuplicateIndex, exact_key
from domainpt.data.ingest import BadRecords, iter_source
from domainpt.data.pack import PackWriter, encode_batches
from domainpt.errors import DomainptError
from domainpt.eval.tasks import seeded_rank, task_splits, write_split
from domainpt.manifest import atomic_write_json, atomic_write_jsonl, fresh_dir, stage_dir, write_manifest
from domainpt.models import end_of_text_id, load_tokenizer, materialize_general_model
from domainpt.preflight import check_model


def collect(sources, cfg, kind: str, counters: dict, bad: BadRecords, removed_samples: list) -> list[dict]:
    """Read, clean, deduplicate and scrub every source of one kind ('domain' or 'general')."""
    docs, seen = [], set()
    near = NearDuplicateIndex(cfg.dedup.threshold, cfg.dedup.num_perm, cfg.dedup.shingle_words) if cfg.dedup.near else None
    c = counters
    for src in sources:
        n_src = 0
        for rec in tqdm(iter_source(src, bad), desc=f"prepare {kind}:{src.name}", unit="doc", leave=False):
            c["documents_in"] += 1
            text = clean.normalize(rec["text"], cfg.clean) if cfg.clean.enabled else rec["text"]
            reason = clean.reject_reason(text, cfg.clean) if cfg.clean.enabled else (None if text.strip() else "empty")
            if reason:
                c["cleaning_removed"][reason] += 1
                _sample(removed_samples, reason, text)
                continue
            if cfg.dedup.exact:
                key = exact_key(text)
                if key in seen:
                    c["exact_duplicates_removed"] += 1
                    _sample(removed_samples, "exact_duplicate", text)
                    continue
                seen.add(key)
            if near is not None and near.is_duplicate(text):
                c["near_duplicates_removed"] += 1
                _sample(removed_samples, "near_duplicate", text)
                continue
            if cfg.pii.enabled:
                text, found = pii.scrub(text, cfg.pii.types)
                c["pii_replaced"].update(found)
            docs.append({"text": text, "source": src.name, "kind": kind, "weight": src.weight})
            n_src += 1
        if n_src == 0:
            raise DomainptError(f"data source '{src.name}' ({src.path or src.builtin or src.hf}) gave no usable documents "
                                f"(bad records: {bad.total}, cleaning removed: {dict(c['cleaning_removed'])})")
    return docs


def _sample(samples: list, why: str, text: str, per_reason: int = 3) -> None:
    if sum(1 for s in samples if s["reason"] == why) < per_reason:
        samples.append({"reason": why, "text": text[:400]})


def _take_weighted(docs_by_source: dict, weights: dict, token_counts: dict) -> list[dict]:
    """Keep each domain source's token share proportional to its weight, without repeating documents."""
    avail = {s: sum(token_counts[id(d)] for d in ds) for s, ds in docs_by_source.items()}
    scale = min(avail[s] / weights[s] for s in avail)
    out = []
    for s, ds in docs_by_source.items():
        quota, used = weights[s] * scale, 0
        for d in ds:
            if used >= quota:
                break
            out.append(d)
            used += token_counts[id(d)]
    return out


def extend_for_domain(recipe, base: str, tok, domain: list[dict], heldout_domain: list[dict], out: Path):
    """New tokens for frequent, badly split domain words -> out/extended_model (the model pretrain starts from)."""
    from domainpt.models import load_model, objective_for
    from domainpt.tokenizer import candidate_words, extend_vocabulary, tokens_per_word
    from transformers import AutoConfig

    tc = recipe.tokenizer
    texts = [d["text"] for d in domain[:tc.sample_docs]]
    probe = [d["text"] for d in heldout_domain] or texts[:200]
    before = tokens_per_word(tok, probe)
    words = candidate_words(tok, texts, tc.max_new_tokens, tc.min_count, tc.min_pieces)
    if not words:
        raise DomainptError(f"tokenizer.extend: no domain word occurs {tc.min_count}+ times and takes {tc.min_pieces}+ tokens; "
                            f"lower tokenizer.min_count or tokenizer.min_pieces, or turn extension off")
    config = AutoConfig.from_pretrained(base, trust_remote_code=recipe.model.trust_remote_code)
    model = load_model(base, objective_for(config, recipe.model.objective), recipe.model.trust_remote_code)
    new_ids = extend_vocabulary(model, tok, [w["word"] for w in words])
    target = out / "extended_model"
    tmp = out / ".extended_model.tmp"
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.rename(target)
    after = tokens_per_word(tok, probe)
    print(f"[domainpt] vocabulary extension: {len(new_ids)} tokens added; tokens per domain word {before:.3f} -> {after:.3f}",
          flush=True)
    return str(target), tok, {"added": len(new_ids), "new_token_ids": new_ids, "words": words,
                              "tokens_per_word_before": round(before, 4), "tokens_per_word_after": round(after, 4)}


def run_prepare(recipe) -> dict:
    started = time.time()
    for src in recipe.data.domain + recipe.data.general + [s for t in recipe.tasks for s in (t.source, t.test_source) if s]:
        if src.path and not Path(src.path).exists():  # fail before any work is done
            raise DomainptError(f"data file not found: {src.path}")
    out = fresh_dir(stage_dir(recipe, "prepare"))
    cfg = recipe.data
    base = materialize_general_model(recipe, Path(recipe.out_dir) / "base_model")
    check_model(recipe, base)
    tok = load_tokenizer(base, recipe.model.trust_remote_code)
    eot = end_of_text_id(tok)
    bad = BadRecords(max_share=cfg.max_bad_share, max_record_bytes=cfg.max_record_mb * 1024 ** 2)
    counters = {"documents_in": 0, "cleaning_removed": Counter(), "exact_duplicates_removed": 0,
                "near_duplicates_removed": 0, "pii_replaced": Counter()}
    removed_samples: list = []

    # Tasks first: their test texts are what training data must not contain.
    contam = ContaminationIndex(cfg.decontam.ngram)
    task_stats = {}
    for task in recipe.tasks:
        train, test, overlap = task_splits(task, tok, bad, cfg.seed)
        write_split(out / "tasks" / task.name, train, test)
        for e in test:
            contam.add(e["text"])
        task_stats[task.name] = {"train": len(train), "test": len(test), "train_test_overlap_removed": overlap,
                                 "labels": dict(Counter(e["label"] for e in train + test))}

    domain = collect(cfg.domain, cfg, "domain", counters, bad, removed_samples)
    general = collect(cfg.general, cfg, "general", counters, bad, removed_samples) if cfg.general else []

    # Held-out documents for perplexity: chosen by a seeded hash, never trained on.
    heldout = {}
    for kind, docs in (("domain", domain), ("general", general)):
        if not docs:
            continue
        docs.sort(key=lambda d: seeded_rank(cfg.seed, d["text"]))
        if len(docs) <= cfg.heldout_docs:
            raise DomainptError(f"{kind} data has only {len(docs)} usable documents; need more than data.heldout_docs={cfg.heldout_docs}")
        heldout[kind], rest = docs[:cfg.heldout_docs], docs[cfg.heldout_docs:]
        docs[:] = rest
        atomic_write_jsonl(out / f"heldout_{kind}.jsonl", ({"text": d["text"], "source": d["source"]} for d in heldout[kind]))
        for d in heldout[kind]:
            contam.add(d["text"])

    contaminated = 0
    if cfg.decontam.enabled:
        kept = {"domain": [], "general": []}
        for kind, docs in (("domain", domain), ("general", general)):
            for d in tqdm(docs, desc=f"decontaminate {kind}", unit="doc", leave=False):
                if contam.hits(d["text"]):
                    contaminated += 1
                    _sample(removed_samples, "contaminated", d["text"])
                    if cfg.decontam.action == "drop":
                        continue
                kept[kind].append(d)
        domain, general = kept["domain"], kept["general"]
    if not domain:
        raise DomainptError("no domain documents left for training after cleaning, dedup and decontamination")

    pretrain_init, vocab = base, None
    if recipe.tokenizer.extend:
        pretrain_init, tok, vocab = extend_for_domain(recipe, base, tok, domain, heldout.get("domain", []), out)

    # Tokenize, weight the domain sources, add replay, shuffle documents, pack.
    all_docs = domain + general
    token_counts = {}
    encoded = {}
    for d, ids in zip(all_docs, tqdm(encode_batches(tok, [d["text"] for d in all_docs]), total=len(all_docs),
                                     desc="tokenize", unit="doc", leave=False)):
        encoded[id(d)] = ids
        token_counts[id(d)] = len(ids) + 1
    by_source = defaultdict(list)
    for d in domain:
        by_source[d["source"]].append(d)
    domain = _take_weighted(by_source, {s.name: s.weight for s in cfg.domain}, token_counts)
    domain_tokens = sum(token_counts[id(d)] for d in domain)
    replay, replay_tokens = [], 0
    if cfg.replay_share > 0:
        target = domain_tokens * cfg.replay_share / (1 - cfg.replay_share)
        for d in general:
            room = int(target) - replay_tokens
            if room <= 0:
                break
            if token_counts[id(d)] > room:  # cut the last document so the share is what was asked for
                encoded[id(d)] = encoded[id(d)][:room - 1]
                token_counts[id(d)] = room
            replay.append(d)
            replay_tokens += token_counts[id(d)]
        if replay_tokens < int(target):
            print(f"[domainpt] warning: general text gives only {replay_tokens} replay tokens of {int(target)} wanted", flush=True)
    train_docs = domain + replay
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(len(train_docs))
    writer = PackWriter(out / "train", len(tok), eot)
    writer.add(encoded[id(train_docs[i])] for i in order)
    pack_meta = writer.close(cfg.seq_len)
    if pack_meta["blocks"] == 0:
        raise DomainptError(f"training data ({pack_meta['tokens']} tokens) does not fill one block of data.seq_len={cfg.seq_len}")

    per_source = Counter()
    for d in train_docs:
        per_source[d["source"]] += token_counts[id(d)]
    total = sum(per_source.values())
    stats = {
        "documents_in": counters["documents_in"],
        "documents_out": len(train_docs),
        "bad_records": bad.total,
        "bad_record_reasons": dict(bad.counts),
        "bad_record_examples": bad.examples,
        "cleaning_removed": dict(counters["cleaning_removed"]),
        "exact_duplicates_removed": counters["exact_duplicates_removed"],
        "near_duplicates_removed": counters["near_duplicates_removed"],
        "pii_replaced": {t: counters["pii_replaced"].get(t, 0) for t in cfg.pii.types} if cfg.pii.enabled else {},
        "contaminated_removed": contaminated if cfg.decontam.action == "drop" else 0,
        "contaminated_found": contaminated,
        "eval_texts_too_short_to_check": contam.unchecked,
        "tokens_out": pack_meta["tokens"],
        "blocks": pack_meta["blocks"],
        "seq_len": cfg.seq_len,
        "sources": {s: {"tokens": n, "share": round(n / total, 4)} for s, n in per_source.items()},
        "replay_share_requested": cfg.replay_share,
        "replay_share_actual": round(replay_tokens / total, 4) if total else 0.0,
        "heldout_documents": {k: len(v) for k, v in heldout.items()},
        "tasks": task_stats,
        "base_model": base,
        "doc_lengths": [token_counts[id(d)] for d in train_docs],
    }
    if vocab:
        stats["vocabulary_extension"] = vocab
    atomic_write_json(out / "stats.json", {k: v for k, v in stats.items() if k != "doc_lengths"})
    write_card(out, recipe, stats, removed_samples, domain, general, tok)
    return write_manifest(recipe, "prepare", started, tokens=pack_meta["tokens"], base_model=base, pretrain_init=pretrain_init,
                          added_token_ids=vocab["new_token_ids"] if vocab else [],
                          outputs={"train_tokens_sha256": hashlib.sha256((out / "train" / "tokens.bin").read_bytes()).hexdigest()})
