"""Large stream messages through the relay: decoded, screened and published piece by piece.

Real components: a real jupyter_client Session signs the child's messages, the real Relay verifies and
decodes them, and the real output firewall (a CredentialSession) screens every piece. No kernel
processes: the pieces logic is exercised at sizes a kernel test could not afford.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from typing import Any

import orjson
import pytest
import zmq
from jupyter_client.session import Session, json_packer, orjson_unpacker

from ironcage_jupyter.credentials.session import CredentialSession
from ironcage_jupyter.outputs import OutputSettings
from ironcage_jupyter.relay import Relay, Route, _lazy_stream, stream_pieces
from ironcage_jupyter.sandbox.settings import ResourceLimits

SECRET = "Db-Pa55w0rd-9vQ2xR7mK4tL8nB3"
TOKEN = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"

PACKERS: dict[str, Callable[[Any], bytes]] = {
    "orjson": orjson.dumps,
    "json": json_packer,  # jupyter_client's fallback: spaces after separators, non-ASCII as is
    "json_ascii": lambda obj: json.dumps(obj).encode(),  # \uXXXX escapes, surrogate pairs
}
ALPHABET = [
    "a",
    "b",
    " ",
    "\n",
    "\r",
    "\\",
    '"',
    "/",
    "\t",
    "é",
    "€",
    "😀",
    "\u2028",
    "\x00",
    "\x1f",
    "\\n",
    "x" * 40,
]


@pytest.mark.parametrize("packer", sorted(PACKERS))
def test_lazy_decoding_gives_back_exactly_the_text(packer):
    rng = random.Random(7)
    for _ in range(400):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 300)))
        raw = PACKERS[packer]({"name": "stderr", "text": text})
        for size in (1, 2, 3, 5, 8, 13, 64):
            lazy = _lazy_stream(memoryview(raw), size, orjson_unpacker)
            assert lazy is not None
            content, pieces = lazy
            assert content == {"name": "stderr"}
            assert "".join(pieces) == text, (size, raw)


@pytest.mark.parametrize(
    "text",
    ["\\" * 5000, "\\" * 4999 + "n", "\\n" * 3000, "\\\n" * 2000, "😀" * 3000, "\n" * 6000, "é\\" * 3000],
    ids=[
        "backslashes",
        "backslashes_n",
        "literal_backslash_n",
        "backslash_newline",
        "emoji",
        "newlines",
        "mixed",
    ],
)
def test_lazy_decoding_of_escape_heavy_text_is_exact(text):
    for packer in PACKERS.values():
        raw = packer({"name": "stdout", "text": text})
        for size in (7, 64, 1000):
            lazy = _lazy_stream(memoryview(raw), size, orjson_unpacker)
            if lazy is not None:  # None: decoded whole by the caller
                assert "".join(lazy[1]) == text


@pytest.mark.parametrize(
    "raw",
    [
        b'{"name":"stdout","text":"abc","text":"def"}',  # a second key: an unescaped quote inside
        b'{"name":"stdout","text":"ab\ncd"}',  # a raw control character
        b'{"name":"stdout","text":"abcdefgh\\"}',  # the closing quote escaped
    ],
)
def test_lazy_decoding_refuses_malformed_content(raw):
    lazy = _lazy_stream(memoryview(raw), 4, orjson_unpacker)
    if lazy is not None:
        with pytest.raises(ValueError):
            list(lazy[1])


def test_other_layouts_are_decoded_whole():
    for raw in (b'{"text":"abcdefgh","name":"stdout"}', b'{"name":"stdout","text":"abcdefgh","x":1}'):
        assert _lazy_stream(memoryview(raw), 2, orjson_unpacker) is None


def test_stream_pieces_cut_at_line_ends_and_never_inside_crlf():
    text = "".join(random.Random(3).choice(["ab", "\r\n", "\n", "\r", "xyz" * 5]) for _ in range(2000))
    for size in (1, 2, 3, 7, 64, 1000):
        pieces = list(stream_pieces(text, size))
        assert "".join(pieces) == text
        assert all(0 < len(p) <= size for p in pieces)
        if size > 1:
            assert not any(a.endswith("\r") and b.startswith("\n") for a, b in zip(pieces, pieces[1:]))


class Harness:
    """A relay fed with messages signed by a 'child' session, screened by a real output firewall."""

    def __init__(self, piece: int, limit: int = 10**9) -> None:
        self.child = Session(key=b"child-key", packer="orjson")
        self.firewall = CredentialSession(
            outputs=OutputSettings(), limits=ResourceLimits(output_max_bytes=limit)
        )
        self.firewall.firewall.add_secret("DB_PASSWORD", SECRET)
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.relay = Relay(publish=self._publish, on_input_request=self._no_input)
        self.relay.session = self.child
        self.relay.stream_piece = piece
        self.relay.screen = self._screen
        self.request = self.child.msg("execute_request", {})
        self.relay.routes[self.request["header"]["msg_id"]] = Route(kind="execute", parent={"header": {}})
        self.firewall.start_cell("cell")

    async def _no_input(self, route: Route, msg: dict[str, Any]) -> None:
        raise AssertionError("no input expected")

    def _publish(
        self, msg_type: str, content: dict[str, Any], parent: Any, metadata: Any, buffers: Any
    ) -> None:
        self.published.append((msg_type, content))

    def _screen(self, msg_type: str, content: dict[str, Any], route: Route) -> dict[str, Any] | None:
        result = self.firewall.screen(msg_type, content)
        if result.notice:
            self.published.append(("notice", {"text": result.notice}))
        return result.content

    def child_sends(self, text: str, *, name: str = "stdout", frames: list[bytes] | None = None) -> None:
        if frames is None:
            msg = self.child.msg("stream", {"name": name, "text": text}, parent=self.request)
            frames = self.child.serialize(msg)
        self.relay._on_iopub(self.relay._deserialize([zmq.Frame(f) for f in frames]))

    def end_cell(self) -> None:
        for result in self.firewall.end_cell():
            if result.content is not None:
                self.published.append(("stream", result.content))

    def stdout(self) -> str:
        return "".join(c["text"] for t, c in self.published if t == "stream" and c["name"] == "stdout")


def run(test: Callable[[], None]) -> None:
    async def main() -> None:  # Route needs a running loop for its futures
        test()

    asyncio.run(main())


def test_a_large_clean_stream_arrives_whole_in_pieces():
    def test() -> None:
        h = Harness(piece=64 * 1024)
        text = "".join(f'line {i}: {"é" if i % 7 == 0 else "e"} \\ "q" 😀\n' for i in range(40_000))
        h.child_sends(text)
        h.end_cell()
        pieces = [c["text"] for t, c in h.published if t == "stream"]
        assert len(pieces) > 10
        assert all(len(p.encode()) <= 64 * 1024 + 4096 for p in pieces)
        assert h.stdout() == text

    run(test)


@pytest.mark.parametrize("value", [SECRET, TOKEN], ids=["known_value", "token"])
def test_a_secret_cut_by_a_piece_boundary_is_still_redacted(value):
    def test() -> None:
        piece = 4096
        # No line end: pieces are cut inside the text; try every offset of the value around a cut.
        for offset in range(piece - len(value) - 2, piece + 2):
            h = Harness(piece=piece)
            filler = "word " * (3 * piece // 5)
            text = filler[:offset] + value + " " + filler
            h.child_sends(text)
            h.end_cell()
            out = h.stdout()
            assert value not in out, offset
            assert "[REDACTED:" in out, offset
            assert sum(1 for t, _ in h.published if t == "stream") >= 3

    run(test)


def test_truncation_applies_across_pieces():
    def test() -> None:
        h = Harness(piece=4096, limit=20_000)
        h.child_sends("y" * 100_000)
        h.end_cell()
        shown, notice = h.stdout().split("\n[ironcage] ", 1)
        assert shown == "y" * 20_000
        assert notice.startswith("output truncated")

    run(test)


def test_a_malformed_large_message_publishes_nothing_unscreened():
    def test() -> None:
        h = Harness(piece=4096)
        body = ("z" * 5000 + SECRET) * 3
        content = b'{"name":"stdout","text":"' + body.encode() + b'","text":"' + b"w" * 9000 + b'"}'
        msg = h.child.msg("stream", {}, parent=h.request)
        parts = [h.child.pack(msg["header"]), h.child.pack(msg["parent_header"]), h.child.pack({}), content]
        h.child_sends("", frames=[b"<IDS|MSG>", h.child.sign(parts), *parts])
        h.end_cell()
        out = h.stdout()
        assert SECRET not in out
        assert "w" not in out  # the rest after the malformed piece is dropped

    run(test)


def test_a_badly_signed_large_message_is_dropped():
    def test() -> None:
        h = Harness(piece=4096)
        msg = h.child.msg("stream", {"name": "stdout", "text": "v" * 50_000}, parent=h.request)
        frames = h.child.serialize(msg)
        frames[1] = b"0" * len(frames[1])
        with pytest.raises(ValueError, match="signature"):
            h.relay._deserialize([zmq.Frame(f) for f in frames])

    run(test)
