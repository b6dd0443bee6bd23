"""Typed detectors, PII, images from secret-using cells, truncation, and false positives on the benign
corpus."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from ironcage_jupyter.outputs import OutputDetectors, OutputFirewall, OutputSettings
from ironcage_jupyter.outputs.detectors import luhn_valid
from ironcage_jupyter.sandbox.settings import ResourceLimits

CORPUS = Path("/work/shared/corpus/benign/outputs.json")
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(200))).decode()

PRIVATE_KEY = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBv2yCq1Fv0VTCmHhW0vWgS0vE0nXh0B2x1P7m3jK8mQQAAAJgZ2n5uGdp+\n"
    "-----END OPENSSH PRIVATE KEY-----"
)
TOKENS = {
    "aws_access_key_id": "AKIAZ7Q3EXAMPLE4R2TX",
    "github_token": "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5",
    "gitlab_token": "glpat-" + "xK9mP2qR7sT4vW8yZ1bC",
    "slack_token": "xoxb-" + "1234567890-0987654321-AbCdEfGhIjKlMnOp",
    "stripe_key": "sk_live_" + "51HxQ2eK8mN4pR7tV9wY3bC6",
    "openai_key": "sk-proj-" + "a1B2c3D4e5F6g7H8i9J0k1L2m3N4o5P6q7R8s9T0u1V2w3X4",
    "anthropic_key": "sk-ant-api03-" + "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Ji1Hg0FeDcBa" * 2,
    "gcp_api_key": "AIza" + "SyD3x7Kq9Lm2Np5Rt8Vw1Yz4Bc6Df0GhJkL",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "azure_storage_key": "AccountKey=" + "A" * 40 + "b" * 46 + "==",
    "slack_webhook": "https://hooks.slack.com/services/T0000AAAA/B0000BBBB/XXXXXXXXXXXXXXXXXXXXXXXX",
    "url_password": "postgres://admin:S3cr3tPassw0rd@db.internal:5432/app",
}


def typed(**enabled: bool) -> OutputFirewall:
    flags = dict(known_values=False, private_keys=False, tokens=False, entropy=False, pii=False)
    flags.update(enabled)
    return OutputFirewall(OutputSettings(detectors=OutputDetectors(**flags)))


def screen_plain(fw: OutputFirewall, text: str):
    out = fw.screen("execute_result", {"data": {"text/plain": text}, "metadata": {}})
    assert out.content is not None
    return out.content["data"]["text/plain"], out.redactions


def test_private_key_block_is_redacted():
    text, records = screen_plain(typed(private_keys=True), f"key:\n{PRIVATE_KEY}\nafter")
    assert text == "key:\n[REDACTED:private_key]\nafter"
    assert [(r.detector, r.count) for r in records] == [("private_key", 1)]


def test_unterminated_private_key_is_redacted_to_the_end():
    text, _ = screen_plain(typed(private_keys=True), "x " + PRIVATE_KEY.rsplit("-----END", 1)[0])
    assert text == "x [REDACTED:private_key]"


def test_private_key_streamed_in_lines_never_shows_its_body():
    fw = typed(private_keys=True)
    fw.start_cell("c")
    shown = []
    for line in (PRIVATE_KEY + "\ndone\n").splitlines(keepends=True):
        out = fw.screen("stream", {"name": "stdout", "text": line})
        if out.content:
            shown.append(out.content["text"])
    shown += [o.content["text"] for o in fw.flush_all() if o.content]
    joined = "".join(shown)
    assert "b3BlbnNzaC1rZXkt" not in joined and "[REDACTED:private_key]" in joined
    assert joined.endswith("done\n")


@pytest.mark.parametrize("kind", sorted(TOKENS))
def test_token_formats_are_redacted(kind):
    token = TOKENS[kind]
    text, records = screen_plain(typed(tokens=True), f"value = {token} end")
    assert f"[REDACTED:{kind}]" in text, text
    assert {r.name for r in records} == {kind}
    secret_part = "S3cr3tPassw0rd" if kind == "url_password" else token.split("=", 1)[-1]
    assert secret_part[-12:] not in text


@pytest.mark.parametrize(
    "kind,line,secret",
    [
        ("sendgrid_key", "key SG." + "a1B2" * 5 + "xy." + "Q" * 43, "Q" * 20),
        (
            "telegram_token",
            "bot 123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw0 ok",
            "AAHdqTcvCH1vGWJxfSeofSAs0K5",
        ),
        ("mailchimp_key", "mc 0123456789abcdef0123456789abcdef-us12 ok", "0123456789abcdef0123456789"),
        ("square_oauth", "sq sq0csp-" + "A" * 43, "A" * 30),
        ("pypi_token", "pypi-AgEIcHlwaS5vcmc" + "x" * 70, "x" * 60),
    ],
)
def test_detect_secrets_plugins_contribute_formats(kind, line, secret):
    text, records = screen_plain(typed(tokens=True), line)
    assert f"[REDACTED:{kind}]" in text, text
    assert secret not in text
    assert records[0].detector == "token"


def test_token_right_after_a_long_streamed_private_key_is_caught():
    # A key block longer than the stream window is redacted while it streams; the chunk carrying its
    # END marker is rewritten before the token detectors run on it, which must see the new text.
    fw = typed(private_keys=True, tokens=True)
    fw.start_cell("c")
    body = (PRIVATE_KEY.splitlines()[1] + "\n") * 1200  # > 64 KiB
    token = TOKENS["github_token"]
    chunks = [
        "-----BEGIN RSA PRIVATE KEY-----\n" + body,
        body,
        "-----END RSA PRIVATE KEY-----\n" + "é" * 10 + " x" * 3000 + " token " + token + " done\n",
    ]
    shown = [o.content["text"] for o in (fw.screen("stream", {"name": "stdout", "text": c}) for c in chunks) if o.content]
    shown += [o.content["text"] for o in fw.flush_all() if o.content]
    joined = "".join(shown)
    assert token not in joined and "[REDACTED:github_token] done" in joined
    assert "b3BlbnNzaC1rZXkt" not in joined


@pytest.mark.parametrize("cut", [
    "-----BEGI|N| RSA |PRIVATE KEY----|-|\n",  # the header cut before its keyword
    "-----BEGIN RSA |PRIVATE KEY-----\n",
    "-----BEGIN RSA PRIVATE K|EY-----\n",
])
def test_private_key_with_its_header_split_across_stream_chunks_is_caught(cut):
    """The child decides where its stream is cut: a BEGIN header released before its "PRIVATE KEY"
    arrived must not let the key body through."""
    fw = typed(private_keys=True)
    fw.start_cell("c")
    body = PRIVATE_KEY.splitlines()[1]
    chunks = ["out:\n", *cut.split("|"), body + "\n", "-----END RSA PRIVATE KEY-----\n", "after\n"]
    shown = [o.content["text"] for o in (fw.screen("stream", {"name": "stdout", "text": c}) for c in chunks) if o.content]
    shown += [o.content["text"] for o in fw.flush_all() if o.content]
    joined = "".join(shown)
    assert body not in joined and "[REDACTED:private_key]" in joined and joined.endswith("after\n"), joined


def test_token_split_across_stream_chunks_is_caught():
    fw = typed(tokens=True)
    token = TOKENS["github_token"]
    for split in range(1, len(token)):
        fw.start_cell()
        shown = []
        for chunk in ("auth " + token[:split], token[split:] + " ok\n"):
            out = fw.screen("stream", {"name": "stdout", "text": chunk})
            if out.content:
                shown.append(out.content["text"])
        shown += [o.content["text"] for o in fw.flush_all() if o.content]
        assert "".join(shown) == "auth [REDACTED:github_token] ok\n", split


def test_token_split_into_three_or_more_stream_chunks_is_caught():
    """The child decides where its stream is cut: a token held back at one chunk's end stays held
    while the next chunks extend it (the buffer is all token characters but shorter than the
    window), until it is complete."""
    fw = typed(tokens=True)
    token = TOKENS["github_token"]
    for cuts in ((4, 9), (1, 2, 3), (10, 20, 30)):
        fw.start_cell()
        pieces = [token[a:b] for a, b in zip((0, *cuts), (*cuts, len(token)))]
        chunks = ["auth ." + pieces[0], *pieces[1:-1], pieces[-1] + " ok\n"]
        shown = [o.content["text"] for o in (fw.screen("stream", {"name": "stdout", "text": c}) for c in chunks)
                 if o.content]
        shown += [o.content["text"] for o in fw.flush_all() if o.content]
        assert token not in "".join(shown), cuts
        assert "[REDACTED:github_token]" in "".join(shown), cuts


def test_high_entropy_assignment_quoted_and_unquoted():
    fw = typed(entropy=True)
    for line in (
        "client_secret = 'q8Zr2LpX7vNk4Tb9Wc1Hm6Fy3Ds5Gj0A'",
        "API_KEY: q8Zr2LpX7vNk4Tb9Wc1Hm6Fy3Ds5Gj0A",
    ):
        text, records = screen_plain(fw, line)
        assert "[REDACTED:high_entropy_assignment]" in text and "q8Zr2LpX" not in text, line
        assert records[0].name == "high_entropy_assignment"


@pytest.mark.parametrize(
    "line",
    [
        "tokenizer = Tokenizer(num_words=10000)",
        "password_length: 16",
        "secret_sauce = 'aaaaaaaaaaaaaaaaaaaaaaaa'",
        "token_count = 1234567890123456789012",
        "max_tokens: total_number_of_tokens_seen",
    ],
)
def test_low_entropy_assignments_pass(line):
    assert screen_plain(typed(entropy=True), line) == (line, [])


def test_pii_only_when_enabled():
    line = "mail jane.doe@example.org card 4111 1111 1111 1111 ssn 123-45-6789"
    assert screen_plain(typed(pii=False), line)[0] == line
    text, records = screen_plain(typed(pii=True), line)
    assert text == "mail [REDACTED:email] card [REDACTED:card_number] ssn [REDACTED:ssn]"
    assert {r.name for r in records} == {"email", "card_number", "ssn"}


def test_luhn_invalid_numbers_and_bad_ssns_pass():
    fw = typed(pii=True)
    for line in ("order 4111 1111 1111 1112", "id 000-12-3456", "range 666-12-3456", "1234567890123"):
        assert screen_plain(fw, line)[0] == line
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


# -- images and binary outputs ------------------------------------------------------------------------


def display(fw: OutputFirewall, data: dict):
    return fw.screen("display_data", {"data": data, "metadata": {"image/png": {"width": 10}}})


def test_images_pass_when_no_secret_was_used():
    fw = OutputFirewall()
    fw.start_cell("c")
    out = display(fw, {"image/png": PNG, "text/plain": "<Figure>"})
    assert out.content is not None and out.content["data"]["image/png"] == PNG and not out.withheld


@pytest.mark.parametrize("mime", ["image/png", "image/jpeg", "application/pdf", "image/gif"])
def test_binary_outputs_withheld_after_secret_use(mime):
    fw = OutputFirewall()
    fw.start_cell("c")
    fw.mark_cell_used_secret()
    out = display(fw, {mime: PNG, "text/plain": "<Figure size 640x480>"})
    assert out.content is not None and mime not in out.content["data"]
    assert out.content["data"]["text/plain"] == "<Figure size 640x480>"
    assert "withheld" in (out.notice or "")
    only = display(fw, {mime: PNG})
    assert only.withheld and only.content is None
    fw.start_cell("next")
    assert display(fw, {mime: PNG}).content["data"][mime] == PNG


def test_flag_and_allow_policies():
    flag = OutputFirewall(OutputSettings(images_after_secret="flag"))
    flag.start_cell("c")
    flag.mark_cell_used_secret()
    out = display(flag, {"image/png": PNG})
    assert out.flagged and out.content["data"]["image/png"] == PNG and "flagged" in out.notice
    allow = OutputFirewall(OutputSettings(images_after_secret="allow"))
    allow.start_cell("c")
    allow.mark_cell_used_secret()
    out = display(allow, {"image/png": PNG})
    assert not out.flagged and out.content["data"]["image/png"] == PNG and out.notice is None


def test_redacted_text_marks_the_cell_so_its_images_are_withheld():
    fw = OutputFirewall()
    fw.add_secret("K", "zL9qX2vB7nM4tR8wY1cF5hJ3")
    fw.start_cell("c")
    fw.screen("stream", {"name": "stdout", "text": "zL9qX2vB7nM4tR8wY1cF5hJ3\n"})
    assert display(fw, {"image/png": PNG}).withheld


def test_image_blob_carrying_a_secret_is_withheld_even_without_marking():
    fw = OutputFirewall(OutputSettings(images_after_secret="allow"))
    fw.add_secret("K", "zL9qX2vB7nM4tR8wY1cF5hJ3")
    fw.start_cell("c")
    blob = base64.b64encode(b"\x89PNG tEXt comment=zL9qX2vB7nM4tR8wY1cF5hJ3 IEND").decode()
    out = display(fw, {"image/png": blob})
    assert out.withheld and out.content is None
    assert out.redactions[0].name == "K"


# -- truncation --------------------------------------------------------------------------------------


def test_streams_truncated_per_cell_with_notice():
    fw = OutputFirewall(limits=ResourceLimits(output_max_bytes=100))
    fw.start_cell("c")
    first = fw.screen("stream", {"name": "stdout", "text": "a" * 60 + "\n"})
    assert first.content["text"] == "a" * 60 + "\n" and first.notice is None
    second = fw.screen("stream", {"name": "stdout", "text": "b" * 60 + "\n"})
    assert second.content["text"].startswith("b" * 39 + "\n[ironcage] output truncated")
    assert "100 bytes" in second.notice
    third = fw.screen("display_data", {"data": {"text/plain": "more"}, "metadata": {}})
    assert third.withheld and third.content is None and third.notice is None
    fw.start_cell("next")
    assert fw.screen("stream", {"name": "stdout", "text": "fresh\n"}).content["text"] == "fresh\n"


def test_large_rich_output_truncated():
    fw = OutputFirewall(limits=ResourceLimits(output_max_bytes=1000))
    fw.start_cell("c")
    out = fw.screen("execute_result", {"data": {"text/plain": "x" * 5000, "text/html": "<p>" + "y" * 5000}})
    assert out.content is not None
    assert len(out.content["data"]["text/plain"]) < 1200 and "truncated" in out.content["data"]["text/plain"]
    assert out.notice and "truncated" in out.notice


def test_display_updates_count_against_the_limit():
    """A loop of display updates is output like a loop of displays."""
    fw = OutputFirewall(limits=ResourceLimits(output_max_bytes=1000))
    fw.start_cell("c")
    shown = []
    for i in range(20):
        out = fw.screen("update_display_data", {"data": {"text/html": f"<i>{i}</i>" + "u" * 100},
                                                "metadata": {}, "transient": {"display_id": "d"}})
        if out.content is not None:
            shown.append(out)
    assert sum(len(o.content["data"]["text/html"]) for o in shown) < 1200
    assert "truncated" in shown[-1].content["data"]["text/html"] and shown[-1].notice


def test_error_reply_text_is_cut_to_the_limit_after_redaction():
    """The execute_reply repeats the error's text; a child could send it unbounded there."""
    fw = OutputFirewall(limits=ResourceLimits(output_max_bytes=1000))
    fw.add_secret("TOKEN", "tok-4f7b9c2e8d1a6b3c5e7f")
    fw.start_cell("c")
    reply = {"status": "error", "ename": "ValueError", "evalue": "tok-4f7b9c2e8d1a6b3c5e7f " + "e" * 50_000,
             "traceback": ["Traceback (most recent call last):", "x" * 30_000, "ValueError: tok-4f7b9c2e8d1a6b3c5e7f"]}
    out = fw.screen_reply("execute_reply", reply)
    assert out["ename"] == "ValueError" and out["status"] == "error"
    assert out["evalue"].startswith("[REDACTED:TOKEN] eee") and "error text cut at 1,000 bytes" in out["evalue"]
    assert len(out["evalue"]) < 1200 and sum(len(line) for line in out["traceback"]) < 1200
    assert "tok-4f7b9c2e8d1a6b3c5e7f" not in json.dumps(out)
    small = {"status": "error", "ename": "KeyError", "evalue": "'a'", "traceback": ["KeyError: 'a'"]}
    assert fw.screen_reply("execute_reply", small) == small
    ok = {"status": "ok", "execution_count": 3, "user_expressions": {"x": {"data": {"text/plain": "y" * 500}}}}
    assert fw.screen_reply("execute_reply", ok) == ok  # user expressions are not error text
    # ... but they share the output limit with the reply's payloads
    big = {"status": "ok", "execution_count": 4, "user_expressions": {
        "x": {"data": {"text/plain": "y" * 600}}, "z": {"data": {"text/plain": "z" * 600}}},
        "payload": [{"source": "page", "data": {"text/plain": "p" * 300}}, {"source": "set_next_input", "text": "n"}]}
    out = fw.screen_reply("execute_reply", big)
    assert out["user_expressions"]["x"] == big["user_expressions"]["x"]
    assert out["user_expressions"]["z"]["ename"] == "OutputLimit"
    assert out["payload"] == [{"source": "page", "data": {"text/plain": "p" * 300}}, {"source": "set_next_input", "text": "n"}]


def test_large_error_truncated():
    fw = OutputFirewall(limits=ResourceLimits(output_max_bytes=500))
    fw.start_cell("c")
    out = fw.screen("error", {"ename": "E", "evalue": "v", "traceback": ["line " * 100] * 10})
    assert out.content is not None and len("".join(out.content["traceback"])) < 800


# -- false positives on real notebook outputs ---------------------------------------------------------

REALISTIC_SECRETS = {
    "OPENAI_API_KEY": "sk-proj-4fG7hJ2kL9mN3pQ8rS1tU6vW0xY5zA2bC7dEx",
    "GITHUB_TOKEN": "ghp_R4nd0mT0k3nV4lu3F0rT3st1ngPurp0s3s12",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzQ8pLmN2vB",
    "DB_PASSWORD": "correct-horse-battery-staple-42",
    "STRIPE_KEY": "sk_live_51HxQ2eK8mN4pR7tV9wY3bC6",
    "HF_TOKEN": "hf_kQpWzXrTyUvBnMcLaSdFgHjK1234567890",
}


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    if not CORPUS.exists():
        pytest.skip(f"benign corpus not found at {CORPUS}")
    outputs = json.loads(CORPUS.read_text())
    assert len(outputs) == 3344
    return outputs


def test_known_value_matching_flags_no_benign_output(corpus):
    fw = OutputFirewall(
        OutputSettings(detectors=OutputDetectors(private_keys=False, tokens=False, entropy=False, pii=False))
    )
    for name, value in REALISTIC_SECRETS.items():
        fw.add_secret(name, value)
    flagged = []
    for i, text in enumerate(corpus):
        fw.start_cell(str(i))
        results = [fw.screen("stream", {"name": "stdout", "text": text}), *fw.flush_all()]
        shown = "".join((r.content or {}).get("text", "") for r in results)
        if any(r.redactions for r in results) or shown != text:
            flagged.append(i)
    assert flagged == []


def test_default_typed_detectors_flag_no_benign_output(corpus):
    # Defaults: private keys, tokens, entropy on; PII off. The rate with PII on is in docs/credentials.md.
    fw = OutputFirewall()
    for name, value in REALISTIC_SECRETS.items():
        fw.add_secret(name, value)
    flagged = []
    for i, text in enumerate(corpus):
        fw.start_cell(str(i))
        rich = fw.screen("execute_result", {"data": {"text/plain": text}})
        # Streamed in 3 chunks, as ipykernel would flush a long output.
        third = max(1, len(text) // 3)
        chunks = [text[:third], text[third : 2 * third], text[2 * third :]]
        results = [fw.screen("stream", {"name": "stdout", "text": c}) for c in chunks] + fw.flush_all()
        shown = "".join((r.content or {}).get("text", "") for r in results)
        if rich.redactions or any(r.redactions for r in results) or shown != text:
            flagged.append(i)
    assert flagged == []
