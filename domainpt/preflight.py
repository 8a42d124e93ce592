"""Checks of the recipe against the model, run before any data is read: a mistake found after an hour
of preparation or a day of training is a day lost.

Builds the model on the meta device (no weights loaded), so the checks take a second even for 7B.
"""
from __future__ import annotations

import torch

from domainpt.training.attention import check_usable
from domainpt.errors import DomainptError
from domainpt.eval.harness import harness_tasks
from domainpt.eval.scoring import prefix_pairs
from domainpt.lora_targets import resolve_targets
from domainpt.models import check_weights_format, load_tokenizer, objective_for


def check_harness_model(recipe, objective: str, base: str) -> None:
    """lm-evaluation-harness scores causal LMs only (prepare checks the task names before it writes anything)."""
    if harness_tasks(recipe.eval) and objective == "mlm":
        raise DomainptError(f"eval.harness_tasks / eval.forgetting_tasks: lm-evaluation-harness scores causal LMs; "
                            f"{base} is trained as a masked LM (objective mlm)")


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
    check_harness_model(recipe, objective, base)
    _REPORTED.clear()  # check_model starts every prepare run: a pair is said once per run (here or in prepare)
    for task in recipe.tasks:
        if (choices := known_choices(task)) is not None:
            report_prefix_pairs(recipe, task, [list(p) for p in prefix_pairs(tok, choices)], objective)
    if recipe.tasks:
        resolve_targets(recipe.lora.target_modules, config.model_type, module_names(config, objective, m.trust_remote_code), base)


_REPORTED: set[tuple[str, str, str]] = set()  # (task, shorter, longer) pairs already printed in this prepare run
_MAX_LINES = 5  # per task: a multiple-choice set can hold many (' 1' / ' 10')


def known_choices(task) -> list[str] | None:
    """A classification task's choices when the recipe fixes them (labels/verbalizers), else None (read from data)."""
    if task.type != "classification" or not (task.labels or task.verbalizers):
        return None
    verb = dict(task.verbalizers or {})
    return [" " + str(verb.get(label, label)) for label in (task.labels or list(verb))]


def choice_prefix_pairs(tokenizer, examples: list[dict]) -> list[list[str]]:
    """[shorter, longer] choice pairs where one's token ids are a prefix of the other's, over every example's
    choice set (one set for classification, one per question for multiple choice)."""
    pairs: dict[tuple[str, str], None] = {}
    for choices in dict.fromkeys(tuple(e["choices"]) for e in examples if len(e["choices"]) > 1):
        pairs.update(dict.fromkeys(prefix_pairs(tokenizer, list(choices))))
    return [list(p) for p in pairs]


def prefix_line(recipe, task, short: str, long: str) -> str:
    """One line: the pair, and whether scoring before / after fine-tuning can choose the longer label."""
    ec = recipe.eval
    shots = "zero-shot" if ec.few_shot == 0 else f"{ec.few_shot}-shot"
    if not ec.zero_shot:
        before = f"{shots} scoring is off (eval.zero_shot: false)"
    elif ec.zero_shot_end_of_text:
        before = f"{shots} scoring adds end-of-text to every choice (eval.zero_shot_end_of_text), so both are reachable"
    else:
        before = (f"{shots} scoring without end-of-text can never choose '{long.strip()}' "
                  f"(set eval.zero_shot_end_of_text: true to score choices with end-of-text)")
    after = ("after LoRA a classification head picks the label, so both are reachable" if task.scoring == "head" else
             "after LoRA choices are scored with end-of-text, so both are reachable")
    return f"[domainpt] task '{task.name}': '{short}' is a token prefix of '{long}': {before}; {after}"


def report_prefix_pairs(recipe, task, pairs: list[list[str]], objective: str) -> None:
    """Print each pair not yet printed in this run. Decoders only: an encoder's pseudo-log-likelihood of the
    longer choice is not the shorter one's plus more terms (every token sees the whole choice)."""
    if objective == "mlm" or task.type == "qa":
        return
    new = [(s, l) for s, l in pairs if (task.name, s, l) not in _REPORTED]
    for s, l in new[:_MAX_LINES]:
        print(prefix_line(recipe, task, s, l), flush=True)
    if len(new) > _MAX_LINES:
        print(f"[domainpt] task '{task.name}': {len(new) - _MAX_LINES} more such choice pairs "
              f"(prepare/stats.json tasks.{task.name}.prefix_choice_pairs)", flush=True)
    _REPORTED.update((task.name, s, l) for s, l in new)
