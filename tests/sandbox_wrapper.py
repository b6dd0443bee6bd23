"""Drive the real ironcage wrapper kernel with the sandbox wired in (see sandbox_ironcage_kernel.py)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.manager import KernelManager
from sandbox_support import Bait

from kernel_helpers import Execution, execute, process_alive

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
KERNEL_NAME = "ironcage-sandboxed"


def write_kernelspec(jupyter_path: Path) -> None:
    spec_dir = jupyter_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = {
        "argv": [sys.executable, str(TESTS / "sandbox_ironcage_kernel.py"), "-f", "{connection_file}"],
        "display_name": "Iron Cage (sandbox tests)",
        "language": "python",
        "interrupt_mode": "message",
        "env": {"PYTHONPATH": str(REPO)},
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))


class Wrapper:
    """One ironcage wrapper kernel over a Bait; the firewall/policy are not wired (observe-like), so
    the sandbox is what must stop every attack."""

    def __init__(
        self, bait: Bait, *, sandbox: dict[str, Any] | None = None, cell_timeout: float = 0, ready: bool = True
    ) -> None:
        self.bait = bait
        self._attacks = 0
        cfg = dict(sandbox or {})
        cfg.setdefault("hidden_paths", [str(p) for p in bait.hidden_paths])
        cfg.setdefault("limits", {"memory_mb": 2048})
        env = dict(os.environ)
        env.update(
            {
                "HOME": str(bait.home),
                "IRONCAGE_WORKSPACE": str(bait.workspace),
                # observe: the firewall and policy only record, so the sandbox is what must stop attacks.
                "IRONCAGE_POLICY": "observe",
                "IRONCAGE_AUDIT_DIR": str(bait.root / "ironcage-audit"),
                "IRONCAGE_TEST_SANDBOX": json.dumps(cfg),
                "WRAPPER_SECRET": bait.secret,  # must never be readable from a cell
            }
        )
        extra = (
            [f"--IronCageKernel.cell_timeout={cell_timeout}", "--IronCageKernel.interrupt_grace=2"]
            if cell_timeout
            else []
        )
        self.km = KernelManager(kernel_name=KERNEL_NAME)
        self.km.start_kernel(cwd=str(bait.workspace), env=env, extra_arguments=extra)
        self.kc = self.km.client()
        self.kc.start_channels()
        if ready:  # the wrapper starts its child after the first kernel_info (ready=False: not yet)
            self.kc.wait_for_ready(timeout=60)

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid  # type: ignore[union-attr]

    def run(self, code: str, timeout: float = 60) -> Execution:
        return execute(self.kc, code, timeout=timeout)

    def attack(self, code: str, timeout: float = 60) -> Execution:
        """Run an attack cell the way an evasive attacker would: the payload sits in a workspace file
        the cell exec's, so static screening (whose protected-path invariant refuses literal paths)
        never sees the target and the sandbox alone has to stop it. Shell/magic cells run as written."""
        if code.lstrip().startswith(("!", "%")) or "await " in code:
            return self.run(code, timeout=timeout)
        self._attacks += 1
        payload = self.bait.workspace / f"payload_{self._attacks}.py"
        payload.write_text(code)
        try:
            return self.run(f"exec(open({payload.name!r}).read())", timeout=timeout)
        finally:
            payload.unlink(missing_ok=True)

    def status(self) -> dict[str, Any]:
        ex = self.run("%ironcage status --json")
        return ex.of_type("display_data")[0]["content"]["data"]["application/json"]

    def responsive(self) -> bool:
        ex = self.run("print('still', 'here')", timeout=60)
        return ex.status == "ok" and "still here" in ex.stdout

    def alive(self) -> bool:
        return process_alive(self.pid)

    def close(self) -> None:
        self.kc.stop_channels()
        self.km.shutdown_kernel(now=False)


def visible_text(ex: Execution) -> str:
    """Everything the user sees, joined without separators (a stream may arrive in several pieces)."""
    return ex.stdout + ex.stderr + ex.text.replace("\n", "")


def assert_nothing_got_out(bait: Bait, ex: Execution, *, context: str = "") -> None:
    # The attack must have reached the child: the sandbox, not the policy, is under test here.
    assert ex.error is None or not ex.error["ename"].startswith("Policy"), (
        f"{context}: {ex.error['evalue'][:200]}"
    )
    text = visible_text(ex)
    assert bait.secret not in text, f"secret leaked {context}: {text[:500]}"
    assert "reached the host" not in text, f"host server reached {context}"
    assert bait.hits == [], f"host server saw {bait.hits} {context}"
    assert not bait.udp_received(), f"UDP datagram reached the host {context}"


def module_bait(prefix: str) -> Any:
    """A module-scoped ``bait`` fixture: the ironcage kernelspec written and a fresh Bait."""

    @pytest.fixture(scope="module")
    def bait(tmp_path_factory: pytest.TempPathFactory, ironcage_jupyter_path: Path) -> Any:
        write_kernelspec(ironcage_jupyter_path)
        created = Bait.create(tmp_path_factory.mktemp(prefix))
        yield created
        created.close()

    return bait


def module_wrapper(**kwargs: Any) -> Any:
    """A module-scoped ``wrapper`` fixture over the module's ``bait``."""

    @pytest.fixture(scope="module")
    def wrapper(bait: Bait) -> Any:
        w = Wrapper(bait, **kwargs)
        yield w
        w.close()

    return wrapper
