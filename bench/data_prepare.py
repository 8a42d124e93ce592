"""The prepare stage's speed and memory, measured.

    python bench/data_prepare.py                  # ~35 min on 2 cores; last line: `ratio <float>`
    python bench/data_prepare.py --big-mb 0       # throughput and ratio only (~1 min)
    python bench/data_prepare.py --memory-only --big-mb 600   # part 3 only

1. Whole stage on one real corpus (all 2,289 ScanCode licence texts as domain data, the Wikipedia
   sample as general text, SmolLM2 tokenizer, one process): documents/s and tokens/s, from reading
   the files to the packed shards, the held-out split and the data card.
2. Tokenize + pack throughput (domainpt's map path: batch encode, end-of-text join, write to the
   token file) divided by the bare fast tokenizer's `encode_batch` on the same texts, single
   process, 5 interleaved repeats, median. Goal >= 0.8.
3. Peak memory (resident set of the whole process tree, sampled every 50 ms) of `domainpt prepare`
   (one process) on a generated corpus of --big-mb/4 and of --big-mb megabytes (licence and news
   sentences shuffled into new documents, so dedup keeps them), and of a process that has done
   everything prepare does before reading data (imports, model checks, tokenizer). Resident and
   anonymous (resident minus file-backed pages) peaks; "data work" is the anonymous peak above that
   baseline. Bounded memory means the peaks stay put while the corpus grows 4x.
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


def peak_rss_of(cmd: list[str]) -> tuple[int, int, float, int]:
    """(peak resident bytes of the process tree, peak anonymous bytes (resident minus file-backed and
    shared pages: what the processes allocated themselves), wall seconds, return code)."""
    import psutil

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak, peak_anon, stop = 0, 0, threading.Event()

    def sample():
        nonlocal peak, peak_anon
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                infos = [q.memory_info() for q in [p, *p.children(recursive=True)]]
                peak = max(peak, sum(m.rss for m in infos))
                peak_anon = max(peak_anon, sum(m.rss - m.shared for m in infos))
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
    return peak, peak_anon, time.perf_counter() - t0, proc.returncode


def setup_baseline(work: Path) -> tuple[int, int]:
    """(resident, anonymous) bytes of a process that has done everything prepare does before reading data:
    imports, recipe, model checks, tokenizer."""
    code = ("import psutil, sys\n"
            "from domainpt.config import load_recipe\n"
            "from domainpt.prepare import _setup\n"
            f"r = load_recipe('recipes/demo/tiny.yaml', ['out_dir={work / 'baseline'}'])\n"
            "_setup(r, r.out_dir + '/prepare', 'x')\n"
            "import datasets, matplotlib.pyplot\n"
            "m = psutil.Process().memory_info()\n"
            "print(m.rss, m.rss - m.shared)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    return int(out[0]), int(out[1])


def memory(work: Path, big_mb: int) -> list[dict]:
    base, base_anon = setup_baseline(work)
    print(f"memory: before any data (imports, model checks, tokenizer): resident {base / 1024 ** 2:.0f} MB, "
          f"anonymous {base_anon / 1024 ** 2:.0f} MB", flush=True)
    rows = []
    for mb in (big_mb // 4, big_mb):
        corpus = work / f"corpus_{mb}.jsonl"
        size = make_corpus(corpus, mb)
        out = work / f"mem_{mb}"
        cmd = [sys.executable, "-m", "domainpt", "prepare", str(ROOT / "recipes" / "demo" / "tiny.yaml"), f"out_dir={out}",
               f"data.domain=[{{path: '{corpus}'}}]", "data.general=[{builtin: wikipedia-sample}]", "data.seq_len=1024"]
        peak, peak_anon, wall, rc = peak_rss_of(cmd)
        if rc:
            raise SystemExit(f"prepare failed on the {mb} MB corpus")
        stats = json.loads((out / "prepare" / "stats.json").read_text())
        rows.append({"corpus_mb": round(size / 1024 ** 2), "documents": stats["documents_in"], "peak_rss_mb": round(peak / 1024 ** 2),
                     "peak_anonymous_mb": round(peak_anon / 1024 ** 2),
                     "data_work_mb": round((peak_anon - base_anon) / 1024 ** 2),
                     "corpus_over_peak_rss": round(size / peak, 2),
                     "corpus_over_data_work": round(size / max(peak_anon - base_anon, 1), 1),
                     "wall_s": round(wall), "mb_per_s": round(size / 1024 ** 2 / wall, 2)})
        corpus.unlink()
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big-mb", type=int, default=1000, help="size of the larger generated corpus (0: skip the memory part)")
    ap.add_argument("--memory-only", action="store_true", help="only part 3")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        if not args.memory_only:
            whole = whole_stage(work)
            print(f"whole prepare stage, real corpus: {whole}", flush=True)
        if args.big_mb:
            for row in memory(work, args.big_mb):
                print(f"memory: {row}", flush=True)
        if not args.memory_only:
            r = tokenize_pack_ratio(work)
            print(f"tokenize+pack vs bare encode_batch: {r}", flush=True)
            print(f"ratio {r['ratio']}")


if __name__ == "__main__":
    main()
