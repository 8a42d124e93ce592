"""How text becomes model input, the same way in prepare, fine-tuning and scoring: the end-of-text id, a
prompt's ids, an encoder's special tokens, and padded batches.

What is trained must be what is scored, so finetune and eval read prompts through these functions only.
"""
from __future__ import annotations

import torch

from domainpt.errors import DomainptError


def end_of_text_id(tokenizer) -> int:
    """The document separator: <|endoftext|> when the vocabulary has it, else eos (or sep for encoders)."""
    for t in ("<|endoftext|>", "</s>"):  # looked up one by one: get_vocab() builds a dict of the whole vocabulary
        tid = tokenizer.convert_tokens_to_ids(t)
        if tid is not None and tokenizer.convert_ids_to_tokens(tid) == t:  # a missing token may map to unk
            return tid
    for tid in (tokenizer.eos_token_id, tokenizer.sep_token_id):
        if tid is not None:
            return tid
    raise DomainptError("the tokenizer has no end-of-text, eos or sep token to separate documents")


def prompt_ids(tokenizer, prompt: str, bos: int | None) -> list[int]:
    """The prompt's tokens after `bos` (None: no BOS, lm-evaluation-harness's convention for most models)."""
    return ([] if bos is None else [bos]) + tokenizer(prompt, add_special_tokens=False)["input_ids"]


def classifier_inputs(tokenizer, prompt: str, bos: int, encoder: bool) -> list[int]:
    """What a classification head reads: [CLS] prompt [SEP] for encoders, <bos> prompt for decoders."""
    return tokenizer(prompt)["input_ids"] if encoder else prompt_ids(tokenizer, prompt, bos)


def special_ids(tokenizer) -> tuple[int, int, int]:
    """([CLS], [SEP], [MASK]) ids; RoBERTa-style vocabularies name them <s>, </s>, <mask>."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if tokenizer.mask_token_id is None or cls is None or sep is None:
        raise DomainptError(f"the tokenizer of {tokenizer.name_or_path} has no mask, cls or sep token: cannot score it as a masked LM")
    return cls, sep, tokenizer.mask_token_id


def answer_sequence(prompt: list[int], answer: list[int], cls: int, sep: int) -> list[int]:
    """[CLS] prompt answer [SEP]: what an encoder reads when a choice is scored or trained."""
    return [cls] + prompt + answer + [sep]


def pad_right(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask), each sequence from position 0, padding after it."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, :len(s)] = 1
    return ids, mask


def pad_left(seqs: list[list[int]], pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention mask, position ids), each sequence ending at the last position: the next token of every
    row is predicted at the same place. Position ids count from each sequence's first real token."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, L - len(s):] = torch.tensor(s, dtype=torch.long)
        mask[r, L - len(s):] = 1
    return ids, mask, (mask.cumsum(-1) - 1).clamp(min=0)
