"""The output firewall: screens every message the child kernel sends back before the frontend or the
audit store sees it. Redacts, withholds, truncates; fails closed.

The relay calls, per session::

    fw = OutputFirewall(policy.outputs, policy.limits)
    fw.start_cell(cell_id)                       # before forwarding a cell to the child
    out = fw.screen(msg_type, content)           # for EVERY iopub/comm message of the child
    for out in fw.flush_all(): ...               # when the cell's execute_reply arrives
    fw.end_cell()

and the credential broker calls ``fw.add_secret(name, value)`` for every value it hands out.
"""

from __future__ import annotations

import copy
import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..sandbox.settings import ResourceLimits
from .detectors import PRIVATE_KEY_RE, TypedDetectors, open_private_key_start
from .known_values import REDACTION_FORMAT, KnownValueMatcher
from .settings import OutputSettings

TEXT_MIME_PREFIXES = ("text/",)
TEXT_MIME_TYPES = {
    "application/json",
    "application/javascript",
    "application/x-latex",
    "image/svg+xml",
    "application/xml",
    "application/xhtml+xml",
}
# Message types whose content is only protocol bookkeeping (no child-controlled text to screen).
PASS_THROUGH_TYPES = {"status", "execute_input", "clear_output", "comm_close_ack"}
_RELEASED_CONTEXT = 4096
_NON_TOKEN_CHAR = re.compile(r"[^A-Za-z0-9+/=_\-.~@%:]")
#: The start of a private-key header still being written at the end of a stream chunk ("-----BEGIN RSA "
#: before its "PRIVATE KEY" arrives): held back, or the header and the key after it would go out.
_PARTIAL_KEY_HEADER = re.compile(r"-{1,5}(?:B(?:E(?:G(?:I(?:N[ A-Z0-9-]{0,70})?)?)?)?)?\Z")
_PARTIAL_KEY_HEADER_SPAN = 5 + 5 + 70


def is_text_mime(mime: str) -> bool:
    return mime.startswith(TEXT_MIME_PREFIXES) or mime in TEXT_MIME_TYPES or mime.endswith("+json")


class RedactionRecord(BaseModel):
    """What was redacted: detector family, secret or type name, how often. Never the value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    detector: str
    name: str
    count: int


@dataclass
class ScreenedOutput:
    """The result of screening one message.

    ``content`` is what the relay forwards (``None``: forward nothing). ``notice`` is a human-readable
    line the relay should show the user (e.g. as a stderr stream) when not ``None``.
    """

    content: dict[str, Any] | None
    redactions: list[RedactionRecord] = field(default_factory=list)
    withheld: bool = False
    notice: str | None = None
    flagged: bool = False

    @property
    def redacted(self) -> bool:
        return bool(self.redactions)


@dataclass
class _StreamState:
    held: str = ""
    released: str = ""  # the last characters emitted, so a candidate secret start keeps growing
    in_private_key: bool = False


class _Redactions:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()

    def add(self, detector: str, name: str, n: int) -> None:
        if n:
            self.counts[detector, name] += n

    def records(self) -> list[RedactionRecord]:
        return [RedactionRecord(detector=d, name=n, count=c) for (d, n), c in sorted(self.counts.items())]


class OutputFirewall:
    def __init__(self, settings: OutputSettings | None = None, limits: ResourceLimits | None = None) -> None:
        self.settings = settings or OutputSettings()
        self.limits = limits or ResourceLimits()
        self._known = KnownValueMatcher(
            min_length=self.settings.min_secret_length, release_below=self.settings.stream_release_below
        )
        self._sentinels = KnownValueMatcher(
            min_length=self.settings.min_secret_length, release_below=self.settings.stream_release_below
        )
        self._typed = TypedDetectors(self.settings)
        self._streams: dict[str, _StreamState] = {}
        #: The last characters emitted on either stream, in order (a client reads the two streams as
        #: one sequence, see _join_across_streams), kept without a copy per message: the text...
        self._mixed_base = ""  # ... up to the start of the last stream's current run of emissions
        self._run_length = 0  # characters that stream has emitted since (its own `released` holds them)
        self._last_stream: str | None = None
        self.cell_id: str | None = None
        self.cell_used_secret = False
        self._cell_bytes = 0
        self._cell_truncated = False
        self.last_reply_redactions: list[RedactionRecord] = []

    def apply_settings(self, settings: OutputSettings, limits: ResourceLimits) -> None:
        """A new policy's detectors and output limits, from the next message on. The known values
        (secrets handed out in this session) are kept: they are redacted for the rest of the session."""
        self.settings = settings
        self.limits = limits
        self._typed = TypedDetectors(settings)

    # -- secrets and cell lifecycle -------------------------------------------------------------------

    def add_secret(self, name: str, value: str, *, sentinel: bool = False) -> list[str]:
        """Match every form of ``value`` from now on. Returns forms too short to match safely.

        Sentinels are only redacted when ``redact_sentinels`` is set: they are useless outside the
        trusted side.
        """
        if sentinel:
            if not self.settings.redact_sentinels:
                return []
            return self._sentinels.add(name, value)
        return self._known.add(name, value)

    @property
    def secret_names(self) -> list[str]:
        return self._known.names

    def start_cell(self, cell_id: str | None = None) -> None:
        """Reset the per-cell state (size budget, secret use). Stream windows are kept: text a thread
        printed between cells is still held, screened and released, never dropped."""
        self.cell_id = cell_id
        self.cell_used_secret = False
        self._cell_bytes = 0
        self._cell_truncated = False

    def mark_cell_used_secret(self) -> None:
        """Images/binary outputs of this cell are withheld or flagged per policy from now on."""
        self.cell_used_secret = True

    def end_cell(self) -> list[ScreenedOutput]:
        """Flush every stream; the kernel forwards what this returns before the execute_reply."""
        return self.flush_all()

    # -- screening ----------------------------------------------------------------------------------

    def screen(self, msg_type: str, content: dict[str, Any]) -> ScreenedOutput:
        """Screen one child message. Never raises: on any error the message is withheld (fail closed)."""
        try:
            return self._screen(msg_type, content)
        except Exception as exc:
            return ScreenedOutput(
                content=None,
                withheld=True,
                notice=f"[ironcage] output withheld: screening failed ({type(exc).__name__}); failing closed",
            )

    def _screen(self, msg_type: str, content: dict[str, Any]) -> ScreenedOutput:
        if msg_type in PASS_THROUGH_TYPES:
            return ScreenedOutput(content=content)
        if msg_type == "stream":
            return self._screen_stream(content)
        red = _Redactions()
        content = copy.deepcopy(content)
        notices: list[str] = []
        withheld = flagged = False
        if msg_type in ("execute_result", "display_data", "update_display_data"):
            data = content.get("data") or {}
            if not isinstance(data, dict):
                raise TypeError("display data is not a mapping")
            kept: dict[str, Any] = {}
            image_rule = self.settings.images_after_secret
            for mime, value in data.items():
                if is_text_mime(mime):
                    kept[mime] = self._walk(value, red)
                    continue
                # Binary (base64) payloads: a secret fragment in the blob (e.g. PNG text chunk) withholds.
                blob = value if isinstance(value, str) else json.dumps(value)
                scan = self._scan_secret_forms(blob)
                if scan:
                    for name, n in scan.items():
                        red.add("known_value", name, n)
                    notices.append(f"[ironcage] {mime} output withheld: it contains a secret")
                    continue
                if self.cell_used_secret and image_rule == "withhold":
                    notices.append(
                        f"[ironcage] {mime} output withheld: this cell used a secret and images "
                        "cannot be checked for it"
                    )
                    continue
                if self.cell_used_secret and image_rule == "flag":
                    flagged = True
                    notices.append(f"[ironcage] {mime} output flagged: this cell used a secret")
                kept[mime] = value
            content["data"] = kept
            if "metadata" in content:
                content["metadata"] = self._walk(content["metadata"], red)
            if data and not kept:
                withheld = True
        elif msg_type == "error":
            for key in ("ename", "evalue"):
                if key in content:
                    content[key] = self._walk(content[key], red)
            if "traceback" in content:
                content["traceback"] = self._walk(content["traceback"], red)
        else:
            # comm_open / comm_msg / comm_close / input_request / anything new: every string, nested.
            content = self._walk(content, red)
        if red.counts:
            self._note_known_value_use(red)
        result = ScreenedOutput(
            content=None if withheld else content,
            redactions=red.records(),
            withheld=withheld,
            flagged=flagged,
            notice="\n".join(notices) or None,
        )
        if result.content is not None and msg_type in _SIZED_TYPES:
            result = self._enforce_size(msg_type, result)
        return result

    def _note_known_value_use(self, red: _Redactions) -> None:
        # A cell whose output carried a secret evidently used one: its images are suspect too.
        if any(d == "known_value" for d, _ in red.counts):
            self.cell_used_secret = True

    def _scan_secret_forms(self, text: str) -> Counter[str]:
        found: Counter[str] = Counter()
        for needle in self._known.find(text):
            found[needle.name] += 1
        return found

    def _redact_text(self, text: str, red: _Redactions) -> str:
        encoded: bytes | None = text.encode("utf-8", "surrogatepass")  # shared by both matchers
        if self.settings.detectors.known_values and len(self._known):
            text, counts = self._known.redact(text, encoded)
            for name, n in counts.items():
                red.add("known_value", name, n)
            if counts:
                encoded = None
        if len(self._sentinels):
            text, counts = self._sentinels.redact(text)
            for name, n in counts.items():
                red.add("sentinel", name, n)
            if counts:
                encoded = None
        if self._typed.active:
            text, typed = self._typed.redact(text, encoded)
            for (detector, name), n in typed.items():
                red.add(detector, name, n)
        return text

    def _walk(self, value: Any, red: _Redactions) -> Any:
        if isinstance(value, str):
            return self._redact_text(value, red)
        if isinstance(value, dict):
            return {
                (self._redact_text(k, red) if isinstance(k, str) else k): self._walk(v, red)
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self._walk(v, red) for v in value]
        return value

    def screen_buffers(self, msg_type: str, buffers: list[Any]) -> ScreenedOutput:
        """Binary buffers of a message (widgets, comm data): a known secret in any of them withholds the
        whole message (binary data cannot be redacted in place). ``content`` is unused (None) here:
        the caller forwards the message only when ``withheld`` is false."""
        try:
            red = _Redactions()
            for buffer in buffers or []:
                for needle in self._known.find_bytes(bytes(buffer)):
                    red.add("known_value", needle.name, 1)
            if red.counts:
                self._note_known_value_use(red)
                return ScreenedOutput(
                    content=None,
                    redactions=red.records(),
                    withheld=True,
                    notice=f"[ironcage] {msg_type} withheld: its binary buffers contain a secret",
                )
            # Binary data of a secret-using cell (a widget's image, say) is treated like an image output.
            rule = self.settings.images_after_secret
            if self.cell_used_secret and rule == "withhold":
                return ScreenedOutput(
                    content=None,
                    withheld=True,
                    notice=f"[ironcage] {msg_type} withheld: this cell used a secret and binary data "
                    "cannot be checked for it",
                )
            if self.cell_used_secret and rule == "flag":
                return ScreenedOutput(
                    content=None,
                    flagged=True,
                    notice=f"[ironcage] {msg_type} binary data flagged: this cell used a secret",
                )
            return ScreenedOutput(content=None)
        except Exception as exc:
            return ScreenedOutput(
                content=None,
                withheld=True,
                notice=f"[ironcage] {msg_type} withheld: screening failed ({type(exc).__name__}); failing closed",
            )

    def screen_reply(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        """Screen a reply the child sends on shell (execute_reply with an error's ename/evalue/
        traceback and payloads, inspect_reply's data, complete_reply's matches, history_reply...).
        Every string is redacted; no size accounting. On failure a safe error reply is returned."""
        try:
            red = _Redactions()
            screened = self._walk(content, red)
            if red.counts:
                self._note_known_value_use(red)
            self.last_reply_redactions = red.records()
            if msg_type == "execute_reply" and isinstance(screened, dict):
                screened = self._cut_reply_extras(self._cut_reply_error(screened))
            return screened if isinstance(screened, dict) else {}
        except Exception as exc:
            self.last_reply_redactions = []
            return {
                "status": "error",
                "ename": "IronCageError",
                "evalue": f"reply withheld: screening failed ({type(exc).__name__}); failing closed",
                "traceback": [],
            }

    def _cut_reply_error(self, content: dict[str, Any]) -> dict[str, Any]:
        """An error reply carries the error's text a second time (frontends show the iopub copy,
        which the size limit cuts): its evalue and traceback are cut to ``limits.output_max_bytes``
        each too, after redaction, so a child cannot send unbounded output through the reply."""
        limit = self.limits.output_max_bytes
        notice = f"[ironcage] error text cut at {limit:,} bytes (limits.output_max_bytes)"
        cut: dict[str, Any] = {}
        evalue = content.get("evalue")
        if isinstance(evalue, str) and len(evalue) > limit // 4 and len(evalue.encode("utf-8", "surrogatepass")) > limit:
            cut["evalue"] = _cut(evalue, limit) + " " + notice
        traceback = content.get("traceback")
        if isinstance(traceback, list):
            lines = [line if isinstance(line, str) else str(line) for line in traceback]
            if _content_size("error", {"traceback": lines}) > limit:
                cut["traceback"] = [_cut("\n".join(lines), limit), notice]
        return {**content, **cut} if cut else content

    def _cut_reply_extras(self, content: dict[str, Any]) -> dict[str, Any]:
        """user_expressions results and payloads (a help page, set_next_input) of an execute_reply
        share one budget of ``limits.output_max_bytes``: an expression whose result no longer fits is
        answered with an error naming the limit, a payload that no longer fits is dropped, so a child
        cannot send unbounded output through the reply either."""
        limit = self.limits.output_max_bytes
        room = limit
        cut: dict[str, Any] = {}
        expressions = content.get("user_expressions")
        if isinstance(expressions, dict) and expressions:
            kept: dict[str, Any] = {}
            for name, result in expressions.items():
                size = _content_size("display_data", {"data": result})
                if size <= room:
                    kept[name] = result
                    room -= size
                else:
                    kept[name] = {
                        "status": "error",
                        "ename": "OutputLimit",
                        "evalue": f"[ironcage] result withheld: it exceeds what is left of "
                        f"limits.output_max_bytes ({limit:,} bytes) for this reply",
                        "traceback": [],
                    }
            cut["user_expressions"] = kept
        payload = content.get("payload")
        if isinstance(payload, list) and payload:
            fitting = []
            for item in payload:
                size = _content_size("display_data", {"data": item})
                if size <= room:
                    fitting.append(item)
                    room -= size
            cut["payload"] = fitting
        return {**content, **cut} if cut else content

    # -- streams ----------------------------------------------------------------------------------

    def _screen_stream(self, content: dict[str, Any]) -> ScreenedOutput:
        name = content.get("name", "stdout")
        text = content.get("text", "")
        if not isinstance(name, str) or not isinstance(text, str):
            raise TypeError("malformed stream message")
        if name not in ("stdout", "stderr"):
            # Jupyter streams are stdout and stderr; any other name the child sends is shown (and held,
            # and screened) as stdout, so names cannot grow the per-stream state without bound.
            name = "stdout"
        state = self._streams.setdefault(name, _StreamState())
        red = _Redactions()
        other = self._streams.get("stderr" if name == "stdout" else "stdout")
        if other is not None and other.held and self.settings.detectors.known_values and len(self._known):
            text = self._join_across_streams(state, other, text, red)
        buffer = state.held + text
        encoded: bytes | None = buffer.encode("utf-8", "surrogatepass")  # shared by the matchers
        # Known values over the whole buffer first: a secret completed by this chunk is caught here.
        if self.settings.detectors.known_values and len(self._known):
            buffer, counts = self._known.redact(buffer, encoded)
            for secret, n in counts.items():
                red.add("known_value", secret, n)
            if counts:
                encoded = None
        if len(self._sentinels):
            buffer, counts = self._sentinels.redact(buffer)
            for secret, n in counts.items():
                red.add("sentinel", secret, n)
            if counts:
                encoded = None
        # One keyword pass over the buffer serves the private-key check here and the typed detectors
        # on the part emitted below (a prefix of the buffer).
        found: list[tuple[int, int, int]] | None = None
        if self._typed.active:
            if encoded is None:
                encoded = buffer.encode("utf-8", "surrogatepass")
            found = self._typed.scan(encoded)
        may_hold_key = found is not None and self._typed.private_key_marker(found)
        # Once the other stream emitted, a candidate may have begun there (in what the client read
        # just before this text), not only earlier on this stream.
        switched = self._last_stream is not None and self._last_stream != name
        mixed = (
            self._mixed_released()
            if (switched or (self._mixed_base and self._run_length < _RELEASED_CONTEXT)) and len(self._known)
            else None  # one stream only, this stream's own recent text is all there is to read, or no secret
        )
        hold = self._hold_index(buffer, state, may_hold_key, mixed)
        emit, state.held = buffer[:hold], buffer[hold:]
        if emit:
            if len(emit) >= _RELEASED_CONTEXT:
                state.released = emit[-_RELEASED_CONTEXT:]
            else:
                state.released = (state.released + emit)[-_RELEASED_CONTEXT:]
            if switched:  # this stream's run of emissions starts
                self._mixed_base, self._run_length = mixed or "", 0
            self._last_stream = name
            self._run_length += len(emit)
        emit_data: bytes | None = None
        emit_found: list[tuple[int, int, int]] | None = None
        if encoded is not None and found is not None:
            if not state.held:
                emit_data, emit_found = encoded, found
            else:
                held_bytes = (
                    len(state.held) if buffer.isascii() else len(state.held.encode("utf-8", "surrogatepass"))
                )
                emit_data = encoded[: len(encoded) - held_bytes]
                # Keywords wholly inside the emitted part are exactly what a scan of it would find.
                emit_found = [hit for hit in found if hit[2] <= len(emit_data)]
        screened = self._redact_stream_segment(
            emit, state, red, emit_data, may_hold_key or state.in_private_key, emit_found
        )
        size = len(emit_data) if screened is emit and emit_data is not None else None
        return self._stream_result(name, screened, red, size)

    def _mixed_released(self) -> str:
        """The last characters emitted on either stream, in the order the client received them."""
        last = self._streams[self._last_stream] if self._last_stream is not None else None
        if last is None or not self._run_length:
            return self._mixed_base
        run = last.released[-self._run_length :] if self._run_length < len(last.released) else last.released
        return (self._mixed_base + run)[-_RELEASED_CONTEXT:]

    def _join_across_streams(self, state: _StreamState, other: _StreamState, text: str, red: _Redactions) -> str:
        """A client reads stdout and stderr as one sequence, so a secret may be split between them:
        ``text`` arrives on one stream while the other holds back an unterminated tail (the start of
        a secret's form, say). If that tail and ``text`` together hold a secret, or could still be the
        start of one, the tail moves to this stream, in arrival order, and is screened with ``text``
        (returned). When this stream holds a tail of its own, the two cannot be joined without
        breaking up this stream's own text: the other stream's tail is then withheld (fail closed)
        and a redaction marker is held in its place. Only runs while the other stream holds text."""
        head = self._known.head(text)  # a secret begun in the other stream ends within it
        joint = other.held + head
        found = self._known.find(joint)
        if not found and (len(head) < len(text) or self._known.held_tail_length(joint, other.released) <= len(text)):
            return text  # nothing the two streams could hold together
        if not state.held:
            joint = other.held + text
            other.held = ""
            return joint
        names = sorted({n.name for n in found} - {n.name for n in self._known.find(head)})
        for secret in names:
            red.add("known_value", secret, 1)
        other.held = "".join(REDACTION_FORMAT.format(name=secret) for secret in names or ["secret"])
        return text

    def _hold_index(
        self, buffer: str, state: _StreamState, may_hold_key: bool = True, mixed: str | None = None
    ) -> int:
        hold = len(buffer)
        if self.settings.detectors.known_values:
            held = max(
                self._known.held_tail_length(buffer, state.released),
                self._sentinels.held_tail_length(buffer, state.released),
            )
            if mixed is not None:  # the two streams interleave: also what the client read last
                held = max(held, self._known.held_tail_length(buffer, mixed))
            hold -= held
        if self._typed.active:
            window = self.settings.stream_token_window
            if may_hold_key and not state.in_private_key:
                start = open_private_key_start(buffer)
                if start is not None and len(buffer) - start <= max(window, 65536):
                    hold = min(hold, start)
            if self._typed.private_keys and not state.in_private_key:
                partial = _PARTIAL_KEY_HEADER.search(buffer, max(0, len(buffer) - _PARTIAL_KEY_HEADER_SPAN))
                if partial is not None:
                    hold = min(hold, partial.start())
            # A token cut by the chunk boundary: hold the trailing run of token characters.
            tail = buffer[-window:]
            boundary = _NON_TOKEN_CHAR.search(tail[::-1])
            if boundary is not None:
                hold = min(hold, len(buffer) - boundary.start())
            elif len(buffer) < window:
                # All token characters (a run held back before, extended by this chunk): keep holding.
                hold = 0
            # else: a run longer than the window (a blob): emit it rather than stall the stream.
        return max(0, hold)

    def _redact_stream_segment(
        self,
        text: str,
        state: _StreamState,
        red: _Redactions,
        encoded: bytes | None = None,
        may_hold_key: bool = True,
        found: list[tuple[int, int, int]] | None = None,
    ) -> str:
        """Typed detectors over a stream's emitted text. ``encoded``/``found``: ``text`` as UTF-8 and
        its keyword hits, when the caller has them (dropped here if ``text`` changes first)."""
        if state.in_private_key:
            encoded = found = None  # the text changes below: the caller's bytes no longer match it
            end = re.search(r"-----END[ A-Z0-9]{0,40}PRIVATE KEY(?: BLOCK)?-----", text)
            if end is None:
                red.add("private_key", "private_key", 1)
                return "[REDACTED:private_key]" if text else ""
            state.in_private_key = False
            red.add("private_key", "private_key", 1)
            text = "[REDACTED:private_key]" + text[end.end() :]
        if self.settings.detectors.private_keys and may_hold_key:
            # An unterminated block that outgrew the window is redacted to the end, and we keep
            # redacting in later chunks until its END marker.
            if open_private_key_start(text) is not None:
                state.in_private_key = True
        if self._typed.active:
            text, typed = self._typed.redact(text, encoded, found)
            for (detector, kind), n in typed.items():
                red.add(detector, kind, n)
        return text

    def _stream_result(
        self, name: str, emit: str, red: _Redactions, size: int | None = None
    ) -> ScreenedOutput:
        if red.counts:
            self._note_known_value_use(red)
        if not emit:
            return ScreenedOutput(content=None, redactions=red.records())
        result = ScreenedOutput(content={"name": name, "text": emit}, redactions=red.records())
        return self._enforce_size("stream", result, size)

    def flush(self, stream_name: str) -> ScreenedOutput | None:
        """Release what a stream held back (end of cell). ``None`` if nothing was held."""
        try:
            state = self._streams.get(stream_name)
            if state is None or not state.held:
                return None
            tail, state.held = state.held, ""
            red = _Redactions()
            if self.settings.detectors.known_values and len(self._known):
                tail, counts = self._known.redact(tail)
                for secret, n in counts.items():
                    red.add("known_value", secret, n)
            if len(self._sentinels):
                tail, counts = self._sentinels.redact(tail)
                for secret, n in counts.items():
                    red.add("sentinel", secret, n)
            if self.settings.detectors.private_keys and open_private_key_start(tail) is not None:
                tail = PRIVATE_KEY_RE.sub("[REDACTED:private_key]", tail)
                red.add("private_key", "private_key", 1)
            tail = self._redact_stream_segment(tail, state, red)
            state.in_private_key = False
            return self._stream_result(stream_name, tail, red)
        except Exception as exc:
            return ScreenedOutput(
                content=None,
                withheld=True,
                notice=f"[ironcage] output withheld: screening failed ({type(exc).__name__}); failing closed",
            )

    def flush_all(self) -> list[ScreenedOutput]:
        out = []
        for name in list(self._streams):
            result = self.flush(name)
            if result is not None:
                out.append(result)
        return out

    # -- size limit -----------------------------------------------------------------------------------

    def _enforce_size(self, msg_type: str, result: ScreenedOutput, size: int | None = None) -> ScreenedOutput:
        """``size``: the content's size in bytes, when the caller knows it."""
        limit = self.limits.output_max_bytes
        content = result.content
        assert content is not None
        if self._cell_truncated:
            return ScreenedOutput(content=None, redactions=result.redactions, withheld=True)
        if size is None:
            size = _content_size(msg_type, content)
        if self._cell_bytes + size <= limit:
            self._cell_bytes += size
            return result
        remaining = max(0, limit - self._cell_bytes)
        self._cell_truncated = True
        self._cell_bytes = limit
        notice = (
            f"[ironcage] output truncated: this cell's output exceeded {limit:,} bytes "
            "(limits.output_max_bytes); the rest is not shown"
        )
        marker = "\n" + notice + "\n"
        if msg_type == "stream":
            content = {**content, "text": _cut(content["text"], remaining) + marker}
        elif msg_type == "error":
            content = {
                **content,
                "traceback": [_cut("\n".join(content.get("traceback", [])), remaining), notice],
            }
        else:
            data = {}
            for mime, value in content.get("data", {}).items():
                if isinstance(value, str) and mime.startswith("text/"):
                    data[mime] = _cut(value, remaining) + marker
            if not data:
                data["text/plain"] = notice
            content = {**content, "data": data}
        return ScreenedOutput(
            content=content,
            redactions=result.redactions,
            withheld=False,
            notice=notice,
            flagged=result.flagged,
        )


#: Messages whose content counts against ``limits.output_max_bytes`` (a display update replaces a
#: display's content, so a loop of updates is output like a loop of displays).
_SIZED_TYPES = frozenset({"execute_result", "display_data", "update_display_data", "error", "stream"})


def _cut(text: str, max_bytes: int) -> str:
    return text.encode("utf-8", "surrogatepass")[:max_bytes].decode("utf-8", "ignore")


def _content_size(msg_type: str, content: dict[str, Any]) -> int:
    if msg_type == "stream":
        text = content.get("text", "")
        return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))
    total = 0
    stack: list[Any] = [content.get("data", {}) if msg_type != "error" else content.get("traceback", [])]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return total
