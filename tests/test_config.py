from pathlib import Path

import pytest

from domainpt.config import field_docs, load_recipe
from domainpt.errors import DomainptError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(p for p in (ROOT / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_recipe_parses(path):
    r = load_recipe(path)
    assert r.name and r.out_dir and r.data.domain


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = """name: x
domain: legal
out_dir: runs/x
model: {base: smollm2-135m}
data:
  domain: [{path: corpus.jsonl}]
  replay_share: 0
"""


def test_unknown_key_names_file_and_key(tmp_path):
    p = _write(tmp_path, BASE + "train: {max_stepz: 3}\n")
    with pytest.raises(DomainptError, match=r"r\.yaml: unknown key 'train\.max_stepz'"):
        load_recipe(p)


def test_wrong_type_and_bad_value_name_the_key(tmp_path):
    with pytest.raises(DomainptError, match=r"train\.max_steps: expected int"):
        load_recipe(_write(tmp_path, BASE + "train: {max_steps: ten}\n"))
    with pytest.raises(DomainptError, match=r"train\.batch_size: must be > 0"):
        load_recipe(_write(tmp_path, BASE + "train: {batch_size: 0}\n"))
    with pytest.raises(DomainptError, match=r"unknown key 'data\.domain\.0\.pth'"):
        load_recipe(_write(tmp_path, BASE.replace("path:", "pth:")))


def test_revision_belongs_to_a_hub_source(tmp_path):
    hub = BASE.replace("{path: corpus.jsonl}", "{hf: org/data, hf_config: c, revision: refs/convert/parquet}")
    assert load_recipe(_write(tmp_path, hub)).data.domain[0].revision == "refs/convert/parquet"
    with pytest.raises(DomainptError, match=r"r\.yaml: data\.domain\.0\.revision: applies only to an `hf` source"):
        load_recipe(_write(tmp_path, BASE.replace("{path: corpus.jsonl}", "{path: corpus.jsonl, revision: v1}")))
    with pytest.raises(DomainptError, match=r"data\.domain\.0\.revision: expected str"):
        load_recipe(_write(tmp_path, hub.replace("refs/convert/parquet", "[main]")))


def test_overrides_are_typed_and_validated(tmp_path):
    p = _write(tmp_path, BASE)
    r = load_recipe(p, ["train.max_steps=7", "lora.seeds=[1, 2]", "data.domain.0.max_docs=5"])
    assert r.train.max_steps == 7 and r.lora.seeds == [1, 2] and r.data.domain[0].max_docs == 5
    with pytest.raises(DomainptError, match="train.lr: expected float"):
        load_recipe(p, ["train.lr=fast"])


def test_broken_yaml_and_missing_file(tmp_path):
    with pytest.raises(DomainptError, match="not valid YAML"):
        load_recipe(_write(tmp_path, "name: [unclosed\n"))
    with pytest.raises(DomainptError, match="recipe not found"):
        load_recipe(tmp_path / "nope.yaml")


def test_every_key_is_documented():
    rows = field_docs()
    assert len(rows) > 50
    assert all(help_ for _, _, help_ in rows)


def test_sources_command_lists_every_builtin_corpus_with_its_licence():
    """The command SourceConfig.builtin's help points to."""
    from conftest import cli
    from domainpt.data.builtin import BUILTINS

    r = cli("sources")
    assert r.returncode == 0, r.stderr
    for name, b in BUILTINS.items():
        assert f"{name}  ({b.info['domain']}, {b.info['licence']}" in r.stdout


def test_a_renamed_key_still_reads_under_its_old_name_and_keeps_the_runs_fingerprint(tmp_path):
    """train.eval_tokens became train.ppl_max_tokens (eval.ppl_max_tokens's notion): old recipes still load, with
    a warning, and a run finished under the old name is not redone."""
    from domainpt.manifest import stage_fingerprint

    old = _write(tmp_path, BASE + "train: {eval_tokens: 512}\n")
    with pytest.warns(FutureWarning, match="train.eval_tokens is now train.ppl_max_tokens"):
        r_old = load_recipe(old)
    assert r_old.train.ppl_max_tokens == 512
    new = tmp_path / "new.yaml"
    new.write_text(BASE + "train: {ppl_max_tokens: 512}\n")
    r_new = load_recipe(new)
    # What domainpt 8d9020a (before the rename) wrote into this recipe's pretrain manifest: a finished run keeps it.
    assert stage_fingerprint(r_old, "pretrain") == stage_fingerprint(r_new, "pretrain") == "0fa9cc2855af71c3"
    assert stage_fingerprint(r_new, "pretrain") != stage_fingerprint(load_recipe(new, ["train.ppl_max_tokens=256"]), "pretrain")
    with pytest.warns(FutureWarning, match="override train.eval_tokens is now train.ppl_max_tokens"):
        assert load_recipe(new, ["train.eval_tokens=256"]).train.ppl_max_tokens == 256
    with pytest.warns(FutureWarning):  # old name in the recipe and on the command line: the override wins
        assert load_recipe(old, ["train.eval_tokens=256"]).train.ppl_max_tokens == 256
    both = _write(tmp_path, BASE + "train: {eval_tokens: 512, ppl_max_tokens: 256}\n")
    with pytest.raises(DomainptError, match="train.eval_tokens is the old name of train.ppl_max_tokens"):
        load_recipe(both)


def test_allowed_values_come_from_the_type_for_the_check_the_error_and_the_keys_table(tmp_path):
    from domainpt.config import TrainConfig

    p = _write(tmp_path, BASE)
    with pytest.raises(DomainptError, match=r"train\.schedule: must be one of cosine, wsd, constant, got 'linear'"):
        load_recipe(p, ["train.schedule=linear"])
    with pytest.raises(ValueError, match="on_bad_step: must be one of skip, rollback, stop"):
        TrainConfig(on_bad_step="retry")
    with pytest.raises(ValueError, match="schedule: must be one of cosine, wsd, constant, got None"):
        TrainConfig(schedule=None)  # None only where the type says `| None`
    with pytest.raises(DomainptError, match=r"train.attention: expected one of sdpa, eager, .*, got int 3"):
        load_recipe(p, ["train.attention=3"])
    keys = {k: help_ for k, _, help_ in field_docs()}
    assert keys["train.schedule"].endswith("One of: cosine, wsd, constant.")
    assert keys["compare.control"].endswith("One of: none, continued_general.")


def test_a_tasks_own_lora_budget_redoes_fine_tuning_but_not_prepare_or_pretraining(tmp_path):
    """tasks[].lora_steps / lora_batch_size override lora.steps / batch_size for that task only; earlier stages'
    fingerprints do not read them, so a finished run keeps its prepared data and domain model."""
    from domainpt.manifest import stage_fingerprint

    task = "tasks:\n  - {name: t, source: {path: t.jsonl}, labels: [a, b]}\n"
    plain = load_recipe(_write(tmp_path, BASE + task + "lora: {steps: 12, batch_size: 8}\n"))
    longer = load_recipe(tmp_path / "r.yaml", ["tasks.0.lora_steps=36", "tasks.0.lora_batch_size=4"])
    assert plain.lora.for_task(plain.tasks[0]).steps == 12
    assert (longer.lora.for_task(longer.tasks[0]).steps, longer.lora.for_task(longer.tasks[0]).batch_size) == (36, 4)
    assert longer.lora.steps == 12  # the recipe-wide value is untouched
    for stage in ("prepare", "pretrain", "pretrain_control"):
        assert stage_fingerprint(plain, stage) == stage_fingerprint(longer, stage)
    for stage in ("finetune", "evaluate", "compare"):
        assert stage_fingerprint(plain, stage) != stage_fingerprint(longer, stage)
    with pytest.raises(DomainptError, match=r"tasks\.0\.lora_steps: must be > 0, got 0"):
        load_recipe(tmp_path / "r.yaml", ["tasks.0.lora_steps=0"])


def test_a_global_batch_is_shared_out_over_the_processes_or_refused_when_it_does_not_split():
    from domainpt.config import TrainConfig

    assert TrainConfig(batch_size=3).process_batch(4) == 3  # without it, batch_size is per process
    tc = TrainConfig(global_batch_size=8, grad_accum=2)
    assert [tc.process_batch(p) for p in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(DomainptError, match=r"train.global_batch_size=8 does not split evenly over 3 process\(es\) x "
                                            r"grad_accum 2: use a multiple of 6"):
        tc.process_batch(3)
    with pytest.raises(DomainptError, match=r"train\.global_batch_size: must be > 0, got 0"):
        load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "demo" / "tiny.yaml", ["train.global_batch_size=0"])
