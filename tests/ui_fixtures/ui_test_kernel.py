"""Interim test kernel for the browser tests: the REAL Iron Cage wrapper and child kernel, with the
``ironcage.ui`` bridge wired in the way docs/ui-protocol.md asks the lead to wire it, and a tiny
scripted decide stage standing in for the policy engine until it lands on main:

* a cell mentioning ``.ssh`` is denied (rule ``fs.protected.ssh``);
* a shell escape (``!cmd``) or a cell containing ``# ironcage-test: escalate`` is escalated (rule
  ``test.escalate``), as the default policy's ``shell-escapes`` rule does;
* every decision is kept in an in-memory audit list that the audit panel queries.

The real kernel reports cells to the lab extension itself (``report_cell``); this stage records its
verdicts the way the policy stage does (``cell.decision``, ``cell.notes["escalation"]``). The browser
tests use the plain ``ironcage`` kernelspec once the policy stage is wired into the kernel
(see tests/test_ui_browser.py, ``_kernel_mode``); this file is only their fallback until then.
"""

from __future__ import annotations

import datetime as dt
from types import SimpleNamespace
from typing import Any

from ironcage_jupyter.kernel import ExecuteStage, IronCageKernel
from ironcage_jupyter.pipeline import Block, CellRequest, Stage
from ironcage_jupyter.ui import Approver, AuditQuery, EscalationRequest, IsolationStatus

ESCALATE_MARK = "# ironcage-test: escalate"


class ScriptedDecideStage:
    name = "decide"
    always = False

    def __init__(self, kernel: UiTestKernel) -> None:
        self.kernel = kernel

    async def run(self, cell: CellRequest) -> None:
        kernel = self.kernel
        if ".ssh" in cell.code:
            cell.decision = SimpleNamespace(effect="deny", rules=["fs.protected.ssh"], findings=[],
                                            reason="reads a protected path under ~/.ssh")
            cell.block = Block("PolicyDenied", "reading ~/.ssh is not allowed", rule="fs.protected.ssh",
                               reason="reads a protected path under ~/.ssh")
            kernel.audit("cell", "deny", "fs.protected.ssh", "reads a protected path under ~/.ssh", cell)
            return
        if ESCALATE_MARK in cell.code or cell.code.lstrip().startswith("!"):
            request = EscalationRequest(
                kind="cell",
                summary="run a cell that posts data to collector.example.net",
                canonical="network.connect host=collector.example.net port=443 method=POST",
                rules=["test.escalate"],
                reason="the destination is not in the egress allowlist",
                cell_id=cell.cell_id,
                msg_id=kernel.get_parent("shell").get("header", {}).get("msg_id"),
            )
            result = await kernel.approver.approve(
                request, allow_stdin=cell.allow_stdin, timeout_s=120, allow_session=True,
                parent=kernel.get_parent("shell"),
            )
            cell.notes["escalation"] = {"outcome": {"approved_once": "allow-once", "approved_session": "allow-session",
                                                    "timeout": "deny-timeout"}.get(result.outcome, "deny")}
            cell.decision = SimpleNamespace(effect="allow" if result.approved else "deny", rules=["test.escalate"],
                                            reason=request.reason, findings=[])
            kernel.audit("escalation", "allow" if result.approved else "deny", "test.escalate",
                         f"{request.reason}; answer {result.answer} by {result.by}", cell)
            if not result.approved:
                cell.block = Block("EscalationDenied", f"not approved ({result.by})", rule="test.escalate",
                                   reason=request.reason)
            return
        cell.decision = SimpleNamespace(effect="allow", rules=[], reason="", findings=[])
        kernel.audit("cell", "allow", None, None, cell)


class UiTestKernel(IronCageKernel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session_uid = self.ui.session_id
        self.events: list[dict[str, Any]] = []
        self.ui.policy = "ui-test"
        self.ui.isolation = IsolationStatus(layers={"process": ("active", "child kernel"),
                                                    "network": ("degraded", "test fixture: not sandboxed")})
        self.ui.audit_query = self.query_audit
        self.approver = Approver(self.ui, self.ask_frontend)

    def _build_stages(self) -> list[Stage]:
        return [ScriptedDecideStage(self), ExecuteStage(self)]

    def audit(self, event_type: str, decision: str | None, rule: str | None, reason: str | None,
              cell: CellRequest) -> None:
        self.events.append({
            "seq": len(self.events) + 1,
            "ts": dt.datetime.now(dt.UTC).isoformat(),
            "session_id": self.session_uid,
            "event_type": event_type,
            "decision": decision,
            "rule": rule,
            "reason": reason,
            "cell_id": cell.cell_id,
            "summary": cell.code.strip().splitlines()[0][:200] if cell.code.strip() else "",
        })

    def query_audit(self, query: AuditQuery) -> tuple[list[dict[str, Any]], int]:
        rows = [e for e in reversed(self.events)
                if (query.event_type is None or e["event_type"] == query.event_type)
                and (query.decision is None or e["decision"] == query.decision)]
        return rows[: query.limit], len(rows)


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=UiTestKernel)
