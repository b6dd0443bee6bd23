"""The firewall and policy stages inside a real wrapper kernel, driven through jupyter_client.

The lead wires the stages into IronCageKernel._build_stages; until then this test uses a kernelspec whose
launcher subclasses the wrapper with exactly the wiring documented in ironcage_jupyter/policy/session.py.
"""

import json
import os
import sys

import pytest
from jupyter_client.manager import KernelManager

from kernel_helpers import execute, stop_kernel

LAUNCHER = """
from ironcage_jupyter import kernel as k
from ironcage_jupyter.policy import PolicyContext
from ironcage_jupyter.policy.session import FirewallStage, PolicySession, PolicyStage


class PolicyKernel(k.IronCageKernel):
    def _build_stages(self):
        session = PolicySession.open(self.policy, PolicyContext.create(self.workspace))
        return [FirewallStage(session), PolicyStage(session, ask=self.ask_frontend), k.ExecuteStage(self)]


app = k.make_app_class()
app.outstream_class = None
app.launch_instance(kernel_class=PolicyKernel)
"""


@pytest.fixture(scope="module")
def kernel(ironcage_jupyter_path, tmp_path_factory):
    spec_dir = ironcage_jupyter_path / "kernels" / "ironcage-policy-e2e"
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", LAUNCHER, "-f", "{connection_file}"],
        "display_name": "Iron Cage policy e2e", "language": "python", "interrupt_mode": "message",
        "env": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")},
    }))
    workspace = tmp_path_factory.mktemp("ws")
    km = KernelManager(kernel_name="ironcage-policy-e2e")
    env = dict(os.environ, IRONCAGE_WORKSPACE=str(workspace), IRONCAGE_POLICY="default")
    km.start_kernel(cwd=str(workspace), env=env)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=60)
    yield kc, workspace
    stop_kernel(km, kc)


def test_allowed_cell_runs(kernel):
    kc, _ = kernel
    ex = execute(kc, "%matplotlib inline\nx = 6 * 7\nx")
    assert ex.status == "ok" and ex.result == "42"


def test_denied_cell_never_reaches_the_child(kernel):
    kc, workspace = kernel
    ex = execute(kc, "open('ran.txt', 'w').write('1')\nimport ctypes\nctypes.CDLL(None)")
    assert ex.status == "error"
    assert ex.error["ename"] == "PolicyDenied"
    assert "deny-dangerous" in ex.text and "IC-MOD-001" in ex.text
    assert not (workspace / "ran.txt").exists()


def test_escalation_asks_and_defaults_to_no(kernel):
    kc, workspace = kernel
    no_stdin = execute(kc, "!touch shell_ran")
    assert no_stdin.status == "error" and "allow_stdin is false" in no_stdin.text
    refused = execute(kc, "!touch shell_ran", stdin_answers=[""])
    assert refused.status == "error" and "answered no" in refused.text
    assert not (workspace / "shell_ran").exists()
    approved = execute(kc, "!touch shell_ran", stdin_answers=["y"])
    assert approved.status == "ok" and (workspace / "shell_ran").exists()
