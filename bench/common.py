"""Shared by the benchmarks: a synthetic prepared run (random documents, random Llama) for run_pretrain."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def prepared_run(work: Path, shape: dict, seq: int, overrides: list[str], n_docs: int = 600, doc_len=(50, 600),
                 base: Path | None = None):
    """Write packed random-token documents and a random Llama (into `base` when given, once: later calls
    with the same `base` reuse it); return (recipe, base folder)."""
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from domainpt.config import load_recipe
    from domainpt.data.pack import PackWriter
    from domainpt.manifest import write_manifest

    rng = np.random.default_rng(0)
    w = PackWriter(work / "run" / "prepare" / "train", shape["vocab_size"], eos_id=0)
    w.add(rng.integers(1, shape["vocab_size"], rng.integers(*doc_len)).tolist() for _ in range(n_docs))
    w.close(seq)
    base = base or work / "base"
    if not (base / "tokenizer.json").exists():
        torch.manual_seed(0)
        LlamaForCausalLM(LlamaConfig(**shape)).save_pretrained(base)
        vocab = {f"t{i}": i for i in range(shape["vocab_size"])}
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="t1")), eos_token="t0", pad_token="t0")
        tok.save_pretrained(base)
    recipe = load_recipe(ROOT / "recipes" / "demo" / "tiny.yaml", [
        f"out_dir={work / 'run'}", f"model.base={base}", "model.init=pretrained", f"data.seq_len={seq}",
        "train.eval_every=0", "train.save_every=0", "train.warmup_steps=2", "train.ppl_max_tokens=1", *overrides])
    write_manifest(recipe, "prepare", time.time(), tokens=0, base_model=str(base))
    return recipe, base


def run_logged(recipe) -> list[dict]:
    """Run the real pretrain stage (no checkpoints kept between calls) and return its metrics rows."""
    from domainpt.pretrain import run_pretrain

    out = Path(recipe.out_dir) / "pretrain"
    shutil.rmtree(out, ignore_errors=True)
    run_pretrain(recipe)
    rows = [json.loads(l) for l in open(out / "metrics.jsonl")]
    shutil.rmtree(out, ignore_errors=True)
    return rows
