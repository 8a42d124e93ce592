"""Training behaviour: 2 processes match 1, LoRA touches only adapters (kill/resume: test_reliability.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, cli, copy_stages


def _losses(run):
    return [json.loads(l)["loss"] for l in open(run / "pretrain" / "metrics.jsonl")]


def _weights(folder):
    return load_file(str(folder / "model.safetensors"))


def test_two_processes_match_one_with_the_same_global_batch(prepared_tiny, tmp_path):
    """Two DDP processes (gloo) with the chunked loss (train.loss_chunk_tokens) vs one with the model's own loss:
    the same losses, so both the gradient averaging and the chunked loss keep the mathematics. The two processes
    share train.global_batch_size=4 (2 blocks each), the one process's batch_size."""
    one, two = (copy_stages(prepared_tiny, tmp_path / d, "prepare") for d in ("one", "two"))
    r1 = cli("pretrain", TINY, f"out_dir={one}", "train.max_steps=4", "train.eval_every=0")
    assert r1.returncode == 0, r1.stderr[-2000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r2 = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
                         "-m", "domainpt", "pretrain", str(TINY), f"out_dir={two}", "train.max_steps=4",
                         "train.eval_every=0", "train.global_batch_size=4", "train.loss_chunk_tokens=100"], cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    assert "processes=2" in r2.stdout
    assert json.loads((two / "pretrain" / "manifest.json").read_text())["distributed_type"] == "MULTI_CPU"
    rows1 = [json.loads(l) for l in open(one / "pretrain" / "metrics.jsonl")]
    rows2 = [json.loads(l) for l in open(two / "pretrain" / "metrics.jsonl")]
    assert [r["tokens"] for r in rows2] == [r["tokens"] for r in rows1] == [4 * 128] * 4
    assert [r["loss"] for r in rows2] == pytest.approx([r["loss"] for r in rows1], abs=2e-4)


def test_a_sharded_launch_without_gpus_is_refused_not_run_as_plain_ddp(prepared_tiny, tmp_path):
    out = copy_stages(prepared_tiny, tmp_path / "run", "prepare")
    r = cli("pretrain", TINY, f"out_dir={out}", env={"ACCELERATE_USE_FSDP": "true"})  # what `accelerate launch` sets
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "asks for FSDP, but Accelerate runs NO here (no GPU" in r.stderr.strip().splitlines()[-1]
    assert not (out / "pretrain").exists()


def test_lora_changes_only_adapter_weights_and_reloads_identically(tiny_run):
    from peft import PeftModel

    from domainpt.eval.scoring import score_examples
    from domainpt.tasks import read_split
    from domainpt.encoding import end_of_text_id
    from domainpt.models import load_model, load_tokenizer

    out, _ = tiny_run
    base_dir = out / "pretrain" / "model"
    before = {k: v.clone() for k, v in load_model(str(base_dir), "clm").state_dict().items()}
    model = PeftModel.from_pretrained(load_model(str(base_dir), "clm"), str(out / "finetune" / "licence-category" / "domain_model" / "seed0" / "adapter"))
    trained_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert trained_b and any(p.abs().sum() > 0 for p in trained_b)  # lora_B starts at zero: training moved it
    base_after = model.get_base_model().state_dict()
    for k, v in before.items():
        key = k if k in base_after else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(base_after[key], v), k
    tok = load_tokenizer(str(base_dir))
    tests = read_split(out / "prepare" / "tasks" / "licence-category", "test")
    for seed in (0, 1):  # evaluate loads every seed's adapter into one base model: each must match a fresh load
        if seed:
            model = PeftModel.from_pretrained(load_model(str(base_dir), "clm"), str(out / "finetune" / "licence-category" / "domain_model" / "seed1" / "adapter"))
        rows = score_examples(model, tok, tests, bos=0, end_of_text=end_of_text_id(tok))  # as evaluate scores after LoRA
        saved = [json.loads(l) for l in open(out / "evaluate" / "predictions" / "licence-category" / "domain_model" / f"seed{seed}.jsonl")]
        assert [r["pred"] for r in rows] == [r["pred"] for r in saved]
        assert [x for r in rows for x in r["logliks"]] == pytest.approx([x for r in saved for x in r["logliks"]], abs=1e-3)
