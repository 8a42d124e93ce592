"""Vocabulary extension: old tokens keep ids and embeddings, new rows start at the mean of their pieces,
LoRA can train the new rows only, and prepare/pretrain use the extended model end to end."""
import json

import torch

from conftest import TINY, cli

TEXTS = ["The patient had hyperlipidemia; atorvastatin was started. Hyperlipidemia persisted, so atorvastatin doubled."] * 30


def _tiny(tiny_llama):
    from transformers import AutoModelForCausalLM

    from domainpt.models import load_tokenizer

    base = tiny_llama
    return AutoModelForCausalLM.from_pretrained(base), load_tokenizer(str(base))


def test_extension_keeps_old_tokens_and_initialises_new_rows_as_the_mean(tiny_llama):
    from domainpt.tokenizer import candidate_words, extend_vocabulary, tokens_per_word

    model, tok = _tiny(tiny_llama)
    old_vocab, old_emb = dict(tok.get_vocab()), model.get_input_embeddings().weight.detach().clone()
    before = tokens_per_word(tok, TEXTS)
    words = candidate_words(tok, TEXTS, max_new=10, min_count=5, min_pieces=3)
    assert {w["word"] for w in words} == {"atorvastatin", "hyperlipidemia", "Hyperlipidemia"}
    pieces = {w["word"]: tok(" " + w["word"], add_special_tokens=False)["input_ids"] for w in words}
    new_ids = extend_vocabulary(model, tok, [w["word"] for w in words])

    assert new_ids == list(range(len(old_vocab), len(old_vocab) + 3))
    vocab = tok.get_vocab()
    assert all(vocab[t] == i for t, i in old_vocab.items())  # every old token keeps its id
    emb = model.get_input_embeddings().weight.detach()
    assert torch.equal(emb[:len(old_vocab)], old_emb[:len(old_vocab)])  # and its embedding
    for w, nid in zip(pieces, new_ids):
        assert torch.allclose(emb[nid], old_emb[pieces[w]].mean(0))
    assert model.get_output_embeddings().weight.shape[0] == len(tok)
    assert tok.decode(tok(TEXTS[0], add_special_tokens=False)["input_ids"]) == TEXTS[0]
    assert tokens_per_word(tok, TEXTS) < before - 0.3


def test_lora_can_train_the_new_rows_and_nothing_else_of_the_embedding(tiny_llama):
    from peft import LoraConfig, get_peft_model

    from domainpt.tokenizer import extend_vocabulary

    model, tok = _tiny(tiny_llama)
    new_ids = extend_vocabulary(model, tok, ["atorvastatin", "hyperlipidemia"])
    before = model.get_input_embeddings().weight.detach().clone()
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", trainable_token_indices=new_ids))
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
    ids = torch.tensor([tok(TEXTS[0])["input_ids"]])
    peft_model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    merged = peft_model.merge_and_unload().get_input_embeddings().weight.detach()
    old = slice(0, new_ids[0])
    assert torch.equal(merged[old], before[old])
    assert not torch.allclose(merged[new_ids], before[new_ids])


def test_prepare_and_pretrain_use_the_extended_vocabulary(tmp_path):
    run = tmp_path / "run"
    args = (f"out_dir={run}", "tokenizer.extend=true", "tokenizer.min_count=5", "tokenizer.max_new_tokens=40",
            "train.max_steps=2", "train.eval_every=0", "train.save_every=0", "lora.steps=2", "eval.ppl_max_tokens=600")
    r = cli("run", TINY, *args)  # one process for every stage; each stage's outputs are checked below
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((run / "prepare" / "stats.json").read_text())
    v = stats["vocabulary_extension"]
    assert 0 < v["added"] <= 40 and v["tokens_per_word_after"] < v["tokens_per_word_before"]
    assert "## Vocabulary extension" in (run / "prepare" / "data_card.md").read_text()
    import numpy as np

    tokens = np.memmap(run / "prepare" / "train" / "tokens.bin", dtype=json.loads((run / "prepare" / "train" / "meta.json").read_text())["dtype"])
    assert int(tokens.max()) >= 49152  # the packed data uses the new ids
    cfg = json.loads((run / "pretrain" / "model" / "config.json").read_text())
    assert cfg["vocab_size"] == 49152 + v["added"]
    # The rest of the run: both models score the same held-out documents, and the verdict switches to bits per byte.
    scores = json.loads((run / "evaluate" / "scores.json").read_text())
    for kind, per_model in scores["perplexity"].items():
        general, domain = per_model["general_model"]["per_document"], per_model["domain_model"]["per_document"]
        assert general["bytes"] == domain["bytes"]  # same text ...
        assert sum(domain["tokens"]) <= sum(general["tokens"])  # ... in fewer tokens with the extended vocabulary
        assert kind != "domain" or sum(domain["tokens"]) < sum(general["tokens"])
    res = json.loads((run / "compare" / "results.json").read_text())
    assert res["tokenizers_differ"] is True
    report = (run / "compare" / "report.md").read_text()
    assert "bits per byte (the tokenizers differ)" in report
