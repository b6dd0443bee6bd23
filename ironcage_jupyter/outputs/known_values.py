"""Known-value matching: find every encoded form of the secrets handed out in this session.

All forms of all secrets are precomputed once per secret and searched in one Aho–Corasick pass
(ahocorasick_rs, over UTF-8 bytes). Separator-stripped forms come for free: separators are deleted
from both the needles and the text before matching (``bytes.translate``), so ``s k - a b c``,
``sk-ab-c`` and base64 wrapped at 76 columns all match. Redaction (the rare path) maps a hit back to
the original text with a regex that allows separators between the needle's characters.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field

import ahocorasick_rs

# Characters that may be inserted between (or stripped from) a secret's characters. NUL catches
# UTF-16 dumps and /proc/*/environ; backslash catches JSON's "\/" escaping.
SEPARATORS = " \t\r\n\v\f\0-_.:,;|/\\"
_SEPARATOR_BYTES = SEPARATORS.encode()
_SEPARATOR_CLASS = "[" + re.escape(SEPARATORS) + "]*"
_SEPARATOR_DELETE = {ord(c): None for c in SEPARATORS}

REDACTION_FORMAT = "[REDACTED:{name}]"


def squeeze(text: str) -> str:
    """The text with every separator character removed."""
    return text.translate(_SEPARATOR_DELETE)


def _fragments(encode, alphabet_bits: int, block_bytes: int, value: bytes) -> list[str]:
    """Encoded forms of ``value`` at every byte alignment inside a larger encoded blob.

    Character i of the encoding covers bits [i*b, (i+1)*b). With k unknown bytes before the value, the
    characters entirely inside the value's bits are [ceil(8k/b), floor(8(k+n)/b)).
    """
    out = []
    n = len(value)
    for k in range(block_bytes):
        encoded = encode(b"\0" * k + value + b"\0" * block_bytes).decode("ascii")
        start = -(-8 * k // alphabet_bits)
        end = (8 * (k + n)) // alphabet_bits
        out.append(encoded[start:end])
    return out


def encoded_forms(value: str) -> dict[str, str]:
    """Every text form of ``value`` the matcher looks for, keyed by form name."""
    raw = value.encode("utf-8", "surrogatepass")
    forms: dict[str, str] = {"raw": value, "reversed": value[::-1]}
    forms["hex"] = raw.hex()
    forms["hex_upper"] = raw.hex().upper()
    for i, frag in enumerate(_fragments(base64.b64encode, 6, 3, raw)):
        forms[f"base64_{i}"] = frag
        forms[f"base64url_{i}"] = frag.replace("+", "-").replace("/", "_")
    # The whole encoding of the value alone, padding included: the fragments above stop short of the
    # last characters, which also carry the value's last bits.
    forms["base64_whole"] = base64.b64encode(raw).decode("ascii")
    forms["base64url_whole"] = base64.urlsafe_b64encode(raw).decode("ascii")
    forms["base32_whole"] = base64.b32encode(raw).decode("ascii")
    for i, frag in enumerate(_fragments(base64.b32encode, 5, 5, raw)):
        forms[f"base32_{i}"] = frag
        forms[f"base32_lower_{i}"] = frag.lower()
    forms["url"] = urllib.parse.quote(value, safe="")
    forms["url_plus"] = urllib.parse.quote_plus(value, safe="")
    forms["url_lower"] = re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), forms["url"])
    forms["url_all"] = "".join(f"%{b:02X}" for b in raw)
    forms["json"] = json.dumps(value)[1:-1]
    forms["json_ascii"] = json.dumps(value, ensure_ascii=True)[1:-1]
    forms["json_unicode"] = json.dumps(value, ensure_ascii=False)[1:-1]
    forms["html"] = html.escape(value, quote=True)
    forms["html_noquote"] = html.escape(value, quote=False)
    forms["html_numeric"] = "".join(f"&#{ord(c)};" for c in value)
    forms["html_hex"] = "".join(f"&#x{ord(c):x};" for c in value)
    return forms


@dataclass
class _Needle:
    name: str
    form: str
    squeezed: str
    # Short needles only match as written (separators exactly where the form has them): with
    # separators allowed anywhere, "12345678" would match every printed range(10).
    strict: bool = False
    originals: list[str] = field(default_factory=list)


class KnownValueMatcher:
    """Holds the needles of every secret handed out; scans and redacts text."""

    def __init__(self, min_length: int = 8, loose_min_length: int = 16, release_below: int = 4) -> None:
        self.min_length = min_length
        self.loose_min_length = loose_min_length
        self.release_below = release_below
        self._needles: dict[str, _Needle] = {}
        self._values: dict[str, str] = {}
        self._automaton: ahocorasick_rs.BytesAhoCorasick | None = None
        self._order: list[_Needle] = []
        self._prefixes: set[bytes] = set()
        self._heads: ahocorasick_rs.BytesAhoCorasick | None = None
        self._max_needle = 0
        self._regex_cache: dict[str, re.Pattern[str]] = {}
        self._dirty = False
        # add() may come from another thread (a proxy resolving a secret) while the relay scans.
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._values)

    @property
    def names(self) -> list[str]:
        return sorted(set(self._values.values()))

    def add(self, name: str, value: str) -> list[str]:
        """Register a secret. Returns the forms skipped because they were too short to match safely."""
        with self._lock:
            return self._add(name, value)

    def _add(self, name: str, value: str) -> list[str]:
        if not value:
            return ["raw"]
        if self._values.get(value) == name:
            return []
        self._values[value] = name
        skipped = []
        for form, text in encoded_forms(value).items():
            squeezed = squeeze(text)
            if len(squeezed) < self.min_length:
                skipped.append(form)
                continue
            # The first secret to claim a needle keeps it; the same needle means the same text anyway.
            needle = self._needles.setdefault(
                squeezed, _Needle(name, form, squeezed, strict=len(squeezed) < self.loose_min_length)
            )
            if needle.strict and text not in needle.originals:
                needle.originals.append(text)
            if not needle.strict:
                # A stream may release the first few characters of a form before knowing what follows;
                # the rest of the form must still be caught, so it is a needle of its own.
                for j in range(1, self.release_below):
                    self._needles.setdefault(squeezed[j:], _Needle(name, f"{form}_from_{j}", squeezed[j:]))
        self._dirty = True  # automata are rebuilt once, at the next scan
        return skipped

    def _rebuild(self) -> None:
        with self._lock:
            self._rebuild_locked()

    def _rebuild_locked(self) -> None:
        self._dirty = False
        self._order = list(self._needles.values())
        if not self._order:
            self._automaton = None
            self._heads = None
            self._prefixes = set()
            self._max_needle = 0
            return
        self._automaton = ahocorasick_rs.BytesAhoCorasick(
            [n.squeezed.encode("utf-8", "surrogatepass") for n in self._order],
            matchkind=ahocorasick_rs.MatchKind.Standard,
            implementation=ahocorasick_rs.Implementation.DFA,
        )
        # Prefixes that make a stream hold its tail back: every prefix of a short (strict) needle, and
        # prefixes of at least ``release_below`` characters of the others.
        encoded = [(n, n.squeezed.encode("utf-8", "surrogatepass")) for n in self._order]
        self._prefixes = {
            b[:i] for n, b in encoded for i in range(1 if n.strict else self.release_below, len(b))
        }
        # Where a candidate may start: the first release_below bytes of a needle (1 for short ones).
        heads = {b[: 1 if n.strict else self.release_below] for n, b in encoded}
        self._heads = ahocorasick_rs.BytesAhoCorasick(list(heads))
        self._max_needle = max(len(b) for _, b in encoded)

    def find(self, text: str, encoded: bytes | None = None, *, overlapping: bool = False) -> list[_Needle]:
        """Needles present in ``text`` (separators ignored), or an empty list. The hot path.
        ``encoded``: ``text`` as UTF-8 (surrogatepass), when the caller has it. ``overlapping``
        (redaction only): also the needles that share a start with a shorter one found first."""
        if self._dirty:
            self._rebuild()
        if self._automaton is None or not text:
            return []
        if encoded is None:
            encoded = text.encode("utf-8", "surrogatepass")
        data = encoded.translate(None, _SEPARATOR_BYTES)
        hits = self._automaton.find_matches_as_indexes(data, overlapping=overlapping)
        if not hits:
            return []
        return [self._order[i] for i in dict.fromkeys(h[0] for h in hits)]

    def find_bytes(self, data: bytes) -> list[_Needle]:
        """Needles present in raw bytes (binary message buffers): ASCII/UTF-8 forms only."""
        if self._dirty:
            self._rebuild()
        if self._automaton is None or not data:
            return []
        hits = self._automaton.find_matches_as_indexes(bytes(data).translate(None, _SEPARATOR_BYTES))
        return [self._order[i] for i in dict.fromkeys(h[0] for h in hits)]

    def _regex(self, needle: _Needle) -> re.Pattern[str]:
        rx = self._regex_cache.get(needle.squeezed)
        if rx is None:
            if needle.strict:
                alternatives = sorted(needle.originals, key=len, reverse=True)
                rx = re.compile("|".join(re.escape(o) for o in alternatives))
            else:
                rx = re.compile(_SEPARATOR_CLASS.join(re.escape(c) for c in needle.squeezed))
            self._regex_cache[needle.squeezed] = rx
        return rx

    def redact(self, text: str, encoded: bytes | None = None) -> tuple[str, Counter[str]]:
        """Replace every form of every secret with ``[REDACTED:NAME]``; counts per secret name.
        Returns ``text`` itself (the same object) when nothing was found."""
        counts: Counter[str] = Counter()
        # Non-overlapping hits can hide an overlapping needle of another secret: rescan until clean.
        for _ in range(16):
            # Overlapping: the whole encoding of a value (padding included) must win over its
            # shorter fragment, or the last characters would be left behind.
            needles = self.find(text, encoded, overlapping=True)
            encoded = None
            replaced = 0
            for needle in sorted(needles, key=lambda n: len(n.squeezed), reverse=True):
                text, n = self._regex(needle).subn(REDACTION_FORMAT.format(name=needle.name), text)
                # (A needle overlapping a longer one replaced just before is gone with it; the rescan
                # finds any that is not.)
                if n == 0 and not needle.strict and not replaced:
                    raise RuntimeError("known-value matcher and redaction regex disagree")
                counts[needle.name] += n
                replaced += n
            if not replaced:
                # Clean, or only short needles that matched across separators (not a hit).
                return text, counts
        raise RuntimeError("known-value redaction did not converge")

    def held_tail_length(self, text: str, released: str = "") -> int:
        """How many trailing characters of ``text`` a stream must hold back: the longest suffix that
        could be the start of a needle. ``released`` is what the stream already emitted before
        ``text``: a candidate that began there keeps growing, so releasing a few characters at a time
        never lets a whole secret through. Separators count towards the returned length, not towards
        the needle.
        """
        if self._dirty:
            self._rebuild()
        if self._heads is None or not text:
            return 0
        total = len(released) + len(text)
        limit = self._max_needle - 1
        width = 4 * limit + 64
        while True:
            # The last ``width`` characters of released + text, without copying a large text.
            if len(text) >= width:
                window = text[-width:]
            else:
                window = released[max(0, len(released) - (width - len(text))) :] + text
            tail = window.encode("utf-8", "surrogatepass").translate(None, _SEPARATOR_BYTES)
            if len(tail) >= limit or len(window) == total:
                break
            width *= 4  # mostly separators: look further back
        tail = tail[-limit:] if limit > 0 else b""
        candidates = sorted(
            {start for _, start, _ in self._heads.find_matches_as_indexes(tail, overlapping=True)}
        )
        # Earliest candidate first: the longest suffix that is still a needle's prefix. A candidate
        # shorter than a head (release_below bytes) is released by design.
        for start in candidates:
            if tail[start:] in self._prefixes:
                return min(len(text), self._raw_suffix_length(window, len(tail) - start))
        return 0

    def head(self, text: str) -> str:
        """The start of ``text`` that a needle beginning before it can reach: at least the longest
        needle's length in non-separator bytes (all of ``text`` when it is shorter)."""
        if self._dirty:
            self._rebuild()
        limit = self._max_needle
        width = 4 * limit + 64
        while width < len(text):
            squeezed = text[:width].encode("utf-8", "surrogatepass").translate(None, _SEPARATOR_BYTES)
            if len(squeezed) >= limit:
                return text[:width]
            width *= 4  # mostly separators: look further on
        return text

    @staticmethod
    def _raw_suffix_length(text: str, squeezed_bytes: int) -> int:
        """Length of the shortest suffix of ``text`` holding ``squeezed_bytes`` non-separator bytes."""
        count = 0
        i = len(text)
        while i > 0 and count < squeezed_bytes:
            i -= 1
            c = text[i]
            if c not in SEPARATORS:
                count += len(c.encode("utf-8", "surrogatepass"))
        return len(text) - i
