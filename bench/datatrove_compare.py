"""domainpt's prepare steps against datatrove's, side by side on the same real corpus.

    python3 -m venv /tmp/dt && /tmp/dt/bin/pip install "datatrove[processing]" spacy
    python bench/datatrove_compare.py --datatrove-site /tmp/dt/lib/python3.11/site-packages   # ~2 min

datatrove is not a dependency of domainpt; this script borrows it from another environment (appended
to sys.path, so domainpt's own numpy/tokenizers stay first) to measure the choice docs/libraries.md records.
On the 2,289 ScanCode licence texts, one task/process each, 3 interleaved repeats, median:
1. tokenize + write memory-mapped token shards with document boundaries: datatrove's JsonlReader +
   DocumentTokenizer (local tokenizer.json) vs domainpt's reader + encode_texts + PackWriter;
2. near-duplicate removal at 5-gram shingles: datatrove's four MinHash stages vs domainpt's
   signatures + LSH bands + verification + components; duplicates each found.
Prints `ratio <float>`: datatrove tokenize throughput / domainpt's.
"""
from __future__ import annotations

import argparse
from importlib import metadata
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"


def domainpt_tokenize(corpus: Path, tok, out: Path) -> int:
    from domainpt.config import SourceConfig
    from domainpt.data.ingest import BadRecords, iter_source
    from domainpt.data.pack import PackWriter, encode_texts

    w = PackWriter(out, len(tok), eos_id=0)
    batch = []
    for rec in iter_source(SourceConfig(path=str(corpus)), BadRecords()):
        batch.append(rec["text"])
        if len(batch) == 256:
            w.add(encode_texts(tok, batch))
            batch = []
    if batch:
        w.add(encode_texts(tok, batch))
    return w.close(512)["tokens"]


def datatrove_tokenize(corpus: Path, tokenizer_json: str, out: Path) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.tokens import DocumentTokenizer

    LocalPipelineExecutor(pipeline=[
        JsonlReader(str(corpus.parent), glob_pattern=corpus.name),
        DocumentTokenizer(str(out / "tok"), tokenizer_name_or_path=tokenizer_json, eos_token="<|endoftext|>",
                          shuffle_documents=False),
    ], tasks=1, workers=1, logging_dir=str(out / "logs")).run()
    return sum(os.path.getsize(p) for p in (out / "tok").glob("*.ds")) // 2  # uint16 tokens


def domainpt_minhash(texts: list[str]) -> int:
    from domainpt.data.dedup import near_duplicates_in

    return int(near_duplicates_in(texts, threshold=0.8).sum())


def datatrove_minhash(corpus: Path, out: Path) -> int:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import (MinhashConfig, MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter,
                                          MinhashDedupSignature)
    from datatrove.pipeline.readers import JsonlReader

    cfg = MinhashConfig()
    read = lambda: JsonlReader(str(corpus.parent), glob_pattern=corpus.name)  # noqa: E731
    run = lambda steps, tasks, name: LocalPipelineExecutor(pipeline=steps, tasks=tasks, workers=1,  # noqa: E731
                                                           logging_dir=str(out / "logs" / name)).run()
    run([read(), MinhashDedupSignature(str(out / "sigs"), config=cfg)], 1, "sig")
    run([MinhashDedupBuckets(str(out / "sigs"), str(out / "buckets"), config=cfg)], cfg.num_buckets, "buckets")
    run([MinhashDedupCluster(str(out / "buckets"), str(out / "ids"), config=cfg)], 1, "cluster")
    run([read(), MinhashDedupFilter(str(out / "ids"), exclusion_writer=None)], 1, "filter")
    removed = 0
    for p in (out / "ids").glob("*.remove"):
        removed += os.path.getsize(p) // 4  # uint32 document ids
    return removed


def timed(fn, *a):
    t0 = time.perf_counter()
    r = fn(*a)
    return r, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--datatrove-site", required=True, help="site-packages of an environment with datatrove[processing] and spacy")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sys.path.insert(0, args.datatrove_site)  # datatrove needs its own xxhash (str input); numpy etc. stay ours
    for name in [m for m in sys.modules if m.split(".")[0] == "xxhash"]:
        del sys.modules[name]
    import xxhash  # noqa: F401
    sys.path.remove(args.datatrove_site)
    sys.path.append(args.datatrove_site)


    from domainpt.data.builtin import read_builtin
    from domainpt.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve("smollm2-135m"))
    texts = [r["text"] for r in read_builtin("scancode-licenses") if r["text"].strip()]
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        (d / "corpus").mkdir()
        corpus = d / "corpus" / "licences.jsonl"
        corpus.write_text("".join(json.dumps({"text": t, "id": str(i)}) + "\n" for i, t in enumerate(texts)))
        tok.save_pretrained(d / "tokenizer")
        tokenizer_json = str(d / "tokenizer" / "tokenizer.json")
        ours, theirs = [], []
        for rep in range(args.repeats):
            n_ours, t = timed(domainpt_tokenize, corpus, tok, d / f"ours{rep}")
            ours.append(n_ours / t)
            n_theirs, t = timed(datatrove_tokenize, corpus, tokenizer_json, d / f"theirs{rep}")
            theirs.append(n_theirs / t)
            shutil.rmtree(d / f"ours{rep}"), shutil.rmtree(d / f"theirs{rep}")
        print(f"tokenize+pack tokens/s (median of {args.repeats}): domainpt {statistics.median(ours):,.0f} "
              f"({n_ours:,} tokens incl. end-of-text), datatrove {metadata.version('datatrove')} {statistics.median(theirs):,.0f} "
              f"({n_theirs:,} tokens)", flush=True)
        (dup_ours, t_ours), (dup_theirs, t_theirs) = timed(domainpt_minhash, texts), timed(datatrove_minhash, corpus, d / "mh")
        print(f"near-dedup on {len(texts)} documents: domainpt {t_ours:.1f} s ({dup_ours} removed, threshold 0.8 verified), "
              f"datatrove {t_theirs:.1f} s ({dup_theirs} removed, 14 buckets x 8 hashes)", flush=True)
        print(f"ratio {statistics.median(theirs) / statistics.median(ours):.3f}")


if __name__ == "__main__":
    main()
