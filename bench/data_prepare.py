"""The prepare stage's speed and memory, measured.

    python bench/data_prepare.py                  # ~35 min on 2 cores; last line: `ratio <float>`
    python bench/data_prepare.py --big-mb 0       # throughput and ratio only (~1 min)

1. Whole stage on one real corpus (all 2,289 ScanCode licence texts as domain data, the Wikipedia
   sample as general text, SmolLM2 tokenizer, one process): documents/s and tokens/s, from reading
   the files to the packed shards, the held-out split and the data card.
2. Tokenize + pack throughput (domainpt's map path: batch encode, end-of-text join, write to the
   token file) divided by the bare fast tokenizer's `encode_batch` on the same texts, single
   process, 5 interleaved repeats, median. Goal >= 0.8.
3. Peak memory (resident set of the whole process tree, sampled every 50 ms) of `domainpt prepare`
   (one process) on a generated corpus of --big-mb/4 and of --big-mb megabytes (licence and news
   sentences shuffled into new documents, so dedup keeps them), beside the resident size of the
   imports alone: bounded memory means the two peaks are close although the corpus grew 4x.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["TOKENIZERS_PARALLELISM"] = "false"  # part 2: single process, single thread, the stated comparison


def whole_stage(work: Path) -> dict:
    from domainpt.config import load_recipe
    from domainpt.prepare import run_prepare

    recipe = load_recipe(ROOT / "recipes" / "demo" / "tiny.yaml", [
        f"out_dir={work / 'real'}", "data.domain=[{builtin: scancode-licenses}]", "data.general=[{builtin: wikipedia-sample}]",
        "data.heldout_docs=20", "data.seq_len=512"])
    from domainpt.models import materialize_general_model

    materialize_general_model(recipe, work / "real" / "base_model")  # the tiny random model: not what is timed
    t0 = time.perf_counter()
    run_prepare(recipe)
    wall = time.perf_counter() - t0
    stats = json.loads((work / "real" / "prepare" / "stats.json").read_text())
    tokens = stats["tokens_out"] + sum(stats["tokens_removed"].values())
    return {"documents_in": stats["documents_in"], "wall_s": round(wall, 2), "docs_per_s": round(stats["documents_in"] / wall, 1),
            "tokens_per_s": round(tokens / wall), "tokens_tokenized": tokens}


def tokenize_pack_ratio(work: Path, repeats: int = 5) -> dict:
    from domainpt.data.builtin import read_builtin
    from domainpt.data.pack import PackWriter, encode_texts
    from domainpt.models import load_tokenizer, resolve

    tok = load_tokenizer(resolve("smollm2-135m"))
    texts = [r["text"] for r in read_builtin("scancode-licenses") if r["text"].strip()]
    raw = tok.backend_tokenizer
    bare, ours = [], []
    n_tokens = 0
    for rep in range(repeats):
        t0 = time.perf_counter()
        n = 0
        for i in range(0, len(texts), 256):
            n += sum(len(e.ids) for e in raw.encode_batch(texts[i:i + 256], add_special_tokens=False))
        bare.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        w = PackWriter(work / f"pack{rep}", len(tok), eos_id=0)
        for i in range(0, len(texts), 256):
            w.add(encode_texts(tok, texts[i:i + 256]))
        meta = w.close(512)
        ours.append((meta["tokens"] - meta["documents"]) / (time.perf_counter() - t0))
        n_tokens = n
    assert n_tokens == meta["tokens"] - meta["documents"], "both paths must produce the same tokens"
    b, o = statistics.median(bare), statistics.median(ours)
    return {"bare_tokens_per_s": round(b), "domainpt_tokens_per_s": round(o), "ratio": round(o / b, 3), "tokens": n_tokens}


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> int:
    """JSONL of new documents built from shuffled real sentences; returns its size in bytes."""
    from domainpt.data.builtin import read_builtin

    sentences = [s.strip() for name in ("scancode-licenses", "bbc-news") for r in read_builtin(name)
                 for s in r["text"].replace("\n", " ").split(". ") if len(s.split()) >= 5]
    rng = random.Random(seed)
    target, size, i = megabytes * 1024 ** 2, 0, 0
    with open(path, "w") as f:
        while size < target:
            line = json.dumps({"text": f"Document {i}. " + ". ".join(rng.choices(sentences, k=rng.randint(5, 40))) + "."}) + "\n"
            f.write(line)
            size += len(line.encode())
            i += 1
    return size


def peak_rss_of(cmd: list[str]) -> tuple[int, float, int]:
    """(peak resident bytes of the process tree, wall seconds, return code)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, stop = 0, threading.Event()

    def sample():
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                peak = max(peak, sum(q.memory_info().rss for q in [p, *p.children(recursive=True)]))
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    stop.set()
    th.join()
    if proc.returncode:
        print(err[-2000:], file=sys.stderr)
    return peak, time.perf_counter() - t0, proc.returncode


def import_baseline() -> int:
    """Resident bytes of a process that has only imported what prepare imports and loaded the tokenizer."""
    code = ("import resource, datasets, matplotlib.pyplot, domainpt.prepare, domainpt.preflight\n"
            "from domainpt.models import load_tokenizer, resolve\n"
            "load_tokenizer(resolve('smollm2-135m'))\n"
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)")
    return int(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout)


def memory(work: Path, big_mb: int) -> list[dict]:
    base = import_baseline()
    print(f"memory: resident after imports + tokenizer, before any data: {base / 1024 ** 2:.0f} MB", flush=True)
    rows = []
    for mb in (big_mb // 4, big_mb):
        corpus = work / f"corpus_{mb}.jsonl"
        size = make_corpus(corpus, mb)
        out = work / f"mem_{mb}"
        cmd = [sys.executable, "-m", "domainpt", "prepare", str(ROOT / "recipes" / "demo" / "tiny.yaml"), f"out_dir={out}",
               f"data.domain=[{{path: '{corpus}'}}]", "data.general=[{builtin: wikipedia-sample}]", "data.seq_len=1024"]
        peak, wall, rc = peak_rss_of(cmd)
        if rc:
            raise SystemExit(f"prepare failed on the {mb} MB corpus")
        stats = json.loads((out / "prepare" / "stats.json").read_text())
        rows.append({"corpus_mb": round(size / 1024 ** 2), "documents": stats["documents_in"], "peak_rss_mb": round(peak / 1024 ** 2),
                     "peak_above_imports_mb": round((peak - base) / 1024 ** 2), "corpus_over_peak": round(size / peak, 2),
                     "corpus_over_peak_above_imports": round(size / max(peak - base, 1), 2),
                     "wall_s": round(wall), "mb_per_s": round(size / 1024 ** 2 / wall, 2)})
        corpus.unlink()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-mb", type=int, default=1000, help="size of the larger generated corpus (0: skip the memory part)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        whole = whole_stage(work)
        print(f"whole prepare stage, real corpus: {whole}", flush=True)
        if args.big_mb:
            for row in memory(work, args.big_mb):
                print(f"memory: {row}", flush=True)
        r = tokenize_pack_ratio(work)
        print(f"tokenize+pack vs bare encode_batch: {r}", flush=True)
        print(f"ratio {r['ratio']}")


if __name__ == "__main__":
    main()
