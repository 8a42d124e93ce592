"""Scoring, perplexity and LoRA on a tiny random Llama with the real SmolLM2 tokenizer."""
import math

import pytest
import torch
from torch.nn import functional as F

from domainpt.eval.perplexity import perplexity, windows_for
from domainpt.eval.scoring import choice_logliks, score_examples


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


def naive_loglik(model, prompt, choice):
    ids = torch.tensor([prompt + choice])
    logp = F.log_softmax(model(input_ids=ids).logits[0].float(), -1)
    return sum(logp[len(prompt) - 1 + j, t].item() for j, t in enumerate(choice))


def test_cached_choice_scoring_equals_full_sequences(tiny_model):
    prompt = [0, 523, 77, 1203, 9, 44]
    choices = [[5], [17, 901], [3000, 12, 8]]
    fast = choice_logliks(tiny_model, prompt, choices, torch.device("cpu"))
    for got, c in zip(fast, choices):
        assert got == pytest.approx(naive_loglik(tiny_model, prompt, c), abs=1e-4)


def test_multiple_choice_picks_highest_likelihood(tiny_model, tokenizer):
    prompt = "The licence text says:"
    cands = [" permissive", " copyleft", " commercial"]
    ll = [naive_loglik(tiny_model, [0] + tokenizer(prompt, add_special_tokens=False)["input_ids"],
                       tokenizer(c, add_special_tokens=False)["input_ids"]) for c in cands]
    best = max(range(3), key=ll.__getitem__)
    rows = score_examples(tiny_model, tokenizer, [{"id": "x", "prompt": prompt, "choices": cands, "answer": best}], bos=0)
    assert rows[0]["pred"] == best and rows[0]["correct"] == 1


def test_sliding_windows_score_every_token_once():
    ids = list(range(10, 31))  # 21 tokens
    wins = windows_for(ids, window=8, stride=4, bos=0)
    assert sum(n for _, n in wins) == len(ids)
    assert all(len(w) <= 9 for w, _ in wins)


def test_bits_per_byte_is_the_token_loss_converted(tiny_model, tokenizer):
    text = "Permission is hereby granted, free of charge, to any person obtaining a copy of this software."
    r = perplexity(tiny_model, tokenizer, [text], window=64, stride=32, max_tokens=1000, batch_size=4, bos=0)
    ids = torch.tensor([[0] + tokenizer(text, add_special_tokens=False)["input_ids"]])
    loss = F.cross_entropy(tiny_model(input_ids=ids).logits[0, :-1], ids[0, 1:]).item()
    assert r["ppl"] == pytest.approx(math.exp(loss), rel=1e-4)
    assert r["bpb"] == pytest.approx(loss * r["tokens"] / (math.log(2) * len(text.encode())), rel=1e-4)


def test_strided_batched_perplexity_equals_each_window_scored_alone(tiny_model, tokenizer):
    """Windows of unequal lengths and scored counts share batches (left-padded, the LM head on scored positions
    only): each document's NLL is still the sum, window by window, of its scored tokens given their context."""
    texts = ["Permission is hereby granted, free of charge, to any person obtaining a copy of this software " * 3,
             "The above copyright notice shall be included in all copies.",
             "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND, EXPRESS OR IMPLIED " * 2]
    r = perplexity(tiny_model, tokenizer, texts, window=16, stride=6, max_tokens=None, batch_size=3, bos=0)
    for d, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        want = 0.0
        for w, n_new in windows_for(ids, window=16, stride=6, bos=0):
            x = torch.tensor([w])
            nll = F.cross_entropy(tiny_model(input_ids=x).logits[0, :-1], x[0, 1:], reduction="none")
            want += nll[-n_new:].sum().item()
        assert r["per_document"]["tokens"][d] == len(ids)
        assert r["per_document"]["nll"][d] == pytest.approx(want, rel=1e-4, abs=1e-3)


def test_left_padded_answer_loss_equals_plain_labelled_loss(tiny_model):
    """The fine-tuning fast path (left padding, LM head on the answer positions only) changes no number."""
    from domainpt.finetune import answer_loss, collate

    feats = [([0, 11, 12, 13, 14, 15, 901, 0], 6), ([0, 21, 22, 700, 701, 0], 3), ([0, 31, 32, 33, 34, 35, 36, 37, 5, 0], 8)]
    fast = answer_loss(tiny_model, collate(feats, pad_id=0)).item()
    total, count = 0.0, 0
    for ids, n_prompt in feats:  # one unpadded sequence at a time, loss on the answer tokens
        x = torch.tensor([ids])
        logp = F.log_softmax(tiny_model(input_ids=x).logits[0, :-1].float(), -1)
        for pos in range(n_prompt, len(ids)):
            total -= logp[pos - 1, ids[pos]].item()
            count += 1
    assert fast == pytest.approx(total / count, rel=1e-4)


def test_batched_scoring_with_uneven_prompts_and_choice_counts(tiny_model):
    from domainpt.eval.scoring import batch_choice_logliks

    prompts = [[0, 5, 6], [0, 523, 77, 1203, 9, 44, 45, 46], [0, 99]]
    choices = [[[5], [17, 901]], [[3000, 12, 8], [4], [70, 71]], [[8, 9, 10, 11]]]
    one_token = [[[5], [17]], [[3000], [4], [70]], [[8]]]  # no continuation to run: the prompt pass alone
    for cands in (choices, one_token):
        got = batch_choice_logliks(tiny_model, prompts, cands, torch.device("cpu"))
        for p, cs, g in zip(prompts, cands, got):
            assert g == pytest.approx([naive_loglik(tiny_model, p, c) for c in cs], abs=1e-4)


def test_packed_rows_keep_attention_inside_documents(tiny_model):
    """The training fast path (documents packed in one row, position ids restarting per document,
    use_cache=False) gives each document the same logits and loss as running it alone, padded."""
    from domainpt.data.pack import PackedBlocks, PackWriter

    docs = [[5, 6, 7, 8, 9, 10, 11], [200, 201, 202], [3000, 3001, 3002, 3003, 3004]]
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        w = PackWriter(Path(d), vocab_size=tiny_model.config.vocab_size, eos_id=0)
        w.add(docs)
        w.close(seq_len=sum(len(x) + 1 for x in docs))
        row = PackedBlocks(Path(d))[0]
    ids = torch.from_numpy(row["input_ids"])[None]
    pos = torch.from_numpy(row["position_ids"])[None]
    packed = tiny_model(input_ids=ids, position_ids=pos, use_cache=False).logits[0]
    L = max(len(x) + 1 for x in docs)
    start = 0
    for doc in docs:
        n = len(doc) + 1
        alone = torch.zeros((1, L), dtype=torch.long)
        alone[0, :n] = ids[0, start:start + n]
        mask = torch.zeros((1, L), dtype=torch.long)
        mask[0, :n] = 1
        ref = tiny_model(input_ids=alone, attention_mask=mask, use_cache=False).logits[0, :n]
        assert torch.allclose(packed[start:start + n], ref, atol=1e-5), (doc, (packed[start:start + n] - ref).abs().max())
        start += n


def test_packed_batches_give_the_same_loss_as_padded_documents(tiny_model):
    """Speed without changing the mathematics: the training collate's packed row (position ids restart,
    first tokens not predicted across documents) has the same mean loss as the documents padded one per row."""
    import tempfile
    from pathlib import Path

    from domainpt.data.pack import PackedBlocks, PackWriter
    from domainpt.training.batches import make_collate

    g = torch.Generator().manual_seed(0)
    docs = [torch.randint(1, 4000, (n,), generator=g).tolist() for n in (9, 4, 13, 6)]
    with tempfile.TemporaryDirectory() as d:
        w = PackWriter(Path(d), vocab_size=tiny_model.config.vocab_size, eos_id=0)
        w.add(docs)
        w.close(seq_len=sum(len(x) + 1 for x in docs))
        batch = make_collate("clm", None, doc_isolation=True)([PackedBlocks(Path(d))[0]])
    packed = tiny_model(**batch, use_cache=False).loss

    L = max(len(x) + 1 for x in docs)
    ids = torch.zeros((len(docs), L), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, doc in enumerate(docs):
        ids[r, :len(doc) + 1] = torch.tensor(doc + [0])
        mask[r, :len(doc) + 1] = 1
    labels = ids.masked_fill(mask == 0, -100)
    padded = tiny_model(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False).loss
    assert packed.item() == pytest.approx(padded.item(), abs=1e-5)
    assert int((batch["labels"][:, 1:] != -100).sum()) == int((labels[:, 1:] != -100).sum()) == 32  # same predicted tokens


def test_length_sorted_batches_give_the_same_rows_in_the_original_order(tiny_model, tokenizer):
    from domainpt.eval.scoring import length_sorted_batches

    examples = [{"id": str(i), "prompt": "word " * (3 + (7 * i) % 11), "choices": [" yes", " no", " maybe"], "answer": i % 3}
                for i in range(10)]
    batched = score_examples(tiny_model, tokenizer, examples, bos=0, batch_size=4)
    one_by_one = [score_examples(tiny_model, tokenizer, [e], bos=0, batch_size=1)[0] for e in examples]
    assert [r["id"] for r in batched] == [e["id"] for e in examples]
    assert [x for r in batched for x in r["logliks"]] == pytest.approx([x for r in one_by_one for x in r["logliks"]], abs=1e-4)
    lens = [len(p.split()) for p in (e["prompt"] for e in examples)]
    batches = length_sorted_batches([[0] * n for n in lens], 4)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(max(lens[i] for i in b) - min(lens[i] for i in b) <= 4 for b in batches)  # similar lengths together
