"""The catalogue of bad inputs: each gives exit code 2, exactly one `domainpt: error:` line naming the
file, line or key, no traceback, and no stage marked finished that was not finished before."""
import json
import os
import random
import shutil
import socket
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, TINY, copy_stages

WORDS = ("court contract clause party licence agreement tenant notice damages statute appeal liability "
         "warranty breach remedy consent section schedule term payment").split()


def _doc(i: int) -> str:
    rng = random.Random(i)
    return f"Document {i}. " + " ".join(rng.choice(WORDS) for _ in range(80)) + "."


def _jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def base_model(tiny_llama):
    return tiny_llama


def _recipe(tmp_path, base_model, **changes) -> str:
    """A small valid recipe on a local corpus; `changes` replace top-level sections."""
    corpus = _jsonl(tmp_path / "corpus.jsonl", [{"text": _doc(i)} for i in range(30)])
    r = {"name": "bad", "domain": "legal", "out_dir": str(tmp_path / "run"),
         "model": {"base": base_model},
         "data": {"domain": [{"path": corpus}], "replay_share": 0.0, "heldout_docs": 2, "seq_len": 32},
         "tasks": [], "train": {"max_steps": 2, "batch_size": 2}}
    for k, v in changes.items():
        r[k] = {**r[k], **v} if isinstance(r.get(k), dict) and isinstance(v, dict) else v
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(r))
    return str(p)


def _task(tmp_path, name="t", rows=None, **extra) -> dict:
    rows = rows or [{"text": _doc(100 + i), "label": "yes" if i % 2 else "no"} for i in range(20)]
    return {"name": name, "source": {"path": _jsonl(tmp_path / f"{name}.jsonl", rows)}, "test_size": 4, "train_size": 8, **extra}


def _data_with(tmp_path, base_model, filename: str, content: bytes, **data):
    p = tmp_path / filename
    p.write_bytes(content)
    good = _jsonl(tmp_path / "good.jsonl", [{"text": _doc(i)} for i in range(30)])
    return ["prepare", _recipe(tmp_path, base_model, data={"domain": [{"path": good}, {"path": str(p)}], **data})]


def _good_lines(n=3) -> bytes:
    return b"".join(json.dumps({"text": _doc(200 + i)}).encode() + b"\n" for i in range(n))


# name -> (build(tmp_path, base_model) -> argv, text the error line must contain)
CASES = {
    "empty corpus": (lambda t, b: _data_with(t, b, "empty.jsonl", b""), "empty.jsonl) gave no usable documents"),
    "binary file": (lambda t, b: _data_with(t, b, "blob.txt", bytes(range(256)) * 4), "blob.txt: binary file"),
    "invalid UTF-8": (lambda t, b: _data_with(t, b, "latin.jsonl", _good_lines() + b'{"text": "caf\xe9"}\n'),
                      "latin.jsonl:4: invalid UTF-8"),
    "broken JSONL line": (lambda t, b: _data_with(t, b, "cut.jsonl", _good_lines() + b'{"text": "unterminated\n'),
                          "cut.jsonl:4: broken JSON line"),
    "missing text field": (lambda t, b: _data_with(t, b, "nofield.jsonl", _good_lines(2) + b'{"body": "x"}\n'),
                           "nofield.jsonl:3: missing field 'text'"),
    "CSV without the column": (lambda t, b: _data_with(t, b, "table.csv", b"body,id\nsome text,1\n"),
                               "table.csv: no column 'text' (columns: body, id)"),
    "document far too long": (lambda t, b: _data_with(t, b, "huge.jsonl", _good_lines() + b'{"text": "' + b"a" * (2 << 20) + b'"}\n',
                                                      max_record_mb=1),
                              "huge.jsonl:4: record longer than data.max_record_mb (1 MB)"),
    "unsupported file type": (lambda t, b: _data_with(t, b, "brief.docx", b"PK\x03\x04"), "brief.docx: unsupported file type"),
    "data file missing": (lambda t, b: ["prepare", _recipe(t, b), "data.domain=[{path: /nonexistent/corpus.jsonl}]"],
                          "data file not found: /nonexistent/corpus.jsonl"),
    "unknown recipe key": (lambda t, b: ["prepare", _recipe(t, b), "train.bogus=1"], "unknown key 'train.bogus'"),
    "wrong type for a key": (lambda t, b: ["prepare", _recipe(t, b), "train.max_steps=many"],
                             "train.max_steps: expected int, got str 'many'"),
    "zero size": (lambda t, b: ["prepare", _recipe(t, b), "train.batch_size=0"], "train.batch_size: must be > 0, got 0"),
    "negative size": (lambda t, b: ["prepare", _recipe(t, b), "data.seq_len=-4"], "data.seq_len: must be >= 8, got -4"),
    "share out of range": (lambda t, b: ["prepare", _recipe(t, b), "data.replay_share=1.5"], "data.replay_share: must be >= 0 and < 1, got 1.5"),
    "unknown schedule": (lambda t, b: ["prepare", _recipe(t, b), "train.schedule=linear"], "train.schedule: must be one of cosine, wsd, constant, got 'linear'"),
    "unknown attention kernel": (lambda t, b: ["prepare", _recipe(t, b), "train.attention=flash"],
                                 "train.attention: must be one of sdpa, eager, flex_attention, varlen"),
    "recipe file missing": (lambda t, b: ["prepare", str(t / "nope.yaml")], "recipe not found: "),
    "recipe not YAML": (lambda t, b: ["prepare", _write(t / "broken.yaml", "name: x\ndata: [unclosed\n")], "broken.yaml: line 3 not valid YAML"),
    "override without =": (lambda t, b: ["prepare", _recipe(t, b), "train.max_steps"], "override 'train.max_steps' is not of the form key=value"),
    "model path missing": (lambda t, b: ["prepare", _recipe(t, b), "model.base=/nonexistent/model"], "model not found: /nonexistent/model"),
    "tokenizer does not match the model": (lambda t, b: ["prepare", _recipe(t, b, model={"base": _mismatched_model(t, b)})],
                                           "tokenizer has 49252 tokens but the model's embedding has 49152 rows"),
    "blocks longer than the model's context": (lambda t, b: ["prepare", _recipe(t, b), "data.seq_len=100000"],
                                               "data.seq_len=100000 is longer than the model's context (8192 positions"),
    "LoRA target the model lacks": (lambda t, b: ["prepare", _recipe(t, b, tasks=[_task(t)], lora={"target_modules": ["qkv_fused"]})],
                                    "lora.target_modules: ['qkv_fused'] not in"),
    "a task repeating a label": (lambda t, b: ["prepare", _recipe(t, b, tasks=[_task(t, labels=["yes", "no", "yes"])])],
                                 "tasks.0.labels: must not repeat an item, got 'yes' twice"),
    "label missing from the verbaliser": (lambda t, b: ["prepare", _recipe(t, b, tasks=[_task(t, verbalizers={"yes": "Yes"})])],
                                          "labels ['no'] have no entry in the task's verbalizers"),
    "task without its label field": (lambda t, b: ["prepare", _recipe(t, b, tasks=[_task(t, rows=[{"text": _doc(i)} for i in range(9)])])],
                                     "records have no field 'label'"),
    "test set overlaps the training set": (lambda t, b: ["prepare", _recipe(t, b, tasks=[_overlapping_task(t)])],
                                           "3 training examples also appear in the test set"),
    "out_dir used by another run": (lambda t, b: ["prepare", _locked(t, b)], "is in use by another run"),
    "corrupted manifest": (lambda t, b: ["prepare", _corrupt_manifest(t, b)], "prepare/manifest.json: corrupted manifest"),
}


def _write(path, text) -> str:
    path.write_text(text)
    return str(path)


def _mismatched_model(tmp_path, base_model) -> str:
    from transformers import AutoTokenizer

    folder = tmp_path / "model"
    shutil.copytree(base_model, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens([f"<extra_{i}>" for i in range(100)])  # a tokenizer from somewhere else: more ids than embedding rows
    tok.save_pretrained(folder)
    return str(folder)


def _overlapping_task(tmp_path) -> dict:
    train_rows = [{"text": _doc(300 + i), "label": "yes" if i % 2 else "no"} for i in range(12)]
    test_rows = train_rows[:3] + [{"text": _doc(400 + i), "label": "yes" if i % 2 else "no"} for i in range(5)]
    return {**_task(tmp_path, rows=train_rows), "train_size": 20, "test_size": 20, "test_source": {"path": _jsonl(tmp_path / "test.jsonl", test_rows)}}


def _locked(tmp_path, base_model) -> str:
    recipe = _recipe(tmp_path, base_model)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").write_text(f"{socket.gethostname()}:{os.getpid()}")  # this test process is alive
    return recipe


def _corrupt_manifest(tmp_path, base_model) -> str:
    recipe = _recipe(tmp_path, base_model)
    (tmp_path / "run" / "prepare").mkdir(parents=True)
    (tmp_path / "run" / "prepare" / "manifest.json").write_text('{"stage": "prep')
    return recipe


def _finished(out):
    return {p: p.read_bytes() for p in out.rglob("manifest.json")} if out.exists() else {}


def _assert_one_line_error(code, stderr, expected):
    assert code == 2, stderr[-2000:]
    errors = [l for l in stderr.splitlines() if l.startswith("domainpt: error:")]
    assert len(errors) == 1, stderr[-2000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_catalogue(case, tmp_path, base_model, capsys):
    from domainpt.cli import main

    build, expected = CASES[case]
    argv = build(tmp_path, base_model)
    out = tmp_path / "run"
    before = _finished(out)
    with pytest.raises(SystemExit) as e:
        main(argv)
    _assert_one_line_error(e.value.code, capsys.readouterr().err, expected)
    assert _finished(out) == before  # nothing marked finished that was not
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".tmp")] if out.exists() else []
    assert not leftovers
    if case == "out_dir used by another run":
        assert (out / ".lock").is_file()  # the other run's lock is left alone


def test_catalogue_recipe_is_valid_without_the_fault(tmp_path, base_model, capsys):
    """The cases fail for their stated reason: the same recipe with good data prepares fine."""
    from domainpt.cli import main

    main(["prepare", _recipe(tmp_path, base_model, tasks=[_task(tmp_path)])])
    assert (tmp_path / "run" / "prepare" / "manifest.json").is_file()


def test_a_few_bad_lines_in_a_big_corpus_are_counted_not_fatal(tmp_path, base_model):
    from domainpt.cli import main

    rows = [json.dumps({"text": _doc(i)}).encode() + b"\n" for i in range(300)]
    rows[10:10] = [b'{"text": broken\n']
    (tmp_path / "big.jsonl").write_bytes(b"".join(rows) + b"\xff\xfe\n")
    main(["prepare", _recipe(tmp_path, base_model), f"data.domain=[{{path: {tmp_path / 'big.jsonl'}}}]"])
    stats = json.loads((tmp_path / "run" / "prepare" / "stats.json").read_text())
    assert stats["bad_records"] == 2
    assert stats["bad_record_reasons"] == {"broken JSON line": 1, "invalid UTF-8": 1}
    assert [e.split("big.jsonl")[1] for e in stats["bad_record_examples"]] == [":11: broken JSON line", ":302: invalid UTF-8"]


def test_corrupted_checkpoint_is_refused_with_its_path(tiny_run, tmp_path):
    ref, _ = tiny_run
    run = copy_stages(ref, tmp_path / "run", "prepare", "pretrain/checkpoints")
    latest = max((run / "pretrain" / "checkpoints").glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    weights = latest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    r = subprocess.run([sys.executable, "-m", "domainpt", "pretrain", str(TINY), f"out_dir={run}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    _assert_one_line_error(r.returncode, r.stderr, f"checkpoint {latest} cannot be loaded")
    assert not (run / "pretrain" / "manifest.json").exists()
