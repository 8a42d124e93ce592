"""The full recipes' hub data as it really is: every hub source and task of medical, legal, financial and
bert_medical is read by the recipe's own SourceConfig / TaskConfig through the same ingest code as the hub id,
with `datasets.load_dataset` sent to a local stand-in that has the real dataset's features, configs, splits and
layout (tests/fixtures/hub_datasets.py)."""
import importlib.util
import json
import pickle
import sys

import pytest

from conftest import ROOT


def _load_stand_ins():
    """tests/fixtures/hub_datasets.py by path: a package named `fixtures` could be shadowed by PyPI's."""
    spec = importlib.util.spec_from_file_location("hub_datasets", ROOT / "tests" / "fixtures" / "hub_datasets.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hub_datasets"] = module
    spec.loader.exec_module(module)
    return module


HUB = _load_stand_ins()
FULL = [ROOT / "recipes" / f"{n}.yaml" for n in ("medical", "legal", "financial", "examples/bert_medical")]


def _recipe(path):
    from domainpt.config import load_recipe

    return load_recipe(path)


def _hub_sources(path):
    """(recipe key, SourceConfig) for every hub source a recipe names, tasks' included."""
    r = _recipe(path)
    out = [(f"data.{kind}.{i}", s) for kind in ("domain", "general") for i, s in enumerate(getattr(r.data, kind))]
    out += [(f"tasks.{t.name}.{k}", getattr(t, k)) for t in r.tasks for k in ("source", "test_source") if getattr(t, k)]
    return [(key, s) for key, s in out if s.hf]


CORPUS = [(p, key) for p in FULL for key, _ in _hub_sources(p) if key.startswith("data.")]
TASKS = [(p, t.name) for p in FULL for t in _recipe(p).tasks]


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    return HUB.build_all(tmp_path_factory.mktemp("hub"))


@pytest.fixture
def hub_calls(stand_ins, monkeypatch):
    """Send datasets.load_dataset(hub id, ..., revision=...) to the stand-in of that repo and revision; return
    the calls made, as the hub would have received them."""
    import datasets

    real, calls = datasets.load_dataset, []

    def load_dataset(path, name=None, **kw):
        revision = kw.pop("revision", None)
        calls.append({"path": path, "name": name, "revision": revision, **kw})
        folder = stand_ins.get((path, revision))
        if folder is None:
            raise FileNotFoundError(f"no stand-in for {path} at revision {revision or 'main'}")
        return real(str(folder), name, **kw)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_every_hub_source_of_the_full_recipes_has_a_stand_in():
    missing = [f"{p.name}: {key} = {s.hf} ({s.hf_config}, {s.split}) at {s.revision or 'main'}"
               for p in FULL for key, s in _hub_sources(p) if not HUB.covers(s.hf, s.hf_config, s.revision, s.split)]
    assert not missing, "hub sources without a stand-in in tests/fixtures/hub_datasets.py:\n" + "\n".join(missing)
    assert not HUB.covers("eloukas/edgar-corpus", "year_2020", None, "train")  # main holds only the loading script


@pytest.mark.parametrize("path,key", CORPUS, ids=lambda x: getattr(x, "stem", x))
def test_corpus_sources_give_documents_with_text(path, key, hub_calls):
    from domainpt.data.ingest import BadRecords, iter_source

    src = dict(_hub_sources(path))[key]
    bad = BadRecords()
    recs = list(iter_source(src, bad))
    assert len(recs) == HUB.N_ROWS and bad.total == 0
    assert all(isinstance(r["text"], str) and r["text"].strip() for r in recs)
    assert [c["path"] for c in hub_calls] == [src.hf] and hub_calls[0]["revision"] == src.revision


@pytest.mark.parametrize("path,name", TASKS, ids=lambda x: getattr(x, "stem", x))
def test_tasks_give_valid_examples(path, name, hub_calls, tokenizer):
    from domainpt.data.ingest import BadRecords
    from domainpt.tasks import split_task

    recipe = _recipe(path)
    task = next(t for t in recipe.tasks if t.name == name)
    bad = BadRecords()
    train, test, removed = split_task(task, tokenizer, bad, seed=recipe.data.seed, dedup=recipe.data.dedup)
    assert bad.total == 0, bad.examples[:3]
    assert train and test and removed == {"exact": 0, "near": 0}
    for e in train + test:
        assert e["prompt"].strip() and len(e["choices"]) >= 2 and all(c.strip() for c in e["choices"])
        assert 0 <= e["answer"] < len(e["choices"])


def test_edgar_reads_the_parquet_export_by_folder(hub_calls):
    from domainpt.data.ingest import BadRecords, iter_source
    from domainpt.errors import DomainptError

    src = dict(_hub_sources(ROOT / "recipes" / "financial.yaml"))["data.domain.0"]
    assert (src.hf, src.hf_config, src.revision) == ("eloukas/edgar-corpus", "year_2020", "refs/convert/parquet")
    recs = list(iter_source(src, BadRecords()))
    assert {r["year"] for r in recs} == {"2020"}  # that config's folder only, not every year of the export
    assert hub_calls == [{"path": "eloukas/edgar-corpus", "name": None, "revision": "refs/convert/parquet",
                          "data_dir": "year_2020", "split": "train", "streaming": True}]
    # Without the revision the main branch is read, and `datasets` refuses its loading script: the recipe's old form.
    import dataclasses

    with pytest.raises(DomainptError, match=r"cannot load hub dataset 'eloukas/edgar-corpus': .*scripts are no longer supported"):
        list(iter_source(dataclasses.replace(src, revision=None), BadRecords()))


def test_a_revision_reaches_the_hub_and_its_error(hub_calls):
    from domainpt.config import SourceConfig
    from domainpt.data.ingest import BadRecords, iter_source
    from domainpt.errors import DomainptError

    src = SourceConfig(hf="qiaojin/PubMedQA", hf_config="pqa_labeled", revision="0123abc", text_field="question")
    with pytest.raises(DomainptError, match=r"^cannot load hub dataset 'qiaojin/PubMedQA' at revision '0123abc': "):
        list(iter_source(src, BadRecords()))
    assert hub_calls == [{"path": "qiaojin/PubMedQA", "name": "pqa_labeled", "revision": "0123abc", "split": "train",
                          "streaming": True}]


def _medmcqa():
    return next(t for t in _recipe(ROOT / "recipes" / "medical.yaml").tasks if t.name == "medmcqa")


def test_medmcqa_class_label_answer_is_its_index(hub_calls, stand_ins, tokenizer):
    """cop is a ClassLabel named a..d: the record with cop=2 must give answer 2 (and choice opc). Reading the
    decoded name 'c' as the answer made every record bad before."""
    import pyarrow.parquet as pq

    from domainpt.data.ingest import BadRecords
    from domainpt.tasks import build_examples

    raw = pq.read_table(stand_ins[("openlifescienceai/medmcqa", None)] / "data" / "train-00000-of-00001.parquet").to_pylist()
    bad = BadRecords()
    examples, _ = build_examples(_medmcqa(), tokenizer, bad)
    assert bad.total == 0 and len(examples) == len(raw)
    by_id = {e["id"]: e for e in examples}
    for r in raw:
        e = by_id[r["id"]]
        assert e["answer"] == r["cop"] and e["choices"] == [" " + r[k] for k in ("opa", "opb", "opc", "opd")]
        assert e["prompt"] == f"Question: {r['question']}\nAnswer:"
    assert any(r["cop"] == 2 and by_id[r["id"]]["answer"] == 2 for r in raw)


def test_a_class_label_answer_is_never_read_from_its_name(tmp_path, tokenizer):
    """Names that look like numbers are still names: with names '1'..'4' the first class is answer 0."""
    import datasets

    from domainpt.config import SourceConfig, TaskConfig
    from domainpt.data.ingest import BadRecords
    from domainpt.tasks import build_examples

    feats = datasets.Features({"q": datasets.Value("string"), "a": datasets.Value("string"), "b": datasets.Value("string"),
                               "ans": datasets.ClassLabel(names=["1", "2"])})
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict({"q": ["Which one?", "And now?"], "a": ["x", "y"], "b": ["z", "w"], "ans": [0, 1]},
                               features=feats).to_parquet(str(tmp_path / "data" / "train-00000-of-00001.parquet"))
    task = TaskConfig(name="mc", type="multiple_choice", source=SourceConfig(hf=str(tmp_path)), question_field="q",
                      choices_field=["a", "b"], answer_field="ans", prompt="{question}")
    examples, _ = build_examples(task, tokenizer, BadRecords())
    assert [e["answer"] for e in examples] == [0, 1]


def test_a_letter_in_a_plain_file_is_not_guessed_into_an_index(tmp_path, tokenizer):
    """Only a class label says which letter is which choice; a letter in a JSON file is a bad record."""
    from domainpt.config import SourceConfig, TaskConfig
    from domainpt.data.ingest import BadRecords
    from domainpt.tasks import build_examples

    rows = [{"question": f"Question {i}?", "opa": "x", "opb": "y", "cop": 1} for i in range(3)]
    rows.append({"question": "Lettered?", "opa": "x", "opb": "y", "cop": "b"})
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = TaskConfig(name="mc", type="multiple_choice", source=SourceConfig(path=str(tmp_path / "mc.jsonl")),
                      choices_field=["opa", "opb"], answer_field="cop", prompt="{question}")
    bad = BadRecords(max_share=1.0)
    examples, _ = build_examples(task, tokenizer, bad)
    assert [e["text"] for e in examples] == [f"Question {i}?" for i in range(3)] and bad.total == 1


def test_a_decoded_class_label_is_its_name_and_knows_its_index():
    from domainpt.data.ingest import ClassName

    v = ClassName("c", 2)
    assert v == "c" and hash(v) == hash("c") and int(v) == 2 and str(v) == "c" and type(str(v)) is str
    assert v.index("c") == 0  # still a str: its methods are not hidden
    assert json.dumps({"cop": v}) == '{"cop": "c"}'
    back = pickle.loads(pickle.dumps(v))  # prepare's worker processes
    assert back == "c" and int(back) == 2


def test_class_names_nested_fields_and_record_ids_come_through(hub_calls, stand_ins):
    import pyarrow.parquet as pq

    from domainpt.config import SourceConfig
    from domainpt.data.ingest import BadRecords, iter_source

    pubmedqa = next(t for t in _recipe(ROOT / "recipes" / "medical.yaml").tasks if t.name == "pubmedqa")
    src = SourceConfig(hf=pubmedqa.source.hf, hf_config=pubmedqa.source.hf_config, text_field=pubmedqa.text_field)
    raw = pq.read_table(stand_ins[("qiaojin/PubMedQA", None)] / "pqa_labeled" / "train-00000-of-00001.parquet").to_pylist()
    recs = list(iter_source(src, BadRecords()))
    assert [r["text"] for r in recs] == ["\n".join(r["context"]["contexts"]) for r in raw]  # abstract sections joined
    assert recs[0]["id"] == "qiaojin/PubMedQA:train:0"
    phrasebank = SourceConfig(hf="lmassaron/FinancialPhraseBank", text_field="sentence")
    recs = list(iter_source(phrasebank, BadRecords()))
    assert [r["label"] for r in recs[:3]] == ["negative", "neutral", "positive"]  # ClassLabel names
    assert all(r["label"] == r["sentiment"] for r in recs)


def test_tasks_fill_prompts_and_choices_from_record_fields(hub_calls, stand_ins, tokenizer):
    import pyarrow.parquet as pq

    from domainpt.config import TaskConfig
    from domainpt.data.ingest import BadRecords
    from domainpt.errors import DomainptError
    from domainpt.tasks import build_examples

    medical = _recipe(ROOT / "recipes" / "medical.yaml")
    pubmedqa = next(t for t in medical.tasks if t.name == "pubmedqa")
    raw = pq.read_table(stand_ins[("qiaojin/PubMedQA", None)] / "pqa_labeled" / "train-00000-of-00001.parquet").to_pylist()
    ex, labels = build_examples(pubmedqa, tokenizer, BadRecords())
    assert labels == ["yes", "no", "maybe"] and ex[0]["choices"] == [" yes", " no", " maybe"]
    assert ex[1]["prompt"] == (f"Abstract: {chr(10).join(raw[1]['context']['contexts'])}\nQuestion: {raw[1]['question']}\n"
                               "Answer (yes, no or maybe):")
    legal = _recipe(ROOT / "recipes" / "legal.yaml")
    ledgar = next(t for t in legal.tasks if t.name == "ledgar")
    ex, labels = build_examples(ledgar, tokenizer, BadRecords())
    assert labels == sorted(HUB.LEDGAR_USED) and ex[0]["choices"] == [" " + name for name in labels]
    casehold = next(t for t in legal.tasks if t.name == "casehold")
    ex, _ = build_examples(casehold, tokenizer, BadRecords())
    assert all(len(e["choices"]) == 5 and e["choices"][0].startswith(" holding that") for e in ex)
    financial = _recipe(ROOT / "recipes" / "financial.yaml")
    tweets = next(t for t in financial.tasks if t.name == "fin-tweets")
    ex, labels = build_examples(tweets, tokenizer, BadRecords())
    assert labels == ["0", "1", "2"] and ex[0]["choices"] == [" bearish", " bullish", " neutral"]
    bad = TaskConfig(name="bad", source=pubmedqa.source, text_field="question", label_field="final_decision", prompt="{nonexistent}")
    with pytest.raises(DomainptError, match=r"task 'bad': the prompt names 'nonexistent'"):
        build_examples(bad, tokenizer, BadRecords())
