"""encoding.py: the one padding and prompt encoding that fine-tuning and scoring share."""
import torch

from domainpt.encoding import pad_left, pad_right, prompt_ids


def test_right_padding_keeps_each_sequence_at_the_start():
    ids, mask = pad_right([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    assert ids.dtype == torch.long


def test_left_padding_ends_every_sequence_at_the_last_position_and_counts_positions_from_its_first_token():
    ids, mask, pos = pad_left([[5, 6, 7], [8]], pad_id=9)
    assert ids.tolist() == [[5, 6, 7], [9, 9, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert pos.tolist() == [[0, 1, 2], [0, 0, 0]]


def test_a_prompt_gets_the_bos_only_when_one_is_given(tokenizer):
    plain = tokenizer("Answer:", add_special_tokens=False)["input_ids"]
    assert prompt_ids(tokenizer, "Answer:", 0) == [0] + plain
    assert prompt_ids(tokenizer, "Answer:", None) == plain


def test_end_of_text_is_the_vocabularys_own_token_else_eos_else_sep(tokenizer, tiny_bert):
    from transformers import AutoTokenizer

    from domainpt.encoding import end_of_text_id

    assert end_of_text_id(tokenizer) == tokenizer.get_vocab()["<|endoftext|>"]
    bert = AutoTokenizer.from_pretrained(tiny_bert)  # no <|endoftext|> or </s>: the lookup gives [UNK], not a match
    assert bert.eos_token_id is None and end_of_text_id(bert) == bert.sep_token_id
