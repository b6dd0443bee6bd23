"""Leak tests through the real wrapper kernel (jupyter_client, a real child ipykernel) with the
credential session installed as ``credentials.wiring.install`` does: nothing the client receives, and
nothing in the audit log, carries a secret's value in any encoding."""

from __future__ import annotations

import base64
import json

import pytest

from kernel_helpers import execute, start_kernel, status, stop_kernel

OPENAI = "sk-proj-Lk3Jh5Gf7Ds9Ap2Qw4Er6Ty8Ui0OpZx"
DB = "Db-Pa55w0rd-9vQ2xR7mK4tL8nB3"
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(64))).decode()


def forms(value: str) -> list[str]:
    raw = value.encode()
    return [
        value,
        value[::-1],
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode().rstrip("="),
        base64.b32encode(raw).decode().rstrip("="),
        " ".join(value),
    ]


def assert_clean(text: str, value: str = DB) -> None:
    for form in forms(value):
        assert form not in text, form
    # a long middle fragment of base64 at any alignment
    for k in range(3):
        blob = base64.b64encode(b"x" * k + value.encode()).decode()
        assert blob[4:-4] not in text


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("ws")
    config = tmp_path_factory.mktemp("cfg") / "creds.json"
    audit_log = config.parent / "audit.jsonl"
    config.write_text(
        json.dumps(
            {
                "audit_log": str(audit_log),
                "credentials": {
                    "grants": {
                        "OPENAI_API_KEY": {"hosts": ["api.openai.com"], "tools": ["http"], "cells": True},
                        "DB_PASSWORD": {"mode": "inject", "cells": True, "source": "env:IRONCAGE_TEST_DB"},
                    }
                },
                "limits": {"output_max_bytes": 200_000},
            }
        )
    )
    env = {
        "IRONCAGE_POLICY": "observe",  # these cells must reach the child: the firewall under test is the output one
        "IRONCAGE_TEST_CREDENTIALS": str(config),
        "OPENAI_API_KEY": OPENAI,  # the wrapper's launch environment holds the real values
        "IRONCAGE_TEST_DB": DB,
    }
    km, kc = start_kernel(
        workspace,
        env=env,
        extra_arguments=[
            "--IPKernelApp.kernel_class=tests.creds_kernel.creds_test_kernel.CredentialsTestKernel",
            # Small pieces: every output over 8 KiB takes the relay's piece-by-piece stream path.
            "--IronCageKernel.stream_piece_bytes=4096",
        ],
    )
    try:
        yield kc, audit_log
    finally:
        stop_kernel(km, kc)


def everything(ex) -> str:
    """Every message of the cell, serialized: what a client could see."""
    return json.dumps([m["content"] for m in ex.messages]) + json.dumps(ex.reply["content"])


def test_brokered_child_sees_only_the_sentinel(kernel):
    kc, _ = kernel
    ex = execute(
        kc,
        "import os\nprint(os.environ.get('OPENAI_API_KEY'))\nprint(open('/proc/self/environ','rb').read())",
    )
    assert ex.status == "ok", ex.text
    assert ex.stdout.splitlines()[0].startswith("ironcage-sentinel-")
    assert OPENAI not in everything(ex)
    assert_clean(everything(ex), OPENAI)


def test_with_secret_injects_redacts_and_removes(kernel):
    kc, _ = kernel
    ex = execute(
        kc,
        "%%ironcage with-secret DB_PASSWORD\nimport os\nSECRET = os.environ['DB_PASSWORD']\n"
        "print('value:', SECRET)\nprint(dict(os.environ))\n"
        # a NUL-separated dump like /proc/self/environ (putenv does not rewrite that file; a child
        # process started by the cell does see the variable there)
        "print('\\0'.join(f'{k}={v}' for k, v in os.environ.items()).encode())\n"
        "import subprocess, sys\n"
        "print(subprocess.run([sys.executable, '-c', 'print(open(\"/proc/self/environ\",\"rb\").read())'],"
        " capture_output=True, text=True).stdout)",
    )
    assert ex.status == "ok", ex.text
    assert "value: [REDACTED:DB_PASSWORD]" in ex.stdout
    assert ex.stdout.count("[REDACTED:DB_PASSWORD]") >= 4
    assert_clean(everything(ex))
    after = execute(kc, "import os\nprint('DB_PASSWORD' in os.environ)")
    assert after.stdout.strip() == "False"
    info = status(kc)["credentials"]
    assert info["tainted"] and info["tainted_by"] == ["DB_PASSWORD"]


ENCODING_CELLS = {
    "base64": "import base64\nprint(base64.b64encode(SECRET.encode()).decode())",
    "base64_in_blob": "import base64, os\nprint(base64.b64encode(os.urandom(7) + SECRET.encode() + os.urandom(5)).decode())",
    "base64url": "import base64\nprint(base64.urlsafe_b64encode(b'..' + SECRET.encode()).decode())",
    "base32": "import base64\nprint(base64.b32encode(SECRET.encode()).decode())",
    "hex": "print(SECRET.encode().hex(), SECRET.encode().hex().upper())",
    "url": "import urllib.parse\nprint(urllib.parse.quote(SECRET, safe=''))",
    "json": "import json\nprint(json.dumps({'k': SECRET}))",
    "reversed": "print(SECRET[::-1])",
    "spaced": "print(' '.join(SECRET))",
    "char_by_char_chunks": "import sys, time\nfor c in SECRET:\n    sys.stdout.write(c); sys.stdout.flush(); time.sleep(0.002)\nprint()",
    "result": "SECRET",
    "html": "from IPython.display import HTML, display\ndisplay(HTML('<b>' + SECRET + '</b>'))",
    "markdown_latex_json": (
        "from IPython.display import Markdown, Latex, JSON, display\n"
        "display(Markdown('`' + SECRET + '`')); display(Latex('$' + SECRET + '$')); display(JSON({'a': [SECRET]}))"
    ),
    "traceback": "def connect(key):\n    raise ValueError('bad key ' + key)\nconnect(SECRET)",
    "widget_comm": "import ipywidgets\nw = ipywidgets.Text(value=SECRET, description=SECRET[::-1])\ndisplay(w)\nw.value = SECRET + '!'",
    "stderr": "import sys\nprint(SECRET, file=sys.stderr)",
    "pager_payload": "SECRET?",
}


@pytest.mark.parametrize("encoding", sorted(ENCODING_CELLS))
def test_tainted_value_in_every_encoding_is_redacted(kernel, encoding):
    kc, _ = kernel
    # The value stays in the child's memory after a with-secret cell (the taint): later cells print it.
    setup = execute(kc, "%%ironcage with-secret DB_PASSWORD\nimport os\nSECRET = os.environ['DB_PASSWORD']")
    assert setup.status == "ok", setup.text
    ex = execute(kc, ENCODING_CELLS[encoding])
    seen = everything(ex)
    assert "[REDACTED:DB_PASSWORD]" in seen, seen[:2000]
    assert_clean(seen)


SPLIT_ACROSS_STREAMS = {
    "halves": "import sys\nsys.stdout.write(SECRET[:8]); sys.stdout.flush()\n"
    "sys.stderr.write(SECRET[8:]); sys.stderr.flush()",
    "lines": "import sys\nprint(SECRET[:10], flush=True)\nprint(SECRET[10:], file=sys.stderr, flush=True)",
    "stderr_first": "import sys\nsys.stderr.write(SECRET[:12]); sys.stderr.flush()\n"
    "sys.stdout.write(SECRET[12:] + ' done'); sys.stdout.flush()",
    "three_parts": "import sys\nsys.stdout.write(SECRET[:6]); sys.stdout.flush()\n"
    "sys.stderr.write(SECRET[6:14]); sys.stderr.flush()\nsys.stdout.write(SECRET[14:]); sys.stdout.flush()",
    "both_hold_a_prefix": "import sys\nsys.stdout.write(SECRET[:9]); sys.stdout.flush()\n"
    "sys.stderr.write(SECRET[:7]); sys.stderr.flush()\nsys.stdout.write(SECRET[7:]); sys.stdout.flush()\n"
    "sys.stderr.write(SECRET[9:]); sys.stderr.flush()",
}


@pytest.mark.parametrize("split", sorted(SPLIT_ACROSS_STREAMS))
def test_secret_split_between_stdout_and_stderr_is_redacted(kernel, split):
    """The two streams are screened separately, but a client sees them in one sequence: a secret
    written half to stdout and half to stderr (each half flushed as its own message) must not
    appear when the stream texts are read in arrival order, separators or not."""
    kc, _ = kernel
    setup = execute(kc, "%%ironcage with-secret DB_PASSWORD\nimport os\nSECRET = os.environ['DB_PASSWORD']")
    assert setup.status == "ok", setup.text
    ex = execute(kc, SPLIT_ACROSS_STREAMS[split])
    assert ex.status == "ok", ex.text
    streams = [m["content"] for m in ex.messages if m["header"]["msg_type"] == "stream"]
    in_order = "".join(c["text"] for c in streams)
    squeezed = "".join(ch for ch in in_order if ch not in " \n\t")
    assert DB not in in_order and DB not in squeezed, streams
    for name in ("stdout", "stderr"):
        assert DB not in "".join(c["text"] for c in streams if c["name"] == name), streams
    assert "[REDACTED:DB_PASSWORD]" in in_order, streams
    assert_clean(everything(ex))


def test_images_of_a_secret_using_cell_are_withheld(kernel):
    kc, _ = kernel
    code = (
        "%%ironcage with-secret DB_PASSWORD\nimport base64\nfrom IPython.display import display\n"
        f"display({{'image/png': base64.b64decode('{PNG}'), 'text/plain': '<plot>'}}, raw=False)\n"
        f"display({{'image/png': '{PNG}'}}, raw=True)"
    )
    ex = execute(kc, code)
    assert ex.status == "ok", ex.text
    displays = ex.of_type("display_data")
    assert all("image/png" not in m["content"]["data"] for m in displays)
    assert "withheld" in ex.stderr
    later = execute(kc, f"from IPython.display import display\ndisplay({{'image/png': '{PNG}'}}, raw=True)")
    assert later.of_type("display_data")[0]["content"]["data"]["image/png"] == PNG


def test_widget_binary_buffers_with_a_secret_or_from_a_secret_cell_are_withheld(kernel):
    kc, _ = kernel
    leak = execute(
        kc,
        "import ipywidgets\nimg = ipywidgets.Image(value=b'\\x89PNG ' + SECRET.encode(), format='png')\ndisplay(img)",
    )
    assert "binary buffers contain a secret" in leak.stderr
    for m in leak.messages:
        for buffer in m.get("buffers") or []:
            assert DB.encode() not in bytes(buffer)
    clean = execute(kc, "img2 = ipywidgets.Image(value=b'\\x89PNG plain', format='png')\ndisplay(img2)")
    assert clean.status == "ok" and "withheld" not in clean.stderr
    assert any(m.get("buffers") for m in clean.messages)
    tainted = execute(
        kc,
        "%%ironcage with-secret DB_PASSWORD\nimport ipywidgets\n"
        "img3 = ipywidgets.Image(value=b'\\x89PNG drawn', format='png')\ndisplay(img3)",
    )
    assert "binary data cannot be checked" in tainted.stderr
    assert not any(m.get("buffers") for m in tainted.messages)


def test_with_secret_cell_reply_reports_the_bodys_error_redacted(kernel):
    kc, _ = kernel
    ex = execute(
        kc, "%%ironcage with-secret DB_PASSWORD\nimport os\nraise KeyError(os.environ['DB_PASSWORD'])"
    )
    assert ex.status == "error"
    assert ex.reply["content"]["ename"] == "KeyError"
    assert "[REDACTED:DB_PASSWORD]" in ex.reply["content"]["evalue"]
    assert_clean(everything(ex))
    assert execute(kc, "import os\nprint('DB_PASSWORD' in os.environ)").stdout.strip() == "False"


def test_inspection_history_and_input_prompts_are_screened(kernel):
    kc, _ = kernel
    execute(kc, "%%ironcage with-secret DB_PASSWORD\nimport os\nSECRET = os.environ['DB_PASSWORD']")
    reply = kc.inspect("SECRET", reply=True, timeout=30)
    assert reply["content"]["found"]
    assert "[REDACTED:DB_PASSWORD]" in json.dumps(reply["content"])
    assert_clean(json.dumps(reply["content"]))
    execute(kc, f"x = {DB!r}  # an agent pasted the value into a cell")
    reply = kc.history(hist_access_type="tail", n=5, output=False, raw=True, reply=True, timeout=30)
    assert_clean(json.dumps(reply["content"]))
    msg_id = kc.execute("v = input(SECRET)", allow_stdin=True)
    request = kc.get_stdin_msg(timeout=30)
    assert request["content"]["prompt"] == "[REDACTED:DB_PASSWORD]"
    kc.input("ok")
    reply = kc.get_shell_msg(timeout=30)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=30)
    assert reply["content"]["status"] == "ok"


def test_brokered_secret_cannot_be_injected(kernel):
    kc, _ = kernel
    ex = execute(kc, "%%ironcage with-secret OPENAI_API_KEY\nprint('ran')")
    assert ex.status == "error"
    assert "brokered" in ex.text and "ran" not in ex.stdout


def test_oversized_output_is_truncated(kernel):
    kc, _ = kernel
    ex = execute(kc, "print('x' * 500_000)")
    assert len(ex.stdout) < 210_000 and "output truncated" in ex.stdout


def test_user_expressions_are_redacted_and_capped(kernel):
    """user_expressions come back in the execute_reply, not on iopub: their results share the output
    limit (200,000 bytes here) with the reply's payloads; one over it is answered with an error naming
    the limit, the small one still comes back. (Every string of a reply is redacted like any output:
    test_inspection_history_and_input_prompts_are_screened.)"""
    kc, _ = kernel
    ex = execute(kc, "big = 'y' * 1_000_000", user_expressions={"huge": "big", "small": "len(big)"})
    results = ex.reply["content"]["user_expressions"]
    assert results["huge"]["status"] == "error" and "output_max_bytes" in results["huge"]["evalue"]
    assert results["small"]["data"]["text/plain"] == "1000000"
    assert len(json.dumps(ex.reply["content"])) < 220_000


def test_large_stream_relayed_in_pieces_is_screened(kernel):
    kc, _ = kernel
    setup = execute(kc, "%%ironcage with-secret DB_PASSWORD\nimport os\nSECRET = os.environ['DB_PASSWORD']")
    assert setup.status == "ok", setup.text
    # About 150 KB in one stream message, cut into 4 KiB pieces: some copies straddle a cut.
    ex = execute(kc, "print(('word ' * 999 + SECRET + ' ') * 30)")
    seen = everything(ex)
    assert seen.count("[REDACTED:DB_PASSWORD]") == 30
    assert_clean(seen)
    assert sum(1 for m in ex.messages if m["header"]["msg_type"] == "stream") > 10


def test_key_and_token_cut_by_the_childs_own_flushes_are_redacted(kernel):
    """The child decides where its stream is cut: a private-key header and a token written across
    flushes (one stream message each) are redacted all the same."""
    kc, _ = kernel
    body = "MIIEowIBAAKCAQEAq3zXk9Lw2Rt7Yp4Vc8Bn1Mh6Jd0Fs5Ga"
    token = "ghp_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3zA5"
    parts = ["key:\n-----BEGIN RSA ", "PRIVATE KEY-----\n" + body + "\n", "-----END RSA PRIVATE KEY-----\n",
             "tok ." + token[:6], token[6:20], token[20:] + " ok\n"]
    ex = execute(kc, f"import sys\nfor part in {parts!r}:\n    sys.stdout.write(part); sys.stdout.flush()")
    assert ex.status == "ok", ex.text
    assert sum(1 for m in ex.messages if m["header"]["msg_type"] == "stream") >= 3
    seen = json.dumps([m["content"] for m in ex.messages if m["header"]["msg_type"] == "stream"])
    assert body not in seen and token[4:20] not in seen and token[20:] not in seen, seen
    assert "[REDACTED:private_key]" in seen and "[REDACTED:github_token]" in seen


def test_audit_log_has_names_and_never_values(kernel):
    kc, audit_log = kernel
    execute(kc, "print(SECRET)")
    text = audit_log.read_text()
    events = [json.loads(line)["event"] for line in text.splitlines()]
    assert "credential.grant" in events and "output.redacted" in events and "credential.taint" in events
    assert_clean(text)
    assert_clean(text, OPENAI)


def test_restart_after_injection_policy(tmp_path):
    config = tmp_path / "creds.json"
    config.write_text(
        json.dumps(
            {
                "audit_log": str(tmp_path / "audit.jsonl"),
                "credentials": {
                    "restart_after_injection": True,
                    "grants": {
                        "DB_PASSWORD": {"mode": "inject", "cells": True, "source": "env:IRONCAGE_TEST_DB"}
                    },
                },
            }
        )
    )
    km, kc = start_kernel(
        tmp_path,
        env={"IRONCAGE_POLICY": "observe", "IRONCAGE_TEST_CREDENTIALS": str(config), "IRONCAGE_TEST_DB": DB},
        extra_arguments=[
            "--IPKernelApp.kernel_class=tests.creds_kernel.creds_test_kernel.CredentialsTestKernel",
            # Small pieces: every output over 8 KiB takes the relay's piece-by-piece stream path.
            "--IronCageKernel.stream_piece_bytes=4096",
        ],
    )
    try:
        assert execute(kc, "%%ironcage with-secret DB_PASSWORD\nx = 1").status == "ok"
        blocked = execute(kc, "print('should not run')")
        assert blocked.status == "error" and "RestartRequired" in blocked.text
        assert "should not run" not in blocked.stdout
        assert status(kc)["credentials"]["restart_required"] is True
        km.restart_kernel(now=True)
        kc.wait_for_ready(timeout=60)
        after = execute(kc, "print('runs again')")
        assert after.status == "ok" and after.stdout == "runs again\n"
        assert status(kc)["credentials"]["tainted"] is False
    finally:
        stop_kernel(km, kc)
