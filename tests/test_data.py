import gzip

import numpy as np
import pytest

from domainpt.config import CleanConfig, SourceConfig
from domainpt.data import clean, pii
from domainpt.data.decontam import ContaminationIndex
from domainpt.data.dedup import near_duplicates_in, word_key_of
from domainpt.data.ingest import BadRecords, iter_source
from domainpt.data.pack import PackedBlocks, PackWriter
from domainpt.errors import DomainptError

WORDS = ("licence grant copyright holder permission software distribute modify warranty liability "
         "notice conditions source binary forms redistribution contributors damages agreement").split()


def doc(seed, n=200):
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n))


def test_clean_filters_name_their_reason():
    cfg = CleanConfig(min_chars=20)
    assert clean.normalize("a  b\t\tc\r\n\n\n\nd", cfg) == "a b c\n\nd"
    assert clean.reject_reason("short", cfg) == "too_short"
    assert clean.reject_reason("#$%^&*()!@#$%^&*()!@ word", cfg) == "symbol_ratio"
    assert clean.reject_reason("same line here\n" * 10, cfg) == "repeated_lines"
    assert clean.reject_reason(doc(0), cfg) is None


def test_exact_duplicates_ignore_case_and_punctuation():
    from domainpt.data.ngrams import words

    def key(text):
        return word_key_of(words(text))

    assert key("Hello, World!  again") == key("hello world again")
    assert key("hello world") != key("hello there world")


def _mutate(text, share, seed):
    words = text.split()
    rng = np.random.default_rng(seed)
    for i in rng.choice(len(words), int(len(words) * share), replace=False):
        words[i] = "zzz" + str(i)
    return " ".join(words)


def _jaccard(a, b):
    """True 5-word-shingle Jaccard similarity, computed directly (the oracle MinHash estimates)."""
    def shingles(text):
        ws = text.lower().split()
        return {" ".join(ws[i:i + 5]) for i in range(len(ws) - 4)}

    x, y = shingles(a), shingles(b)
    return len(x & y) / len(x | y)


def test_near_duplicates_removed_at_threshold_not_below():
    base = doc(1, 400)
    near, far = _mutate(base, 0.01, 0), _mutate(base, 0.04, 1)
    assert _jaccard(base, near) > 0.9 and 0.6 < _jaccard(base, far) < 0.75
    texts = [base, near, far, doc(2, 400)]
    assert near_duplicates_in(texts, threshold=0.8).tolist() == [False, True, False, False]   # only the >= 0.8 copy
    assert near_duplicates_in(texts, threshold=0.6).tolist() == [False, True, True, False]    # both at a lower bar
    assert near_duplicates_in(texts, threshold=0.95).tolist() == [False, False, False, False]  # neither above 0.95


@pytest.mark.parametrize("kind,planted", [
    ("email", "write to jane.doe@example.org today"),
    ("phone", "call +1 415-555-0132 now"),
    ("ssn", "SSN 123-45-6789 on file"),
    ("credit_card", "card 4111 1111 1111 1111 expires"),
    ("iban", "pay to GB82 WEST 1234 5698 7654 32 please"),
    ("ip", "server at 8.8.8.8 responded"),
])
def test_each_pii_type_is_replaced(kind, planted):
    out, counts = pii.scrub(planted)
    assert counts[kind] == 1, (out, counts)
    assert f"<{kind.upper()}>" in out


def test_isbn_is_not_a_card_number():
    out, counts = pii.scrub("Cornell University Press. ISBN 978-0-8014-3715-1.")
    assert counts["credit_card"] == 0 and "978-0-8014-3715-1" in out


def test_pii_checksums_reject_lookalikes():
    out, counts = pii.scrub("order 4111 1111 1111 1112 from 192.168.0.1 and GB00 WEST 1234 5698 7654 32")
    assert counts["credit_card"] == 0 and counts["iban"] == 0
    assert "4111 1111 1111 1112" in out and "192.168.0.1" in out and sum(counts.values()) == 0


def test_decontamination_catches_copied_passage():
    test_text = doc(5, 60)
    idx = ContaminationIndex(13)
    idx.add(test_text)
    copied = doc(6, 100) + " " + " ".join(test_text.split()[10:30]) + " " + doc(7, 100)
    assert idx.hits(copied)
    assert not idx.hits(doc(8, 300))


def test_pack_round_trip_and_document_positions(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(3, 60000, rng.integers(1, 50)).tolist() for _ in range(40)]
    w = PackWriter(tmp_path, vocab_size=65000, eos_id=0)
    w.add(docs)
    meta = w.close(seq_len=16)
    blocks = PackedBlocks(tmp_path)
    assert meta["dtype"] == "uint16"
    for j, d in enumerate(docs):
        assert blocks.document(j).tolist() == d
    flat = np.concatenate([blocks[i]["input_ids"] for i in range(len(blocks))])
    stream = np.concatenate([d + [0] for d in docs])
    assert flat.tolist() == stream[:len(flat)].tolist()
    # position ids restart right after every end-of-text token
    b = blocks[1]
    for k in range(1, 16):
        expect = 0 if b["input_ids"][k - 1] == 0 else b["position_ids"][k - 1] + 1
        assert b["position_ids"][k] == expect


def test_uint32_for_large_vocabularies(tmp_path):
    w = PackWriter(tmp_path, vocab_size=70000, eos_id=69999)
    w.add([[66000, 5]])
    assert w.close(seq_len=2)["dtype"] == "uint32"


def test_bad_records_counted_with_file_and_line(tmp_path):
    p = tmp_path / "c.jsonl"
    p.write_bytes(b'{"text": "good one"}\n{broken\n{"other": 1}\n{"text": 5}\n' + b'{"text": "\xff\xfe"}\n' + b'{"text": "fine"}\n')
    bad = BadRecords(max_share=1.0)
    recs = list(iter_source(SourceConfig(path=str(p)), bad))
    assert [r["text"] for r in recs] == ["good one", "fine"]
    assert bad.total == 4
    assert any(e.startswith(f"{p}:2: broken JSON") for e in bad.examples)
    assert any(e.startswith(f"{p}:3: missing field 'text'") for e in bad.examples)
    assert any(e.startswith(f"{p}:5: invalid UTF-8") for e in bad.examples)


def test_csv_gz_and_missing_column(tmp_path):
    p = tmp_path / "c.csv.gz"
    with gzip.open(p, "wt") as f:
        f.write("body,id\nhello there,1\n")
    assert [r["body"] for r in iter_source(SourceConfig(path=str(p), text_field="body"), BadRecords())] == ["hello there"]
    with pytest.raises(DomainptError, match="no column 'text'"):
        list(iter_source(SourceConfig(path=str(p)), BadRecords()))


def test_missing_file_is_named(tmp_path):
    with pytest.raises(DomainptError, match="data file not found: .*nope.jsonl"):
        list(iter_source(SourceConfig(path=str(tmp_path / "nope.jsonl")), BadRecords()))


def test_the_wikipedia_sample_is_parsed_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """The first read parses the dump (gensim) and caches it; later reads give the same records without parsing."""
    from domainpt.data import builtin

    monkeypatch.setenv("DOMAINPT_CACHE", str(tmp_path))
    first = list(builtin.read_builtin("wikipedia-sample"))
    assert len(first) > 40 and list((tmp_path / "builtin").glob("wikipedia-sample.*.jsonl"))

    def no_parsing(dump):
        raise AssertionError("parsed again")

    monkeypatch.setattr(builtin, "_parse_wikipedia", no_parsing)
    assert list(builtin.read_builtin("wikipedia-sample")) == first
    monkeypatch.setattr(builtin, "WIKIPEDIA_PARSE_VERSION", builtin.WIKIPEDIA_PARSE_VERSION + 1)  # a changed parser
    with pytest.raises(AssertionError, match="parsed again"):
        list(builtin.read_builtin("wikipedia-sample"))
