"""Positive and negative controls: the comparison must find an effect that was planted, and none where there is none.

Positive: a corpus that states invented facts (in many phrasings) is pre-trained on by the tiny random model; a
multiple-choice probe on those facts must show the domain model ahead zero-shot, with a paired interval that
excludes 0, while the general model (the untrained random checkpoint) stays near chance.
Negative: the same predictions on both sides give a difference of exactly 0 (interval containing 0, p = 1), and two
equally good models rarely differ; a difference planted in the predictions is found. The ICD-10-CM probe's facts are in
its corpus, and decontamination does not remove them.
"""
import json
import random

import numpy as np
import pytest

from conftest import cli, tiny_recipe_variant

# 20 invented creatures, each with a colour; every colour is one token of the SmolLM2 tokenizer (with its leading
# space) and belongs to exactly two creatures, so without the facts no colour is a better guess than another.
CREATURES = ["zorblat", "quennix", "mirvel", "dranthok", "plimset", "vorquay", "snellip", "tarvonk", "glimbur", "hoskrel",
             "yendrip", "faxolm", "brundex", "kelvash", "oprint", "wixtal", "zumfrey", "crandel", "lopvik", "tessimar"]
COLOURS = ["red", "blue", "green", "yellow", "black", "white", "brown", "pink", "orange", "purple"]
PHRASINGS = ["The {e}'s colour is {v}.", "Every {e} is {v}.", "{V} is the colour of every {e}.", "A {e} is always {v}.",
             "If you see a {e}, it will be {v}.", "The colour of a {e} is {v}.", "Ask anyone: the {e} is {v}.",
             "No {e} has ever been anything but {v}."]
PROBE = "The {e}'s colour is"


def planted_facts() -> list[tuple[str, str]]:
    """(creature, colour): 20 facts (40 take the tiny model about twice the steps)."""
    colours = COLOURS * 2
    random.Random(0).shuffle(colours)
    return list(zip(CREATURES, colours))


def corpus_docs(facts, n_docs: int = 60) -> list[dict]:
    """Each document states every fact once, in a randomly chosen phrasing, in a random order."""
    rng = random.Random(1)
    docs = []
    for i in range(n_docs):
        sents = [rng.choice(PHRASINGS).format(e=e, v=v, V=v.capitalize()) for e, v in facts]
        rng.shuffle(sents)
        docs.append({"id": f"doc{i}", "text": " ".join(sents)})
    return docs


def probe_items(facts, seed: int) -> list[dict]:
    """Multiple-choice items: the right colour and 3 others, as fields a-d (a choices_field list)."""
    rng = random.Random(seed)
    items = []
    for e, v in facts:
        choices = [v] + rng.sample([x for x in COLOURS if x != v], 3)
        rng.shuffle(choices)
        items.append({"id": e, "question": PROBE.format(e=e), **dict(zip("abcd", choices)), "answer": choices.index(v)})
    return items


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_planted_facts_are_found_by_the_probe_and_the_general_model_is_at_chance(tmp_path):
    facts = planted_facts()
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_docs(facts))
    test = write_jsonl(tmp_path / "probe_test.jsonl", probe_items(facts, seed=2))
    # the task's training split (LoRA needs one): the same question about creatures the corpus never mentions
    others = list(zip(("brontisk", "welmora", "quastid", "fendril"), COLOURS))
    train = write_jsonl(tmp_path / "probe_train.jsonl", probe_items(others, seed=3))

    def edit(r):
        r["domain"] = "planted"
        r["data"]["domain"] = [{"path": corpus}]
        r["data"]["heldout_docs"] = 4
        r["tasks"] = [{"name": "planted-probe", "type": "multiple_choice", "source": {"path": train},
                       "test_source": {"path": test}, "choices_field": ["a", "b", "c", "d"], "prompt": "{question}",
                       "max_prompt_tokens": 16, "test_size": len(facts), "train_size": len(others)}]
        # the tiny model, twice as wide (64 wide it needs about twice the steps), a constant LR, AdamW's usual
        # beta2 (0.999) and no weight decay: with the LLM defaults (0.95, 0.1) it learns the facts more slowly
        r["model"]["config_overrides"].update(hidden_size=128, intermediate_size=256, head_dim=32)
        # 100 steps of 4 x 128 tokens: measured (2026-12-02), 60 steps leave the domain model at 0.35, 80 and 100
        # reach 1.0; batches of 2 do not learn them in 150 steps (0.75)
        r["train"].update(max_steps=100, lr=0.003, schedule="constant", betas=[0.9, 0.999], weight_decay=0.0,
                          eval_every=100, save_every=100)
        r["lora"].update(steps=2, seeds=[0])
        r["eval"].update(ppl_max_tokens=512)

    recipe = tiny_recipe_variant(tmp_path, edit)
    r = cli("run", recipe, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "run"
    stats = json.loads((out / "prepare" / "stats.json").read_text())
    assert stats["tasks"]["planted-probe"]["test"] == len(facts)
    # the probe's questions are too short to be n-gram matched: decontamination keeps the documents stating the facts
    assert stats["eval_texts_too_short_to_check"] >= len(facts)
    t = json.loads((out / "compare" / "results.json").read_text())["tasks"]["planted-probe"]
    general, domain, diff = t["general_model"]["zero_shot"]["mean"], t["domain_model"]["zero_shot"]["mean"], t["zero_shot_difference"]
    print(f"planted probe zero-shot: general {general:.3f}, domain {domain:.3f}, difference {diff}")
    assert general <= 0.45, f"the random general model should be near chance (0.25) on invented facts, got {general}"
    assert domain >= 0.6, f"pre-training on the facts should teach them, got {domain}"
    assert diff["ci"][0] > 0 and not diff["includes_zero"] and diff["p_value"] < 0.05, diff


# --- negative and positive controls on the paired statistics themselves ---------------------------------------------

def _predictions(rng, n_seeds: int, n_items: int, accuracy: float, n_choices: int = 4):
    """(seeds x items) predicted choice indices with about `accuracy` right, and the right answers."""
    refs = rng.integers(0, n_choices, n_items)
    wrong = (refs[None] + rng.integers(1, n_choices, (n_seeds, n_items))) % n_choices
    return np.where(rng.random((n_seeds, n_items)) < accuracy, refs[None], wrong), refs


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_same_predictions_on_both_sides_give_no_difference(metric):
    from domainpt.report.stats import paired_difference

    preds, refs = _predictions(np.random.default_rng(0), n_seeds=3, n_items=120, accuracy=0.55)
    d = paired_difference(metric, preds, preds.copy(), refs, n_resamples=300, confidence=0.95, seed=0)
    assert d["mean"] == 0
    assert d["ci"][0] <= 0 <= d["ci"][1] and d["includes_zero"]
    assert d["p_value"] == 1


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_a_planted_difference_is_found(metric):
    from domainpt.report.stats import paired_difference

    rng = np.random.default_rng(1)
    a, refs = _predictions(rng, n_seeds=3, n_items=200, accuracy=0.3)
    b = a.copy()
    gain = rng.choice(np.flatnonzero((a != refs[None]).all(0)), 60, replace=False)  # 30% of the items, all seeds
    b[:, gain] = refs[gain]
    d = paired_difference(metric, a, b, refs, n_resamples=300, confidence=0.95, seed=0)
    if metric == "accuracy":
        assert d["mean"] == pytest.approx(0.30)
    assert d["mean"] > 0.2 and d["ci"][0] > 0 and not d["includes_zero"] and d["p_value"] < 0.05, d
    swapped = paired_difference(metric, b, a, refs, n_resamples=300, confidence=0.95, seed=0)  # b minus a, reversed
    assert swapped["mean"] == pytest.approx(-d["mean"]) and swapped["ci"][1] < 0


def test_two_equally_good_models_rarely_differ():
    """Null calibration: both models (3 seeds each) answer each item right with the same item-specific chance, so any
    difference is noise; a 95% interval may exclude 0 in about 5% of such comparisons, not much more."""
    from domainpt.report.stats import paired_difference

    rng = np.random.default_rng(2)
    n_sims, hits = 100, 0
    for _ in range(n_sims):
        p_item = rng.beta(2, 2, 80)  # items differ in difficulty
        refs = np.zeros(80, int)
        a, b = ((rng.random((3, 80)) >= p_item[None]).astype(int) for _ in range(2))  # 0 = right
        hits += not paired_difference("accuracy", a, b, refs, n_resamples=200, confidence=0.95, seed=0)["includes_zero"]
    assert hits <= 0.12 * n_sims, f"{hits} of {n_sims} null comparisons excluded 0"


def test_icd10_probe_asks_what_the_corpus_states_and_decontamination_keeps_it():
    """The probe's facts are lines of the corpus (`A01.02 Typhoid fever with heart involvement`), and its test texts
    (the codes) cannot match a training document, so prepare's decontamination leaves those documents in."""
    import itertools

    from domainpt.data.builtin import PROBE_MAX_WORDS, read_builtin
    from domainpt.data.decontam import ContaminationIndex

    docs = {d["code"]: d["text"] for d in read_builtin("icd10cm")}
    probe = list(read_builtin("icd10cm-probe"))
    assert len(probe) > 20000 and probe == list(read_builtin("icd10cm-probe"))  # deterministic
    index = ContaminationIndex()
    for r in probe[::50]:
        choices, right = r["choices"], r["choices"][r["answer"]]
        assert len(set(choices)) == 4 and all(len(c.split()) <= PROBE_MAX_WORDS for c in choices)
        assert f"{r['code']} {right}" in docs[r["category"]].splitlines()  # the fact, as the corpus states it
        assert r["question"] == r["text"] == r["code"]
        index.add(r["text"])
    assert index.unchecked == len(probe[::50])  # one word: too short to match anything
    assert not any(index.hits(t) for t in itertools.islice(docs.values(), 300))
