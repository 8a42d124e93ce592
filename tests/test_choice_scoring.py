"""Choices scored with end-of-text: a label whose tokens extend another's (' Copyleft' -> ' Copyleft Limited')
can win after LoRA, and prepare says, in one line per pair, where it cannot."""
import json

import pytest
import torch
from torch.nn import functional as F

from conftest import TINY, cli, review_examples

SHORT, LONG = " Copyleft", " Copyleft Limited"


def _tiny_llama(tokenizer, init_range=0.02):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=True,
                      initializer_range=init_range)
    return LlamaForCausalLM(cfg).eval()


def test_prefix_pairs_with_the_real_tokenizer(tokenizer):
    from domainpt.eval.scoring import prefix_pairs
    from domainpt.preflight import choice_prefix_pairs

    assert tokenizer(LONG, add_special_tokens=False)["input_ids"][:2] == tokenizer(SHORT, add_special_tokens=False)["input_ids"]
    assert prefix_pairs(tokenizer, [" Permissive", SHORT, LONG, " Proprietary Free"]) == [(SHORT, LONG)]
    assert prefix_pairs(tokenizer, [" Permissive", SHORT, " Proprietary Free"]) == []
    assert prefix_pairs(tokenizer, [" good", " bad", " good"]) == []  # a repeated choice is no pair
    # multiple choice: every question's set, each pair once
    mc = [{"choices": [" 1", " 10", " 2"]}, {"choices": [" 2", " 1", " 10"]}, {"choices": [" yes"]}]
    assert choice_prefix_pairs(tokenizer, mc) == [[" 1", " 10"]]


def test_suffixed_score_equals_a_plain_forward_pass(tokenizer):
    from domainpt.eval.scoring import score_examples
    from domainpt.encoding import end_of_text_id

    model, eot = _tiny_llama(tokenizer), end_of_text_id(tokenizer)
    examples = [{"id": "a", "prompt": "License text:\nMIT\nCategory:", "choices": [" Permissive", SHORT, LONG], "answer": 0},
                {"id": "b", "prompt": "Short:", "choices": [SHORT, LONG], "answer": 1}]
    rows = score_examples(model, tokenizer, examples, bos=eot, batch_size=2, end_of_text=eot)
    for ex, row in zip(examples, rows):
        prompt = [eot] + tokenizer(ex["prompt"], add_special_tokens=False)["input_ids"]
        for choice, got in zip(ex["choices"], row["logliks"]):
            cont = tokenizer(choice, add_special_tokens=False)["input_ids"] + [eot]
            with torch.no_grad():
                logp = F.log_softmax(model(input_ids=torch.tensor([prompt + cont])).logits[0].float(), -1)
            want = sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(cont))
            assert got == pytest.approx(want, abs=1e-4)
    # acc_norm still divides by the choice's bytes: the end-of-text token adds none
    norm = [v / len(c.encode()) for v, c in zip(rows[0]["logliks"], examples[0]["choices"])]
    assert rows[0]["pred_norm"] == max(range(3), key=norm.__getitem__)


def test_encoder_scoring_ignores_the_end_of_text_suffix(tiny_bert):
    from domainpt.eval.scoring import score_examples
    from domainpt.models import load_model, load_tokenizer

    tok, model = load_tokenizer(tiny_bert), load_model(tiny_bert, "mlm")
    examples = review_examples(4)
    plain = score_examples(model, tok, examples, bos=0, encoder=True)
    assert score_examples(model, tok, examples, bos=0, encoder=True, end_of_text=tok.sep_token_id) == plain


def test_the_longer_label_is_reachable_only_with_end_of_text(tokenizer, tmp_path):
    """LoRA trained on prompt + label + end-of-text, where the right label is ' Copyleft' for good reviews and
    ' Copyleft Limited' for bad ones: scored alone the longer label can never win; scored with end-of-text it does."""
    from peft import PeftModel

    from domainpt.config import load_recipe
    from domainpt.eval.scoring import score_examples
    from domainpt.finetune import train_adapter, training_features
    from domainpt.encoding import end_of_text_id
    from domainpt.models import load_model

    base = tmp_path / "base"
    _tiny_llama(tokenizer, init_range=0.3).save_pretrained(base)  # wide init: a frozen tied head that LoRA can steer
    tokenizer.save_pretrained(base)
    examples = [{**e, "choices": [SHORT, LONG]} for e in review_examples(96)]
    train, test = examples[:64], examples[64:]
    eot = end_of_text_id(tokenizer)
    recipe = load_recipe(TINY, ["lora.steps=80", "lora.lr=0.03", "lora.batch_size=8", "lora.r=4", "lora.alpha=8"])
    train_adapter(recipe, str(base), training_features(tokenizer, train, eot, eot), 0, tmp_path / "adapter", desc="t")
    model = PeftModel.from_pretrained(load_model(str(base), "clm"), str(tmp_path / "adapter"))

    alone = score_examples(model, tokenizer, test, eot)
    # the longer label's sum is the shorter one's plus a log-probability < 0: it can never be predicted
    assert all(r["logliks"][1] < r["logliks"][0] and r["pred"] == 0 for r in alone)
    with_eot = score_examples(model, tokenizer, test, eot, end_of_text=eot)
    acc = [sum(r["correct"] for r in rows) / len(rows) for rows in (alone, with_eot)]
    assert acc[0] == pytest.approx(0.5) and acc[1] >= 0.9, acc
    longer_right = [r for r in with_eot if r["answer"] == 1]
    assert sum(r["pred"] == 1 for r in longer_right) >= 0.9 * len(longer_right)


def test_prefix_message_follows_the_recipe():
    from domainpt.config import load_recipe
    from domainpt.preflight import known_choices, prefix_line

    recipe = load_recipe(TINY)
    task = recipe.tasks[0]
    assert known_choices(task) == [" Permissive", SHORT, LONG, " Proprietary Free"]
    line = prefix_line(recipe, task, SHORT, LONG)
    assert line == ("[domainpt] task 'licence-category': ' Copyleft' is a token prefix of ' Copyleft Limited': zero-shot "
                    "scoring without end-of-text can never choose 'Copyleft Limited' (set eval.zero_shot_end_of_text: true "
                    "to score choices with end-of-text); after LoRA choices are scored with end-of-text, so both are reachable")
    on = load_recipe(TINY, ["eval.zero_shot_end_of_text=true"])
    assert on.eval.zero_shot_end_of_text is True
    assert "can never choose" not in prefix_line(on, on.tasks[0], SHORT, LONG)
    assert "zero-shot scoring adds end-of-text to every choice" in prefix_line(on, on.tasks[0], SHORT, LONG)


def test_prepare_says_it_once_and_records_it(tmp_path):
    out = tmp_path / "run"
    r = cli("prepare", TINY, f"out_dir={out}", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in (r.stdout + r.stderr).splitlines() if "is a token prefix of" in l]
    assert len(lines) == 1, lines  # preflight knows the labels; prepare does not repeat them
    assert lines[0].startswith("[domainpt] task 'licence-category': ' Copyleft' is a token prefix of ' Copyleft Limited': "
                               "zero-shot scoring without end-of-text can never choose 'Copyleft Limited'")
    stats = json.loads((out / "prepare" / "stats.json").read_text())["tasks"]["licence-category"]
    assert stats["prefix_choice_pairs"] == [[SHORT, LONG]] and "labels" in stats


def test_choices_read_from_data_are_reported_when_splits_are_built(tokenizer, tmp_path, capsys):
    """Without `labels:` preflight cannot know the choices: prepare says it when it builds the splits, once a run."""
    from domainpt.config import load_recipe
    from domainpt.preflight import _REPORTED
    from domainpt.prepare import ensure_task_splits

    recipe = load_recipe(TINY, [f"out_dir={tmp_path / 'run'}"])
    recipe.tasks[0].labels = None  # every category in the data, 'Copyleft' and 'Copyleft Limited' among them
    _REPORTED.clear()  # as check_model does at the start of a prepare run
    for _ in range(2):  # the second call reuses the splits
        stats, _texts = ensure_task_splits(recipe, tokenizer, tmp_path / "prep", "fp")
    lines = [l for l in capsys.readouterr().out.splitlines() if "is a token prefix of" in l]
    assert len(lines) == 1 and f"'{SHORT}' is a token prefix of '{LONG}'" in lines[0], lines
    assert [SHORT, LONG] in stats["licence-category"]["prefix_choice_pairs"]
