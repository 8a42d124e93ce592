"""Masked-LM continued pre-training for encoder models (BERT-style), through the real pretrain stage."""
import json
import time

import numpy as np
import torch

from conftest import TINY

VOCAB = 500


def _bert(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(VOCAB - 5)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=128, max_position_embeddings=128))
    base = tmp_path / "bert"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    return base, tok


def test_mlm_collator_masks_15_percent_with_80_10_10(tmp_path):
    from domainpt.training.batches import make_collate

    _, tok = _bert(tmp_path)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    items = [{"input_ids": rng.integers(5, VOCAB, 64), "position_ids": np.arange(64)} for _ in range(400)]
    batch = make_collate("mlm", tok, doc_isolation=True)(items)
    original = torch.from_numpy(np.stack([it["input_ids"] for it in items]))
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], original[chosen])  # labels are the original tokens
    share = chosen.float().mean().item()
    assert 0.14 < share < 0.16
    masked = (batch["input_ids"] == tok.mask_token_id) & chosen
    kept = (batch["input_ids"] == original) & chosen
    assert 0.77 < masked.sum().item() / chosen.sum().item() < 0.83
    assert 0.08 < kept.sum().item() / chosen.sum().item() < 0.12
    assert torch.equal(batch["input_ids"][~chosen], original[~chosen])


def test_encoder_model_trains_with_masked_lm(tmp_path):
    from domainpt.config import load_recipe
    from domainpt.data.pack import PackWriter
    from domainpt.manifest import write_manifest
    from domainpt.pretrain import run_pretrain

    base, _ = _bert(tmp_path)
    rng = np.random.default_rng(0)
    # documents with structure (repeating patterns) so that masked tokens are predictable
    w = PackWriter(tmp_path / "run" / "prepare" / "train", VOCAB, eos_id=3)
    w.add((np.tile(rng.integers(5, 60, 4), 8)).tolist() for _ in range(300))
    w.close(64)
    recipe = load_recipe(TINY, [f"out_dir={tmp_path / 'run'}", f"model.base={base}", "model.init=pretrained", "data.seq_len=64",
                                "train.max_steps=30", "train.batch_size=16", "train.lr=0.002", "train.eval_every=0", "train.save_every=0"])
    write_manifest(recipe, "prepare", time.time(), tokens=0, base_model=str(base))
    m = run_pretrain(recipe)
    assert m["objective"] == "mlm"
    losses = [json.loads(l)["loss"] for l in open(tmp_path / "run" / "pretrain" / "metrics.jsonl")]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.5, losses
    assert (tmp_path / "run" / "pretrain" / "model" / "model.safetensors").is_file()


def test_whole_word_masking_masks_every_piece_of_a_chosen_word(tmp_path):
    """WordPiece vocabulary: '##' pieces continue a word. Chosen words are masked whole, ~15% of tokens."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from domainpt.training.batches import make_collate

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(100)] + [f"##p{i}" for i in range(100)]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]")),
                                  pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    rng = np.random.default_rng(0)

    def row():  # words of 1-4 pieces: a start token then '##' continuations, with [SEP] between documents
        out = []
        while len(out) < 64:
            out += [int(rng.integers(5, 105))] + [int(x) for x in rng.integers(105, 205, rng.integers(0, 4))]
            if rng.random() < 0.05:
                out.append(3)
        return np.array(out[:64])

    torch.manual_seed(0)
    items = [{"input_ids": row(), "position_ids": np.arange(64)} for _ in range(300)]
    batch = make_collate("mlm", tok, doc_isolation=True, whole_word_mask=True)(items)
    original = torch.from_numpy(np.stack([it["input_ids"] for it in items]))
    chosen = batch["labels"] != -100
    assert torch.equal(batch["labels"][chosen], original[chosen])
    for r in range(len(items)):
        ids, c = original[r].tolist(), chosen[r].tolist()
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or ids[i] < 105:  # the word ids[start:i] ends here
                if ids[start] != 3:
                    assert len(set(c[start:i])) == 1, (r, start, i)  # all pieces or none
                start = i
    assert not chosen[original == 3].any()  # special tokens are never targets
    share = chosen.float().mean().item()
    assert 0.12 < share < 0.18
    masked = (batch["input_ids"] == 4) & chosen
    assert abs(masked.sum().item() / chosen.sum().item() - 0.8) < 0.03
