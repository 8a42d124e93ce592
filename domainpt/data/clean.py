"""Normalisation and simple quality filters. Each filter is a pure function returning a reason or None."""
from __future__ import annotations

import re
import unicodedata

_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_LINE_EDGES = re.compile(r"[^\S\n]*\n[^\S\n]*")  # whitespace other than newlines around a newline


def normalize(text: str, cfg) -> str:
    if cfg.normalize_unicode:
        text = unicodedata.normalize("NFC", text)
    if cfg.collapse_whitespace:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        text = _LINE_EDGES.sub("\n", _SPACES.sub(" ", text))  # one pass each, not one per line
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


_NOT_SYMBOL = re.compile(r"[^\W_]+|\s+")  # letters and digits (\w without "_") or whitespace


def symbol_ratio(text: str) -> float:
    """Share of characters that are neither alphanumeric nor whitespace."""
    if not text:
        return 1.0
    return len(_NOT_SYMBOL.sub("", text)) / len(text)


def repeated_line_ratio(text: str) -> float:
    lines = [l for l in text.split("\n") if l.strip()]
    if not lines:
        return 0.0
    return 1.0 - len(set(lines)) / len(lines)


def reject_reason(text: str, cfg) -> str | None:
    """Name of the first filter that rejects the (normalised) text, or None to keep it."""
    if len(text) < cfg.min_chars:
        return "too_short"
    if len(text) > cfg.max_chars:
        return "too_long"
    if symbol_ratio(text) > cfg.max_symbol_ratio:
        return "symbol_ratio"
    if repeated_line_ratio(text) > cfg.max_repeated_line_ratio:
        return "repeated_lines"
    return None
