"""`train.compile`: torch.compile changes the speed, not the mathematics or the files."""
import json

import pytest
from safetensors.torch import load_file

from conftest import TINY, cli, copy_stages


def test_compiled_pretraining_matches_eager(prepared_tiny, tmp_path):
    runs = {}
    for compiled in (False, True):
        out = copy_stages(prepared_tiny, tmp_path / f"compile_{compiled}", "prepare")
        r = cli("pretrain", TINY, f"out_dir={out}", f"train.compile={str(compiled).lower()}", "train.max_steps=4",
                "train.save_every=2", "train.eval_every=4")
        assert r.returncode == 0, r.stderr[-2000:]
        runs[compiled] = out / "pretrain"
    losses = {c: [json.loads(l)["loss"] for l in open(p / "metrics.jsonl")] for c, p in runs.items()}
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)
    evals = {c: json.loads((p / "manifest.json").read_text())["eval_history"] for c, p in runs.items()}
    assert [e["step"] for e in evals[True]] == [0, 4]
    assert evals[True][-1]["eval_domain_ppl"] == pytest.approx(evals[False][-1]["eval_domain_ppl"], rel=1e-4)
    eager, comp = (load_file(str(runs[c] / "model" / "model.safetensors")) for c in (False, True))
    assert set(comp) == set(eager) and not any("_orig_mod" in k for k in comp)  # a plain checkpoint
    base = load_file(str(prepared_tiny / "base_model" / "model.safetensors"))
    for k in eager:  # Adam amplifies float noise on near-zero gradients: compare with what training moved
        assert (comp[k] - eager[k]).norm() < 1e-3 * (eager[k] - base[k]).norm(), k
    assert sorted(p.name for p in (runs[True] / "checkpoints").iterdir()) == sorted(p.name for p in (runs[False] / "checkpoints").iterdir())
