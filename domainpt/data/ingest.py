"""Read documents from files, folders, packaged corpora or hub datasets, counting bad records.

A bad record (invalid UTF-8, broken JSON line, missing or non-string text field) is skipped and
recorded with its file and line; it never crashes the run and never passes silently.
"""
from __future__ import annotations

import csv
import gzip
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from domainpt.data.builtin import read_builtin
from domainpt.errors import DomainptError

TEXT_SUFFIXES = {".txt", ".md"}
SUPPORTED = TEXT_SUFFIXES | {".jsonl", ".json", ".csv", ".parquet"}


@dataclass
class BadRecords:
    """Where and why records were skipped; the first few examples are kept for the data card."""

    max_share: float = 0.01  # more bad records than this share of a source is an error, not noise
    max_record_bytes: int = 64 * 1024 ** 2
    counts: Counter = field(default_factory=Counter)
    examples: list = field(default_factory=list)
    first: str | None = None

    def add(self, where: str, why: str) -> None:
        self.counts[why] += 1
        self.first = self.first or f"{where}: {why}"
        if len(self.examples) < 20:
            self.examples.append(f"{where}: {why}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _open_bytes(path: Path):
    name = path.name.lower()
    if name.endswith(".gz"):
        return gzip.open(path, "rb")
    if name.endswith(".zst"):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(open(path, "rb"))
    return open(path, "rb")


def _base_suffix(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    while suffixes and suffixes[-1] in (".gz", ".zst"):
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def _files(path: Path) -> list[Path]:
    if not path.exists():
        raise DomainptError(f"data file not found: {path}")
    if path.is_file():
        if _base_suffix(path) not in SUPPORTED:
            raise DomainptError(f"{path}: unsupported file type (use {', '.join(sorted(SUPPORTED))}, optionally .gz/.zst)")
        return [path]
    files = sorted(p for p in path.rglob("*") if p.is_file() and _base_suffix(p) in SUPPORTED)
    if not files:
        raise DomainptError(f"{path}: folder holds no supported files ({', '.join(sorted(SUPPORTED))})")
    return files


def _records_in_file(path: Path, text_field: str, bad: BadRecords) -> Iterator[dict]:
    kind = _base_suffix(path)
    if kind == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise DomainptError(f"{path}: no column '{text_field}' (columns: {', '.join(pf.schema_arrow.names)})")
        row = 0
        for batch in pf.iter_batches(batch_size=1024):
            for rec in batch.to_pylist():
                row += 1
                yield from _checked(rec, text_field, f"{path}:row {row}", bad)
        return
    with _open_bytes(path) as raw:
        if kind in TEXT_SUFFIXES:
            data = raw.read(bad.max_record_bytes + 1)
            if len(data) > bad.max_record_bytes:
                bad.add(str(path), f"document longer than data.max_record_mb ({bad.max_record_bytes >> 20} MB)")
                return
            if b"\x00" in data[:8192]:
                bad.add(str(path), "binary file")
                return
            try:
                yield {text_field: data.decode("utf-8"), "id": str(path)}
            except UnicodeDecodeError:
                bad.add(str(path), "invalid UTF-8")
            return
        if kind == ".csv":
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="")
            csv.field_size_limit(bad.max_record_bytes)
            reader = csv.DictReader(text)
            try:
                if reader.fieldnames is None or text_field not in reader.fieldnames:
                    raise DomainptError(f"{path}: no column '{text_field}' (columns: {', '.join(reader.fieldnames or [])})")
                for rec in reader:
                    yield from _checked(rec, text_field, f"{path}:{reader.line_num}", bad)
            except UnicodeDecodeError:
                bad.add(f"{path}:{reader.line_num + 1}", "invalid UTF-8 (rest of file skipped)")
            except csv.Error as e:
                bad.add(f"{path}:{reader.line_num}", f"broken CSV ({e}; rest of file skipped)")
            return
        for i, line in enumerate(_bounded_lines(raw, bad.max_record_bytes), start=1):  # .jsonl / .json (one object per line)
            if line is None:
                bad.add(f"{path}:{i}", f"record longer than data.max_record_mb ({bad.max_record_bytes >> 20} MB)")
                continue
            if not line.strip():
                continue
            try:
                rec = json.loads(line.decode("utf-8"))
            except UnicodeDecodeError:
                bad.add(f"{path}:{i}", "invalid UTF-8")
                continue
            except json.JSONDecodeError:
                bad.add(f"{path}:{i}", "broken JSON line")
                continue
            yield from _checked(rec, text_field, f"{path}:{i}", bad)


def _bounded_lines(raw, limit: int) -> Iterator[bytes | None]:
    """Lines of a binary stream, each read with a size cap: an over-long line yields None and is skipped
    in chunks, so one runaway record cannot exhaust memory."""
    while True:
        line = raw.readline(limit + 1)
        if not line:
            return
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := raw.readline(limit)) and not rest.endswith(b"\n"):
                pass
            yield None
            continue
        yield line


def _checked(rec, text_field: str, where: str, bad: BadRecords) -> Iterator[dict]:
    if not isinstance(rec, dict):
        bad.add(where, "record is not an object")
    elif text_field not in rec or rec[text_field] is None:
        bad.add(where, f"missing field '{text_field}'")
    elif not isinstance(rec[text_field], str):
        bad.add(where, f"field '{text_field}' is not text")
    else:
        rec.setdefault("id", where)
        yield rec


def field_value(rec: dict, dotted: str, join: bool = True):
    """`rec['a']['b']` for 'a.b'; a list of strings (e.g. PubMedQA's context.contexts) is joined by newlines
    unless join=False."""
    value = rec
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    if join and isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    return value


def iter_source(src, bad: BadRecords) -> Iterator[dict]:
    """Yield records of one SourceConfig, each with 'text' set from its text field."""
    if src.builtin:
        it = read_builtin(src.builtin)
    elif src.hf:
        it = _hf_records(src)
    else:
        it = (r for f in _files(Path(src.path)) for r in _records_in_file(f, src.text_field, bad))
    n, bad_before, first_before = 0, bad.total, bad.first
    bad.first = None
    keep = {k: set(v) if isinstance(v, list) else {v} for k, v in src.filter.items()}
    for rec in it:
        if keep and not all(rec.get(k) in allowed for k, allowed in keep.items()):
            continue
        if src.text_field != "text":
            rec = {**rec, "text": field_value(rec, src.text_field)}
        if not isinstance(rec.get("text"), str):
            bad.add(str(rec.get("id", src.name)), f"missing field '{src.text_field}'")
            continue
        yield rec
        n += 1
        if src.max_docs and n >= src.max_docs:
            break
    n_bad = bad.total - bad_before
    if n_bad and n_bad > bad.max_share * (n + n_bad):
        raise DomainptError(f"source '{src.name}': {n_bad} of {n + n_bad} records are bad, more than data.max_bad_share="
                            f"{bad.max_share}; first: {bad.first}")
    bad.first = first_before or bad.first


# The hub's parquet export of a dataset (a branch kept by the hub's parquet converter). It has no dataset card:
# each config is only a folder, {config}/{split}/0000.parquet.
PARQUET_EXPORT = "refs/convert/parquet"


class ClassName(str):
    """A class-label value decoded to its name, which still knows its index in the feature's names.

    It is the name wherever text is expected (classification matches labels by name, prompts show it, JSON
    writes it), and int() gives the index: a multiple-choice answer_field that is a class label (MedMCQA's
    `cop`, names a..d) is the index of the right choice. A plain string is never guessed into an index."""

    class_index: int  # not `index`: that would hide str.index

    def __new__(cls, name: str, class_index: int):
        value = super().__new__(cls, name)
        value.class_index = class_index
        return value

    def __int__(self) -> int:
        return self.class_index

    def __getnewargs__(self):  # pickling (prepare's worker processes) keeps the index
        return str(self), self.class_index


def _load_hub(src):
    """datasets.load_dataset for one hub source, streaming, at its revision."""
    import datasets

    if src.revision == PARQUET_EXPORT and src.hf_config:
        # The export has no card naming its configs, so `datasets` sees one config holding every folder:
        # the config is read as the folder it is.
        return datasets.load_dataset(src.hf, data_dir=src.hf_config, split=src.split, streaming=True, revision=src.revision)
    return datasets.load_dataset(src.hf, src.hf_config, split=src.split, streaming=True, revision=src.revision)


def _hf_records(src) -> Iterator[dict]:
    """Stream a hub dataset (or a local dataset folder); class-label columns come back as ClassName values."""
    import datasets

    try:
        ds = _load_hub(src)
    except Exception as e:  # network, auth or name errors all surface here
        at = f" at revision '{src.revision}'" if src.revision else ""
        raise DomainptError(f"cannot load hub dataset '{src.hf}'{at}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    labels = {k: f for k, f in (ds.features or {}).items() if isinstance(f, datasets.ClassLabel)}
    for i, rec in enumerate(ds):
        for k, f in labels.items():
            if isinstance(rec.get(k), int) and 0 <= rec[k] < f.num_classes:
                rec[k] = ClassName(f.int2str(rec[k]), rec[k])
        rec.setdefault("id", f"{src.hf}:{src.split}:{i}")
        yield rec
