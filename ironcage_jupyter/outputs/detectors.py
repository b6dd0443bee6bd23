"""Typed detectors: secrets that were never handed out (keys, tokens, JWTs, high-entropy assignments)
and PII. Each family is enabled per policy; each hit is replaced with ``[REDACTED:<type>]``.

Token formats are written here as one compiled alternation per family (fast, explainable);
detect-secrets contributes the formats we do not spell out ourselves (its regex plugins run
in-process through ``analyze_string``) and its Shannon-entropy calculation, which we re-apply to
unquoted values as well (in ``scan_line`` mode detect-secrets only limits quoted strings).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

from detect_secrets.plugins.base import BasePlugin
from detect_secrets.plugins.high_entropy_strings import (
    Base64HighEntropyString,
    HexHighEntropyString,
)

from .settings import OutputDetectors, OutputSettings

PRIVATE_KEY_RE = re.compile(
    r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----"
    r"(?:.*?-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----|.*\Z)",
    re.DOTALL,
)
PRIVATE_KEY_BEGIN_RE = re.compile(r"-----BEGIN[ A-Z0-9]{0,40}PRIVATE KEY")

_TOKEN_PATTERNS: dict[str, str] = {
    "aws_access_key_id": r"\b(?:AKIA|ASIA|ABIA|ACCA|AROA|AIDA)[A-Z0-9]{16}\b",
    "aws_secret_access_key": r"(?i:aws.{0,20}?(?:secret|private).{0,20}?[=:\"'\s]{1,4})[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+])",
    "gcp_api_key": r"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])",
    "gcp_oauth_token": r"\bya29\.[0-9A-Za-z_\-]{20,}",
    "gcp_service_account_key_id": r"\"private_key_id\"\s*:\s*\"[0-9a-f]{40}\"",
    "azure_storage_key": r"(?i:AccountKey=)[A-Za-z0-9+/]{86}==",
    "azure_sas_signature": r"[?&]sig=[A-Za-z0-9%+/]{30,}={0,2}",
    "github_token": r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})\b",
    "gitlab_token": r"\bgl(?:pat|dt|rt|ptt|cbt)-[A-Za-z0-9_\-]{20,}",
    "slack_token": r"\bxox[abposre]-[A-Za-z0-9\-]{10,}",
    "slack_webhook": r"https://hooks\.slack\.com/(?:services|workflows)/[A-Za-z0-9_/]{20,}",
    "stripe_key": r"\b(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}\b",
    "anthropic_key": r"\bsk-ant-[a-z]{2,8}\d{0,3}-[A-Za-z0-9_\-]{20,}",
    "openai_key": r"\bsk-(?:proj-|svcacct-|admin-|None-)?[A-Za-z0-9_\-]{20,}T3BlbkFJ[A-Za-z0-9_\-]{20,}"
    r"|\bsk-(?:proj|svcacct|admin)-[A-Za-z0-9_\-]{40,}|\bsk-[A-Za-z0-9]{48}\b",
    "jwt": r"\beyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{16,}",
    "url_password": r"(?<=://)[^/\s:@\"'<>]{1,64}:[^/\s@\"'<>]{3,128}(?=@[A-Za-z0-9.\-\[])",
}

# detect-secrets regex plugins for formats not spelled out above.
_DETECT_SECRETS_PLUGINS = (
    ("twilio_key", "detect_secrets.plugins.twilio", "TwilioKeyDetector"),
    ("sendgrid_key", "detect_secrets.plugins.sendgrid", "SendGridDetector"),
    ("mailchimp_key", "detect_secrets.plugins.mailchimp", "MailchimpDetector"),
    ("npm_token", "detect_secrets.plugins.npm", "NpmDetector"),
    ("pypi_token", "detect_secrets.plugins.pypi_token", "PypiTokenDetector"),
    ("discord_token", "detect_secrets.plugins.discord", "DiscordBotTokenDetector"),
    ("telegram_token", "detect_secrets.plugins.telegram_token", "TelegramBotTokenDetector"),
    ("square_oauth", "detect_secrets.plugins.square_oauth", "SquareOAuthDetector"),
)

_ASSIGNMENT_RE = re.compile(
    r"(?i)\b[A-Za-z0-9_.\-]*(?:secret|token|passw(?:or)?d|pwd|api[_\-]?key|access[_\-]?key|"
    r"private[_\-]?key|client[_\-]?secret|credential|auth[_\-]?key)[A-Za-z0-9_]*['\"]?"
    r"\s{0,3}(?:=|:|=>|->)\s{0,3}[bru]?['\"]?(?P<value>[A-Za-z0-9+/=_\-.~]{8,})"
)

_EMAIL_RE = re.compile(
    r"\b[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}(?:\.[A-Za-z0-9\-]{1,63})*\.[A-Za-z]{2,24}\b"
)
_CARD_RE = re.compile(r"(?<![\d.\-])\d(?:[ \-]?\d){12,18}(?![\d.])")
_SSN_RE = re.compile(r"(?<![\d\-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d\-])")


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


def _import_plugin(module: str, cls: str) -> BasePlugin:
    mod = __import__(module, fromlist=[cls])
    plugin: BasePlugin = getattr(mod, cls)()
    return plugin


Replacer = Callable[[str], tuple[str, Counter[tuple[str, str]]]]


class TypedDetectors:
    """Runs the enabled typed detectors over text and redacts what they find."""

    def __init__(self, settings: OutputSettings) -> None:
        self.settings = settings
        enabled: OutputDetectors = settings.detectors
        self._steps: list[Replacer] = []
        if enabled.private_keys:
            self._steps.append(self._private_keys)
        if enabled.tokens:
            self._token_re = re.compile(
                "|".join(f"(?P<{name}>{pattern})" for name, pattern in _TOKEN_PATTERNS.items())
            )
            self._plugins = [(name, _import_plugin(m, c)) for name, m, c in _DETECT_SECRETS_PLUGINS]
            self._steps.append(self._tokens)
            self._steps.append(self._plugin_tokens)
        if enabled.entropy:
            self._b64_entropy = Base64HighEntropyString(limit=settings.entropy_limit_base64)
            self._hex_entropy = HexHighEntropyString(limit=settings.entropy_limit_hex)
            self._steps.append(self._entropy)
        if enabled.pii:
            self._steps.append(self._pii)

    @property
    def active(self) -> bool:
        return bool(self._steps)

    def redact(self, text: str) -> tuple[str, Counter[tuple[str, str]]]:
        """Counts are keyed by (detector family, type)."""
        counts: Counter[tuple[str, str]] = Counter()
        for step in self._steps:
            text, found = step(text)
            counts.update(found)
        return text, counts

    # -- families ------------------------------------------------------------------------------------

    @staticmethod
    def _private_keys(text: str) -> tuple[str, Counter[tuple[str, str]]]:
        counts: Counter[tuple[str, str]] = Counter()
        if "PRIVATE KEY" not in text:
            return text, counts
        text, n = PRIVATE_KEY_RE.subn("[REDACTED:private_key]", text)
        if n:
            counts["private_key", "private_key"] += n
        return text, counts

    def _tokens(self, text: str) -> tuple[str, Counter[tuple[str, str]]]:
        counts: Counter[tuple[str, str]] = Counter()

        def replace(match: re.Match[str]) -> str:
            kind = match.lastgroup or "token"
            counts["token", kind] += 1
            return f"[REDACTED:{kind}]"

        return self._token_re.sub(replace, text), counts

    def _plugin_tokens(self, text: str) -> tuple[str, Counter[tuple[str, str]]]:
        counts: Counter[tuple[str, str]] = Counter()
        for kind, plugin in self._plugins:
            found = set(plugin.analyze_string(text))
            for value in sorted(found, key=len, reverse=True):
                if len(value) < 8:
                    continue
                n = text.count(value)
                text = text.replace(value, f"[REDACTED:{kind}]")
                counts["token", kind] += n
        return text, counts

    def high_entropy(self, value: str) -> bool:
        """detect-secrets' entropy limits, applied whether or not the value was quoted."""
        if len(value) < self.settings.entropy_min_length:
            return False
        if not any(c.isalpha() for c in value):
            return False  # numbers are data (counts, ids, timestamps), not credentials
        if re.fullmatch(r"[0-9a-fA-F]+", value):
            return self._hex_entropy.calculate_shannon_entropy(value) > self._hex_entropy.entropy_limit
        return self._b64_entropy.calculate_shannon_entropy(value) > self._b64_entropy.entropy_limit

    def _entropy(self, text: str) -> tuple[str, Counter[tuple[str, str]]]:
        counts: Counter[tuple[str, str]] = Counter()

        def replace(match: re.Match[str]) -> str:
            value = match.group("value")
            if not self.high_entropy(value):
                return match.group(0)
            counts["entropy", "high_entropy_assignment"] += 1
            start = match.start("value") - match.start(0)
            return match.group(0)[:start] + "[REDACTED:high_entropy_assignment]"

        return _ASSIGNMENT_RE.sub(replace, text), counts

    @staticmethod
    def _pii(text: str) -> tuple[str, Counter[tuple[str, str]]]:
        counts: Counter[tuple[str, str]] = Counter()

        def email(match: re.Match[str]) -> str:
            counts["pii", "email"] += 1
            return "[REDACTED:email]"

        def card(match: re.Match[str]) -> str:
            digits = re.sub(r"[ \-]", "", match.group(0))
            if 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_valid(digits):
                counts["pii", "card_number"] += 1
                return "[REDACTED:card_number]"
            return match.group(0)

        def ssn(match: re.Match[str]) -> str:
            counts["pii", "ssn"] += 1
            return "[REDACTED:ssn]"

        if "@" in text:
            text = _EMAIL_RE.sub(email, text)
        text = _CARD_RE.sub(card, text)
        if "-" in text:
            text = _SSN_RE.sub(ssn, text)
        return text, counts


def open_private_key_start(text: str) -> int | None:
    """Index of a private-key BEGIN marker with no END after it (a stream must hold from there)."""
    last = None
    for match in PRIVATE_KEY_BEGIN_RE.finditer(text):
        last = match.start()
    if last is None:
        return None
    if re.search(r"-----END[ A-Z0-9]{0,40}PRIVATE KEY", text[last:]):
        return None
    return last


def iter_strings(value: object) -> Iterable[str]:
    """Every string inside nested dicts/lists (keys included)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                yield k
            yield from iter_strings(v)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from iter_strings(item)
