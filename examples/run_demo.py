"""Run examples/agent_session.ipynb headless on the Iron Cage kernel and summarise what happened.

    python examples/run_demo.py [--output executed.ipynb] [--keep]

The demo runs in a throw-away directory: a workspace holding the notebook, a HOME with a fake
``~/.ssh/id_rsa`` (so a failed block would show), a secrets file with a random ``DEMO_API_KEY``, and an
audit directory. It prints, per cell, whether it was allowed, blocked (denied, or escalated and then
denied because nobody can answer headless), or had output redacted, then the audit counts from
``ironcage-jupyter audit query --json``. Exit status 1 if a secret or the fake SSH key reached the
notebook's outputs; 2 if the notebook could not be run at all (e.g. the kernel refused to start).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
NOTEBOOK = REPO / "examples" / "agent_session.ipynb"
POLICY = REPO / "examples" / "demo_policy.yaml"
FAKE_KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nironcage-demo-not-a-real-key-{marker}\n-----END OPENSSH PRIVATE KEY-----\n"

#: Error names the wrapper uses when it refuses a request (policy, escalation, tools, credentials).
REFUSAL_HINTS = ("Denied", "Refused", "Escalation", "Policy", "NotAllowed", "Blocked")


@dataclass
class CellOutcome:
    index: int
    first_line: str
    verdict: str = "allowed"  # allowed | blocked | escalated->denied | escalated->approved | redacted | error
    detail: str = ""
    rules: list[str] = field(default_factory=list)
    escalations: list[str] = field(default_factory=list)


def _output_text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return str(output.get("text", ""))
    if output.get("output_type") == "error":
        return "\n".join([str(output.get("ename", "")), str(output.get("evalue", "")), *output.get("traceback", [])])
    data = output.get("data", {})
    return "\n".join(str(data[k]) for k in ("text/plain", "text/html", "text/markdown") if k in data)


def classify(index: int, cell: dict) -> CellOutcome:
    source = cell.get("source", "")
    first = next((line for line in source.splitlines() if line.strip()), "")
    outcome = CellOutcome(index=index, first_line=first[:70])
    texts = [_output_text(o) for o in cell.get("outputs", [])]
    errors = [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]
    for text in texts:
        for line in text.splitlines():
            stripped = line.strip()
            if stripped.startswith("rule:"):
                outcome.rules.append(stripped.split(":", 1)[1].strip())
    if errors:
        error = errors[0]
        ename, evalue = str(error.get("ename", "")), str(error.get("evalue", ""))
        outcome.detail = f"{ename}: {evalue}".splitlines()[0][:160]
        text = "\n".join(texts).lower()
        if any(hint in text for hint in ("escalat", "approv", "human answered", "no frontend", "no answer within")):
            outcome.verdict = "escalated->denied"
        elif outcome.rules or any(hint.lower() in ename.lower() for hint in REFUSAL_HINTS):
            outcome.verdict = "blocked"
        else:
            outcome.verdict = "error"
    elif any("[REDACTED" in text for text in texts):
        outcome.verdict = "redacted"
        outcome.detail = next(line for text in texts for line in text.splitlines() if "[REDACTED" in line)[:160]
    return outcome


def make_client(nb: Any, approve: Callable[[dict], bool], **kwargs: Any) -> Any:
    """An nbclient that also acts as the human at the JupyterLab approval dialog: it opens the
    ``ironcage.ui`` comm like the lab extension does and answers each escalation with ``approve``."""
    import nbclient

    class ApprovingClient(nbclient.NotebookClient):  # type: ignore[misc]
        def __init__(self, *args: Any, **kw: Any) -> None:
            super().__init__(*args, **kw)
            self.ui_comm_id = uuid.uuid4().hex
            self.answers: dict[int, list[tuple[str, str]]] = {}

        async def async_start_new_kernel_client(self) -> Any:
            kc = await super().async_start_new_kernel_client()
            kc.shell_channel.send(kc.session.msg("comm_open", {
                "comm_id": self.ui_comm_id, "target_name": "ironcage.ui",
                "data": {"type": "hello", "protocol": 1, "client": "examples/run_demo.py"}}))
            return kc

        def process_message(self, msg: dict, cell: Any, cell_index: int) -> Any:
            content = msg.get("content") or {}
            if msg.get("msg_type") == "comm_msg" and content.get("comm_id") == self.ui_comm_id:
                data = content.get("data") or {}
                if data.get("type") == "escalation":
                    answer = "once" if approve(data) else "deny"
                    self.answers.setdefault(cell_index, []).append((data.get("summary", ""), answer))
                    self.kc.shell_channel.send(self.kc.session.msg("comm_msg", {
                        "comm_id": self.ui_comm_id,
                        "data": {"type": "escalation_answer", "id": data["id"], "answer": answer}}))
                return None
            return super().process_message(msg, cell, cell_index)

    return ApprovingClient(nb, **kwargs)


def demo_approver(escalation: dict) -> bool:
    """The demo's human: approves handing DEMO_API_KEY to the cell that asked for it (to show that the
    output firewall still catches the leak), refuses everything else."""
    text = " ".join(str(escalation.get(k, "")) for k in ("summary", "canonical", "reason"))
    return "DEMO_API_KEY" in text and "curl" not in text


def ensure_kernelspec(tmp: Path, env: dict[str, str]) -> None:
    """Use the installed ``ironcage`` kernelspec, or write one for this source tree."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("ironcage")
        return
    except NoSuchKernel:
        pass
    sys.path.insert(0, str(REPO))
    from ironcage_jupyter.kernelspec import write_kernel_spec

    jupyter_path = tmp / "jupyter"
    write_kernel_spec(jupyter_path / "kernels" / "ironcage", python=sys.executable,
                      env={"PYTHONPATH": str(REPO)})
    env["JUPYTER_PATH"] = os.pathsep.join(p for p in (str(jupyter_path), env.get("JUPYTER_PATH", "")) if p)


def audit_counts(audit_dir: Path, env: dict[str, str]) -> list[dict] | str:
    sql = ("SELECT event_type, coalesce(decision, '-') AS decision, count(*) AS n "
           "FROM events GROUP BY ALL ORDER BY n DESC, event_type")
    # The `ironcage-jupyter` console script, run from this source tree.
    command = [sys.executable, "-m", "ironcage_jupyter.cli", "audit", "--audit-dir", str(audit_dir),
               "query", "--json", sql]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    if result.returncode != 0:
        return f"audit query failed (exit {result.returncode}): {(result.stderr or result.stdout).strip()[-400:]}"
    try:
        rows = json.loads(result.stdout)
    except json.JSONDecodeError:
        return f"audit query printed no JSON: {result.stdout[-400:]}"
    return rows if isinstance(rows, list) else f"unexpected audit output: {result.stdout[-400:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", type=Path, default=NOTEBOOK)
    parser.add_argument("--policy", default=str(POLICY), help="policy name or file (default: examples/demo_policy.yaml)")
    parser.add_argument("--output", type=Path, default=None, help="write the executed notebook here")
    parser.add_argument("--keep", action="store_true", help="keep the demo directory (printed at the end)")
    parser.add_argument("--timeout", type=int, default=180, help="seconds per cell")
    parser.add_argument("--no-approve", dest="approve", action="store_false",
                        help="answer every escalation 'deny' (default: approve only the DEMO_API_KEY request)")
    args = parser.parse_args(argv)

    import nbformat

    tmp = Path(tempfile.mkdtemp(prefix="ironcage-demo-"))
    try:
        workspace, home, audit_dir = tmp / "workspace", tmp / "home", tmp / "audit"
        for path in (workspace, home / ".ssh", audit_dir):
            path.mkdir(parents=True)
        marker = secrets.token_hex(8)
        key_path = home / ".ssh" / "id_rsa"
        key_path.write_text(FAKE_KEY.format(marker=marker))
        key_path.chmod(0o600)
        api_key = "sk-demo-" + secrets.token_urlsafe(24)
        secrets_file = tmp / "secrets.toml"
        secrets_file.write_text(f'[demo]\napi_key = "{api_key}"\n')
        secrets_file.chmod(0o600)
        notebook_path = workspace / args.notebook.name
        shutil.copy(args.notebook, notebook_path)

        env = dict(os.environ)
        env.update({
            "HOME": str(home),
            "IRONCAGE_POLICY": args.policy,
            "IRONCAGE_AUDIT_DIR": str(audit_dir),
            "IRONCAGE_SECRETS_FILE": str(secrets_file),
            "IRONCAGE_WORKSPACE": str(workspace),
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p),
            # A credential sitting in the server's environment, as on many laptops.
            "DEMO_CLOUD_TOKEN": "demo-cloud-" + secrets.token_hex(12),
        })
        ensure_kernelspec(tmp, env)
        saved_env = dict(os.environ)
        os.environ.clear()
        os.environ.update(env)
        try:
            nb = nbformat.read(notebook_path, as_version=4)
            client = make_client(
                nb, demo_approver if args.approve else (lambda escalation: False),
                kernel_name="ironcage", allow_errors=True, timeout=args.timeout,
                resources={"metadata": {"path": str(workspace)}},
            )
            try:
                with (tmp / "kernel.log").open("w") as kernel_log:
                    client.execute(stdout=kernel_log, stderr=kernel_log)
            except Exception as exc:  # the kernel refused to start (bad policy, no sandbox, ...)
                print(f"The ironcage kernel could not run the notebook: {exc}", file=sys.stderr)
                return 2
        finally:
            os.environ.clear()
            os.environ.update(saved_env)
        if args.output:
            nbformat.write(nb, args.output)

        outcomes = [classify(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]
        for outcome in outcomes:
            for summary, answer in client.answers.get(outcome.index, []):
                approved = answer != "deny"
                outcome.escalations.append(f"escalated: {summary} -> {'approved' if approved else 'denied'}")
                if outcome.verdict in ("blocked", "error") and not approved:
                    outcome.verdict = "escalated->denied"
                elif approved and outcome.verdict == "allowed":
                    outcome.verdict = "escalated->approved"
        executed = json.dumps(nbformat.from_dict(nb), default=str)
        leaks = []
        for label, value in (("DEMO_API_KEY", api_key), ("fake SSH key", f"ironcage-demo-not-a-real-key-{marker}"),
                             ("DEMO_CLOUD_TOKEN", env["DEMO_CLOUD_TOKEN"])):
            for form in (value, base64.b64encode(value.encode()).decode()):
                if form in executed:
                    leaks.append(label)
                    break

        print("Iron Cage demo: examples/agent_session.ipynb on the ironcage kernel\n")
        width = max(len(o.first_line) for o in outcomes)
        for outcome in outcomes:
            rules = f"  [{', '.join(outcome.rules)}]" if outcome.rules else ""
            print(f"  cell {outcome.index:>2}  {outcome.verdict:<18} {outcome.first_line:<{width}}{rules}")
            for note in outcome.escalations:
                print(f"           {'':<18} {note[:150]}")
            if outcome.detail and outcome.verdict != "allowed":
                print(f"           {'':<18} {outcome.detail}")
        totals: dict[str, int] = {}
        for outcome in outcomes:
            totals[outcome.verdict] = totals.get(outcome.verdict, 0) + 1
        print("\nSummary: " + ", ".join(f"{n} {verdict}" for verdict, n in sorted(totals.items())))
        print("Secrets or SSH key in the outputs: " + (", ".join(leaks) if leaks else "none"))

        counts = audit_counts(audit_dir, env)
        print("\nAudit log (ironcage-jupyter audit query --json):")
        if isinstance(counts, str):
            print("  " + counts)
        elif not counts:
            print("  (no events: is the audit store wired into the kernel?)")
        else:
            for row in counts:
                print(f"  {row.get('event_type', '?'):<28} {row.get('decision', '-'):<10} {row.get('n', 0):>5}")
        if args.keep:
            print(f"\nDemo directory kept: {tmp} (kernel log: {tmp / 'kernel.log'})")
        return 1 if leaks else 0
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
