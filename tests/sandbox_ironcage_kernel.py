"""Test stand-in for the lead's wiring: the real IronCageKernel with a SandboxController on its child.

Started by the ``ironcage-sandboxed`` kernelspec that ``ironcage_sandboxed`` (sandbox_wrapper.py)
writes. Configured through IRONCAGE_TEST_SANDBOX (JSON: isolation, limits, hidden_paths, disabled,
refuse_namespaces). The wiring is exactly what integration.py's docstring asks of kernel.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ironcage_jupyter.kernel import IronCageKernel
from ironcage_jupyter.sandbox.integration import SandboxController
from ironcage_jupyter.sandbox.settings import IsolationSettings, ResourceLimits


class SandboxedIronCageKernel(IronCageKernel):
    """The production wiring, with the test-only knobs of the sandbox (disabled layers, refused
    namespaces, isolation/limits without a policy file)."""

    def _build_components(self) -> None:
        super()._build_components()
        # The test's isolation/limits win over the policy's (applied while the components load),
        # for the output firewall's size limit too.
        self._apply_test_config()
        self.credentials.firewall.limits = self.sandbox.limits

    def _apply_test_config(self) -> None:
        cfg = json.loads(os.environ.get("IRONCAGE_TEST_SANDBOX", "{}"))
        self.sandbox.configure(
            IsolationSettings(**cfg.get("isolation", {})), ResourceLimits(**cfg.get("limits", {}))
        )

    def cell_timeout_seconds(self) -> float | None:
        return self.cell_timeout or self.sandbox.limits.cell_timeout_s

    def _make_sandbox(self) -> SandboxController:
        cfg = json.loads(os.environ.get("IRONCAGE_TEST_SANDBOX", "{}"))
        return SandboxController(
            workspace=Path(self.workspace),
            isolation=IsolationSettings(**cfg.get("isolation", {})),
            limits=ResourceLimits(**cfg.get("limits", {})),
            hidden_paths=[Path(p) for p in cfg.get("hidden_paths", [])] + self._protected_paths(),
            disabled_layers=frozenset(cfg.get("disabled", [])),
            refuse_namespaces=bool(cfg.get("refuse_namespaces", False)),
        )


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=SandboxedIronCageKernel)
