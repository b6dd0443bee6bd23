"""PolicySession: pipeline stages with escalation, policy reload with the loosening check, magics."""

import asyncio
import json

import pytest

from ironcage_jupyter.pipeline import CellRequest
from ironcage_jupyter.policy import PolicyContext, PolicyError
from ironcage_jupyter.policy.session import FirewallStage, PolicySession, PolicyStage


@pytest.fixture
def session(tmp_path):
    return PolicySession.open("default", PolicyContext.create(tmp_path))


def cell(code, allow_stdin=True):
    return CellRequest(code=code, silent=False, store_history=True, user_expressions={}, allow_stdin=allow_stdin,
                       cell_id=None, metadata={}, execution_count=1)


def answers(*replies):
    asked = []

    async def ask(prompt):
        asked.append(prompt)
        return replies[len(asked) - 1]

    return ask, asked


async def run(session, request, ask=None):
    await FirewallStage(session).run(request)
    await PolicyStage(session, ask).run(request)
    return request


async def test_allowed_cell_runs(session):
    request = await run(session, cell("import pandas as pd\n%matplotlib inline"))
    assert request.block is None and request.decision.effect == "allow"


async def test_denied_cell_is_blocked_with_rule_and_reason(session):
    request = await run(session, cell("import ctypes\nctypes.CDLL(None)"))
    assert request.block.ename == "PolicyDenied"
    assert "deny-dangerous" in request.block.rule
    assert any("IC-MOD-001" in line for line in request.block.details) and request.block.reason


async def test_escalation_default_no_and_no_stdin(session):
    ask, asked = answers("")
    request = await run(session, cell("!ls"), ask)
    assert request.block is not None and request.notes["escalation"]["outcome"] == "deny"
    assert "shell-escapes" in asked[0] and "[N]o" in asked[0]
    request = await run(session, cell("!ls", allow_stdin=False), ask)
    assert request.block is not None and request.notes["escalation"]["outcome"] == "deny-no-stdin"
    assert len(asked) == 1


async def test_escalation_timeout_denies(tmp_path):
    session = PolicySession.open("default", PolicyContext.create(tmp_path))
    session.engine.policy.escalation.timeout_s = 0.05

    async def never(prompt):
        await asyncio.sleep(10)

    request = await run(session, cell("!ls"), never)
    assert request.notes["escalation"]["outcome"] == "deny-timeout" and request.block is not None


async def test_session_approval_covers_only_the_identical_cell(session):
    ask, asked = answers("s", "")
    assert (await run(session, cell("!ls"), ask)).block is None
    assert (await run(session, cell("!ls"), ask)).block is None
    assert len(asked) == 1  # the identical request was not asked again
    assert (await run(session, cell("!ls -la"), ask)).block is not None


async def test_policy_load_tighten_loosen_and_errors(session, tmp_path):
    out = await session.magic("policy", "load strict")
    assert out.error is None and session.policy.name == "strict"
    ask, asked = answers("y")
    out = await session.magic("policy", "load default", ask=ask, allow_stdin=False)
    assert out.error and session.policy.name == "strict"  # loosening without a human: refused
    out = await session.magic("policy", "load default", ask=ask, allow_stdin=True)
    assert out.error is None and session.policy.name == "default" and asked
    (tmp_path / "bad.yaml").write_text("rules:\n  - id: x\n    subject: cell\n    effect: maybe\n")
    out = await session.magic("policy", "load bad.yaml")
    assert "bad.yaml:4" in out.error and session.policy.name == "default"
    locked = tmp_path / "locked.yaml"
    locked.write_text("extends: strict\nname: admin\nlocked: true\n")
    assert (await session.magic("policy", f"load {locked}")).error is None
    ask, _ = answers("y")
    out = await session.magic("policy", "load default", ask=ask, allow_stdin=True)
    assert out.error and "locked" in out.error and session.policy.name == "admin"
    assert out.events[0]["decision"] == "deny"


async def test_magic_outputs(session, tmp_path):
    summary = await session.magic("policy", "")
    assert "default" in summary.text and summary.markdown.startswith("**Iron Cage policy")
    shown = await session.magic("policy", "show --yaml")
    assert "rules:" in shown.text
    notebook = tmp_path / "n.ipynb"
    notebook.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "import ctypes"},
                                              {"cell_type": "code", "source": "x = 1"}]}))
    checked = await session.magic("policy", "check n.ipynb")
    assert "cell 0: DENY" in checked.text and "cell 1: ALLOW" in checked.text
    explained = await session.magic("explain", "", "!curl x | sh")
    assert "ESCALATE" in explained.text and "get_ipython().system" in explained.text
    assert (await session.magic("policy", "frobnicate")).error


def test_open_refuses_a_bad_policy(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("rules: 3\n")
    with pytest.raises(PolicyError) as info:
        PolicySession.open(str(bad), PolicyContext.create(tmp_path))
    assert info.value.line == 1 and info.value.field == "rules"


async def test_large_cells_are_screened_off_the_event_loop(session):
    code = "x = 1\n" * 5000 + "import ctypes\n"
    request = await run(session, cell(code))
    assert request.block is not None and request.screen.findings[0].line == 5001


async def test_an_ask_that_reaches_a_human_without_stdin_is_used(session):
    class DialogAsk:
        def __init__(self):
            self.asked = []

        def available_without_stdin(self):
            return True

        async def __call__(self, prompt):
            self.asked.append(prompt)
            return "y"

    dialog = DialogAsk()
    request = await run(session, cell("!ls", allow_stdin=False), dialog)
    assert request.block is None and request.notes["escalation"]["outcome"] == "allow-once" and dialog.asked


async def test_magic_events_are_kept_for_the_audit_log(session):
    await session.magic("policy", "load strict")
    await session.magic("policy", "load no-such-policy")
    events = session.drain_events()
    assert [e["event"] for e in events] == ["policy_change", "policy_load_failed"]
    assert session.drain_events() == []


@pytest.mark.parametrize("isolation", [
    "pass_env: [AWS_SECRET_ACCESS_KEY]",  # a host variable the child never had
    "loopback_ports: [8888]",  # a TCP port the child may bind and connect to
])
async def test_policy_load_that_widens_the_sandbox_needs_a_human(session, tmp_path, isolation):
    # `%ironcage policy load` now applies the isolation section at the child's next start: a policy
    # that only widens the sandbox is loosening, refused without a human.
    wider = tmp_path / "wider.yaml"
    wider.write_text(f"extends: default\nname: wider\nisolation:\n  {isolation}\n")
    ask, asked = answers("y")
    out = await session.magic("policy", f"load {wider}", ask=ask, allow_stdin=False)
    assert out.error and session.policy.name == "default"
    assert "isolation" in out.error


async def test_policy_load_that_allows_a_degraded_sandbox_needs_a_human(tmp_path):
    strictest = tmp_path / "nodegrade.yaml"
    strictest.write_text("extends: default\nname: nodegrade\nisolation:\n  allow_degraded: false\n")
    session = PolicySession.open(str(strictest), PolicyContext.create(tmp_path))
    wider = tmp_path / "wider.yaml"
    wider.write_text("extends: default\nname: wider\nisolation:\n  allow_degraded: true\n")
    out = await session.magic("policy", f"load {wider}", allow_stdin=False)
    assert out.error and session.policy.name == "nodegrade"
