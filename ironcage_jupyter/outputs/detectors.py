"""Typed detectors: secrets that were never handed out (keys, tokens, JWTs, high-entropy assignments)
and PII. Each family is enabled per policy; each hit is replaced with ``[REDACTED:<type>]``.

Python's ``re`` scans slowly for patterns without a literal prefix (``\\b...``: about 20 MB/s each),
so every pattern has literal keywords (as gitleaks does). One Aho–Corasick pass over the lower-cased
UTF-8 bytes finds the keywords; only a window around each hit is checked with the exact pattern. Digit
patterns (cards, SSNs, Telegram tokens) are found the same way after mapping every digit to ``0``
(``123-45-6789`` becomes the literal ``000-00-0000``).

detect-secrets contributes regexes for formats we do not spell out (its plugins' ``denylist`` run
in-process in those windows) and its Shannon-entropy calculation, which we apply to unquoted values as
well (in ``scan_line`` mode detect-secrets only limits quoted strings).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

import ahocorasick_rs
from detect_secrets.plugins.high_entropy_strings import Base64HighEntropyString, HexHighEntropyString
from detect_secrets.plugins.mailchimp import MailchimpDetector
from detect_secrets.plugins.npm import NpmDetector
from detect_secrets.plugins.pypi_token import PypiTokenDetector
from detect_secrets.plugins.sendgrid import SendGridDetector
from detect_secrets.plugins.square_oauth import SquareOAuthDetector
from detect_secrets.plugins.telegram_token import TelegramBotTokenDetector

from .settings import OutputSettings

PRIVATE_KEY_RE = re.compile(
    r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
    re.DOTALL,
)
PRIVATE_KEY_BEGIN_RE = re.compile(r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY")
PRIVATE_KEY_END_RE = re.compile(r"-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----")

_NB = r"(?<![A-Za-z0-9_\-])"  # not preceded by a token character
_NA = r"(?![A-Za-z0-9_\-])"  # not followed by one


@dataclass(frozen=True)
class Pattern:
    """A detector: its family, its type name, the keywords that must occur, and how far around a
    keyword hit the match may start (``back``) and end (``forward``). A ``value`` group, when present,
    is the only part redacted."""

    family: str
    kind: str
    regex: re.Pattern[str]
    keywords: tuple[str, ...]
    back: int = 0
    forward: int = 400
    digits: bool = False  # keywords are searched in the digits-to-0 view
    check: str | None = None  # extra validation: "entropy", "luhn"


def _p(family, kind, regex, keywords, back=0, forward=400, digits=False, check=None, flags=0) -> Pattern:
    return Pattern(family, kind, re.compile(regex, flags), tuple(keywords), back, forward, digits, check)


_ASSIGNMENT_NAMES = (
    "secret",
    "token",
    "passw",
    "pwd",
    "api_key",
    "apikey",
    "api-key",
    "access_key",
    "accesskey",
    "private_key",
    "credential",
    "auth_key",
    "authkey",
)
# camelCase spellings the lower/UPPER/Capitalized keyword variants do not cover.
_ASSIGNMENT_KEYWORDS = (
    *_ASSIGNMENT_NAMES,
    "apiKey",
    "ApiKey",
    "accessKey",
    "AccessKey",
    "privateKey",
    "PrivateKey",
    "authKey",
    "AuthKey",
    "passWord",
    "PassWord",
)

PATTERNS: tuple[Pattern, ...] = (
    # -- tokens --------------------------------------------------------------------------------------
    _p(
        "token",
        "aws_access_key_id",
        r"(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z0-9]{16}(?![A-Z0-9])",
        ["AKIA", "ASIA", "ABIA", "ACCA", "AROA", "AIDA"],
        forward=20,
    ),
    _p(
        "token",
        "aws_secret_access_key",
        r"(?i:aws.{0,20}?(?:secret|private).{0,20}?[=:\"'\s]{1,4})(?P<value>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])",
        ["aws"],
        forward=120,
    ),
    _p("token", "gcp_api_key", _NB + r"AIza[0-9A-Za-z_\-]{35}" + _NA, ["AIza"], forward=39),
    _p("token", "gcp_oauth_token", r"ya29\.[0-9A-Za-z_\-]{20,}", ["ya29."]),
    _p(
        "token",
        "gcp_service_account_key_id",
        r"\"private_key_id\"\s*:\s*\"(?P<value>[0-9a-f]{40})\"",
        ["private_key_id"],
        forward=80,
    ),
    _p(
        "token",
        "azure_storage_key",
        r"(?i:AccountKey=)(?P<value>[A-Za-z0-9+/]{86}==)",
        ["AccountKey=", "accountkey="],
        forward=100,
    ),
    _p("token", "azure_sas_signature", r"[?&]sig=(?P<value>[A-Za-z0-9%+/]{30,}={0,2})", ["sig="], back=1),
    _p(
        "token",
        "github_token",
        r"(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})" + _NA,
        ["ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"],
        forward=270,
    ),
    _p(
        "token",
        "gitlab_token",
        r"gl(?:pat|dt|rt|ptt|cbt)-[A-Za-z0-9_\-]{20,}",
        ["glpat-", "gldt-", "glrt-", "glptt-", "glcbt-"],
    ),
    _p(
        "token",
        "slack_token",
        r"xox[abposre]-[A-Za-z0-9\-]{10,}",
        ["xoxa-", "xoxb-", "xoxp-", "xoxo-", "xoxs-", "xoxr-", "xoxe-"],
    ),
    _p(
        "token",
        "slack_webhook",
        r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/]{20,}",
        ["hooks.slack.com"],
        back=8,
    ),
    _p(
        "token",
        "stripe_key",
        _NB + r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}" + _NA,
        ["sk_live_", "sk_test_", "rk_live_", "rk_test_", "pk_live_", "pk_test_"],
    ),
    _p("token", "anthropic_key", r"sk-ant-[a-z]{2,8}\d{0,3}-[A-Za-z0-9_\-]{20,}", ["sk-ant-"]),
    _p(
        "token",
        "openai_key",
        r"sk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}",
        ["T3BlbkFJ"],
        back=260,
    ),
    _p(
        "token",
        "openai_key",
        r"sk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}",
        ["sk-proj-", "sk-svcacct-", "sk-admin-"],
    ),
    _p("token", "openai_key", _NB + r"sk-[A-Za-z0-9]{48}" + _NA, ["sk-"], forward=52),
    _p(
        "token",
        "jwt",
        r"eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}",
        ["eyJ"],
        forward=4096,
    ),
    _p(
        "token",
        "url_password",
        r"://[^/\s:@\"'<>]{1,64}:(?P<value>[^/\s@\"'<>]{3,128})(?=@[A-Za-z0-9.\-\[])",
        ["://"],
        forward=200,
    ),
    # detect-secrets' own regexes for formats we do not spell out.
    *(
        _p("token", kind, plugin.denylist[0].pattern, keywords, back=back, forward=fwd, digits=digits)  # type: ignore[attr-defined]
        for kind, plugin, keywords, back, fwd, digits in (
            ("sendgrid_key", SendGridDetector, ["SG."], 0, 70, False),
            ("npm_token", NpmDetector, [":_authToken="], 200, 120, False),
            ("pypi_token", PypiTokenDetector, ["pypi-AgEIcHlwaS5vcmc"], 0, 400, False),
            ("square_oauth", SquareOAuthDetector, ["sq0csp-"], 0, 50, False),
            ("mailchimp_key", MailchimpDetector, ["-us"], 32, 6, False),
            # Bot tokens are digits ':' 35 characters; the second part starts "AA" in current tokens.
            ("telegram_token", TelegramBotTokenDetector, [":AA"], 11, 40, False),
        )
    ),
    # -- high-entropy assignments --------------------------------------------------------------------
    _p(
        "entropy",
        "high_entropy_assignment",
        r"[A-Za-z0-9_.\-]{0,48}(?:"
        + "|".join(re.escape(n) for n in _ASSIGNMENT_NAMES)
        + r")[A-Za-z0-9_]{0,32}"
        r"['\"]?\s{0,3}(?:=|:|=>|->)\s{0,3}[bru]?['\"]?(?P<value>[A-Za-z0-9+/=_\-.~]{8,256})",
        _ASSIGNMENT_KEYWORDS,
        back=48,
        forward=340,
        check="entropy",
        flags=re.IGNORECASE,
    ),
    # -- PII ------------------------------------------------------------------------------------------
    _p(
        "pii",
        "email",
        r"[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}(?![A-Za-z0-9\-])",
        ["@"],
        back=64,
        forward=300,
    ),
    _p(
        "pii",
        "card_number",
        r"(?<![\d.\-])\d(?:[ \-]?\d){12,18}(?![\d.])",
        ["0" * 13, "0000 0000 0000", "0000-0000-0000", "0000 000000 0000", "0000-000000-0000"],
        back=6,
        forward=30,
        digits=True,
        check="luhn",
    ),
    _p(
        "pii",
        "ssn",
        r"(?<![\d\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d\-])",
        ["000-00-0000"],
        back=1,
        forward=12,
        digits=True,
    ),
)

_DIGITS_TO_ZERO = bytes.maketrans(b"0123456789", b"0000000000")


def luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


class _KeywordIndex:
    """One automaton over the keywords of the enabled patterns (and ``markers``: literal strings,
    matched exactly as written, that select no pattern but that callers ask about)."""

    def __init__(self, patterns: list[Pattern], digits: bool, markers: Iterable[str] = ()) -> None:
        keywords: dict[str, list[Pattern]] = {}
        for pattern in patterns:
            if pattern.digits != digits:
                continue
            for keyword in pattern.keywords:
                # Matching is case-sensitive (no lower-cased copy of the text): each keyword as written
                # and in lower, UPPER and Capitalized case; the pattern's own regex decides.
                for variant in dict.fromkeys(
                    (keyword, keyword.lower(), keyword.upper(), keyword.capitalize())
                ):
                    bucket = keywords.setdefault(variant, [])
                    if pattern not in bucket:
                        bucket.append(pattern)
        for marker in markers:
            keywords.setdefault(marker, [])
        self.digits = digits
        self.keywords = list(keywords)
        self.patterns = [keywords[k] for k in self.keywords]
        self.markers = frozenset(self.keywords.index(m) for m in markers)
        self.automaton = (
            ahocorasick_rs.BytesAhoCorasick(
                [k.encode() for k in self.keywords], implementation=ahocorasick_rs.Implementation.DFA
            )
            if self.keywords
            else None
        )

    def find(self, data: bytes) -> list[tuple[int, int, int]]:
        """(keyword index, start, end) of every keyword occurrence, in byte offsets."""
        if self.automaton is None:
            return []
        # Overlapping for text keywords ("sk-" inside "sk-ant-"); digit runs would give one hit per
        # position, and one window covers them.
        return self.automaton.find_matches_as_indexes(data, overlapping=not self.digits)

    def hits(self, data: bytes) -> list[tuple[int, int]]:
        return [(i, start) for i, start, _ in self.find(data)]


#: The literal every private-key block has: found by the keyword pass, so no separate scan looks for it.
PRIVATE_KEY_MARKER = "PRIVATE KEY"


class TypedDetectors:
    """Runs the enabled typed detectors over text and redacts what they find."""

    def __init__(self, settings: OutputSettings) -> None:
        self.settings = settings
        enabled = settings.detectors
        families = {
            "token": enabled.tokens,
            "entropy": enabled.entropy,
            "pii": enabled.pii,
        }
        self.private_keys = enabled.private_keys
        self.patterns = [p for p in PATTERNS if families[p.family]]
        self._text_index = _KeywordIndex(
            self.patterns, digits=False, markers=(PRIVATE_KEY_MARKER,) if self.private_keys else ()
        )
        self._digit_index = _KeywordIndex(self.patterns, digits=True)
        self._b64_entropy = Base64HighEntropyString(limit=settings.entropy_limit_base64)
        self._hex_entropy = HexHighEntropyString(limit=settings.entropy_limit_hex)

    @property
    def active(self) -> bool:
        return self.private_keys or bool(self.patterns)

    def scan(self, data: bytes) -> list[tuple[int, int, int]]:
        """The keyword pass over UTF-8 ``data``: (keyword, start, end) byte offsets. Hand the result to
        ``redact`` (for the same bytes, or a prefix of them with the hits that end inside it) and to
        ``private_key_marker`` instead of scanning again."""
        return self._text_index.find(data)

    def private_key_marker(self, found: list[tuple[int, int, int]]) -> bool:
        """Whether ``found`` (from ``scan``) holds the private-key marker (only when that detector is on)."""
        markers = self._text_index.markers
        return bool(markers) and any(i in markers for i, _, _ in found)

    def high_entropy(self, value: str) -> bool:
        """detect-secrets' entropy limits, applied whether or not the value was quoted."""
        if len(value) < self.settings.entropy_min_length:
            return False
        if not any(c.isalpha() for c in value):
            return False  # numbers are data (counts, ids, timestamps), not credentials
        if re.fullmatch(r"[0-9a-fA-F]+", value):
            return self._hex_entropy.calculate_shannon_entropy(value) > self._hex_entropy.entropy_limit
        return self._b64_entropy.calculate_shannon_entropy(value) > self._b64_entropy.entropy_limit

    def redact(
        self, text: str, data: bytes | None = None, found: list[tuple[int, int, int]] | None = None
    ) -> tuple[str, Counter[tuple[str, str]]]:
        """Counts are keyed by (detector family, type). ``data``: ``text`` already encoded (UTF-8,
        surrogatepass), when the caller has it; ``found``: ``scan(data)``, when the caller has it.
        Returns ``text`` itself (the same object) when nothing was redacted."""
        counts: Counter[tuple[str, str]] = Counter()
        if not self.active or not text:
            return text, counts
        if data is None:
            data = text.encode("utf-8", "surrogatepass")
            found = None
        if found is None:
            found = self.scan(data)
        if self.private_key_marker(found):
            text, n = PRIVATE_KEY_RE.subn("[REDACTED:private_key]", text)
            if n:
                counts["private_key", "private_key"] += n
                data = text.encode("utf-8", "surrogatepass")
                found = self.scan(data)
        if not self.patterns:
            return text, counts
        patterns = self._text_index.patterns
        hits = [(p, start) for i, start, _ in found for p in patterns[i]]
        if self._digit_index.automaton is not None:
            digit_view = data.translate(_DIGITS_TO_ZERO)
            hits += [
                (p, start)
                for i, start in self._digit_index.hits(digit_view)
                for p in self._digit_index.patterns[i]
            ]
        if not hits:
            return text, counts
        spans = self._spans(text, data, hits)
        if not spans:
            return text, counts
        out: list[str] = []
        last = 0
        for start, end, kind, family in spans:
            if start < last:
                continue  # overlapping a span already redacted
            out.append(text[last:start])
            out.append(f"[REDACTED:{kind}]")
            counts[family, kind] += 1
            last = end
        out.append(text[last:])
        return "".join(out), counts

    def _spans(
        self, text: str, data: bytes, hits: list[tuple[Pattern, int]]
    ) -> list[tuple[int, int, str, str]]:
        to_char = _byte_to_char_offsets(text, data, (b for _, b in hits))
        seen: set[tuple[int, int]] = set()
        spans: list[tuple[int, int, str, str]] = []
        checked: set[tuple[int, int]] = set()  # (pattern id, window start): each window once
        for pattern, byte_start in hits:
            at = to_char[byte_start]
            lo = max(0, at - pattern.back)
            hi = min(len(text), at + pattern.forward + len(pattern.keywords[0]))
            key = (id(pattern), lo)
            if key in checked:
                continue
            checked.add(key)
            for match in pattern.regex.finditer(text, lo, hi):
                group = "value" if "value" in pattern.regex.groupindex else 0
                start, end = match.span(group)
                if (start, end) in seen or start == end:
                    continue
                if pattern.check == "entropy" and not self.high_entropy(match.group(group)):
                    continue
                if pattern.check == "luhn":
                    digits = re.sub(r"[ \-]", "", match.group(0))
                    if not (13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits)):
                        continue
                seen.add((start, end))
                spans.append((start, end, pattern.kind, pattern.family))
        spans.sort(key=lambda s: (s[0], -(s[1] - s[0])))
        return spans


def _byte_to_char_offsets(text: str, data: bytes, offsets: Iterable[int]) -> dict[int, int]:
    """Character offsets of UTF-8 byte offsets (each at a character boundary), in one pass."""
    if len(data) == len(text):  # ASCII: offsets coincide
        return {b: b for b in offsets}
    result: dict[int, int] = {}
    prev_b = prev_c = 0
    for b in sorted(set(offsets)):
        prev_c += len(data[prev_b:b].decode("utf-8", "surrogatepass"))
        prev_b = b
        result[b] = prev_c
    return result


def open_private_key_start(text: str) -> int | None:
    """Index of a private-key BEGIN marker with no END after it (a stream must hold from there)."""
    if "-----BEGIN" not in text:
        return None
    last = None
    for match in PRIVATE_KEY_BEGIN_RE.finditer(text):
        last = match.start()
    if last is None or PRIVATE_KEY_END_RE.search(text, last):
        return None
    return last
