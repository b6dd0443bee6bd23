"""Responses going back toward the sandbox: every real value of a brokered secret becomes its sentinel again.

A server that echoes the Authorization header (or a tool whose error message quotes the URL) would
otherwise put the real secret into the child. `restore_complete` does it for a whole response;
`StreamRestorer` for a streamed body, with a sliding window: the tail that could be the start of a value
cut by the chunk boundary (`CredentialSwapper.restore_hold_length`, the same idea as the output firewall's
held stream tail) is held back until the next chunk completes or clears it, so nothing else is delayed.
"""

from __future__ import annotations

from .hooks import CredentialSwapper

# A value cut off by the end of a body (truncation, a server stopping mid-value) cannot be restored: a
# trailing fragment this long that begins a real value is dropped rather than handed to the child.
MIN_DROPPED_FRAGMENT = 8


class StreamRestorer:
    """Feed a response body chunk by chunk; what comes out holds no complete real value."""

    def __init__(self, credentials: CredentialSwapper) -> None:
        self.credentials = credentials
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        buffer = self._held + chunk
        if not buffer:
            return b""
        restored = self.credentials.restore(buffer)
        cut = len(restored) - self.credentials.restore_hold_length(restored)
        self._held = restored[cut:]
        return restored[:cut]

    def finish(self) -> bytes:
        """The held tail at the end of the body (already restored; a long cut-off value is dropped)."""
        tail, self._held = self._held, b""
        hold = self.credentials.restore_hold_length(tail) if tail else 0
        return tail[: len(tail) - hold] if hold >= MIN_DROPPED_FRAGMENT else tail


def restore_complete(credentials: CredentialSwapper, data: bytes) -> bytes:
    """A whole body (possibly truncated by the caller): restored, with a cut-off trailing value dropped."""
    restorer = StreamRestorer(credentials)
    return restorer.feed(data) + restorer.finish()
