"""Crashes, numerical faults, full disks and untrusted files: nothing finished is lost, every stop explains itself.

Kill points are injected with DOMAINPT_FAULT (see domainpt/faults.py); the process dies by SIGKILL,
as on a pre-empted node, and the same command is simply run again.
"""
import json
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, cli, copy_stages


def _losses(run):
    return [json.loads(l)["loss"] for l in open(run / "pretrain" / "metrics.jsonl")]


def _same_model(a, b):
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    return wa.keys() == wb.keys() and all(torch.allclose(wa[k], wb[k], atol=1e-6) for k in wa)


def _killed(run, fault, *overrides):
    r = cli("pretrain", TINY, f"out_dir={run}", *overrides, env={"DOMAINPT_FAULT": fault})
    assert r.returncode == -signal.SIGKILL, (fault, r.returncode, r.stderr[-1500:])
    assert not (run / "pretrain" / "manifest.json").exists()
    return r


def test_killed_at_many_points_including_mid_checkpoint_then_rerun_equals_uninterrupted(tiny_run, tmp_path):
    ref, _ = tiny_run  # the uninterrupted run (12 steps, checkpoints every 4)
    run = copy_stages(ref, tmp_path / "run", "prepare")
    ckpts = run / "pretrain" / "checkpoints"

    # 1. Killed from outside at whatever moment step 3 is logged.
    proc = subprocess.Popen([sys.executable, "-m", "domainpt", "pretrain", str(TINY), f"out_dir={run}"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    metrics, deadline = run / "pretrain" / "metrics.jsonl", time.time() + 300
    while proc.poll() is None and time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # 2. During the first checkpoint write: state saved in the temporary folder, no trainer_state, no rename.
    _killed(run, "checkpoint.saved_state@4")
    assert (ckpts / ".tmp_step_4").is_dir() and not (ckpts / "step_4").exists()
    # 3. Between steps, with step_4 complete.
    r = _killed(run, "pretrain.step_end@6")
    assert "resuming" not in r.stdout and (ckpts / "step_4").is_dir()
    # 4. Checkpoint 8 fully written but not yet renamed into place.
    r = _killed(run, "checkpoint.before_rename@8")
    assert "resuming from" in r.stdout and (ckpts / ".tmp_step_8" / "trainer_state.json").is_file()
    # 5. Final checkpoint renamed, old ones not yet pruned.
    _killed(run, "checkpoint.before_prune@12")
    assert {p.name for p in ckpts.iterdir()} >= {"step_4", "step_12"}
    # 6. Final model written to its temporary folder, not yet renamed.
    _killed(run, "pretrain.final_model@12")
    assert not (run / "pretrain" / "model").exists()

    r = cli("pretrain", TINY, f"out_dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert _losses(run) == pytest.approx(_losses(ref), abs=1e-6)
    assert _same_model(run / "pretrain" / "model", ref / "pretrain" / "model")
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".tmp")]
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_12", "step_8"]  # keep_last=2


def test_nan_loss_is_skipped_logged_and_training_goes_on(prepared_tiny, tmp_path):
    run = copy_stages(prepared_tiny, tmp_path / "run", "prepare")
    r = cli("pretrain", TINY, f"out_dir={run}", "train.eval_every=0", "train.report_to=[tensorboard]",
            env={"DOMAINPT_FAULT": "nan_loss@6"})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(l) for l in open(run / "pretrain" / "metrics.jsonl")]
    # The same numbers went to TensorBoard through Accelerate's tracker (no loss for the skipped step).
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(next((run / "pretrain" / "logs").rglob("events.out.tfevents.*")).parent))
    events.Reload()
    logged = {e.step: e.value for e in events.Scalars("loss")}
    assert sorted(logged) == [s for s in range(1, 13) if s != 6]
    assert logged[7] == pytest.approx(rows[6]["loss"], rel=1e-5)
    assert [x["step"] for x in rows] == list(range(1, 13))
    assert rows[5]["loss"] is None and rows[5]["skipped"] == "loss is nan"
    assert all(x["loss"] is not None and x["loss"] == x["loss"] for i, x in enumerate(rows) if i != 5)
    events = [json.loads(l) for l in open(run / "pretrain" / "events.jsonl")]
    assert events == [{"event": "bad_step", "step": 6, "reason": "loss is nan", "policy": "skip"}]
    assert json.loads((run / "pretrain" / "manifest.json").read_text())["bad_steps"] == 1
    weights = load_file(str(run / "pretrain" / "model" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())  # the NaN never reached the weights


def test_too_many_bad_steps_in_a_row_stop_with_a_clear_message(prepared_tiny, tmp_path):
    run = copy_stages(prepared_tiny, tmp_path / "run", "prepare")
    r = cli("pretrain", TINY, f"out_dir={run}", "train.max_bad_steps=3", env={"DOMAINPT_FAULT": "nan_loss@6-99"})
    assert r.returncode == 2
    err = [l for l in r.stderr.splitlines() if l.startswith("domainpt: error:")]
    assert len(err) == 1 and "loss is nan at step 8 (3 bad steps" in err[0] and "checkpoints/step_4" in err[0], r.stderr[-1500:]
    assert not (run / "pretrain" / "manifest.json").exists()


def test_rollback_returns_to_the_checkpoint_skips_the_bad_batches_and_survives_a_kill(tiny_run, tmp_path):
    ref = tiny_run[0]
    clean = copy_stages(ref, tmp_path / "clean", "prepare")
    args = ("train.on_bad_step=rollback", "train.eval_every=0")
    r = cli("pretrain", TINY, f"out_dir={clean}", *args, env={"DOMAINPT_FAULT": "nan_loss@6"})
    assert r.returncode == 0, r.stderr[-2000:]
    events = [json.loads(l) for l in open(clean / "pretrain" / "events.jsonl")]
    assert events[-1] == {"event": "rollback", "at_step": 6, "to_step": 4, "micro_batches": 6}
    rolled = _losses(clean)
    assert len(rolled) == 12 and None not in rolled
    assert rolled[:4] == pytest.approx(_losses(ref)[:4], abs=1e-6)
    assert rolled[4] != pytest.approx(_losses(ref)[4], abs=1e-4)  # step 5 now trains on the batch after the bad one

    # The same run killed after the rollback resumes with the data position the rollback chose.
    killed = copy_stages(ref, tmp_path / "killed", "prepare")
    r = cli("pretrain", TINY, f"out_dir={killed}", *args, env={"DOMAINPT_FAULT": "nan_loss@6,pretrain.step_end@7"})
    assert r.returncode == -signal.SIGKILL
    r = cli("pretrain", TINY, f"out_dir={killed}", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _losses(killed) == pytest.approx(rolled, abs=1e-6)
    assert _same_model(killed / "pretrain" / "model", clean / "pretrain" / "model")


@pytest.mark.parametrize("point,left_behind", [
    ("shard.document@60", "shards/.00000-of-00001.*/tokens.bin.tmp"),   # killed in the map (reading, tokenizing)
    ("pack.document@60", "train/tokens.bin.tmp"),                        # killed in the merge (packing)
])
def test_prepare_killed_midway_reruns_to_the_same_shards(prepared_tiny, tmp_path, point, left_behind):
    ref = prepared_tiny
    run = tmp_path / "run"
    r = cli("prepare", TINY, f"out_dir={run}", env={"DOMAINPT_FAULT": point})
    assert r.returncode == -signal.SIGKILL, r.stderr[-1500:]
    assert list((run / "prepare").glob(left_behind)) and not (run / "prepare" / "manifest.json").exists()
    r = cli("prepare", TINY, f"out_dir={run}")
    assert r.returncode == 0, r.stderr[-2000:]
    got, want = run / "prepare", ref / "prepare"
    files = sorted(p.relative_to(want) for p in want.rglob("*") if p.is_file() and p.suffix in (".bin", ".npy", ".jsonl"))
    assert len(files) >= 6
    for f in files:
        assert (got / f).read_bytes() == (want / f).read_bytes(), f
    assert not list(got.rglob("*.tmp")) and not (got / "shards").exists()


# --- resources -------------------------------------------------------------------------------------

def test_pack_writer_stops_on_a_full_disk_without_a_finished_shard(tmp_path, monkeypatch):
    from domainpt import resources
    from domainpt.data.pack import PackWriter
    from domainpt.errors import DomainptError

    monkeypatch.setattr(resources, "free_bytes", lambda path: 10 * 1024 ** 2)
    w = PackWriter(tmp_path / "train", vocab_size=1000, eos_id=0)
    with pytest.raises(DomainptError, match=r"not enough free disk for token shards in .*train: about 0.25 GB needed, 0.01 GB free"):
        w.add([[1, 2, 3]])
    assert not (tmp_path / "train" / "tokens.bin").exists()


def test_checkpoint_is_not_started_without_room_for_it(tmp_path, monkeypatch):
    from accelerate import Accelerator

    from domainpt import resources
    from domainpt.errors import DomainptError
    from domainpt.training.state import TrainState, save_checkpoint

    acc = Accelerator(cpu=True)
    model, opt = acc.prepare(torch.nn.Linear(256, 256), torch.optim.AdamW(torch.nn.Linear(1, 1).parameters()))
    monkeypatch.setattr(resources, "free_bytes", lambda path: 1024)
    with pytest.raises(DomainptError, match=r"not enough free disk for checkpoint step_3 .*train.keep_last"):
        save_checkpoint(acc, model, tmp_path / "checkpoints", TrainState(step=3), keep_last=2)
    assert not (tmp_path / "checkpoints" / "step_3").exists() and not (tmp_path / "checkpoints" / ".tmp_step_3").exists()
    monkeypatch.setattr(resources, "free_bytes", lambda path: 1 << 40)
    save_checkpoint(acc, model, tmp_path / "checkpoints", TrainState(step=3), keep_last=2)
    assert (tmp_path / "checkpoints" / "step_3" / "trainer_state.json").is_file()


def test_out_of_memory_names_the_recipe_keys_to_change(monkeypatch, capsys):
    from domainpt import cli as cli_module

    def oom(recipe):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(cli_module, "_stage_fn", lambda stage: oom)
    with pytest.raises(SystemExit) as e:
        cli_module.main(["prepare", str(TINY), "out_dir=/tmp/domainpt-oom-test"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "Traceback" not in err
    assert "out of memory; lower train.batch_size (raise train.grad_accum" in err
    shutil.rmtree("/tmp/domainpt-oom-test", ignore_errors=True)


# --- safety ----------------------------------------------------------------------------------------

PACKAGE = ROOT / "domainpt"


def test_no_code_execution_paths_in_the_package():
    """No eval/exec, no unsafe YAML, no shell, no pickle loading, no remote code switched on in code. The one
    subprocess allowed is domainpt's own command (plan-mixture's pilots), as an argument list: no shell, nothing else."""
    forbidden = [r"(?<![\w.])eval\(", r"(?<![\w.])exec\(", r"yaml\.load\(", r"shell\s*=\s*True", r"os\.system\(", r"os\.popen\(",
                 r"pickle\.loads?\(", r"torch\.load\(", r"trust_remote_code\s*=\s*True",
                 r"subprocess\.(?!run\(\[sys\.executable, \"-m\", \"domainpt\", )(?!STDOUT)"]
    hits = [f"{p.relative_to(ROOT)}: {pat}" for p in PACKAGE.rglob("*.py")
            for pat in forbidden if re.search(pat, p.read_text())]
    assert hits == []


def test_trust_remote_code_is_off_unless_the_recipe_turns_it_on():
    from domainpt.config import load_recipe

    assert load_recipe(TINY).model.trust_remote_code is False
    assert load_recipe(TINY, ["model.trust_remote_code=true"]).model.trust_remote_code is True


def test_pickle_weights_need_an_explicit_opt_in(tmp_path, monkeypatch):
    from transformers import LlamaConfig

    from domainpt.errors import DomainptError
    from domainpt.models import load_model

    folder = tmp_path / "pickled"
    folder.mkdir()
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=64).save_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    monkeypatch.delenv("DOMAINPT_ALLOW_PICKLE", raising=False)
    with pytest.raises(DomainptError, match=r"holds only pickle weights \(pytorch_model.bin\).*DOMAINPT_ALLOW_PICKLE=1"):
        load_model(str(folder), "clm")


def test_recipe_paths_are_never_given_to_a_shell(tmp_path):
    marker = tmp_path / "pwned"
    evil = f"corpus.jsonl; touch {marker}"
    r = cli("prepare", TINY, f"out_dir={tmp_path / 'run'}", f"data.domain=[{{path: '{evil}'}}]")
    assert r.returncode == 2 and f"data file not found: {evil}" in r.stderr
    assert not marker.exists()
