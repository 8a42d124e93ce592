"""Classification with a head (`tasks[].scoring: head`): LoRA + a trained head, for a decoder and for a
BERT-style encoder; only adapter and head weights train, the saved adapter reloads to the same predictions."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, review_examples


def _train_and_check(base: str, encoder: bool, tmp_path, steps=80, lr=0.01):
    from peft import PeftModel, get_peft_model

    from domainpt.config import load_recipe
    from domainpt.eval.scoring import classify_examples
    from domainpt.eval.stage import adapted_model
    from domainpt.finetune import head_features, lora_config, train_adapter
    from domainpt.encoding import end_of_text_id
    from domainpt.models import load_classifier, load_tokenizer

    recipe = load_recipe(TINY, [f"lora.steps={steps}", f"lora.lr={lr}", "lora.batch_size=8"])
    tok = load_tokenizer(base)
    pad = tok.pad_token_id if encoder else end_of_text_id(tok)
    examples = review_examples()
    feats = head_features(tok, examples, end_of_text_id(tok), encoder)
    if encoder:
        assert feats[0][0][0] == tok.cls_token_id and feats[0][0][-1] == tok.sep_token_id

    # only the adapter and the head are trainable
    model = get_peft_model(load_classifier(base, 2, pad), lora_config(recipe, load_classifier(base, 2, pad), head=True))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "modules_to_save" in n for n in trainable), trainable
    assert any("modules_to_save" in n for n in trainable)

    adapter = tmp_path / "seed0" / "adapter"  # finetune's layout, which evaluate's score_adapter reads
    adapter.parent.mkdir()
    log = train_adapter(recipe, base, feats, 0, adapter, desc="t", num_labels=2, pad_id=pad)
    losses = log["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses

    saved = load_file(str(adapter / "adapter_model.safetensors"))
    assert all("lora_" in k or any(h in k for h in ("score", "classifier")) for k in saved), list(saved)
    inputs = [f[0] for f in feats]
    preds = []
    for _ in range(2):  # a fresh base each time: the head comes from the adapter folder, not from the seed
        torch.manual_seed(123)
        peft = PeftModel.from_pretrained(load_classifier(base, 2, pad), str(adapter))
        preds.append(classify_examples(peft, inputs, examples, pad, batch_size=16))
    assert preds[0] == preds[1]
    # evaluate's CPU path folds adapter and trained head into a copy of the base: the same predictions
    torch.manual_seed(123)
    merged = adapted_model(load_classifier(base, 2, pad), adapter, merge=True, dtype=torch.float32)
    rows = classify_examples(merged, inputs, examples, pad, batch_size=16)
    assert [r["pred"] for r in rows] == [r["pred"] for r in preds[0]]
    assert max(abs(x - y) for a, b in zip(rows, preds[0]) for x, y in zip(a["logits"], b["logits"])) < 1e-3
    accuracy = sum(r["correct"] for r in preds[0]) / len(examples)
    assert accuracy >= 0.9, accuracy
    return log


def test_head_on_a_decoder(tiny_llama, tmp_path):
    _train_and_check(tiny_llama, encoder=False, tmp_path=tmp_path)


def test_head_on_an_encoder(tiny_bert, tmp_path):
    _train_and_check(tiny_bert, encoder=True, tmp_path=tmp_path)


def test_scoring_head_only_for_classification():
    from domainpt.config import TaskConfig, SourceConfig

    with pytest.raises(ValueError, match="scoring: must be"):
        TaskConfig(name="q", type="multiple_choice", scoring="head", source=SourceConfig(path="x.jsonl"))


def test_head_task_through_every_stage(tmp_path):
    """A `scoring: head` task in a real run: fine-tuned rows come from the head, zero-shot from likelihood."""
    import json

    from conftest import check_results_contract, cli, tiny_recipe_variant

    path = tiny_recipe_variant(tmp_path, lambda recipe: recipe["tasks"][0].update(scoring="head"))
    r = cli("run", path, "train.max_steps=4", "train.eval_every=0", "train.save_every=0", "lora.seeds=[0,1]")
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "run"
    pred = out / "evaluate" / "predictions" / "licence-category"
    ft = [json.loads(l) for l in (pred / "domain_model" / "seed0.jsonl").read_text().splitlines()]
    zs = [json.loads(l) for l in (pred / "domain_model" / "zero_shot.jsonl").read_text().splitlines()]
    assert len(ft[0]["logits"]) == 4 and "logliks" in zs[0]
    res = json.loads((out / "compare" / "results.json").read_text())
    assert len(res["tasks"]["licence-category"]["general_model"]["finetuned"]["seeds"]) == 2
    check_results_contract(out / "compare" / "results.json")
