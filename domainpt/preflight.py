"""Checks of the recipe against the model, run before any data is read: a mistake found after an hour
of preparation or a day of training is a day lost.

Builds the model on the meta device (no weights loaded), so the checks take a second even for 7B.
"""
from __future__ import annotations

import torch

from domainpt.attention import check_usable
from domainpt.errors import DomainptError
from domainpt.lora_targets import resolve_targets
from domainpt.models import check_weights_format, load_tokenizer, objective_for


def module_names(config, objective: str, trust_remote_code: bool) -> list[str]:
    """Full names of every module, e.g. 'model.layers.0.self_attn.q_proj', without loading weights."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM

    cls = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config, trust_remote_code=trust_remote_code)
    return [n for n, _ in model.named_modules() if n]


def check_model(recipe, base: str) -> None:
    """The tokenizer fits the embedding, blocks fit the context, the attention kernel suits the objective,
    LoRA targets exist."""
    from transformers import AutoConfig

    m = recipe.model
    if m.init == "pretrained":
        check_weights_format(base)
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=m.trust_remote_code)
    except (OSError, ValueError) as e:
        raise DomainptError(f"cannot load model config '{base}': {str(e).strip().splitlines()[0] if str(e).strip() else e}") from None
    tok = load_tokenizer(base, m.trust_remote_code)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    if vocab is not None and len(tok) > vocab:
        raise DomainptError(f"{base}: the tokenizer has {len(tok)} tokens but the model's embedding has {vocab} rows; "
                            f"the tokenizer does not belong to this model")
    max_pos = getattr(config, "max_position_embeddings", None)
    for key, n in (("data.seq_len", recipe.data.seq_len), ("eval.ppl_window", recipe.eval.ppl_window)):
        if max_pos and n > max_pos:
            raise DomainptError(f"{key}={n} is longer than the model's context ({max_pos} positions, {base})")
    objective = objective_for(config, m.objective)
    generative = [t.name for t in recipe.tasks if t.type == "qa"]
    if objective == "mlm" and generative:
        raise DomainptError(f"tasks {generative}: type qa generates answers, which a masked LM ({base}, objective mlm) cannot; "
                            f"use a causal LM, or drop these tasks")
    check_usable(recipe.train.attention, objective, device=None)
    if recipe.tasks:
        resolve_targets(recipe.lora.target_modules, config.model_type, module_names(config, objective, m.trust_remote_code), base)
