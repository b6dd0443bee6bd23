"""The credential broker: resolves secrets from their sources, checks grants from the policy (cell /
tool / host, rate, TTL), issues sentinels, swaps them back on the trusted side, and audits every
request, grant and refusal by name and scope, never by value.
"""

from __future__ import annotations

import functools
import ipaddress
import secrets as _random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .settings import CredentialSettings, SecretGrant
from .sources import SecretSource, SourceError, default_sources

SENTINEL_PREFIX = "ironcage-sentinel-"
AuditCallback = Callable[[str, dict[str, Any]], None]


class SecretSink(Protocol):
    """Told about every value handed out (the output firewall)."""

    def add_secret(self, name: str, value: str, *, sentinel: bool = False) -> Any: ...

    def mark_cell_used_secret(self) -> None: ...


def _locked(method):
    """The broker is called from the kernel's loop and from proxy/tool threads: one at a time."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self._lock:
            return method(self, *args, **kwargs)

    return wrapper


class CredentialRefused(Exception):
    """A request was refused; ``reason`` is safe to show and to audit."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"secret {name!r} refused: {reason}")
        self.name = name
        self.reason = reason


@dataclass
class _Lease:
    expires_at: float


@dataclass
class _SecretState:
    value: str | None = None
    value_expires_at: float = 0.0
    sentinel: str | None = None
    lease: _Lease | None = None
    uses: deque[float] = field(default_factory=deque)


@dataclass
class TaintState:
    tainted: bool = False
    injected: set[str] = field(default_factory=set)
    restart_required: bool = False
    active_injection: dict[str, str] | None = None  # env var -> secret name, for the running cell
    active_cell: str | None = None


def normalize_host(host: str) -> tuple[str, int | None]:
    """'API.Example.com.:443' -> ('api.example.com', 443); '[::1]:8080' -> ('::1', 8080)."""
    host = host.strip().lower()
    port: int | None = None
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"bad host {host!r}")
        rest = host[end + 1 :]
        host = host[1:end]
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif host.count(":") == 1:
        name, _, p = host.partition(":")
        if not p.isdigit():
            raise ValueError(f"bad port in {host!r}")
        host, port = name, int(p)
    return host.rstrip("."), port


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Exact host match, or '*.domain' for strict subdomains (never for IP addresses); ports must match
    when the grant names one."""
    try:
        name, port = normalize_host(host)
    except ValueError:
        return False
    if not name:
        return False
    for entry in allowed:
        try:
            pattern, want_port = normalize_host(entry)
        except ValueError:
            continue
        if want_port is not None and want_port != port:
            continue
        if pattern.startswith("*."):
            suffix = pattern[1:]  # ".example.com"
            if not _is_ip(name) and name.endswith(suffix) and len(name) > len(suffix):
                return True
        elif name == pattern:
            return True
    return False


class CredentialBroker:
    def __init__(
        self,
        settings: CredentialSettings,
        sources: Mapping[str, SecretSource] | None = None,
        audit_callback: AuditCallback | None = None,
        clock: Callable[[], float] = time.monotonic,
        output_firewall: SecretSink | None = None,
    ) -> None:
        self.settings = settings
        self.sources = (
            dict(sources) if sources is not None else default_sources(vault_mount=settings.vault_mount)
        )
        self._audit_cb = audit_callback
        self.clock = clock
        self.output_firewall = output_firewall
        self._state: dict[str, _SecretState] = {name: _SecretState() for name in settings.grants}
        self._by_sentinel: dict[str, str] = {}
        self.taint = TaintState()
        self._lock = threading.RLock()

    @_locked
    def apply_settings(self, settings: CredentialSettings) -> None:
        """A new policy's grants take effect for the next request. Secrets already handed out stay
        known to the output firewall (a value seen once is redacted for the rest of the session), and
        the taint stays: neither is the policy's to forget."""
        self.settings = settings
        for name in settings.grants:
            self._state.setdefault(name, _SecretState())
        self._audit("credential.settings_changed", grants=sorted(settings.grants))

    @property
    def tainted(self) -> bool:
        """A secret was injected into the running child (it cannot be erased from it)."""
        return self.taint.tainted

    @property
    def restart_required(self) -> bool:
        """The policy requires a child restart before the next cell."""
        return self.taint.restart_required

    # -- helpers ----------------------------------------------------------------------------------

    def _audit(self, event_type: str, **detail: Any) -> None:
        # An audit failure propagates: nothing is handed out without its record (fail closed).
        if self._audit_cb is not None:
            self._audit_cb(event_type, {k: v for k, v in detail.items() if v is not None})

    def _grant(self, name: str) -> SecretGrant:
        grant = self.settings.grants.get(name)
        if grant is None:
            raise CredentialRefused(name, "no grant for this secret in the policy")
        return grant

    def env_var(self, name: str) -> str:
        return self._grant(name).env_var or name

    def source_ref(self, name: str) -> tuple[str, str]:
        grant = self._grant(name)
        kind, _, ref = (grant.source or f"env:{name}").partition(":")
        return kind, ref

    def _resolve(self, name: str) -> str:
        """The real value, fetched from its one source (cached for the grant's TTL)."""
        state = self._state[name]
        now = self.clock()
        if state.value is not None and now < state.value_expires_at:
            return state.value
        kind, ref = self.source_ref(name)
        source = self.sources.get(kind)
        if source is None:
            reason = f"source {kind!r} is not configured"
            self._audit("credential.source_error", name=name, source=kind, reason=reason)
            raise CredentialRefused(name, reason)
        try:
            value = source.fetch(ref)
        except SourceError as exc:
            self._audit("credential.source_error", name=name, source=kind, reason=str(exc))
            raise CredentialRefused(name, f"unavailable from {kind}: {exc}") from None
        except Exception as exc:  # a broken source must not crash the wrapper, nor fall back
            reason = f"source {kind} failed: {type(exc).__name__}"
            self._audit("credential.source_error", name=name, source=kind, reason=reason)
            raise CredentialRefused(name, reason) from None
        state.value = value
        state.value_expires_at = now + self._grant(name).ttl_s
        if self.output_firewall is not None:
            # Before the value goes anywhere, the firewall learns every form of it.
            skipped = self.output_firewall.add_secret(name, value)
            if skipped and "raw" in skipped:
                self._audit(
                    "credential.unmatchable",
                    name=name,
                    reason="the value is shorter than outputs.min_secret_length: outputs cannot be "
                    "checked for it",
                )
        return value

    @_locked
    def restore_sentinels(self, data: Any) -> tuple[Any, list[str]]:
        """The reverse of ``swap_sentinels`` for what comes back toward the child (an HTTP response
        that echoes the Authorization header, say): every real value of a brokered secret becomes its
        sentinel again. Same data shapes; returns ``(data, names_restored)``."""
        pairs = [
            (state.value, state.sentinel, name)
            for name, state in self._state.items()
            if state.value and state.sentinel
        ]
        return _replace_values(data, pairs)

    @_locked
    def restore_hold_length(self, data: str | bytes) -> int:
        """For a stream passed through ``restore_sentinels`` piece by piece (a proxied response body):
        how many trailing characters (bytes, for bytes) of ``data`` to hold back until more arrives,
        because they could be the start of a real value cut by the piece boundary. It is the longest
        suffix of ``data`` that is a proper prefix of a value ``restore_sentinels`` would replace; 0
        when no such value can start there (so line- or event-oriented streams are not delayed)."""
        longest = 0
        for state in self._state.values():
            if not state.value or not state.sentinel:
                continue
            value: str | bytes = state.value.encode() if isinstance(data, bytes) else state.value
            window = min(len(value) - 1, len(data))
            if window <= longest:
                continue
            tail = data[len(data) - window :]
            first = value[:1]
            start = tail.find(first)  # type: ignore[arg-type]
            while 0 <= start < window - longest:
                if value.startswith(tail[start:]):  # type: ignore[arg-type]
                    longest = window - start
                    break
                start = tail.find(first, start + 1)  # type: ignore[arg-type]
        return longest

    def _check_rate(self, name: str, grant: SecretGrant) -> None:
        if grant.rate_per_minute is None:
            return
        uses = self._state[name].uses
        now = self.clock()
        while uses and now - uses[0] >= 60.0:
            uses.popleft()
        if len(uses) >= grant.rate_per_minute:
            raise CredentialRefused(name, f"rate limit of {grant.rate_per_minute} uses per minute reached")

    def _record_use(self, name: str) -> None:
        self._state[name].uses.append(self.clock())

    def _refuse(self, exc: CredentialRefused, **scope: Any) -> CredentialRefused:
        self._audit("credential.refuse", name=exc.name, reason=exc.reason, **scope)
        return exc

    # -- brokered mode ----------------------------------------------------------------------------

    @_locked
    def sentinel_for(self, name: str) -> str:
        """The stand-in the child sees for a brokered secret. Stable for the session; each call renews
        the lease (TTL)."""
        self._audit("credential.request", name=name, scope="sentinel")
        try:
            grant = self._grant(name)
            if grant.mode != "brokered":
                raise CredentialRefused(name, "grant mode is 'inject'; no sentinel is issued for it")
        except CredentialRefused as exc:
            raise self._refuse(exc, scope="sentinel") from None
        state = self._state[name]
        if state.sentinel is None:
            state.sentinel = SENTINEL_PREFIX + _random.token_hex(16)
            self._by_sentinel[state.sentinel] = name
            if self.output_firewall is not None:
                self.output_firewall.add_secret(name, state.sentinel, sentinel=True)
        state.lease = _Lease(expires_at=self.clock() + grant.ttl_s)
        self._audit("credential.grant", name=name, scope="sentinel", ttl_s=grant.ttl_s, hosts=grant.hosts)
        return state.sentinel

    @_locked
    def sentinel_environment(self) -> dict[str, str]:
        """``{ENV_VAR: sentinel}`` for every brokered grant with hosts: pass it into the child's
        environment at start, so libraries reading e.g. OPENAI_API_KEY send the sentinel through the
        egress proxy, which swaps it."""
        env = {}
        for name, grant in self.settings.grants.items():
            if grant.mode == "brokered" and grant.hosts:
                env[grant.env_var or name] = self.sentinel_for(name)
        return env

    def scrub_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """A copy of ``environ`` (the wrapper's) without anything that reveals a secret or where to
        fetch one: every env var a grant reads from, Vault credentials, the secrets-file path, and any
        variable whose value is a granted secret already resolved."""
        drop = {"VAULT_TOKEN", "VAULT_ADDR", "IRONCAGE_SECRETS_FILE"}
        for name in self.settings.grants:
            kind, ref = self.source_ref(name)
            if kind == "env":
                drop.add(ref)
            drop.add(self.env_var(name))
        values = {s.value for s in self._state.values() if s.value}
        return {k: v for k, v in environ.items() if k not in drop and v not in values}

    def child_environment(self, environ: Mapping[str, str]) -> dict[str, str]:
        """The child's start environment: the scrubbed wrapper env plus the brokered sentinels."""
        env = self.scrub_environment(environ)
        env.update(self.sentinel_environment())
        return env

    @_locked
    def swap_sentinels(self, data: Any, host: str | None, tool: str | None = None) -> tuple[Any, list[str]]:
        """Replace sentinels in ``data`` (str, bytes, a headers mapping or a list of (key, value) pairs)
        by their real values, only for secrets whose grant allows ``host`` (and ``tool`` when given),
        within rate and TTL. ``host=None`` is a trusted-side tool call with no destination host: then
        ``tool`` is required and only the tool grant is checked. Sentinels not allowed are left as they
        are (the far end gets a useless string) and the refusal is audited. Returns
        ``(swapped_data, names_used)``."""
        if isinstance(data, str | bytes):
            return self._swap_text(data, host, tool)
        if isinstance(data, Mapping):
            used_all: list[str] = []
            result: dict[Any, Any] = {}
            for k, v in data.items():
                nv, used = self.swap_sentinels(v, host, tool) if isinstance(v, str | bytes) else (v, [])
                result[k] = nv
                used_all.extend(n for n in used if n not in used_all)
            return result, used_all
        if isinstance(data, list | tuple):
            used_all = []
            items = []
            for item in data:
                new, used = self.swap_sentinels(item, host, tool)
                items.append(new)
                used_all.extend(n for n in used if n not in used_all)
            return (tuple(items) if isinstance(data, tuple) else items), used_all
        return data, []

    def _swap_text(
        self, text: str | bytes, host: str | None, tool: str | None
    ) -> tuple[str | bytes, list[str]]:
        is_bytes = isinstance(text, bytes)
        prefix = SENTINEL_PREFIX.encode() if is_bytes else SENTINEL_PREFIX
        if prefix not in text:  # type: ignore[operator]
            return text, []
        used: list[str] = []
        for sentinel, name in self._by_sentinel.items():
            needle: str | bytes = sentinel.encode() if is_bytes else sentinel
            if needle not in text:  # type: ignore[operator]
                continue
            value = self._authorize_swap(name, host, tool)
            if value is not None:
                replacement: str | bytes = value.encode() if is_bytes else value
                text = text.replace(needle, replacement)  # type: ignore[arg-type]
                used.append(name)
        return text, used

    def _authorize_swap(self, name: str, host: str | None, tool: str | None) -> str | None:
        scope = {"scope": "tool" if tool else "egress", "host": host, "tool": tool}
        self._audit("credential.request", name=name, **scope)
        try:
            grant = self._grant(name)
            if host is None and tool is None:
                raise CredentialRefused(
                    name, "a sentinel is only swapped toward a host or for a granted tool"
                )
            if host is not None and not host_allowed(host, grant.hosts):
                raise CredentialRefused(name, f"host {host!r} is not among the secret's hosts")
            if tool is not None and tool not in grant.tools:
                raise CredentialRefused(name, f"tool {tool!r} is not granted this secret")
            lease = self._state[name].lease
            if lease is None or self.clock() >= lease.expires_at:
                raise CredentialRefused(name, "the sentinel's lease expired (TTL); renew it")
            self._check_rate(name, grant)
            value = self._resolve(name)
        except CredentialRefused as exc:
            self._refuse(exc, **scope)
            return None
        self._audit("credential.grant", name=name, **scope)
        self._record_use(name)
        return value

    @_locked
    def value_for_tool(self, name: str, tool: str, host: str | None = None) -> str:
        """The real value for a tool running on the trusted side (raises ``CredentialRefused``)."""
        scope = {"scope": "tool", "tool": tool, "host": host}
        self._audit("credential.request", name=name, **scope)
        try:
            grant = self._grant(name)
            if tool not in grant.tools:
                raise CredentialRefused(name, f"tool {tool!r} is not granted this secret")
            if host is not None and not host_allowed(host, grant.hosts):
                raise CredentialRefused(name, f"host {host!r} is not among the secret's hosts")
            self._check_rate(name, grant)
            value = self._resolve(name)
        except CredentialRefused as exc:
            raise self._refuse(exc, **scope) from None
        self._audit("credential.grant", name=name, ttl_s=grant.ttl_s, **scope)
        self._record_use(name)
        return value

    # -- per-cell injection --------------------------------------------------------------------------

    @_locked
    def begin_injection(self, names: Iterable[str], cell_id: str | None = None) -> dict[str, str]:
        """For ``%%ironcage with-secret NAME[,NAME]``: ``{ENV_VAR: real value}`` to set in the child for
        this one cell. All or nothing: one refusal refuses the cell (``CredentialRefused``)."""
        names = list(dict.fromkeys(names))
        if not names:
            raise CredentialRefused("", "no secret named")
        if self.taint.restart_required:
            exc = CredentialRefused(
                names[0], "the child kernel must be restarted after a previous secret injection"
            )
            raise self._refuse(exc, scope="cell", cell_id=cell_id)
        env: dict[str, str] = {}
        granted: list[str] = []
        for name in names:
            self._audit("credential.request", name=name, scope="cell", cell_id=cell_id)
            try:
                grant = self._grant(name)
                if not grant.cells:
                    raise CredentialRefused(name, "cells may not request this secret (grant.cells is false)")
                if grant.mode != "inject":
                    raise CredentialRefused(
                        name, "grant mode is 'brokered': use the sentinel in the environment instead"
                    )
                self._check_rate(name, grant)
                env[self.env_var(name)] = self._resolve(name)
                granted.append(name)
            except CredentialRefused as exc:
                raise self._refuse(exc, scope="cell", cell_id=cell_id) from None
        for name in granted:
            self._audit(
                "credential.grant", name=name, scope="cell", cell_id=cell_id, ttl_s=self._grant(name).ttl_s
            )
            self._record_use(name)
        # The session is tainted from here on: the value lives in the child's memory.
        self.taint.tainted = True
        self.taint.injected.update(granted)
        self.taint.active_injection = {self.env_var(n): n for n in granted}
        self.taint.active_cell = cell_id
        if self.output_firewall is not None:
            self.output_firewall.mark_cell_used_secret()
        self._audit("credential.taint", names=sorted(self.taint.injected), cell_id=cell_id)
        return env

    @_locked
    def end_injection(self, cell_id: str | None = None) -> list[str]:
        """After the cell: the env vars the kernel must unset in the child. Sets ``restart_required``
        when the policy says so."""
        active = self.taint.active_injection or {}
        self.taint.active_injection = None
        self.taint.active_cell = None
        if active and self.settings.restart_after_injection:
            self.taint.restart_required = True
        self._audit(
            "credential.injection_end",
            names=sorted(active.values()),
            cell_id=cell_id,
            restart_required=self.taint.restart_required,
        )
        return sorted(active)

    @_locked
    def child_restarted(self) -> None:
        """The child kernel was restarted: the injected values are gone with its memory."""
        self.taint = TaintState()
        self._audit("credential.taint_cleared")

    @_locked
    def status(self) -> dict[str, Any]:
        """For ``%ironcage status``: grants (names and scopes only) and the taint."""
        now = self.clock()
        grants = {}
        for name, grant in self.settings.grants.items():
            state = self._state[name]
            grants[name] = {
                "mode": grant.mode,
                "source": (grant.source or f"env:{name}").split(":", 1)[0],
                "hosts": list(grant.hosts),
                "tools": list(grant.tools),
                "cells": grant.cells,
                "sentinel_issued": state.sentinel is not None,
                "lease_remaining_s": (
                    max(0.0, state.lease.expires_at - now) if state.lease is not None else None
                ),
            }
        return {
            "grants": grants,
            "tainted": self.taint.tainted,
            "tainted_by": sorted(self.taint.injected),
            "restart_required": self.taint.restart_required,
        }


def _replace_values(data: Any, pairs: list[tuple[str, str, str]]) -> tuple[Any, list[str]]:
    """Replace each ``value`` by its ``replacement`` in str/bytes/mapping/list data."""
    if isinstance(data, str | bytes):
        used: list[str] = []
        for value, replacement, name in sorted(pairs, key=lambda p: len(p[0]), reverse=True):
            v: str | bytes = value.encode() if isinstance(data, bytes) else value
            r: str | bytes = replacement.encode() if isinstance(data, bytes) else replacement
            if v in data:  # type: ignore[operator]
                data = data.replace(v, r)  # type: ignore[arg-type]
                used.append(name)
        return data, used
    if isinstance(data, Mapping):
        out: dict[Any, Any] = {}
        used_all: list[str] = []
        for key, item in data.items():
            out[key], used = _replace_values(item, pairs)
            used_all.extend(n for n in used if n not in used_all)
        return out, used_all
    if isinstance(data, list | tuple):
        items = []
        used_all = []
        for item in data:
            new, used = _replace_values(item, pairs)
            items.append(new)
            used_all.extend(n for n in used if n not in used_all)
        return (tuple(items) if isinstance(data, tuple) else items), used_all
    return data, []
