"""Stage 1: corpora -> clean, deduplicated, scrubbed, decontaminated, packed token blocks + data card.

    domainpt prepare recipes/demo/legal.yaml                       # one machine, data.num_proc processes
    domainpt prepare recipes/medical.yaml --shard 3/16             # one task of 16 (any machine)
    domainpt prepare recipes/medical.yaml --merge                  # after all 16: select, mix, pack

Map (domainpt/data/shard.py): each shard reads 1/N of every source, cleans, scrubs PII, hashes and
tokenizes it. Reduce (domainpt/data/merge.py): global exact and near-duplicate removal, held-out
split, decontamination, source weights, replay share, shuffle, pack. The output does not depend on N.

Writes out_dir/prepare/: train/ (packed blocks), train_control/ (with compare.control: the general documents
left for training, packed the same way), heldout_domain.jsonl, heldout_general.jsonl,
tasks/<name>/{train,test}.jsonl, stats.json, data_card.md, doc_lengths.png, manifest.json (last).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import get_context
from pathlib import Path

from domainpt.data import pii
from domainpt.data.cards import write_card
from domainpt.data.ingest import BadRecords, iter_source
from domainpt.data.merge import find_shards, merge_shards
from domainpt.data.shard import clean_text, parse_shard, process_shard
from domainpt.errors import DomainptError
from domainpt.tasks import split_task, write_split
from domainpt.manifest import (atomic_write_json, atomic_write_jsonl, file_sha256, read_jsonl, stage_dir,
                               stage_fingerprint, write_manifest)
from domainpt.encoding import end_of_text_id
from domainpt.models import load_tokenizer, materialize_general_model
from domainpt.eval.harness import check_task_names, harness_tasks, harness_test_texts, load_leaf_tasks
from domainpt.preflight import check_model, choice_prefix_pairs, report_prefix_pairs

_KEEP_ON_RESTART = ("shards", "extended_model", "tasks")  # finished work a rerun reuses (each checks its own fingerprint)


def run_prepare(recipe, merge_only: bool = False) -> dict:
    started = time.time()
    prep = stage_dir(recipe, "prepare")
    _clear_unfinished(prep, keep_shardings=merge_only, shards=recipe.data.num_proc)
    fp = stage_fingerprint(recipe, "prepare")
    base, tok_dir, tok, vocab = _setup(recipe, prep, fp)
    task_stats, eval_texts = ensure_task_splits(recipe, tok, prep, fp)
    harness_texts = harness_decontam_texts(recipe)
    if not merge_only:
        _run_shards(recipe, tok_dir, recipe.data.num_proc, prep, fp, tok, eval_texts + harness_texts,
                    ensure_miner(recipe, prep, fp))
    shards = find_shards(prep, fp)
    cfg = recipe.data
    first = shards[0]["info"]  # every shard reads every record, so each saw all bad records
    samples = sorted((s for sh in shards for s in sh["info"]["removed_samples"]), key=lambda s: s["order"])
    kept_samples = []
    for s in samples:
        if sum(1 for k in kept_samples if k["reason"] == s["reason"]) < 3:
            kept_samples.append({"reason": s["reason"], "text": s["text"]})
    m = merge_shards(recipe, tok, end_of_text_id(tok), shards, prep, kept_samples)
    if m["pack"]["blocks"] == 0:
        raise DomainptError(f"training data ({m['pack']['tokens']} tokens) does not fill one block of data.seq_len={cfg.seq_len}")
    for kind, rows in m["held"].items():
        if rows:
            atomic_write_jsonl(prep / f"heldout_{kind}.jsonl", rows)
    if vocab:
        vocab = _vocab_report(recipe, base, tok, vocab, [r["text"] for r in m["held"]["domain"]])

    total = sum(m["per_source_tokens"].values())
    cleaning = sum((Counter(s["info"]["cleaning_removed"]) for s in shards), Counter())
    pii_found = sum((Counter(s["info"]["pii_replaced"]) for s in shards), Counter())
    stats = {
        "documents_in": sum(s["info"]["documents_in"] for s in shards),
        "documents_out": m["documents_out"],
        "bad_records": first["bad_records"],
        "bad_record_reasons": first["bad_record_reasons"],
        "bad_record_examples": first["bad_record_examples"],
        "cleaning_removed": dict(cleaning),
        "exact_duplicates_removed": m["exact_duplicates_removed"],
        "near_duplicates_removed": m["near_duplicates_removed"],
        "tokens_removed": m["tokens_removed"],
        "pii_replaced": {t: pii_found.get(t, 0) for t in cfg.pii.types} if cfg.pii.enabled else {},
        "contaminated_removed": m["contaminated_found"] if cfg.decontam.action == "drop" else 0,
        "contaminated_found": m["contaminated_found"],
        "heldout_ngram_tokens": m["heldout_ngram_tokens"],
        "eval_texts_too_short_to_check": first["eval_texts_too_short_to_check"] + m["heldout_too_short_to_check"],
        "tokens_out": m["pack"]["tokens"],
        "blocks": m["pack"]["blocks"],
        "seq_len": cfg.seq_len,
        "sources": {s: {"tokens": n, "share": round(n / total, 4)} for s, n in m["per_source_tokens"].items()},
        "replay_share_requested": cfg.replay_share,
        "replay_share_actual": round(m["replay_tokens"] / total, 4) if total else 0.0,
        "heldout_documents": {k: len(v) for k, v in m["held"].items() if v},
        "tasks": task_stats,
        "base_model": base,
        "shards": len(shards),
        "near_dedup_lsh": {"bands": first["bands"], "rows": first["rows"], "num_perm": first["num_perm"]},
    }
    if vocab:
        stats["vocabulary_extension"] = vocab
    if harness_texts:  # lm-eval tasks' documents are test texts too (counted in contaminated_found)
        stats["harness_test_texts"] = len(harness_texts)
    if "control" in m:
        stats["control"] = control_stats(recipe, m["control"])
    if m["reading_comprehension"]:  # kind -> exercises in the documents trained on; the rest beside it
        stats["reading_comprehension"] = m["reading_comprehension"].pop("per_kind")
        stats["reading_comprehension_summary"] = m["reading_comprehension"]
    stats["vocab_overlap_domain_general"] = write_card(prep, recipe, {**stats, "doc_lengths": m["doc_lengths"]},
                                                       m["removed_samples"], m["vocab_samples"])
    atomic_write_json(prep / "stats.json", stats)
    manifest = write_manifest(recipe, "prepare", started, tokens=m["pack"]["tokens"], base_model=base,
                              pretrain_init=tok_dir if vocab else base,
                              added_token_ids=vocab["new_token_ids"] if vocab else [],
                              outputs=_output_hashes(prep))
    shutil.rmtree(prep / "shards", ignore_errors=True)  # merged; the packed copy is what later stages read
    return manifest


def _output_hashes(prep: Path) -> dict:
    out = {"train_tokens_sha256": file_sha256(prep / "train" / "tokens.bin")}
    if (prep / "train_control" / "tokens.bin").is_file():
        out["train_control_tokens_sha256"] = file_sha256(prep / "train_control" / "tokens.bin")
    return out


def control_stats(recipe, meta: dict) -> dict:
    """stats.json's `control`: the control arm's general-only blocks against what pre-training will take of them
    (train.max_steps x global batch on one process x data.seq_len; repeated in epochs, like the domain blocks)."""
    tc, seq = recipe.train, recipe.data.seq_len
    if meta["blocks"] == 0:
        raise DomainptError(f"compare.control={recipe.compare.control}: the general text left for training ({meta['tokens']} "
                            f"tokens) does not fill one block of data.seq_len={seq}; add data.general sources")
    needed = tc.max_steps * tc.batch_size * tc.grad_accum * seq
    epochs = round(needed / (meta["blocks"] * seq), 4)
    if epochs > 1:
        print(f"[domainpt] control arm: general text gives {meta['blocks'] * seq:,} tokens in blocks, pre-training takes "
              f"{needed:,} (one process): its blocks repeat, {epochs:.2f} epochs", flush=True)
    return {"arm": recipe.compare.control, "documents": meta["documents"], "tokens_out": meta["tokens"],
            "blocks": meta["blocks"], "sources": meta["sources"], "pretrain_tokens": needed, "epochs": epochs}


def run_prepare_shard(recipe, spec: str) -> Path:
    """`domainpt prepare RECIPE --shard I/N`: one map task; safe to run at the same time as the others."""
    i, n = parse_shard(spec)
    prep = stage_dir(recipe, "prepare")
    prep.mkdir(parents=True, exist_ok=True)
    fp = stage_fingerprint(recipe, "prepare")
    _, _, tok, _ = _setup(recipe, prep, fp)
    with tokenizer_threads():
        folder = process_shard(recipe, tok, i, n, prep, fp,
                               ensure_task_splits(recipe, tok, prep, fp)[1] + harness_decontam_texts(recipe),
                               ensure_miner(recipe, prep, fp))
    info = json.loads((folder / "shard.json").read_text())
    print(f"[domainpt] prepare shard {i}/{n}: {info['documents_in']} documents read, {info['documents']} kept -> {folder}",
          flush=True)
    return folder


def _setup(recipe, prep: Path, fp: str):
    """Check inputs and model; return (base model, tokenizer folder, tokenizer, vocabulary-extension info)."""
    for src in recipe.data.domain + recipe.data.general + [s for t in recipe.tasks for s in (t.source, t.test_source) if s]:
        if src.path and not Path(src.path).exists():  # fail before any work is done
            raise DomainptError(f"data file not found: {src.path}")
    check_task_names(recipe.eval)  # lm-eval installed and every named harness task known to it
    base = materialize_general_model(recipe, Path(recipe.out_dir) / "base_model")
    check_model(recipe, base)
    tok = load_tokenizer(base, recipe.model.trust_remote_code)
    if not recipe.tokenizer.extend:
        return base, base, tok, None
    folder, info = ensure_extension(recipe, base, tok, prep, fp)
    return base, folder, load_tokenizer(folder, recipe.model.trust_remote_code), info


def ensure_task_splits(recipe, tok, prep: Path, fp: str) -> tuple[dict, list[str]]:
    """Write prep/tasks/<name>/{train,test}.jsonl once (every shard task reuses them); return the split
    sizes and the test texts that training documents are checked against."""
    done = prep / "tasks" / "splits.json"
    cached = json.loads(done.read_text()) if done.is_file() else {}
    # splits written before the near-duplicate check lack its count: redo them
    if cached.get("fingerprint") == fp and all("near_duplicate_overlap_removed" in t for t in cached["tasks"].values()):
        stats = cached["tasks"]
    else:
        shutil.rmtree(prep / "tasks", ignore_errors=True)
        stats = {}
        for task in recipe.tasks:
            train, test, removed = split_task(task, tok, BadRecords(max_share=recipe.data.max_bad_share), recipe.data.seed,
                                              recipe.data.dedup)
            write_split(prep / "tasks" / task.name, train, test)
            stats[task.name] = {"train": len(train), "test": len(test), "train_test_overlap_removed": removed["exact"],
                                "near_duplicate_overlap_removed": removed["near"],
                                "labels": dict(Counter(e["label"] for e in train + test)),
                                "prefix_choice_pairs": choice_prefix_pairs(tok, train + test) if task.type != "qa" else []}
        atomic_write_json(done, {"fingerprint": fp, "tasks": stats})
    _report_prefix_pairs(recipe, tok, stats)
    texts = [r["text"] for name in stats for r in read_jsonl(prep / "tasks" / name / "test.jsonl")]
    return stats, texts


def _report_prefix_pairs(recipe, tok, stats: dict) -> None:
    """Say which choices can never win when scored without end-of-text (preflight said it for recipe-fixed
    labels already; this tokenizer may be the extended one)."""
    from domainpt.models import checkpoint_objective

    objective = None
    for task in recipe.tasks:
        pairs = stats.get(task.name, {}).get("prefix_choice_pairs")  # absent from splits an older version wrote
        if pairs:  # the model's config is read only when there is something to say
            objective = objective or checkpoint_objective(tok.name_or_path, recipe.model.objective,
                                                          recipe.model.trust_remote_code)
            report_prefix_pairs(recipe, task, pairs, objective)


def harness_decontam_texts(recipe) -> list[str]:
    """The named lm-eval tasks' test documents (prompt and gold answer), loaded now: a task whose data cannot load
    stops prepare in one line, and training text is decontaminated against them like domainpt's own test sets."""
    if not harness_tasks(recipe.eval):
        return []
    return harness_test_texts(load_leaf_tasks(recipe.eval), recipe.eval.harness_limit)


def first_clean_texts(recipe, sources, n: int) -> list[str]:
    """The first n documents of `sources` in read order, cleaned and scrubbed as training text is: a sample every
    shard task computes alike."""
    texts = []
    for src in sources:
        for rec in iter_source(src, BadRecords(max_share=1.0)):
            text, reason = clean_text(rec["text"], recipe.data)
            if reason is None:
                texts.append(pii.scrub(text, recipe.data.pii.types)[0] if recipe.data.pii.enabled else text)
            if len(texts) >= n:
                return texts
    return texts


def ensure_miner(recipe, prep: Path, fp: str):
    """The reading-comprehension miner (data.transform), with domain keywords computed once from the first
    documents of each kind and kept in prep/reading_comprehension.json; None when the transform is off."""
    from domainpt.data.reading_comprehension import Miner, domain_keywords

    if recipe.data.transform != "reading_comprehension":
        return None
    rc, path = recipe.data.reading_comprehension, prep / "reading_comprehension.json"
    saved = json.loads(path.read_text()) if path.is_file() else {}
    if saved.get("fingerprint") != fp:
        keywords = domain_keywords(first_clean_texts(recipe, recipe.data.domain, rc.sample_docs),
                                   first_clean_texts(recipe, recipe.data.general, rc.sample_docs), rc.keywords)
        saved = {"fingerprint": fp, "keywords": keywords}
        atomic_write_json(path, saved)
    return Miner(tuple(saved["keywords"]), rc.max_per_kind, rc.max_chars, rc.seed, rc.share)


def ensure_extension(recipe, base: str, tok, prep: Path, fp: str) -> tuple[str, dict]:
    """New tokens for frequent, badly split domain words -> prep/extended_model (the model pretrain starts from).

    Candidate words come from the first tokenizer.sample_docs cleaned domain documents in read order, so
    every shard task computes the same extension (whichever finishes first keeps it)."""
    from transformers import AutoConfig

    from domainpt.models import load_model, objective_for
    from domainpt.tokenizer import candidate_words, extend_vocabulary

    target, info_name = prep / "extended_model", "domainpt_extension.json"
    if (target / info_name).is_file():
        info = json.loads((target / info_name).read_text())
        if info.get("fingerprint") == fp:
            return str(target), info
        shutil.rmtree(target)
    tc = recipe.tokenizer
    texts = first_clean_texts(recipe, recipe.data.domain, tc.sample_docs)
    words = candidate_words(tok, texts, tc.max_new_tokens, tc.min_count, tc.min_pieces)
    if not words:
        raise DomainptError(f"tokenizer.extend: no domain word occurs {tc.min_count}+ times and takes {tc.min_pieces}+ tokens; "
                            f"lower tokenizer.min_count or tokenizer.min_pieces, or turn extension off")
    config = AutoConfig.from_pretrained(base, trust_remote_code=recipe.model.trust_remote_code)
    model = load_model(base, objective_for(config, recipe.model.objective), recipe.model.trust_remote_code)
    new_ids = extend_vocabulary(model, tok, [w["word"] for w in words])
    info = {"fingerprint": fp, "added": len(new_ids), "new_token_ids": new_ids, "words": words}
    prep.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=prep, prefix=".extended_model."))
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    atomic_write_json(tmp / info_name, info)
    try:
        tmp.rename(target)
    except OSError:  # another shard task finished the same extension first
        shutil.rmtree(tmp)
    return str(target), info


def _vocab_report(recipe, base: str, tok, info: dict, probe: list[str]) -> dict:
    from domainpt.tokenizer import tokens_per_word

    before = tokens_per_word(load_tokenizer(base, recipe.model.trust_remote_code), probe)
    after = tokens_per_word(tok, probe)
    print(f"[domainpt] vocabulary extension: {info['added']} tokens added; tokens per domain word {before:.3f} -> {after:.3f}",
          flush=True)
    return {k: v for k, v in info.items() if k != "fingerprint"} | {
        "tokens_per_word_before": round(before, 4), "tokens_per_word_after": round(after, 4)}


def _clear_unfinished(prep: Path, keep_shardings: bool, shards: int) -> None:
    """Remove what an interrupted attempt left, except finished shards (of this sharding) and the extension."""
    if not prep.exists():
        return
    for p in prep.iterdir():
        if p.name not in _KEEP_ON_RESTART:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    root = prep / "shards"
    if root.is_dir():
        for p in root.iterdir():
            if p.name.startswith(".") or (not keep_shardings and not p.name.endswith(f"-of-{shards:05d}")):
                shutil.rmtree(p)


def _run_shards(recipe, tok_dir: str, n: int, prep: Path, fp: str, tok, eval_texts: list[str], miner=None) -> None:
    if n == 1:
        with tokenizer_threads():
            process_shard(recipe, tok, 0, 1, prep, fp, eval_texts, miner)
        return
    # spawn, not fork: a forked fast tokenizer deadlocks, and torch's threads do not survive fork
    with ProcessPoolExecutor(n, mp_context=get_context("spawn")) as pool:
        for f in [pool.submit(_shard_job, recipe, tok_dir, i, n, prep, fp, eval_texts, miner) for i in range(n)]:
            f.result()


@contextmanager
def tokenizer_threads():
    """Let the Rust tokenizer use every core while one process tokenizes (~1.8x on 2 cores); set back to
    off afterwards, so later forks (data loader workers) neither deadlock nor warn."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        os.environ["TOKENIZERS_PARALLELISM"] = before or "false"


def _shard_job(recipe, tok_dir: str, i: int, n: int, prep: Path, fp: str, eval_texts: list[str], miner=None) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # n processes already use the cores
    process_shard(recipe, load_tokenizer(tok_dir, recipe.model.trust_remote_code), i, n, prep, fp, eval_texts, miner)
