"""`train.loss_chunk_tokens`: the chunked cross-entropy gives the model's own loss and gradients, and refuses the
setups it cannot serve. (Through the real loop, under two DDP processes: tests/test_training.py.)"""
from pathlib import Path

import numpy as np
import pytest
import torch


def _model_and_batch(tiny_llama, tie: bool):
    from transformers import AutoConfig, AutoModelForCausalLM

    from domainpt.models import load_tokenizer
    from domainpt.training.batches import make_collate

    base = Path(tiny_llama)
    config = AutoConfig.from_pretrained(base)
    config.tie_word_embeddings = tie
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    rng = np.random.default_rng(0)
    items = []
    for _ in range(3):  # packed rows of several documents: position ids restart, first tokens are not predicted
        lengths = rng.integers(5, 30, 6)
        ids = rng.integers(0, config.vocab_size, 64)
        pos = np.concatenate([np.arange(n) for n in lengths])[:64]
        items.append({"input_ids": ids, "position_ids": pos})
    return model, make_collate("clm", load_tokenizer(str(base)), doc_isolation=True)(items)


@pytest.mark.parametrize("tie", [True, False])
def test_chunked_loss_and_gradients_equal_the_models_own(tiny_llama, tie):
    from domainpt.training.chunked_loss import chunked_lm_loss, head_returns_hidden

    model, batch = _model_and_batch(tiny_llama, tie)
    assert (batch["labels"] == -100).any()
    own = model(**batch, use_cache=False).loss
    own.backward()
    own_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    with head_returns_hidden(model) as head:
        hidden = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits
    assert hidden.shape[-1] == model.config.hidden_size
    chunked = chunked_lm_loss(hidden, head, batch["labels"], chunk_tokens=37)  # not a divisor: a ragged last chunk
    chunked.backward()
    assert chunked.item() == pytest.approx(own.item(), rel=1e-5)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, own_grads[n], rtol=1e-4, atol=1e-7), n
    assert model(**batch, use_cache=False).logits.shape[-1] == model.config.vocab_size  # the head is back


def test_unsupported_setups_are_refused(tiny_llama):
    from domainpt.training.chunked_loss import check_supported
    from domainpt.errors import DomainptError

    model, _ = _model_and_batch(tiny_llama, tie=True)
    check_supported(model, "NO", None, compiled=False)
    with pytest.raises(DomainptError, match="FSDP or DeepSpeed ZeRO-3"):
        check_supported(model, "FSDP", None, compiled=False)
    with pytest.raises(DomainptError, match="FSDP or DeepSpeed ZeRO-3"):
        check_supported(model, "DEEPSPEED", 3, compiled=False)
    with pytest.raises(DomainptError, match="with train.compile"):
        check_supported(model, "NO", None, compiled=True)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(DomainptError, match="transforms its logits"):
        check_supported(model, "NO", None, compiled=False)
