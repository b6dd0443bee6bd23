"""The firewall and the policy inside the real wrapper kernel (the `ironcage` kernelspec), driven through
jupyter_client: denied cells never reach the child, escalation asks the human (default no, no stdin ->
deny), `%ironcage policy` and `%%ironcage explain`, reload with the loosening check, an invalid policy
fails closed."""

import pytest

from kernel_helpers import comm_request, execute, start_kernel, status, stop_kernel


@pytest.fixture(scope="module")
def kernel(tmp_path_factory):
    workspace = tmp_path_factory.mktemp("ws")
    km, kc = start_kernel(workspace, env={"IRONCAGE_POLICY": "default"})
    yield kc, workspace
    stop_kernel(km, kc)


def test_allowed_cell_runs(kernel):
    kc, _ = kernel
    ex = execute(kc, "%matplotlib inline\nx = 6 * 7\nx")
    assert ex.status == "ok" and ex.result == "42"


def test_denied_cell_never_reaches_the_child(kernel):
    kc, workspace = kernel
    ex = execute(kc, "open('ran.txt', 'w').write('1')\nimport ctypes\nctypes.CDLL(None)")
    assert ex.status == "error" and ex.reply["content"]["ename"] == "PolicyDenied"
    assert "deny-dangerous" in ex.text and "IC-MOD-001" in ex.text
    assert not (workspace / "ran.txt").exists()
    protected = execute(kc, "open('~/.ssh/id_rsa'.replace('~', '/root')).read()")
    assert protected.status == "error" and "invariant.protected-path" in protected.text


def test_escalation_asks_and_defaults_to_no(kernel):
    kc, workspace = kernel
    no_stdin = execute(kc, "!touch shell_ran")
    assert no_stdin.status == "error" and "allow_stdin is false" in no_stdin.text
    refused = execute(kc, "!touch shell_ran", stdin_answers=[""])
    assert refused.status == "error" and "answered no" in refused.text
    assert not (workspace / "shell_ran").exists()
    approved = execute(kc, "!touch shell_ran", stdin_answers=["y"])
    assert approved.status == "ok" and (workspace / "shell_ran").exists()


def test_policy_magics_and_status(kernel):
    kc, _ = kernel
    summary = execute(kc, "%ironcage policy")
    assert summary.status == "ok" and "default" in summary.text and "Mode" in summary.text
    explained = execute(kc, "%%ironcage explain\nimport ctypes\n")
    assert explained.status == "ok" and "DENY" in explained.text and "IC-MOD-001" in explained.text
    info = status(kc)
    assert info["policy"] == "default" and info["policy_mode"] == "enforce"
    # the audit's submit stage comes first (no cell is screened while the audit log is unusable)
    assert [name for name in info["pipeline"] if not name.startswith("audit")][:2] == ["screen", "decide"]


def test_policy_reload_tightens_freely_and_loosening_needs_a_human(tmp_path):
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_POLICY": "default"})
    try:
        assert execute(kc, "%ironcage policy load strict").status == "ok"
        assert status(kc)["policy"] == "strict"
        refused = execute(kc, "%ironcage policy load observe")
        assert refused.status == "error" and "policy not loaded" in refused.text
        assert status(kc)["policy"] == "strict"
        (tmp_path / "bad.yaml").write_text("rules:\n  - id: x\n    subject: cell\n    effect: sometimes\n")
        bad = execute(kc, "%ironcage policy load bad.yaml")
        assert bad.status == "error" and "bad.yaml:4" in bad.text and status(kc)["policy"] == "strict"
        approved = execute(kc, "%ironcage policy load default", stdin_answers=["y"])
        assert approved.status == "ok" and status(kc)["policy"] == "default"
        # Each applied load is a policy change (the broker's new grants among them), never a
        # violation: a spurious "credential.settings_changed" violation was recorded before.
        session = status(kc)["audit"]["session_id"]
        audited = execute(kc, "%%ironcage sql\nSELECT 'violations=' || (SELECT count(*) FROM violations "
                              f"WHERE session_id = '{session}') || ' broker=' || (SELECT count(*) FROM events "
                              f"WHERE session_id = '{session}' AND event_type = 'policy_change' "
                              "AND detail->>'source' = 'credential broker') AS n")
        assert "violations=0 broker=2" in audited.text, audited.text
    finally:
        stop_kernel(km, kc)


def test_invalid_policy_fails_closed(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("name: broken\nrules: {not: a list}\n")
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_POLICY": str(bad)})
    try:
        ex = execute(kc, "x = 1")
        assert ex.status == "error" and ex.reply["content"]["ename"] == "PolicyError"
        assert "broken.yaml:2" in ex.text and "rules" in ex.text
        info = status(kc)
        assert info["policy"] is None and "broken.yaml" in info["policy_error"]
    finally:
        stop_kernel(km, kc)


def test_policy_loaded_from_the_notebook_governs_grants_and_output_limits(tmp_path):
    """`%ironcage policy load` reaches what the wrapper holds, not only the rules: a grant added by
    the new policy (approved by the human) can be used, and its output limit truncates."""
    secret = "tok-" + "9f3b27c1e8d4a6b5" * 2
    km, kc = start_kernel(tmp_path, env={"IRONCAGE_POLICY": "default", "LOADED_TOKEN": secret})
    try:
        refused = execute(kc, "%%ironcage with-secret LOADED_TOKEN\nprint(1)")
        assert refused.status == "error" and "LOADED_TOKEN" in refused.text
        (tmp_path / "granting.yaml").write_text(
            "name: granting\nextends: default\n"
            "credentials:\n  grants:\n    LOADED_TOKEN:\n      source: env:LOADED_TOKEN\n"
            "      mode: inject\n      cells: true\n"
            "limits:\n  output_max_bytes: 4000\n"
            "budgets:\n  cells_per_minute: 6\n"
        )
        loaded = execute(kc, "%ironcage policy load granting.yaml", stdin_answers=["y"])
        assert loaded.status == "ok", loaded.text
        assert status(kc)["policy"] == "granting"
        used = execute(kc, "%%ironcage with-secret LOADED_TOKEN\nimport os\nprint(os.environ['LOADED_TOKEN'])",
                       stdin_answers=["y"])
        assert used.status == "ok", used.text
        assert secret not in used.text and "[REDACTED:LOADED_TOKEN]" in used.text
        flood = execute(kc, "print('y' * 20000)")
        assert len(flood.stdout) < 5000 and "truncated" in flood.text
        # The new budget counts from the load on: a few more cells run, then the budget refuses.
        outcomes = [execute(kc, "1 + 1") for _ in range(6)]
        refused_cells = [ex for ex in outcomes if ex.status == "error"]
        assert refused_cells and "cells_per_minute" in refused_cells[0].text, [ex.text for ex in outcomes]
    finally:
        stop_kernel(km, kc)


SECRET_FILES = {
    "fake_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAAB\n"
                "notreallyakeybutlooksliketheonejustfortesting1234567890abc\n-----END OPENSSH PRIVATE KEY-----\n",
    "credentials": "[default]\naws_access_key_id = AKIAIOSFODNN7EXAMPLE\n"
                   "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    "settings.yaml": "password: hunter2-very-secret-value\nuser: bob\n",
    "list.yaml": "- hunter2-very-secret-value\n- other\n",
    "wrong_types.yaml": "name: [hunter2-very-secret-value]\nrules: hunter2-very-secret-value\n"
                        "limits:\n  memory_mb: hunter2-very-secret-value\n",
}


@pytest.mark.parametrize("name", sorted(SECRET_FILES))
def test_policy_load_of_a_file_that_is_not_a_policy_echoes_none_of_it(kernel, tmp_path, name):
    """The wrapper reads the file the magic names (outside the sandbox): an error about a file that is
    not a policy names the file and what is wrong, never its contents."""
    kc, _ = kernel
    path = tmp_path / name
    path.write_text(SECRET_FILES[name])
    ex = execute(kc, f"%ironcage policy load {path}")
    assert ex.status == "error"
    for token in ("notreallyakey", "AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI", "hunter2", "bob"):
        assert token not in ex.text, ex.text


def test_a_policy_that_cannot_be_fully_applied_refuses_everything(tmp_path):
    """`%ironcage policy load` swaps the rules first, then applies the grants, detectors, limits and
    budgets the wrapper holds. When that second step fails half-way (here the credential broker
    cannot record its new grants because the session's audit journal disappeared), the kernel is in
    a state nobody chose: the magic says so, every later cell and tool comm call is refused with that
    reason, and `%ironcage status` shows it."""
    import os
    import uuid
    from pathlib import Path

    km, kc = start_kernel(tmp_path, env={"IRONCAGE_POLICY": "default"})
    try:
        assert execute(kc, "print('before')").stdout == "before\n"
        info = status(kc)
        comm_id = uuid.uuid4().hex
        kc.shell_channel.send(kc.session.msg("comm_open", {"comm_id": comm_id, "target_name": "ironcage.tools",
                                                           "data": {}}))
        assert comm_request(kc, comm_id, {"op": "list", "id": 1})["ok"]
        kc.complete("pri", 3)
        assert "print" in kc.get_shell_msg(timeout=60)["content"]["matches"]
        journal = Path(os.environ["IRONCAGE_AUDIT_DIR"]) / "sessions" / f"{info['audit']['session_id']}.journal"
        journal.unlink()
        loaded = execute(kc, "%ironcage policy load strict")
        assert loaded.status == "error", loaded.text
        assert "'strict' was loaded but could not be applied, so no cell or tool call runs" in loaded.text
        info = status(kc)
        assert info["policy"] == "strict"  # the rules swapped; the rest did not follow
        assert info["refusing"].startswith("the new policy could not be applied, so no cell runs")
        assert "was removed" in info["refusing"]
        marker = tmp_path / "ran-after-a-half-applied-policy"
        ex = execute(kc, f"open({marker.name!r}, 'w').write('1')")
        assert ex.status == "error" and ex.reply["content"]["ename"] == "IronCageUnavailable"
        assert "the new policy could not be applied" in ex.text
        assert not marker.exists()
        reply = comm_request(kc, comm_id, {"op": "call", "name": "fs.list", "arguments": {"path": "."}, "id": 2})
        assert not reply["ok"] and reply["id"] == 2
        assert reply["refusal"]["rule"] == "invariant.fail-closed"
        assert "the new policy could not be applied" in reply["refusal"]["reason"]
        # Nothing reaches the child any more (completions run code there too), the kernel still
        # answers, and keeps refusing.
        kc.complete("pri", 3)
        assert kc.get_shell_msg(timeout=60)["content"]["matches"] == []
        assert execute(kc, "1 + 1").status == "error"
        assert status(kc)["refusing"] == info["refusing"]
    finally:
        stop_kernel(km, kc)
