"""The audit log in real kernel sessions: what a session records, the magics, fail-closed, kill -9."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager

from ironcage_jupyter.audit import AuditQuery
from ironcage_jupyter.audit.verify import verify
from kernel_helpers import Execution, execute, start_kernel, status, stop_kernel, wait_gone

pytestmark = pytest.mark.usefixtures("ironcage_jupyter_path")


@pytest.fixture(scope="module")
def audit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kernel-audit")


@pytest.fixture(scope="module")
def kernel(
    audit_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[KernelManager, BlockingKernelClient]]:
    km, kc = start_kernel(tmp_path_factory.mktemp("ws"), env={"IRONCAGE_AUDIT_DIR": str(audit_dir)})
    yield km, kc
    stop_kernel(km, kc)


def run_cell(kc: BlockingKernelClient, code: str, cell_id: str, timeout: float = 60) -> Execution:
    """Like kernel_helpers.execute, with the cell id a notebook frontend puts in the request metadata."""
    msg = kc.session.msg(
        "execute_request",
        {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False},
    )
    msg["metadata"]["cellId"] = cell_id
    kc.shell_channel.send(msg)
    msg_id = msg["header"]["msg_id"]
    messages = []
    while True:
        incoming = kc.get_iopub_msg(timeout=timeout)
        if incoming["parent_header"].get("msg_id") != msg_id:
            continue
        messages.append(incoming)
        if incoming["header"]["msg_type"] == "status" and incoming["content"]["execution_state"] == "idle":
            break
    reply = kc.get_shell_msg(timeout=timeout)
    while reply["parent_header"].get("msg_id") != msg_id:
        reply = kc.get_shell_msg(timeout=timeout)
    return Execution(reply=reply, messages=messages)


def events_of(audit_dir: Path, session_id: str) -> list[tuple]:
    with AuditQuery(audit_dir) as query:
        return query.run_trusted(
            "SELECT seq, event_type, decision, name, cell_id, detail FROM events WHERE session_id = ? ORDER BY seq",
            [session_id],
        ).rows


def test_a_session_records_its_start_every_cell_and_how_it_ended(kernel, audit_dir) -> None:
    _, kc = kernel
    assert run_cell(kc, "x = 6 * 7\nx", "cell-ok").status == "ok"  # the first cell waits for the log to open
    assert run_cell(kc, "1/0", "cell-bad").status == "error"
    info = status(kc)["audit"]
    assert info["state"] == "ok" and info["dir"] == str(audit_dir)
    rows = events_of(audit_dir, info["session_id"])
    kinds = [(r[1], r[3], r[4]) for r in rows]
    assert kinds[0][:2] == ("session_start", "observe")  # the test suite default (conftest)
    assert ("cell_submitted", "user", "cell-ok") in kinds
    assert ("execution", "ok", "cell-ok") in kinds
    assert ("execution", "error", "cell-bad") in kinds
    submitted = next(r for r in rows if r[1] == "cell_submitted" and r[4] == "cell-ok")
    assert '"code_redacted":"x = 6 * 7\\nx"' in submitted[5]
    failed = next(r for r in rows if r[1] == "execution" and r[4] == "cell-bad")
    assert '"error_type":"ZeroDivisionError"' in failed[5]


def test_sql_magic_shows_a_table_and_refuses_writes(kernel) -> None:
    _, kc = kernel
    shown = execute(kc, "%%ironcage sql --limit 2\nSELECT seq, event_type FROM events ORDER BY seq")
    assert shown.status == "ok"
    (display,) = shown.of_type("display_data")
    html = display["content"]["data"]["text/html"]
    assert "<table" in html and "session_start" in html and "truncated to the display limit of 2" in html
    refused = execute(kc, "%%ironcage sql\nDELETE FROM events")
    assert refused.status == "error"
    assert refused.error["ename"] == "AuditQueryError" and "read-only" in refused.error["evalue"]
    escape = execute(kc, "%%ironcage sql\nSELECT * FROM read_text('/etc/passwd')")
    assert escape.status == "error" and "root:" not in escape.text


def test_queries_of_the_audit_log_are_themselves_recorded(kernel, audit_dir) -> None:
    _, kc = kernel
    sql = "SELECT event_type, count(*) FROM events GROUP BY ALL"
    assert run_cell(kc, f"%%ironcage sql\n{sql}", "cell-sql").status == "ok"
    assert run_cell(kc, "%%ironcage sql\nUPDATE events SET rule = 'x'", "cell-sql-bad").status == "error"
    assert run_cell(kc, "%ironcage audit --last 2 --denied", "cell-look").status == "ok"
    session_id = status(kc)["audit"]["session_id"]
    with AuditQuery(audit_dir) as query:
        rows = query.run_trusted(
            "SELECT name, decision, cell_id, status, detail->>'sql_redacted', "
            "(detail->>'row_count')::INT > 0, duration_ms >= 0 "
            "FROM events WHERE session_id = ? AND event_type = 'audit_query' ORDER BY seq",
            [session_id],
        ).rows
    assert rows[-3:] == [
        ("sql_magic", None, "cell-sql", "ok", sql, True, True),
        ("sql_magic", "deny", "cell-sql-bad", "refused", "UPDATE events SET rule = 'x'", None, True),
        ("audit_magic", None, "cell-look", "ok", "%ironcage audit --last 2 --denied", True, True),
    ]


def test_sql_magic_hands_a_dataframe_to_the_notebook(kernel) -> None:
    _, kc = kernel
    assert (
        execute(kc, "%%ironcage sql -o audit_frame\nSELECT ts, event_type, name FROM events").status == "ok"
    )
    probe = execute(
        kc,
        "print(type(audit_frame).__name__, str(audit_frame['ts'].dtype).split(',')[0], len(audit_frame) > 3)",
    )
    assert probe.stdout.split() == ["DataFrame", "datetime64[us", "True"]


def test_audit_magic_quick_look(kernel) -> None:
    _, kc = kernel
    look = execute(kc, "%ironcage audit --last 3 --type execution")
    assert look.status == "ok"
    text = look.of_type("display_data")[0]["content"]["data"]["text/plain"]
    assert "(3 rows;" in text and text.count("| execution ") == 3
    bad = execute(kc, "%ironcage audit --type nonsense")
    assert bad.status == "error" and "unknown event type" in bad.error["evalue"]


def test_the_sandbox_cannot_write_the_audit_log(kernel, audit_dir) -> None:
    _, kc = kernel
    layers = status(kc).get("isolation") or {}
    if not isinstance(layers, dict) or str(layers.get("filesystem", "")).split(":")[0] != "active":
        pytest.skip("the filesystem isolation layer is not wired into the kernel on this branch yet")
    # The payload sits in a workspace file, so the policy's protected-path invariant (static) cannot
    # refuse it first: the sandbox alone must stop the write.
    payload = Path(status(kc)["workspace"]) / "forge_audit.py"
    payload.write_text(
        f"import pathlib\ntry:\n    (pathlib.Path({str(audit_dir)!r}) / 'sessions' / 'x').write_text('forged')\n"
        "    print('WROTE')\nexcept OSError as e:\n    print('refused', type(e).__name__)\n"
    )
    attempt = execute(kc, "exec(open('forge_audit.py').read())")
    assert "WROTE" not in attempt.stdout and "refused" in attempt.stdout


def test_unwritable_audit_dir_refuses_every_cell(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("the audit dir cannot be created under a regular file")
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_AUDIT_DIR": str(blocker / "audit")})
    try:
        for _ in range(2):
            refused = execute(kc, "print('should not run')")
            assert refused.status == "error"
            assert refused.error["ename"] == "AuditUnavailable"
            assert "should not run" not in refused.stdout
        assert status(kc)["audit"]["state"].startswith("FAILED")
    finally:
        stop_kernel(km, kc)


def test_audit_failure_mid_session_stops_the_next_cell(tmp_path) -> None:
    audit_dir = tmp_path / "audit"
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_AUDIT_DIR": str(audit_dir)})
    try:
        assert execute(kc, "print('first')").stdout.strip() == "first"
        session = status(kc)["audit"]["session_id"]
        (audit_dir / "sessions" / f"{session}.duckdb").unlink()
        for _ in range(2):
            refused = execute(kc, "print('must not run')")
            assert refused.status == "error" and refused.error["ename"] == "AuditUnavailable"
            assert "must not run" not in refused.stdout
        assert status(kc)["audit"]["state"].startswith("FAILED")
    finally:
        stop_kernel(km, kc)


def test_kill_9_of_the_wrapper_keeps_every_committed_event_and_the_chain(tmp_path) -> None:
    audit_dir = tmp_path / "audit"
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_AUDIT_DIR": str(audit_dir)})
    try:
        for n in range(3):
            assert run_cell(kc, f"print({n})", f"k{n}").status == "ok"
        info = status(kc)
        session, wrapper = info["audit"]["session_id"], info["wrapper_pid"]
        os.kill(wrapper, signal.SIGKILL)
        assert wait_gone(wrapper)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)  # reaps the killed wrapper and cleans its connection files
    rows = events_of(audit_dir, session)
    submitted = [r[4] for r in rows if r[1] == "cell_submitted"]
    # every cell's submission was committed before it ran; its end may still have been in flight
    assert submitted == ["k0", "k1", "k2"]
    assert [r[0] for r in rows] == list(range(1, len(rows) + 1))
    report = verify(audit_dir)
    assert report.exit_code == 0, report.render()
    assert not report.sessions[0].anchored


def test_shutdown_records_the_end_and_anchors_the_chain(tmp_path) -> None:
    audit_dir = tmp_path / "audit"
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_AUDIT_DIR": str(audit_dir)})
    execute(kc, "print('one cell')")
    session = status(kc)["audit"]["session_id"]
    stop_kernel(km, kc)
    rows = events_of(audit_dir, session)
    assert rows[-1][1] == "session_end" and '"cells_run":1' in rows[-1][5]
    report = verify(audit_dir)
    assert report.exit_code == 0 and report.sessions[0].anchored, report.render()


def test_credential_and_output_events_from_the_credentials_package_map_onto_the_schema(tmp_path) -> None:
    from ironcage_jupyter.audit.integration import KernelAudit

    audit = KernelAudit(str(tmp_path), session_id="creds")
    audit.wait_opened()
    calls = [
        ("credential.request", {"name": "GH", "scope": "tool", "tool": "http_get"}),
        ("credential.grant", {"name": "GH", "scope": "tool", "tool": "http_get", "ttl_s": 60.0}),
        ("credential.refuse", {"name": "AWS", "scope": "egress", "host": "evil.example", "reason": "host not granted"}),
        ("credential.source_error", {"name": "VAULT_X", "source": "vault", "reason": "unreachable"}),
        ("credential.taint", {"names": ["GH", "NPM"], "cell_id": "c9"}),
        ("output.redacted", {"msg_type": "stream", "cell_id": "c9",
                             "redactions": [{"detector": "granted-secret", "name": "GH", "count": 2}]}),
        ("output.withheld", {"msg_type": "display_data", "cell_id": "c9", "notice": "image from a tainted cell"}),
        ("credential.unmatchable", {"name": "PIN", "reason": "too short to match in outputs"}),
        ("credential.injection_end", {"names": ["NPM"], "cell_id": "c9", "restart_required": True}),
        ("credential.taint_cleared", {}),
        ("credential.settings_changed", {"grants": ["GH", "NPM"]}),
    ]  # fmt: skip
    for event_type, detail in calls:
        audit.credentials_callback(event_type, detail)
    audit.close()
    with AuditQuery(tmp_path) as query:
        access = query.sql(
            "SELECT credential_name, scope, granted, target, decision FROM credential_access ORDER BY seq"
        ).rows
        redactions = query.sql(
            "SELECT name, detail->>'matched_name', detail->>'count', detail->>'action', reason "
            "FROM events WHERE event_type = 'output_redaction' ORDER BY seq"
        ).rows
        violations = query.sql("SELECT kind, message, reason FROM violations").rows
    assert access == [
        ("GH", "tool", None, "http_get", None),
        ("GH", "tool", True, "http_get", "allow"),
        ("AWS", "egress", False, "evil.example", "deny"),
        ("VAULT_X", "source:vault", False, None, None),
        ("GH", "injected", True, None, None),
        ("NPM", "injected", True, None, None),
        ("NPM", "injected", None, None, None),  # removed again after the cell
        ("*", "injected", None, None, None),  # the child restarted
    ]
    # the end of an injection, a restart and a policy's new grants are not violations
    with AuditQuery(tmp_path) as query:
        changes = query.sql("SELECT reason FROM events WHERE event_type = 'policy_change'").rows
    assert changes == [("credential grants in force: GH, NPM",)]
    assert redactions == [
        ("granted-secret", "GH", "2", "redacted", None),
        ("output-policy", None, "1", "withheld", "image from a tainted cell"),
    ]
    assert violations == [("other", "credential.unmatchable: PIN", "too short to match in outputs")]
    assert verify(tmp_path).exit_code == 0


def test_policy_decisions_escalations_and_policy_changes_are_recorded(tmp_path) -> None:
    audit_dir = tmp_path / "audit"
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_AUDIT_DIR": str(audit_dir), "IRONCAGE_POLICY": "default"})
    try:
        # a shell escape escalates under the default policy; without stdin the escalation denies
        refused = run_cell(kc, "!echo should-not-run", "c-shell")
        assert refused.status == "error" and "should-not-run" not in refused.stdout
        assert run_cell(kc, "print('fine')", "c-fine").stdout.strip() == "fine"
        assert execute(kc, "%ironcage policy load strict").status == "ok"
        session = status(kc)["audit"]["session_id"]
    finally:
        stop_kernel(km, kc)
    rows = events_of(audit_dir, session)
    kinds = [(r[1], r[2], r[4]) for r in rows]
    assert ("escalation", "deny", "c-shell") in kinds
    assert ("policy_decision", "deny", "c-shell") in kinds
    assert ("execution", None, "c-shell") in kinds
    assert ("policy_decision", "allow", "c-fine") in kinds
    blocked = next(r for r in rows if r[1] == "execution" and r[4] == "c-shell")
    assert '"status":"blocked"' in blocked[5]
    # (the credential broker's grants taking effect are a policy_change of their own)
    change = next(r for r in rows if r[1] == "policy_change" and "credential broker" not in r[5])
    assert '"new_policy":"strict"' in change[5] and '"old_policy":"default"' in change[5]
    # the submission of the refused cell precedes its decision in the chain
    order = [r[1] for r in rows if r[4] == "c-shell"]
    assert order.index("cell_submitted") < order.index("policy_decision") < order.index("execution")
    assert verify(audit_dir).exit_code == 0
