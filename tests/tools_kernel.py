"""A test-only wrapper kernel with the tools subsystem wired exactly as kernel_glue documents it.

Configuration comes from $IRONCAGE_TOOLS_TEST_CONFIG (JSON: tools, budgets, egress_allowlist,
upstream_ca_file, bridge_port). Once the lead wires kernel_glue into IronCageKernel, this subclass
reduces to the real kernel.
"""

from __future__ import annotations

import json
import os

from ironcage_jupyter.kernel import IronCageKernel
from ironcage_jupyter.tools import kernel_glue
from ironcage_jupyter.tools.hooks import MemoryAudit
from ironcage_jupyter.tools.session import ToolSession
from ironcage_jupyter.tools.settings import BudgetSettings, ToolSettings


class ToolsTestKernel(IronCageKernel):
    """The real kernel (tools wired by kernel_glue) with the tools section given by the test and egress
    forced on although the child is not sandboxed yet (a free loopback port for the bridge)."""

    def _build_stages(self):  # type: ignore[override]
        stages = super()._build_stages()  # builds the default self.tools; replaced by the test's
        config = json.loads(os.environ.get("IRONCAGE_TOOLS_TEST_CONFIG", "{}"))
        self._tools_config = config
        self.tools = ToolSession(
            ToolSettings.model_validate(config.get("tools", {})),
            BudgetSettings.model_validate(config.get("budgets", {})),
            audit=MemoryAudit(), workspace=self.workspace,
            egress_allowlist=config.get("egress_allowlist", []),
            upstream_ca_file=config.get("upstream_ca_file"),
            escalate=kernel_glue.make_escalator(self), escalation_timeout_s=30,
        )
        return [kernel_glue.CellBudgetStage(self.tools), *stages[1:]]

    async def _launch_child(self, ready, *, kill_first=False):  # type: ignore[override]
        if self.tools.socket_dir is None:
            try:
                await kernel_glue.start_tools(self, self.tools, bridge_port=self._tools_config.get("bridge_port", 3128),
                                              egress=True)
            except Exception as exc:
                ready.set_exception(RuntimeError(f"tools could not start: {exc}"))
                ready.exception()
                return
        await super()._launch_child(ready, kill_first=kill_first)


if __name__ == "__main__":
    from ipykernel.kernelapp import IPKernelApp

    IPKernelApp.launch_instance(kernel_class=ToolsTestKernel)
