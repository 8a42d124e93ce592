"""PII scrubbing: typed placeholders, counted per type. Card numbers must pass Luhn, IBANs mod-97."""
from __future__ import annotations

import ipaddress
import re
from collections import Counter

PLACEHOLDER = "<{}>"

_PATTERNS = {
    "email": re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}\b"),
    "iban": re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?\b"),
    "credit_card": re.compile(r"\b(?:\d[ -]?){12,18}\d\b"),
    "ssn": re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
    "phone": re.compile(r"(?<![\w+])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?![ .-]?\d)"),
    "ip": re.compile(r"\b(?:\d{1,3}\.){3}\d{1,3}\b"),
}
_DIGIT = re.compile(r"\d")
# Order matters: longer structured identifiers first, so a card number is not also read as a phone.
ORDER = ("email", "iban", "credit_card", "ssn", "phone", "ip")


def luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(text: str) -> bool:
    s = text.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    num = "".join(str(int(c, 36)) for c in moved)
    return int(num) % 97 == 1


def _valid(kind: str, match: str) -> bool:
    if kind == "credit_card":
        digits = re.sub(r"\D", "", match)
        # Payment cards start with 2-6 (Mastercard, Amex, Visa, Discover...): ISBN-13s (978/979) pass Luhn too.
        return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)
    if kind == "iban":
        return iban_ok(match)
    if kind == "ip":
        try:
            ip = ipaddress.IPv4Address(match)
        except ValueError:
            return False
        return not (ip.is_private or ip.is_loopback or ip.is_unspecified or ip.is_reserved)
    if kind == "phone":
        return 9 <= len(re.sub(r"\D", "", match)) <= 15
    return True


def scrub(text: str, types=ORDER) -> tuple[str, Counter]:
    """Replace each PII match by <TYPE>; return the new text and counts per type."""
    counts: Counter = Counter()
    has_digit = _DIGIT.search(text) is not None
    for kind in ORDER:
        if kind not in types or (kind == "email" and "@" not in text) or (kind != "email" and not has_digit):
            continue  # cheap C-level checks spare a full regex scan of most documents

        def repl(m, kind=kind):
            if _valid(kind, m.group(0)):
                counts[kind] += 1
                return PLACEHOLDER.format(kind.upper())
            return m.group(0)

        text = _PATTERNS[kind].sub(repl, text)
    return text, counts
