"""Leak tests for the output firewall: every encoded form of a handed-out secret, in every message
type the child can send, split anywhere across stream chunks."""

from __future__ import annotations

import base64
import html
import json
import random
import urllib.parse

import pytest

from ironcage_jupyter.outputs import OutputFirewall, OutputSettings, encoded_forms
from ironcage_jupyter.outputs.known_values import squeeze
from ironcage_jupyter.outputs.settings import OutputDetectors

SECRET_NAME = "OPENAI_API_KEY"
SECRET = "sk-proj-Zq8vLr2NwX5kTb9hYc4fJm7Ds1GpQe6U"
OTHER_NAME = "DB_PASSWORD"
OTHER = "Tr0ub4dor&3-horse/staple+battery"
MARK = f"[REDACTED:{SECRET_NAME}]"


def known_only() -> OutputSettings:
    return OutputSettings(
        detectors=OutputDetectors(known_values=True, private_keys=False, tokens=False, entropy=False)
    )


@pytest.fixture
def fw() -> OutputFirewall:
    firewall = OutputFirewall(known_only())
    firewall.add_secret(SECRET_NAME, SECRET)
    firewall.add_secret(OTHER_NAME, OTHER)
    firewall.start_cell("cell-1")
    return firewall


def leaked(text: str, value: str = SECRET) -> bool:
    """True if any encoded form of the value (or a long raw fragment) survives in the text."""
    if value in text or value[::-1] in text:
        return True
    raw = value.encode()
    forms = [raw.hex(), raw.hex().upper(), base64.b64encode(raw).decode()[:-4]]
    return any(f in text for f in forms)


def screen_text(fw: OutputFirewall, text: str) -> str:
    out = fw.screen("execute_result", {"data": {"text/plain": text}, "metadata": {}, "execution_count": 1})
    assert out.content is not None
    return out.content["data"]["text/plain"]


def b64_blob(prefix: bytes, value: str, suffix: bytes, encoder=base64.b64encode) -> str:
    return encoder(prefix + value.encode() + suffix).decode()


def wrap76(blob: str) -> str:
    return "\n".join(blob[i : i + 76] for i in range(0, len(blob), 76))


ENCODINGS = {
    "raw": lambda s: s,
    "base64": lambda s: base64.b64encode(s.encode()).decode(),
    "base64url": lambda s: base64.urlsafe_b64encode(s.encode()).decode(),
    "base32": lambda s: base64.b32encode(s.encode()).decode(),
    "base32_lower": lambda s: base64.b32encode(s.encode()).decode().lower(),
    "hex": lambda s: s.encode().hex(),
    "hex_upper": lambda s: s.encode().hex().upper(),
    "url": lambda s: urllib.parse.quote(s, safe=""),
    "url_plus": lambda s: urllib.parse.quote_plus(s),
    "json": lambda s: json.dumps({"key": s}),
    "json_slash_escaped": lambda s: json.dumps(s).replace("/", "\\/"),
    "html": lambda s: html.escape(s),
    "html_numeric": lambda s: "".join(f"&#{ord(c)};" for c in s),
    "reversed": lambda s: s[::-1],
    "spaced": lambda s: " ".join(s),
    "dashed": lambda s: "-".join(s[i : i + 4] for i in range(0, len(s), 4)),
    "newlines": lambda s: "\n".join(s[i : i + 5] for i in range(0, len(s), 5)),
    "separators_stripped": lambda s: s.replace("-", "").replace("/", "").replace("+", "+"),
    "base64_wrapped_76": lambda s: wrap76(base64.b64encode(b"x" * 100 + s.encode()).decode()),
    "utf16": lambda s: s.encode("utf-16-le").decode("latin-1"),
    "hex_spaced": lambda s: " ".join(f"{b:02x}" for b in s.encode()),
}


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
@pytest.mark.parametrize("value_name,value", [(SECRET_NAME, SECRET), (OTHER_NAME, OTHER)])
def test_every_encoding_is_redacted(fw, encoding, value_name, value):
    encoded = ENCODINGS[encoding](value)
    out = screen_text(fw, f"result: {encoded} (end)")
    assert f"[REDACTED:{value_name}]" in out
    assert not leaked(out, value)
    assert encoded not in out
    assert out.startswith("result: ") and out.endswith(" (end)")


@pytest.mark.parametrize("encoding", ["base64", "base64url", "base32"])
@pytest.mark.parametrize("extra", ["", "X", "XY", "XYZ"])
def test_a_whole_encoding_leaves_no_tail_behind(encoding, extra):
    """The last characters of a value's own encoding (before and with the padding) carry its last
    bits: they go with the redaction, whatever the value's length."""
    fw = OutputFirewall()
    value = SECRET + extra
    fw.add_secret("TAILED", value)
    out = screen_text(fw, f"result: {ENCODINGS[encoding](value)} (end)")
    assert out == "result: [REDACTED:TAILED] (end)"


def test_separator_stripped_secret_with_own_separators(fw):
    out = screen_text(fw, "pw=" + OTHER.replace("-", "").replace("&", "&"))
    assert "[REDACTED:DB_PASSWORD]" in out


@pytest.mark.parametrize("prefix_len", range(0, 7))
@pytest.mark.parametrize("suffix_len", [0, 1, 2, 5])
def test_base64_fragments_inside_larger_blobs_all_alignments(fw, prefix_len, suffix_len):
    rnd = random.Random(prefix_len * 10 + suffix_len)
    prefix = bytes(rnd.randrange(256) for _ in range(prefix_len + 30))
    suffix = bytes(rnd.randrange(256) for _ in range(suffix_len + 30))
    for encoder in (base64.b64encode, base64.urlsafe_b64encode, base64.b32encode):
        blob = b64_blob(prefix, SECRET, suffix, encoder)
        out = screen_text(fw, blob)
        assert MARK in out, encoder
        # The characters that depend on the secret: those that change when the secret does.
        decoy = b64_blob(prefix, "X" * len(SECRET), suffix, encoder)
        differing = [i for i, (a, b) in enumerate(zip(blob, decoy, strict=True)) if a != b]
        secret_part = blob[differing[0] : differing[-1] + 1]
        windows = {secret_part[i : i + 6] for i in range(len(secret_part) - 5)}
        assert not any(w in out for w in windows), encoder


def test_every_precomputed_form_round_trips(fw):
    for form, text in encoded_forms(SECRET).items():
        out = screen_text(fw, f"<{text}>")
        assert MARK in out, form


def test_environ_dump_nul_separated(fw):
    environ = f"PATH=/usr/bin\0HOME=/root\0{SECRET_NAME}={SECRET}\0LANG=C.UTF-8\0".encode()
    # As the child would print it: decoded, as bytes repr, and split by NUL.
    for shown in (environ.decode(), repr(environ), str(environ.split(b"\0"))):
        out = fw.screen("stream", {"name": "stdout", "text": shown})
        text = (out.content or {}).get("text", "") + "".join(
            (o.content or {}).get("text", "") for o in fw.flush_all()
        )
        assert MARK in text
        assert not leaked(text)
        assert "HOME" in text


def stream_through(fw: OutputFirewall, chunks: list[str], name: str = "stdout") -> str:
    emitted = []
    for chunk in chunks:
        out = fw.screen("stream", {"name": name, "text": chunk})
        if out.content is not None:
            assert out.content["name"] == name
            emitted.append(out.content["text"])
    for out in fw.flush_all():
        if out.content is not None:
            emitted.append(out.content["text"])
    return "".join(emitted)


def assert_at_most_a_short_head_passed(out: str, prefix: str, suffix: str, encoded: str, release_below: int):
    """``prefix`` + (at most release_below-1 characters of the form's start) + MARK + ``suffix``."""
    assert out.startswith(prefix) and out.endswith(suffix), out
    assert out.count(MARK) == 1, out
    head = out[len(prefix) : out.index(MARK)]
    assert encoded.startswith(head), out
    assert len(squeeze(head)) <= release_below - 1, out
    assert out[out.index(MARK) + len(MARK) :] == suffix, out


@pytest.mark.parametrize("release_below", [1, 4])
def test_secret_split_across_two_chunks_at_every_point(release_below):
    fw = OutputFirewall(known_only().model_copy(update={"stream_release_below": release_below}))
    fw.add_secret(SECRET_NAME, SECRET)
    text = f"key is {SECRET} ok\n"
    for split in range(len(text) + 1):
        fw.start_cell(f"c{split}")
        out = stream_through(fw, [text[:split], text[split:]])
        if release_below == 1:
            assert out == f"key is {MARK} ok\n", split
        else:
            assert_at_most_a_short_head_passed(out, "key is ", " ok\n", SECRET, release_below)


@pytest.mark.parametrize("release_below", [1, 4])
@pytest.mark.parametrize(
    "encoding", ["raw", "base64", "hex", "spaced", "reversed", "url", "base64_wrapped_76"]
)
def test_encoded_secret_streamed_one_character_at_a_time(encoding, release_below):
    fw = OutputFirewall(known_only().model_copy(update={"stream_release_below": release_below}))
    fw.add_secret(SECRET_NAME, SECRET)
    encoded = ENCODINGS[encoding](SECRET)
    out = stream_through(fw, list(f"a {encoded} b\n"))
    assert MARK in out and not leaked(out)
    assert out.startswith("a ") and out.endswith(" b\n")
    if encoding in ("raw", "hex", "spaced", "reversed"):
        assert_at_most_a_short_head_passed(out, "a ", " b\n", encoded, release_below)


def test_random_chunkings_never_leak(fw):
    rnd = random.Random(7)
    payload = (
        f"{SECRET}\n{base64.b64encode(SECRET.encode()).decode()}\n{OTHER.encode().hex()}\n"
        f"{' '.join(SECRET)}\n" * 3
    )
    for trial in range(60):
        cuts = sorted(rnd.sample(range(1, len(payload)), rnd.randrange(1, 30)))
        chunks = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        fw.start_cell(f"t{trial}")
        out = stream_through(fw, chunks)
        assert not leaked(out) and not leaked(out, OTHER), trial
        assert out.count(MARK) == 9, trial
        assert out.count("[REDACTED:DB_PASSWORD]") == 3, trial


def test_stdout_and_stderr_windows_are_separate(fw):
    half = len(SECRET) // 2
    a = fw.screen("stream", {"name": "stdout", "text": SECRET[:half]})
    b = fw.screen("stream", {"name": "stderr", "text": SECRET[half:] + "\n"})
    c = fw.screen("stream", {"name": "stdout", "text": SECRET[half:] + "\n"})
    shown = "".join((o.content or {}).get("text", "") for o in (a, b, c, *fw.flush_all()))
    assert MARK in shown
    assert SECRET not in shown


def _screen_both(fw: OutputFirewall, parts: list[tuple[str, str]]) -> list[tuple[str, str]]:
    shown = []
    for name, text in parts:
        out = fw.screen("stream", {"name": name, "text": text})
        if out.content is not None:
            shown.append((out.content["name"], out.content["text"]))
    shown.extend((o.content["name"], o.content["text"]) for o in fw.flush_all() if o.content is not None)
    return shown


@pytest.mark.parametrize(
    "parts",
    [
        [("stdout", SECRET[:8]), ("stderr", SECRET[8:])],
        [("stderr", SECRET[:12] + "\n"), ("stdout", SECRET[12:] + " done\n")],
        [("stdout", SECRET[:6]), ("stderr", SECRET[6:14]), ("stdout", SECRET[14:])],
        [("stdout", SECRET[:9]), ("stderr", SECRET[:7]), ("stdout", SECRET[7:]), ("stderr", SECRET[9:])],
        [("stdout", "x " + SECRET[:9]), ("stderr", SECRET[9] + " " * 5000 + SECRET[10:] + " " + "w " * 50_000)],
    ],
    ids=["halves", "lines", "three_parts", "both_hold_a_prefix", "padded_into_a_large_chunk"],
)
def test_secret_split_between_stdout_and_stderr(fw, parts):
    shown = _screen_both(fw, parts)
    in_order = "".join(text for _, text in shown)
    assert MARK in in_order and not leaked(in_order) and SECRET not in squeeze(in_order), shown
    for stream in ("stdout", "stderr"):
        assert not leaked("".join(text for name, text in shown if name == stream)), shown


def test_random_interleavings_of_stdout_and_stderr_never_leak(fw):
    """A payload written in order, each piece to stdout or stderr at random: what the client sees,
    in arrival order or per stream, never holds a secret."""
    rnd = random.Random(11)
    payload = f"key {SECRET} and {OTHER} and {' '.join(SECRET)} end\n"
    for trial in range(300):
        cuts = sorted(rnd.sample(range(1, len(payload)), rnd.randrange(1, 12)))
        chunks = [payload[i:j] for i, j in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
        fw.start_cell(f"t{trial}")
        shown = _screen_both(fw, [(rnd.choice(("stdout", "stderr")), chunk) for chunk in chunks])
        in_order = "".join(text for _, text in shown)
        for value in (SECRET, OTHER):
            assert not leaked(in_order, value) and squeeze(value) not in squeeze(in_order), (trial, shown)
            for stream in ("stdout", "stderr"):
                assert not leaked("".join(t for n, t in shown if n == stream), value), (trial, shown)


def test_stdout_and_stderr_alone_are_not_held_for_each_other(fw):
    """The join only happens while the other stream holds a possible secret start: ordinary output
    on the two streams passes as before."""
    shown = _screen_both(fw, [("stdout", "epoch 1 loss=0.25\n"), ("stderr", "warning: slow\n"),
                              ("stdout", "epoch 2 loss=0.20\n")])
    assert shown == [("stdout", "epoch 1 loss=0.25\n"), ("stderr", "warning: slow\n"),
                     ("stdout", "epoch 2 loss=0.20\n")]


def test_ordinary_stream_text_is_not_held_back(fw):
    out = fw.screen("stream", {"name": "stdout", "text": "epoch 1/10 loss=0.25\n"})
    assert out.content == {"name": "stdout", "text": "epoch 1/10 loss=0.25\n"}
    assert fw.flush_all() == []


def test_only_a_possible_secret_start_is_held(fw):
    out = fw.screen("stream", {"name": "stdout", "text": "value: sk-pr"})
    assert out.content is not None
    assert out.content["text"].startswith("value: ")
    assert len(out.content["text"]) >= len("value: ")
    held = fw.flush("stdout")
    assert held is not None and held.content is not None
    assert out.content["text"] + held.content["text"] == "value: sk-pr"


def test_traceback_error_fields_are_redacted(fw):
    content = {
        "ename": "ValueError",
        "evalue": f"bad key {SECRET}",
        "traceback": [
            "\x1b[0;31mValueError\x1b[0m Traceback",
            f"----> 1 connect(api_key='{SECRET}')",
            f"ValueError: bad key {base64.b64encode(SECRET.encode()).decode()}",
        ],
    }
    out = fw.screen("error", content)
    assert out.content is not None
    dumped = json.dumps(out.content)
    assert not leaked(dumped) and dumped.count(MARK) == 3
    assert out.content["ename"] == "ValueError"
    assert content["evalue"].endswith(SECRET), "the input message must not be mutated"


@pytest.mark.parametrize("mime", ["text/html", "text/markdown", "text/latex", "image/svg+xml", "text/plain"])
def test_rich_text_outputs_are_redacted(fw, mime):
    body = {
        "text/html": f"<table><tr><td>{html.escape(SECRET)}</td></tr></table>",
        "text/markdown": f"**key**: `{SECRET}`",
        "text/latex": f"$\\texttt{{{SECRET}}}$",
        "image/svg+xml": f"<svg><text>{SECRET}</text></svg>",
        "text/plain": SECRET,
    }[mime]
    for msg_type in ("display_data", "update_display_data", "execute_result"):
        out = fw.screen(msg_type, {"data": {mime: body}, "metadata": {}, "transient": {"display_id": "x"}})
        assert out.content is not None
        assert MARK in out.content["data"][mime] and not leaked(out.content["data"][mime])


def test_application_json_is_walked(fw):
    data = {"rows": [{"name": "a", "token": SECRET}, {"nested": {SECRET: [1, OTHER]}}], "n": 3}
    out = fw.screen("display_data", {"data": {"application/json": data}, "metadata": {}})
    assert out.content is not None
    dumped = json.dumps(out.content)
    assert not leaked(dumped) and not leaked(dumped, OTHER)
    assert out.content["data"]["application/json"]["n"] == 3
    assert {r.name: r.count for r in out.redactions} == {SECRET_NAME: 2, OTHER_NAME: 1}


@pytest.mark.parametrize("msg_type", ["comm_open", "comm_msg", "comm_close"])
def test_widget_comm_data_is_walked(fw, msg_type):
    content = {
        "comm_id": "abc",
        "target_name": "jupyter.widget",
        "data": {
            "state": {"value": f"key={SECRET}", "options": [SECRET[::-1], {"x": OTHER}]},
            "buffer_paths": [],
        },
    }
    out = fw.screen(msg_type, content)
    assert out.content is not None
    dumped = json.dumps(out.content)
    assert not leaked(dumped) and not leaked(dumped, OTHER)
    assert out.content["comm_id"] == "abc"


def test_redaction_records_carry_names_not_values(fw):
    out = fw.screen("display_data", {"data": {"text/plain": f"{SECRET} {SECRET}"}, "metadata": {}})
    assert [(r.detector, r.name, r.count) for r in out.redactions] == [("known_value", SECRET_NAME, 2)]
    assert SECRET not in repr(out.redactions)


def test_fails_closed_on_malformed_message(fw):
    out = fw.screen("display_data", {"data": ["not", "a", "mapping"]})
    assert out.withheld and out.content is None
    assert "failing closed" in (out.notice or "")


def test_fails_closed_when_a_detector_raises(fw, monkeypatch):
    def broken(text):
        raise RuntimeError("boom")

    monkeypatch.setattr(fw._known, "redact", broken)
    for msg_type, content in (
        ("stream", {"name": "stdout", "text": SECRET}),
        ("execute_result", {"data": {"text/plain": SECRET}}),
        ("error", {"ename": "E", "evalue": SECRET, "traceback": []}),
    ):
        out = fw.screen(msg_type, content)
        assert out.withheld and out.content is None, msg_type


def test_sentinels_are_shown_unless_policy_redacts_them():
    shown = OutputFirewall(known_only())
    shown.add_secret("K", "ironcage-sentinel-0123456789abcdef", sentinel=True)
    out = shown.screen("stream", {"name": "stdout", "text": "K=ironcage-sentinel-0123456789abcdef\n"})
    assert out.content is not None and "ironcage-sentinel-0123456789abcdef" in out.content["text"]
    hidden = OutputFirewall(known_only().model_copy(update={"redact_sentinels": True}))
    hidden.add_secret("K", "ironcage-sentinel-0123456789abcdef", sentinel=True)
    out = hidden.screen("stream", {"name": "stdout", "text": "K=ironcage-sentinel-0123456789abcdef\n"})
    assert out.content is not None and "[REDACTED:K]" in out.content["text"]


def test_short_secret_forms_are_not_matched_loosely():
    fw = OutputFirewall(known_only())
    fw.add_secret("PIN", "48151623")
    assert screen_text(fw, "[4, 8, 1, 5, 1, 6, 2, 3]") == "[4, 8, 1, 5, 1, 6, 2, 3]"
    assert screen_text(fw, "pin=48151623") == "pin=[REDACTED:PIN]"


def test_binary_buffers_with_a_secret_withhold_the_message(fw):
    clean = fw.screen_buffers("comm_msg", [b"\x00\x01plain", memoryview(b"abc")])
    assert not clean.withheld and clean.redactions == []
    dirty = fw.screen_buffers("comm_msg", [b"\x00\x01", b"\xff" + SECRET.encode("utf-16-le") + b"\x00"])
    assert dirty.withheld and dirty.redactions[0].name == SECRET_NAME
    assert "binary buffers" in dirty.notice
    b64 = fw.screen_buffers("comm_msg", [base64.b64encode(b"zz" + OTHER.encode())])
    assert b64.withheld and b64.redactions[0].name == OTHER_NAME


def test_binary_buffers_of_a_secret_using_cell_follow_the_image_policy():
    for rule, withheld, flagged in (
        ("withhold", True, False),
        ("flag", False, True),
        ("allow", False, False),
    ):
        fw = OutputFirewall(known_only().model_copy(update={"images_after_secret": rule}))
        fw.start_cell("c")
        assert not fw.screen_buffers("comm_msg", [b"\x89PNG..."]).withheld
        fw.mark_cell_used_secret()
        out = fw.screen_buffers("comm_msg", [b"\x89PNG..."])
        assert (out.withheld, out.flagged) == (withheld, flagged), rule


def test_stream_names_other_than_stdout_and_stderr_keep_no_state_of_their_own(fw):
    """The child chooses a stream's name: a name per message (or a megabyte-long one) must not grow
    the wrapper's per-stream state without bound, and a secret split across such names is still
    reassembled and redacted (jupyter only has stdout and stderr)."""
    for i in range(2000):
        fw.screen("stream", {"name": f"s{i}-" + "n" * 1000, "text": "x"})
    assert len(fw._streams) <= 2
    half = len(SECRET) // 2
    shown = [fw.screen("stream", {"name": name, "text": text}).content
             for name, text in (("one", "key " + SECRET[:half]), ("two", SECRET[half:] + " end\n"))]
    shown += [r.content for r in fw.flush_all()]
    joined = "".join(c["text"] for c in shown if c)
    assert SECRET[:half] not in joined and MARK in joined
    assert {c["name"] for c in shown if c} <= {"stdout", "stderr"}
