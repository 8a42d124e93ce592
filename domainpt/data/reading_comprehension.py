"""Reading-comprehension exercises mined from a domain document and appended to it (AdaptLLM, Cheng et al. 2024).

Training on raw domain text adds knowledge but can hurt prompting; AdaptLLM appends to each document
question/answer exercises found in it by simple patterns, so the model also practises answering about
what it reads. Six kinds, each taken verbatim from the document (only the question templates are ours):

    title          the document's heading line          "What is a title for this text?"
    word_to_text   domain keywords -> a sentence using them, and "X is defined as / means / refers to Y"
    nli            sentence pairs joined by a connective: therefore (entailment), however (contradiction),
                   moreover (neutral)
    commonsense    cause and effect: "A because B", "A. As a result, B"
    paraphrase     "A. In other words, B" (support) and "A. In contrast, B" (contradict)
    completion     a sentence -> the sentence that follows it

Sentences come from pysbd (a rule-based splitter, no model download). Every choice is seeded by the
recipe's seed and the document's own text, so the output is the same however prepare is sharded.

    data: {transform: reading_comprehension, reading_comprehension: {max_per_kind: 2, share: 1.0}}
"""
from __future__ import annotations

import functools
import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass

KINDS = ("title", "word_to_text", "nli", "commonsense", "paraphrase", "completion")

# A connective at the start of a sentence, and what it says about the sentence before it.
NLI = {"entailment": ("therefore", "thus", "hence", "consequently", "accordingly"),
       "contradiction": ("however", "nevertheless", "nonetheless", "but", "yet", "still"),
       "neutral": ("moreover", "furthermore", "in addition", "additionally", "also", "likewise")}
NLI_ANSWER = {"entailment": "Yes", "contradiction": "No", "neutral": "Maybe"}
EFFECT = ("as a result", "as a consequence", "for this reason", "because of this", "this means that")
PARAPHRASE = {"support": ("in other words", "that is", "that is to say", "put differently", "in short"),
              "contradict": ("in contrast", "on the contrary", "on the other hand", "conversely")}
DEFINITION = re.compile(r"^(?:An? |The )?([A-Z][\w\- ]{2,60}?) (?:is defined as|means|refers to|is called) (.{10,300}?)[.;]?$")
BECAUSE = re.compile(r"^(.{15,300}?),? because (.{10,300}?)[.;]?$")
WORD = re.compile(r"[^\W\d_]{4,}")


def _opening(sentence: str, phrases) -> str | None:
    """The rest of `sentence` when it opens with one of `phrases` followed by a comma or space."""
    low = sentence.lower()
    for p in sorted(phrases, key=len, reverse=True):
        if low.startswith(p) and len(sentence) > len(p) + 1 and sentence[len(p)] in ", ":
            rest = sentence[len(p):].lstrip(", ").strip()
            return rest[0].upper() + rest[1:] if len(rest) > 10 else None
    return None


def text_units(text: str) -> list[str]:
    """Lines, except that a hard-wrapped paragraph (most lines about as long as its longest, as in licence texts
    wrapped at 72-80 columns) is one unit with its line breaks read as spaces: a wrap is not a sentence end."""
    units = []
    for block in re.split(r"\n\s*\n", text):
        lines = [l.strip() for l in block.split("\n") if l.strip()]
        if not lines:
            continue
        width = max(len(l) for l in lines)
        body = lines[:-1]  # a paragraph's last line is short by nature
        if len(lines) >= 2 and width >= 50 and sum(len(l) >= 0.7 * width for l in body) >= 0.8 * len(body):
            units.append(" ".join(lines))
        else:
            units += lines
    return units


def domain_keywords(domain_texts: list[str], general_texts: list[str], k: int, min_count: int = 3) -> list[str]:
    """Words the domain uses far more often than general text (smoothed frequency ratio), most telling first."""
    d = Counter(w.lower() for t in domain_texts for w in WORD.findall(t))
    g = Counter(w.lower() for t in general_texts for w in WORD.findall(t))
    nd, ng = max(1, sum(d.values())), max(1, sum(g.values()))
    scored = [((c / nd) / ((g[w] + 1) / ng), w) for w, c in d.items() if c >= min_count]
    return [w for s, w in sorted(scored, key=lambda x: (-x[0], x[1])) if s > 2.0][:k]


@functools.lru_cache(maxsize=1)
def _segmenter():
    import pysbd

    return pysbd.Segmenter(language="en", clean=False)


@dataclass(frozen=True)
class Miner:
    """Mines and formats exercises; plain data, so prepare's worker processes get it pickled."""

    keywords: tuple[str, ...]
    max_per_kind: int = 2
    max_chars: int = 20000
    seed: int = 0
    share: float = 1.0

    def sentences(self, units: list[str]) -> list[str]:
        """pysbd's sentences of each text unit (text_units)."""
        return [s.strip() for unit in units for s in _segmenter().segment(unit) if len(s.strip()) > 3]

    def mine(self, text: str) -> dict[str, list[tuple[str, str]]]:
        """Every exercise found, per kind, as (question, answer); answers are verbatim from `text` (a hard-wrapped
        paragraph's line breaks read as spaces)."""
        units = text_units(text[:self.max_chars])
        sents = self.sentences(units)
        found = {k: [] for k in KINDS}
        first = units[0] if units else ""
        if 3 <= len(first) <= 120 and len(first.split()) <= 12 and len(sents) >= 3 and first[-1] not in ".:;,":
            found["title"].append(("What is a title for this text?", first))
        keys = set(self.keywords)
        for s in sents:
            used = sorted({w for w in (x.lower() for x in WORD.findall(s)) if w in keys})
            if len(used) >= 1 and len(s.split()) >= 4:
                found["word_to_text"].append((f"Write a sentence that uses these words: {', '.join(used[:3])}.", s))
            if m := DEFINITION.match(s):
                found["word_to_text"].append((f"What does \"{m.group(1).strip()}\" mean?", m.group(2).strip()))
            if m := BECAUSE.match(s):
                found["commonsense"].append((f"What is the reason for the following? {m.group(1).strip()}", m.group(2).strip()))
        for a, b in zip(sents, sents[1:]):
            for label, words in NLI.items():
                if rest := _opening(b, words):
                    found["nli"].append((f"Does the sentence \"{a}\" entail the sentence \"{rest}\"? Yes, No or Maybe?",
                                         NLI_ANSWER[label]))
            if rest := _opening(b, EFFECT):
                found["commonsense"].append((f"What is an effect of the following? {a}", rest))
            for label, words in PARAPHRASE.items():
                if rest := _opening(b, words):
                    found["paraphrase"].append((f"Compose a sentence that {'supports' if label == 'support' else 'contradicts'}: "
                                                f"\"{a}\"", rest))
            if len(a.split()) >= 4 and len(b.split()) >= 4:
                found["completion"].append((f"How would you continue this text? \"{a}\"", b))
        return found

    def transform(self, text: str, doc_key: int) -> tuple[str, list[int]]:
        """(text with its exercises appended, exercises per kind); a document the share leaves out is unchanged."""
        if not selected(self.seed, doc_key, self.share):
            return text, [0] * len(KINDS)
        chosen = self.choose(text, doc_key)
        return append_exercises(text, chosen), [len(chosen[k]) for k in KINDS]

    def choose(self, text: str, doc_key: int) -> dict[str, list[tuple[str, str]]]:
        """At most max_per_kind exercises per kind, drawn with a generator seeded by the recipe and the document."""
        rng = random.Random(_seeded("rc", self.seed, doc_key))
        return {k: rng.sample(v, min(len(v), self.max_per_kind)) for k, v in self.mine(text).items()}


def append_exercises(text: str, chosen: dict[str, list[tuple[str, str]]]) -> str:
    """The document, then its exercises in a fixed kind order, as AdaptLLM lays them out after the text."""
    pairs = [qa for k in KINDS for qa in chosen.get(k, [])]
    if not pairs:
        return text
    return text.rstrip() + "\n\n" + "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in pairs)


def selected(seed: int, doc_key: int, share: float) -> bool:
    """Whether a document is transformed: a seeded coin per document text, the same on every shard."""
    return _seeded("rc-share", seed, doc_key) / 2 ** 64 < share


def _seeded(tag: str, seed: int, doc_key: int) -> int:
    """A 64-bit number fixed by (tag, seed, document): the same in every process and shard."""
    return int.from_bytes(hashlib.blake2b(f"{tag}:{seed}:{doc_key}".encode(), digest_size=8).digest(), "little")
