"""Test stand-in for the lead's wiring: the real IronCageKernel with a SandboxController on its child.

Started by the ``ironcage-sandboxed`` kernelspec that ``ironcage_sandboxed`` (sandbox_wrapper.py)
writes. Configured through IRONCAGE_TEST_SANDBOX (JSON: isolation, limits, hidden_paths, disabled,
refuse_namespaces). The wiring is exactly what integration.py's docstring asks of kernel.py.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

from ironcage_jupyter.kernel import IronCageKernel
from ironcage_jupyter.sandbox.integration import SandboxController
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits


class SandboxedIronCageKernel(IronCageKernel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        cfg = json.loads(os.environ.get("IRONCAGE_TEST_SANDBOX", "{}"))
        self.sandbox = SandboxController(
            workspace=Path(self.workspace),
            isolation=IsolationSettings(**cfg.get("isolation", {})),
            limits=ResourceLimits(**cfg.get("limits", {})),
            hidden_paths=[Path(p) for p in cfg.get("hidden_paths", [])] + [Path(self.audit_dir)],
            disabled_layers=frozenset(cfg.get("disabled", [])),
            refuse_namespaces=bool(cfg.get("refuse_namespaces", False)),
        )
        self.child.command_wrapper = self.sandbox.command_wrapper
        self._isolation_checked: tuple[bool, list[str]] | None = None

    async def ensure_child(self) -> None:
        if self._isolation_checked is None:
            self._isolation_checked = await asyncio.to_thread(self.sandbox.check)
        ok, reasons = self._isolation_checked
        if not ok:
            raise RuntimeError("isolation unavailable: " + "; ".join(reasons))
        await super().ensure_child()

    async def do_shutdown(self, restart: bool) -> dict[str, Any]:
        result = await super().do_shutdown(restart)
        self.sandbox.release_all()
        return result


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=SandboxedIronCageKernel)
