"""`domainpt publish`: a folder `from_pretrained` loads, a model card the Hub's own parser reads, with the run's
numbers and verdict words, adapters with cards of their own, and one-line errors (offline push included)."""
import hashlib
import json

import pytest
import torch

from conftest import cli, copy_stages


STAGES = ("prepare", "pretrain", "finetune", "evaluate", "compare", "base_model")
OFFLINE = {"HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def published(tiny_run, tmp_path_factory):
    """The tiny run (a copy: publish takes the run's lock) published with its adapters."""
    work = tmp_path_factory.mktemp("publish")
    run = copy_stages(tiny_run[0], work / "run", *STAGES)
    out = work / "tiny-domain"
    r = cli("publish", run, "--to", out, "--adapters", "--repo-id", "someone/tiny-legal", env=OFFLINE)
    assert r.returncode == 0, r.stderr[-3000:]
    return run, out


def test_the_folder_loads_with_from_pretrained_and_is_the_domain_model(published):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    run, out = published
    model = AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)
    GenerationConfig.from_pretrained(out)
    theirs = load_file(str(run / "pretrain" / "model" / "model.safetensors"))
    ours = load_file(str(out / "model.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert model.num_parameters() > 0
    assert not list(out.glob("*.bin")) and not list(out.parent.glob(f".{out.name}.*"))  # safetensors only, no temp left


def test_the_card_parses_as_the_hub_reads_it_and_holds_results_json_numbers(published):
    from huggingface_hub import ModelCard
    from huggingface_hub.repocard_data import model_index_to_eval_results

    run, out = published
    card = ModelCard.load(out / "README.md")
    meta = card.data.to_dict()
    res = json.loads((run / "compare" / "results.json").read_text())
    assert meta["library_name"] == "transformers" and meta["pipeline_tag"] == "text-generation"
    assert {"domainpt", "domain-adaptation", "legal"} <= set(meta["tags"]) and meta["language"] == ["en"]
    assert "license" not in meta and "Licence: **none stated**" in card.text  # random init: no base licence, not a guess
    assert "base_model" not in meta  # the tiny run's weights started random: SmolLM2 gave only the architecture
    name, results = model_index_to_eval_results(meta["model-index"])
    assert name == "someone/tiny-legal" and results
    t = res["tasks"]["licence-category"]
    by_name = {r.metric_name: r.metric_value for r in results}
    n = t["n_test"]
    assert by_name[f"accuracy (%), after LoRA, mean of 2 seeds, {n} test items"] == round(100 * t["domain_model"]["finetuned"]["mean"], 2)
    assert by_name[f"accuracy (%), 0-shot, no fine-tuning, {n} test items"] == round(100 * t["domain_model"]["zero_shot"]["mean"], 2)
    assert len(results) == 2  # one task, before and after LoRA
    text = card.text
    d = t["difference"]
    assert f"domain minus general after LoRA = {100 * d['mean']:+.1f} points" in text  # the report's own words
    assert ("no reliable difference" in text) == d["includes_zero"]
    assert f"{res['perplexity']['domain']['domain_model']:.2f}" in text
    for section in ("## Verdict", "## Training", "## Data", "## Limitations and bias", "## How to reproduce"):
        assert section in text
    rows = [line for line in text.splitlines() if line.startswith("| domain |")]  # the data table, not the recipe dump
    assert rows and all("CC-BY-4.0" in r for r in rows), rows  # the data's licences, from the data card's facts
    assert "'reliable' means a Holm-adjusted p" in text  # the report's closing verdict line is kept
    for stage in ("prepare", "pretrain", "compare"):  # how to reproduce: the manifests' own hashes
        digest = hashlib.sha256((run / stage / "manifest.json").read_bytes()).hexdigest()
        assert f"{stage}/manifest.json `{digest[:16]}`" in text


def test_adapters_load_on_the_published_model_with_their_own_cards(published):
    from huggingface_hub import ModelCard
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run, out = published
    for seed in (0, 1):
        folder = out / "adapters" / "licence-category" / f"seed{seed}"
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(out), folder)
        assert any("lora_" in n for n, _ in model.named_parameters())
        card = ModelCard.load(folder / "README.md")
        assert card.data.base_model == "someone/tiny-legal" and card.data.library_name == "peft"
        assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == "someone/tiny-legal"


def test_publishing_errors_are_one_line_and_leave_nothing_half_written(tiny_run, published, tmp_path):
    _, out = published
    run = copy_stages(tiny_run[0], tmp_path / "run", *STAGES)
    broken = copy_stages(tiny_run[0], tmp_path / "broken", *STAGES)
    (broken / "prepare" / "stats.json").write_text("{not json")
    cases = [(["publish", tmp_path, "--to", tmp_path / "a"], "compare has not finished there"),
             (["publish", broken, "--to", tmp_path / "f"], "stats.json: unreadable"),
             (["publish", run, "--model", "control", "--to", tmp_path / "b"], "has no control model"),
             (["publish", run, "--to", out], "exists and is not an empty folder"),
             (["publish", run, "--to", tmp_path / "c", "--push"], "--push needs --repo-id")]
    for args, says in cases:
        r = cli(*args, env=OFFLINE)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and "Traceback" not in r.stderr and says in lines[-1], r.stderr[-2000:]
    assert not any((tmp_path / x).exists() for x in "abcf") and not list(tmp_path.glob(".f.*"))
    # a failure after the temporary folder exists (an adapter gone): nothing left, neither the folder nor the temporary
    (run / "finetune" / "licence-category" / "domain_model" / "seed1" / "adapter" / "adapter_config.json").unlink()
    r = cli("publish", run, "--adapters", "--to", tmp_path / "e", env=OFFLINE)
    assert r.returncode == 2 and "seed1/adapter: missing" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    assert not (tmp_path / "e").exists() and not list(tmp_path.glob(".e.*"))
    # no network (HF_HUB_OFFLINE): the push ends in one line, the folder is complete, and the same command pushes it later
    for _ in range(2):
        r = cli("publish", run, "--to", tmp_path / "d", "--push", "--repo-id", "someone/tiny", env=OFFLINE)
        assert r.returncode == 2 and "push to someone/tiny: HF_HUB_OFFLINE is set" in r.stderr.strip().splitlines()[-1]
        assert (tmp_path / "d" / "README.md").is_file() and (tmp_path / "d" / "model.safetensors").is_file()
    assert "holds a published model already: pushing it as it is" in r.stdout
    # ... but not to another repository: the folder's card and adapters name someone/tiny
    r = cli("publish", run, "--to", tmp_path / "d", "--push", "--repo-id", "someone/other", env=OFFLINE)
    assert r.returncode == 2 and "was published for 'someone/tiny', not someone/other" in r.stderr.strip().splitlines()[-1]


def test_push_creates_the_repo_uploads_the_folder_and_keeps_a_private_promise(monkeypatch, tmp_path):
    from huggingface_hub import constants

    import huggingface_hub
    from domainpt.errors import DomainptError
    from domainpt.publish import push

    calls = []

    class FakeApi:  # the Hub's API as huggingface_hub exposes it; no network here
        def create_repo(self, repo_id, private, exist_ok, repo_type):
            calls.append(("create", repo_id, private, exist_ok))

        def repo_info(self, repo_id):
            return type("Info", (), {"private": public_already is False})()

        def upload_folder(self, folder_path, repo_id, repo_type, commit_message):
            calls.append(("upload", folder_path, repo_id))

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    public_already = False
    assert push(tmp_path, "me/model", private=True) == "https://huggingface.co/me/model"
    assert calls == [("create", "me/model", True, True), ("upload", str(tmp_path), "me/model")]
    calls.clear()
    public_already = True  # the repository exists, public: a --private push uploads nothing
    with pytest.raises(DomainptError, match="--private was asked but the repository exists and is public"):
        push(tmp_path, "me/model", private=True)
    assert [c[0] for c in calls] == ["create"]


def test_a_pretrained_base_is_named_in_the_metadata_with_the_hub_datasets_it_read(tiny_run):
    from domainpt.config import load_recipe
    from domainpt.report.model_card import card_data, run_facts

    from conftest import ROOT

    facts = run_facts(tiny_run[0], "domain_model", "me/medical", None, [])
    facts.res = {**facts.res, "recipe": load_recipe(ROOT / "recipes" / "medical.yaml").to_dict()}
    meta = card_data(facts).to_dict()
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-1.7B" and meta["base_model_relation"] == "finetune"
    assert "MedRAG/pubmed" in meta["datasets"] and "license" not in meta  # a hub id's licence is not guessed offline
    assert "medical" in meta["tags"]


def test_a_card_names_a_pretrained_base_and_only_the_data_the_model_read():
    from domainpt.config import load_recipe
    from domainpt.report.model_card import base_model, hub_datasets

    from conftest import ROOT

    demo = load_recipe(ROOT / "recipes" / "demo" / "medical.yaml")
    assert base_model(demo) == ("HuggingFaceTB/SmolLM2-135M-Instruct", "apache-2.0")
    full = load_recipe(ROOT / "recipes" / "medical.yaml")
    assert base_model(full) == ("HuggingFaceTB/SmolLM2-1.7B", None)  # a hub id: its licence is not guessed offline
    trained = hub_datasets(full, "domain_model")
    assert "MedRAG/pubmed" in trained and "qiaojin/PubMedQA" not in trained  # task data trained the adapters only
    assert hub_datasets(full, "control_model") == ["HuggingFaceFW/fineweb-edu"]  # the control read general text alone
