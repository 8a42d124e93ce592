"""Every recipe value checked before any work, by a fuzzer (hypothesis) that builds recipes from the config's own
field types and rules (domainpt/config.py: Literal values, `_f(..., gt=0, unique=True, ...)`), not from a hand-written
list: starting from the tiny recipe, a valid recipe (a few fields set to values their rules allow) loads and dry-runs;
a recipe with one value broken (outside its rule, or of the wrong type) ends with exactly one `domainpt: error:` line
that names the key, exit code 2, no traceback, and nothing written.

The suite's profile runs a fixed, bounded set of examples (derandomized: the same every run);
`HYPOTHESIS_PROFILE=nightly pytest tests/test_recipe_fuzz.py` runs 2,000 fresh ones of each kind.
"""
import dataclasses
import os
import types
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TINY
from domainpt import config as C

settings.register_profile("suite", max_examples=40, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.register_profile("nightly", max_examples=2000, deadline=None,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))

BASE = yaml.safe_load(TINY.read_text())
# Lists of sections: the fuzzer reaches into their first item.
ITEMS = {"tasks": C.TaskConfig, "data.domain": C.SourceConfig, "data.general": C.SourceConfig}
# Not fuzzed for valid values: what names the run, where it reads and writes, and what only a run can check
# (a model or data path, lm-eval task names, a global batch that must split over the processes and grad_accum).
NOT_VALID_FUZZED = {"name", "domain", "out_dir", "model.base", "model.init", "model.config_overrides", "model.objective",
                    "data.seq_len", "train.global_batch_size", "eval.harness_tasks", "eval.forgetting_tasks",
                    "eval.harness_include", "tasks.0.prompt", "tasks.0.labels", "tasks.0.verbalizers", "tasks.0.type",
                    "tasks.0.scoring", "tasks.0.metric", "tasks.0.name", "lora.target_modules", "lora.quantize",
                    "lora.merge_export", "data.transform",
                    "mixture_plan.replay_shares", "mixture_plan.holdout_share"}  # the holdout must be a piloted share
# Valid values of related keys kept apart (a stride within any window, a start LR under any peak LR, ...).
VALID_RANGE = {"eval.ppl_window": (128, 1024), "eval.ppl_stride": (1, 128), "data.clean.min_chars": (0, 1000),
               "data.clean.max_chars": (2000, 10**6), "train.warmup_start_lr": (0.0, 1e-4), "train.lr": (1e-4, 1.0),
               "lora.seeds": (0, 10**6), "mixture_plan.pilot_steps": (5, 10**6), "mixture_plan.eval_points": (3, 5)}


def leaves(cls=C.Recipe, prefix: str = ""):
    """(dotted key, type hint, rules) of every plain field, reaching into the first item of a list of sections."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, hint = prefix + f.name, hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from leaves(hint, key + ".")
        elif key in ITEMS:
            yield from leaves(ITEMS[key], key + ".0.")
        elif key in ("tasks.0.source", "tasks.0.test_source"):
            continue  # a task's sources: the same fields as data.domain's
        else:
            yield key, hint, f.metadata.get("checks", {})


LEAVES = list(leaves())


def _plain(hint):
    """The hint without None: (the type, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def number(kind, checks, key):
    lo, hi = VALID_RANGE.get(key, (None, None))
    lo = lo if lo is not None else checks.get("ge", checks.get("gt", 0 if kind is int else 0.0))
    hi = hi if hi is not None else checks.get("le", checks.get("lt", lo + (50 if kind is int else 10.0)))
    if kind is int:
        return st.integers(int(lo) + ("gt" in checks and lo == checks["gt"]), int(hi) - ("lt" in checks and hi == checks["lt"]))
    return st.floats(lo, hi, exclude_min="gt" in checks and lo == checks["gt"], exclude_max="lt" in checks and hi == checks["lt"],
                     allow_nan=False)


def valid_value(key, hint, checks):
    kind, optional = _plain(hint)
    if C.choices_of(kind):
        return st.sampled_from(C.choices_of(kind))
    if kind is bool:
        return st.booleans()
    if kind in (int, float):
        return number(kind, checks, key)
    if "among" in checks:
        items = st.sampled_from(list(checks["among"]))
        return st.lists(items, min_size=int(bool(checks.get("nonempty"))), max_size=3, unique=True) \
            if typing.get_origin(kind) is list else items
    if kind == list[int]:
        lo, hi = VALID_RANGE.get(key, (0, 100))
        return st.lists(st.integers(lo, hi), min_size=1, max_size=4, unique=True)
    if kind == list[float]:  # train.betas
        return st.lists(st.floats(0.0, 0.999), min_size=2, max_size=2)
    return None  # free text, paths, mappings: checked by type only


def broken_value(key, hint, checks):
    """Values outside the key's rule (each with the words its error must contain), or of the wrong type."""
    kind, optional = _plain(hint)
    out = [] if kind is typing.Any else [("many" if kind in (int, float, bool) else 12345, "expected")]
    if C.choices_of(kind):
        out.append((f"{C.choices_of(kind)[0]}x", "must be one of"))
    for op, bound in checks.items():
        if op in C.BOUNDS and kind in (int, float):
            step = 1 if kind is int else 0.5
            bad = {"gt": bound, "ge": bound - step, "lt": bound, "le": bound + step}[op]
            out.append((kind(bad), "must be"))
    if checks.get("nonempty"):
        out.append(([] if typing.get_origin(kind) is list else "", "must not be empty"))
    if checks.get("unique"):
        item = (list(checks["among"])[0] if "among" in checks else 3 if kind == list[int] else 0.1 if kind == list[float]
                else "x")
        out.append(([item, item], "must not repeat"))
    if "among" in checks:
        out.append((["nope"] if typing.get_origin(kind) is list else "nope", "is not one of"))
    return out


BROKEN = [(key, value, words) for key, hint, checks in LEAVES if key != "out_dir"  # the test sets out_dir itself
          for value, words in broken_value(key, hint, checks)]
FUZZABLE = [(key, hint, checks) for key, hint, checks in LEAVES
            if key not in NOT_VALID_FUZZED and valid_value(key, hint, checks) is not None]


def set_key(recipe: dict, key: str, value) -> None:
    node = recipe
    parts = key.split(".")
    for p in parts[:-1]:
        node = node[int(p)] if p.isdigit() else node.setdefault(p, {})
    node[parts[-1]] = value


def run_cli(tmp_path, recipe: dict, capsys, command: str = "prepare") -> tuple[int, str]:
    """`domainpt prepare RECIPE` (a broken recipe must stop before it writes anything) or, with command="dry-run",
    `domainpt run RECIPE --dry-run` (a valid one must plan)."""
    from domainpt import cli

    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**recipe, "out_dir": str(tmp_path / "run")}))
    try:
        cli.main(["run", str(path), "--dry-run"] if command == "dry-run" else [command, str(path)])
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@st.composite
def valid_recipes(draw):
    recipe = yaml.safe_load(yaml.safe_dump(BASE))
    chosen = draw(st.lists(st.sampled_from(FUZZABLE), min_size=1, max_size=3, unique_by=lambda leaf: leaf[0]))
    for key, hint, checks in chosen:
        set_key(recipe, key, draw(valid_value(key, hint, checks)))
    return recipe


def test_the_catalogue_of_checks_is_the_configs_own():
    """docs/recipe-checks.md holds `domainpt keys --rules`: regenerate it with that command when a rule changes."""
    page = (Path(__file__).resolve().parents[1] / "docs" / "recipe-checks.md").read_text()
    assert page.rstrip().endswith(C.rules_markdown())
    assert "| `tasks.N.labels` | must not be empty; must not repeat an item |" in page
    assert "| `eval.harness_limit` | must be >= 2 |" in page and "| `lora.seeds` | must not be empty; must not repeat" in page


def test_the_fuzzer_reaches_the_rules_it_is_about():
    keys = {k for k, _, _ in LEAVES}
    assert {"tasks.0.labels", "lora.seeds", "data.replay_share", "eval.harness_limit", "tasks.0.test_size",
            "data.domain.0.weight", "train.schedule"} <= keys
    assert len(BROKEN) > 150 and len(FUZZABLE) > 60
    assert set(C.PII_TYPES) == set(__import__("domainpt.data.pii", fromlist=["ORDER"]).ORDER)


@given(recipe=valid_recipes())
def test_a_valid_recipe_loads_and_dry_runs(recipe, tmp_path_factory, capsys):
    tmp = tmp_path_factory.mktemp("valid")
    code, err = run_cli(tmp, recipe, capsys, "dry-run")
    assert code == 0, err
    assert not (tmp / "run").exists()


def assert_one_line_naming(key, words, code, err, tmp) -> None:
    lines = [l for l in err.splitlines() if l.startswith("domainpt: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (key, err)
    assert f"recipe.yaml: {key}: " in lines[0] and words in lines[0], (key, lines[0])
    assert not (tmp / "run").exists()  # prepare stopped before it wrote anything


@pytest.mark.parametrize("key,value,words", BROKEN, ids=[f"{k}={v!r}" for k, v, _ in BROKEN])
def test_every_rule_ends_a_broken_recipe_in_one_line_naming_its_key(key, value, words, tmp_path, capsys):
    recipe = yaml.safe_load(yaml.safe_dump(BASE))
    set_key(recipe, key, value)
    assert_one_line_naming(key, words, *run_cli(tmp_path, recipe, capsys), tmp_path)


@given(recipe=valid_recipes(), case=st.sampled_from(BROKEN))
def test_a_valid_recipe_with_one_value_broken_ends_in_one_line_naming_that_key(recipe, case, tmp_path_factory, capsys):
    key, value, words = case
    set_key(recipe, key, value)
    tmp = tmp_path_factory.mktemp("broken")
    assert_one_line_naming(key, words, *run_cli(tmp, recipe, capsys), tmp)


TASK0 = BASE["tasks"][0]
RULES_BETWEEN_KEYS = [  # (keys set, the key the error must name, what it must say)
    ({"tasks.0.labels": ["Permissive", "Copyleft", "Permissive"]}, "tasks.0.labels", "must not repeat an item, got 'Permissive' twice"),
    ({"tasks.0.verbalizers": {"Permisive": "P"}}, "tasks.0.verbalizers", "'Permisive' is not one of the task's labels"),
    ({"tasks.0.verbalizers": {"Permissive": "P"}}, "tasks.0.verbalizers",
     "labels ['Copyleft', 'Copyleft Limited', 'Proprietary Free'] have no entry"),
    ({"tasks.0.verbalizers": {"Permissive": 1}}, "tasks.0.verbalizers", "expected mapping of str to str"),
    ({"tasks.0.labels": [True, False]}, "tasks.0.labels", "got list [True, False] (quote them"),
    ({"tasks.0.labels": ["Permissive", " "]}, "tasks.0.labels", "must not hold an empty label"),
    ({"tasks.0.prompt": "License text:"}, "tasks.0.prompt", "has no {field}"),
    ({"tasks.0.prompt": "{text"}, "tasks.0.prompt", "not a template"),
    ({"tasks.0.name": "licence/category"}, "tasks.0.name", "names folders and job ids"),
    ({"tasks.0.name": "jobs"}, "tasks.0.name", "and not jobs"),
    ({"tasks.0.metric": "exact_match"}, "tasks.0.metric", "must be accuracy or f1 for a classification task"),
    ({"tasks.0.type": "multiple_choice", "tasks.0.scoring": "head"}, "tasks.0.scoring", "'head' is for classification"),
    ({"tasks": [TASK0, TASK0]}, "tasks", "task names must be unique"),
    ({"data.domain": []}, "data.domain", "must not be empty"),
    ({"data.domain.0.path": "corpus.jsonl"}, "data.domain.0", "exactly one of path, builtin, hf must be set"),
    ({"data.domain.0.revision": "main"}, "data.domain.0.revision", "applies only to an `hf` source"),
    ({"data.general": [], "data.replay_share": 0.1}, "data.replay_share", "needs general sources"),
    ({"data.general": [], "data.replay_share": 0.0, "compare.control": "continued_general"}, "compare.control",
     "trains on general text"),
    ({"data.pii.types": [1]}, "data.pii.types", "expected list of str"),
    ({"data.clean.max_chars": 100}, "data.clean.max_chars", "must be > min_chars"),
    ({"eval.ppl_window": 16}, "eval.ppl_stride", "must be <= ppl_window (16)"),
    ({"train.warmup_start_lr": 0.01}, "train.warmup_start_lr", "must be <= lr (0.003)"),
    ({"train.betas": [0.9, 1.2]}, "train.betas", "must be two numbers in [0, 1)"),
    ({"lora.target_modules": []}, "lora.target_modules", "must be a preset name or a non-empty list"),
    ({"lora.quantize": "nf4", "lora.merge_export": True}, "lora.merge_export", "loses the adapter's precision"),
    ({"eval.harness_limit": 1}, "eval.harness_limit", "must be >= 2"),
    ({"mixture_plan": {"replay_shares": [0.0, 0.1, 0.5]}}, "mixture_plan.replay_shares", "need at least 4 shares"),
    ({"mixture_plan": {"replay_shares": [0.0, 0.1, 0.5, 1.5]}}, "mixture_plan.replay_shares", "each must be in [0, 1)"),
    ({"mixture_plan": {"replay_shares": [0.0, 0.1, 0.1000000001, 0.5]}}, "mixture_plan.replay_shares",
     "would share one pilot folder"),
    ({"mixture_plan": {"holdout_share": 0.2}}, "mixture_plan.holdout_share", "is not one of replay_shares"),
    ({"mixture_plan": {"holdout_share": 0.0}}, "mixture_plan.holdout_share", "is the smallest or largest"),
    ({"mixture_plan": {"pilot_steps": 4, "eval_points": 5}}, "mixture_plan.pilot_steps", "cannot hold eval_points=5"),
]
# Rules between keys tested elsewhere, as they need a launch or lm-eval: the batch against a launch's processes
# (tests/test_config.py), lm-eval's task names (tests/test_harness.py).
TESTED_ELSEWHERE = {"train.global_batch_size", "eval.harness_tasks"}


@pytest.mark.parametrize("changes,named,says", RULES_BETWEEN_KEYS, ids=[n for _, n, _ in RULES_BETWEEN_KEYS])
def test_rules_between_keys_and_of_list_items_name_their_key(changes, named, says, tmp_path, capsys):
    recipe = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        set_key(recipe, key, value)
    assert_one_line_naming(named, says, *run_cli(tmp_path, recipe, capsys), tmp_path)


def test_the_fuzzers_exclusions_name_real_keys():
    keys = {k for k, _, _ in LEAVES}
    assert NOT_VALID_FUZZED - {"name", "domain", "out_dir"} <= keys and set(VALID_RANGE) <= keys


def test_every_rule_between_keys_in_the_catalogue_has_a_case():
    named = {n for _, n, _ in RULES_BETWEEN_KEYS} | TESTED_ELSEWHERE
    for keys, _ in C.CROSS_FIELD_RULES:
        parts = [k.strip().replace(".N", ".0") for k in keys.split("/")]
        assert any(p in named or p + ".0" in named for p in parts), f"no test case for the catalogue's rule on {keys}"
