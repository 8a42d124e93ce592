"""data.transform: reading_comprehension (AdaptLLM): exercises mined from real demo documents, verbatim answers,
seeded output independent of sharding, decontaminated like any text, reported in stats.json, the card and the report."""
import json
import re

import pytest

from conftest import built_once, cli, tiny_recipe_variant
from domainpt.data.builtin import read_builtin
from domainpt.data.reading_comprehension import KINDS, Miner, append_exercises, domain_keywords, text_units

TRANSFORM = {"transform": "reading_comprehension", "reading_comprehension": {"max_chars": 4000}}


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def licences():
    return [r["text"] for _, r in zip(range(300), read_builtin("scancode-licenses"))]


@pytest.fixture(scope="module")
def miner(licences):
    general = [r["text"] for _, r in zip(range(200), read_builtin("wikipedia-sample"))]
    return Miner(tuple(domain_keywords(licences, general, 100)))


def test_domain_keywords_are_words_the_domain_uses_far_more(licences, miner):
    assert {"license", "licensor", "warranty"} <= set(miner.keywords)
    assert not {"the", "which", "with"} & set(miner.keywords)


@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_is_mined_from_real_demo_documents_with_verbatim_answers(kind, licences, miner):
    docs = licences if kind != "title" else [r["text"] for _, r in zip(range(50), read_builtin("icd10cm"))]
    found = [(doc, qa) for doc in docs for qa in miner.mine(doc)[kind]]
    assert found, f"no {kind} exercise in the demo documents"
    for doc, (question, answer) in found[:50]:
        source = _norm(doc)
        if kind == "nli":  # the answer is a label; premise and hypothesis are quoted from the text
            assert answer in ("Yes", "No", "Maybe")
            premise, hypothesis = re.findall(r'"(.*?)"', question)[:2]
            assert _norm(premise) in source and _norm(hypothesis)[1:] in source
        else:
            assert _norm(answer) in source or _norm(answer[0].lower() + answer[1:]) in source, (question, answer)


def test_a_document_without_the_patterns_gives_no_such_exercises(miner):
    plain = "Copyright 2020 Example Corp.\n\nAll rights reserved.\n\nPermission is granted to use this file."
    got = miner.mine(plain)
    assert not got["nli"] and not got["commonsense"] and not got["paraphrase"] and not got["title"]
    assert miner.mine("Apples are red. Therefore, they are fruit.")["nli"][0][1] == "Yes"
    assert miner.mine("Apples are red. However, some are green.")["nli"][0][1] == "No"


def test_hard_wrapped_lines_are_not_sentence_ends():
    wrapped = "\n".join(["The licensee may copy and distribute verbatim copies of the Program's source code as", 
                         "received, in any medium, provided that the licensee conspicuously and appropriately",
                         "publishes on each copy an appropriate copyright notice."])
    assert text_units(wrapped) == [" ".join(wrapped.split("\n"))]
    listing = "A00 Cholera\nA00.0 Cholera due to Vibrio cholerae 01, biovar cholerae\nA00.9 Cholera, unspecified"
    assert text_units(listing) == listing.split("\n")


def test_choices_are_seeded_by_document_not_by_order(licences, miner):
    a = [miner.transform(t, hash(t) & 0xFFFF) for t in licences[:40]]
    b = [miner.transform(t, hash(t) & 0xFFFF) for t in reversed(licences[:40])][::-1]
    assert a == b
    other_seed = Miner(miner.keywords, seed=1)
    assert [other_seed.transform(t, hash(t) & 0xFFFF) for t in licences[:40]] != a
    text, counts = a[0]
    assert text.startswith(licences[0].rstrip()) and sum(counts) == text.count("\nAnswer: ")


def test_share_transforms_about_that_share_of_documents(licences, miner):
    half = Miner(miner.keywords, share=0.5)
    changed = sum(half.transform(t, i)[0] != t for i, t in enumerate(licences))
    assert 0.35 * len(licences) < changed < 0.65 * len(licences)


def test_exercises_are_decontaminated_like_any_text(tmp_path, tokenizer, miner):
    """A test text that only the appended exercise contains (template + title) flags the transformed document."""
    from domainpt.config import load_recipe
    from domainpt.data.shard import process_shard, read_shard

    doc = "\n".join(["Example Software License", "", *(f"Clause {i}: the licensee shall keep notice number {i} intact."
                                                          for i in range(6))])
    title_qa = append_exercises("", {"title": [("What is a title for this text?", "Example Software License")]}).strip()
    src = tmp_path / "docs.jsonl"
    src.write_text(json.dumps({"text": doc}) + "\n")
    recipe = load_recipe(tiny_recipe_variant(tmp_path, lambda r: r["data"].update(domain=[{"path": str(src)}],
                                                                                    clean={"min_chars": 10})))
    flags = {}
    for name, m in (("raw", None), ("rc", Miner(miner.keywords, max_per_kind=1))):
        folder = process_shard(recipe, tokenizer, 0, 1, tmp_path / name, "fp", [title_qa], m)
        flags[name] = int(read_shard(folder)["docs"]["task_hit"][0])
    assert flags == {"raw": 0, "rc": 1}


@pytest.fixture(scope="module")
def rc_run(prepared_tiny, tmp_path_factory):
    """The tiny recipe with the transform through `domainpt run`."""
    def build(folder):
        def edit(r):
            r["data"].update(TRANSFORM)
            r["lora"]["seeds"] = [0]  # nothing here is about seeds

        r = cli("run", tiny_recipe_variant(folder, edit))
        assert r.returncode == 0, r.stderr[-3000:]

    folder = built_once(tmp_path_factory, "rc_run", build)
    return folder / "run", folder / "recipe.yaml", prepared_tiny


def test_prepare_reports_exercises_per_kind_in_stats_and_card_and_the_report_names_the_transform(rc_run):
    run, _, raw = rc_run
    stats = json.loads((run / "prepare" / "stats.json").read_text())
    assert set(stats["reading_comprehension"]) == set(KINDS) and sum(stats["reading_comprehension"].values()) > 0
    summary = stats["reading_comprehension_summary"]
    assert 0 < summary["documents_transformed"] <= summary["domain_documents"] and summary["exercise_tokens"] > 0
    raw_stats = json.loads((raw / "prepare" / "stats.json").read_text())
    # the same documents are dropped as contaminated: held-out text is raw, the exercises' templates match nothing
    assert stats["contaminated_found"] == raw_stats["contaminated_found"]
    assert stats["tokens_out"] > raw_stats["tokens_out"]  # the same documents, plus their exercises
    card = (run / "prepare" / "data_card.md").read_text()
    assert "## Reading-comprehension exercises (AdaptLLM)" in card and "Question: " in card
    assert "Transform: reading comprehension (AdaptLLM)" in (run / "compare" / "report.md").read_text()
    res = json.loads((run / "compare" / "results.json").read_text())
    assert res["data"]["reading_comprehension"] == stats["reading_comprehension"] and res["data"]["transform"] == "reading_comprehension"


def test_held_out_text_stays_raw_and_matches_the_raw_run(rc_run):
    run, _, raw = rc_run
    for kind in ("domain", "general"):
        assert (run / "prepare" / f"heldout_{kind}.jsonl").read_text() == (raw / "prepare" / f"heldout_{kind}.jsonl").read_text()


def test_the_transformed_corpus_is_the_same_for_any_number_of_prepare_processes(rc_run, tmp_path):
    run, recipe, _ = rc_run
    out = tmp_path / "run2"
    r = cli("prepare", recipe, f"out_dir={out}", "data.num_proc=2")
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((run / "prepare" / "manifest.json").read_text())["outputs"]
    two = json.loads((out / "prepare" / "manifest.json").read_text())["outputs"]
    assert one["train_tokens_sha256"] == two["train_tokens_sha256"]
    s1, s2 = (json.loads((p / "prepare" / "stats.json").read_text()) for p in (run, out))
    assert s1["reading_comprehension"] == s2["reading_comprehension"]
