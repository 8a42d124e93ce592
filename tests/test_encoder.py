"""Encoders (BERT-style masked LMs) scored and fine-tuned by pseudo-log-likelihood, and a whole run with one."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY, check_results_contract, cli, review_examples, tiny_recipe_variant


class FixedLogits(torch.nn.Module):
    """A stand-in masked LM: the same logits at every position, or (identity=True) a one-hot of the input id,
    which can only score a target well if the target is visible — i.e. if the mask was not applied."""

    def __init__(self, logits: torch.Tensor, identity: bool = False):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())
        self.identity = identity

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        if self.identity:
            return SimpleNamespace(logits=20.0 * torch.nn.functional.one_hot(input_ids, self.logits.numel()).float())
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_pll_windows_score_every_token_once_with_bounded_context():
    from domainpt.eval.masked import pll_windows

    ids = list(range(10, 47))
    items = pll_windows(ids, window=8, stride=4, cls=1, sep=2)
    scored = [seq[pos] for seq, pos in items]
    assert scored == ids  # each token once, in order
    for seq, pos in items:
        assert seq[0] == 1 and seq[-1] == 2 and len(seq) <= 8 and 0 < pos < len(seq) - 1
    assert pll_windows([], 8, 4, 1, 2) == []


def test_pseudo_perplexity_of_a_uniform_model_is_the_vocabulary_size(tiny_bert):
    from domainpt.eval.perplexity import pseudo_perplexity
    from domainpt.models import load_tokenizer

    tok = load_tokenizer(tiny_bert)
    V = len(tok)
    texts = ["great item and it seems fine", "the item was awful and poor and sad"]
    r = pseudo_perplexity(FixedLogits(torch.zeros(V)), tok, texts, window=6, stride=2, max_tokens=1000, batch_size=3)
    n = sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert r["tokens"] == n and r["documents"] == 2 and r["method"] == "pseudo-log-likelihood"
    assert r["ppl"] == pytest.approx(V, rel=1e-5)
    assert r["bpb"] == pytest.approx(n * math.log(V) / (math.log(2) * sum(len(t.encode()) for t in texts)), rel=1e-5)


def test_masked_choice_scores_are_known_sums_and_the_target_is_masked(tiny_bert):
    from domainpt.eval.masked import masked_choice_logliks
    from domainpt.eval.scoring import score_examples
    from domainpt.models import load_tokenizer

    tok = load_tokenizer(tiny_bert)
    V = len(tok)
    logp = torch.log_softmax(torch.randn(V, generator=torch.Generator().manual_seed(0)), -1)
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    examples = [{"id": "a", "prompt": "Review: the item", "choices": [" great", " awful poor", " sad"], "answer": 1}]
    expected = [sum(logp[t].item() for t in ids(c)) for c in examples[0]["choices"]]
    got = masked_choice_logliks(FixedLogits(logp), tok, [ids(examples[0]["prompt"])], [[ids(c) for c in examples[0]["choices"]]],
                                batch_size=2, desc="t")[0]
    assert got == pytest.approx(expected, abs=1e-4)
    row = score_examples(FixedLogits(logp), tok, examples, bos=0, encoder=True)[0]
    assert row["pred"] == max(range(3), key=expected.__getitem__)
    per_byte = [e / len(c.encode()) for e, c in zip(expected, examples[0]["choices"])]
    assert row["pred_norm"] == max(range(3), key=per_byte.__getitem__)
    # a model that copies its input would give ~0 if it could see the target; masked, it sees [MASK]
    copy = masked_choice_logliks(FixedLogits(torch.zeros(V), identity=True), tok, [ids("the item")], [[ids(" great")]], 2, "t")
    assert copy[0][0] < -10


def test_lora_on_an_encoder_learns_a_likelihood_task(tiny_bert, tmp_path):
    """Trained on masked answer tokens, scored by their pseudo-log-likelihood: the base stays untouched, the adapter
    alone is saved and reloads to the same scores, and accuracy on the learnable task ends high."""
    from peft import PeftModel, get_peft_model

    from domainpt.config import load_recipe
    from domainpt.finetune import lora_config, masked_features, train_adapter
    from domainpt.models import load_model, load_tokenizer
    from domainpt.eval.scoring import score_examples

    tok = load_tokenizer(tiny_bert)
    examples = review_examples()
    feats = masked_features(tok, examples)
    assert feats[0][0][0] == tok.cls_token_id and feats[0][0][-1] == tok.sep_token_id
    recipe = load_recipe(TINY, ["lora.steps=80", "lora.lr=0.01", "lora.batch_size=8"])
    probe = load_model(tiny_bert, "mlm")
    trainable = [n for n, p in get_peft_model(probe, lora_config(recipe, probe, objective="mlm")).named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable), trainable  # the base (and its MLM head) stays frozen
    log = train_adapter(recipe, tiny_bert, feats, 0, tmp_path / "adapter", desc="t", objective="mlm",
                        mask_id=tok.mask_token_id, pad_id=tok.pad_token_id)
    losses = log["losses"]
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:5]) / 5, losses
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert saved and all("lora_" in k for k in saved), list(saved)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["task_type"] is None
    runs = []
    for _ in range(2):
        base = load_model(tiny_bert, "mlm")
        runs.append(score_examples(PeftModel.from_pretrained(base, str(tmp_path / "adapter")), tok, examples, 0, encoder=True))
    assert runs[0] == runs[1]
    before = score_examples(load_model(tiny_bert, "mlm"), tok, examples, 0, encoder=True)
    acc = sum(r["correct"] for r in runs[0]) / len(examples)
    assert acc >= 0.9 and acc > sum(r["correct"] for r in before) / len(examples) + 0.2, acc


def test_a_qa_task_with_an_encoder_is_refused_before_any_work(demo_bert, tmp_path):
    out, data = tmp_path / "run", tmp_path / "qa.jsonl"
    data.write_text("".join(json.dumps({"question": f"q{i}?", "answers": [f"a{i}"]}) + "\n" for i in range(40)))
    task = f"tasks=[{{name: q, type: qa, source: {{path: {data}}}, prompt: \"{{question}}\"}}]"
    r = cli("prepare", TINY, f"out_dir={out}", f"model.base={demo_bert}", "model.init=pretrained", task)
    assert r.returncode != 0
    last = r.stderr.strip().splitlines()[-1]
    assert "type qa" in last and "masked LM" in last and "Traceback" not in r.stderr
    assert not (out / "prepare" / "manifest.json").exists()


def test_an_encoder_runs_through_every_stage(demo_bert, tmp_path):
    """BERT through prepare -> MLM pretrain -> LoRA (likelihood task and head task) -> evaluate -> compare."""
    def edit(recipe):
        recipe["model"] = {"base": demo_bert, "init": "pretrained"}
        recipe["tasks"].append({**recipe["tasks"][0], "name": "licence-head", "scoring": "head"})

    path = tiny_recipe_variant(tmp_path, edit)
    r = cli("run", path, "train.max_steps=24", "train.lr=0.002", "eval.ppl_max_tokens=768", "train.ppl_max_tokens=256")
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "run"
    assert json.loads((out / "pretrain" / "manifest.json").read_text())["objective"] == "mlm"
    scores = json.loads((out / "evaluate" / "scores.json").read_text())
    assert scores["perplexity"]["domain"]["domain_model"]["method"] == "pseudo-log-likelihood"
    res = json.loads((out / "compare" / "results.json").read_text())
    assert res["perplexity_method"] == "pseudo-log-likelihood"
    history = res["pretrain_eval_history"]
    assert history[0]["step"] == 0 and "eval_domain_ppl" in history[0] and len(history) >= 2
    for name in ("licence-category", "licence-head"):
        for m in ("general_model", "domain_model"):
            t = res["tasks"][name][m]
            assert "zero_shot" in t and len(t["finetuned"]["seeds"]) == 2
        preds = [json.loads(l) for l in open(out / "evaluate" / "predictions" / name / "domain_model" / "seed1.jsonl")]
        assert len(preds) == res["tasks"][name]["n_test"]
        assert ("logits" if name == "licence-head" else "logliks") in preds[0]
    assert "pseudo-perplexity" in (out / "compare" / "report.md").read_text()
    check_results_contract(out / "compare" / "results.json")
