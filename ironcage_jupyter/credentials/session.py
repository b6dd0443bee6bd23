"""One session's credentials and output firewall together: what the wrapper kernel holds.

The kernel creates one ``CredentialSession`` per session and calls:

- at start: ``child_env_overrides()`` -> merged into the child's environment (sentinels);
- per cell: ``start_cell(cell_id)``, then ``screen(...)`` for every child message, then
  ``end_cell()`` (held stream tails to publish before the execute_reply);
- for ``%%ironcage with-secret NAME[,NAME]``: ``begin_injection(names, cell_id)`` ->
  ``injection_code(env)`` run silently in the child before the cell, ``cleanup_code(names)`` after it,
  then ``end_injection(cell_id)``;
- for ``%ironcage status``: ``status()``;
- after restarting the child: ``child_restarted()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..outputs import OutputFirewall, OutputSettings, ScreenedOutput
from ..sandbox.settings import ResourceLimits
from .broker import AuditCallback, CredentialBroker
from .settings import CredentialSettings
from .sources import SecretSource, default_sources


class CredentialSession:
    def __init__(
        self,
        credentials: CredentialSettings | None = None,
        outputs: OutputSettings | None = None,
        limits: ResourceLimits | None = None,
        audit_callback: AuditCallback | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        sources: Mapping[str, SecretSource] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        credentials = credentials or CredentialSettings()
        self._audit = audit_callback
        self.firewall = OutputFirewall(outputs, limits)
        broker_kwargs: dict[str, Any] = {}
        if clock is not None:
            broker_kwargs["clock"] = clock
        self.broker = CredentialBroker(
            credentials,
            sources=sources if sources is not None else default_sources(environ, credentials.vault_mount),
            audit_callback=audit_callback,
            output_firewall=self.firewall,
            **broker_kwargs,
        )

    def apply_policy(
        self, credentials: CredentialSettings, outputs: OutputSettings, limits: ResourceLimits
    ) -> None:
        """After ``%ironcage policy load`` / a policy change: the new grants, detectors and output
        limits apply from the next cell; secrets already handed out stay redacted. New brokered
        sentinels reach the child's environment at its next start."""
        self.firewall.apply_settings(outputs, limits)
        self.broker.apply_settings(credentials)

    # -- session start -------------------------------------------------------------------------
    def child_env_overrides(self) -> dict[str, str]:
        """Sentinels for the brokered secrets, by env var: add to the child's environment at start
        (and at every restart)."""
        return self.broker.sentinel_environment()

    # -- per cell --------------------------------------------------------------------------------
    def start_cell(self, cell_id: str | None) -> None:
        self.firewall.start_cell(cell_id)

    def screen(self, msg_type: str, content: dict[str, Any]) -> ScreenedOutput:
        """Screen one child message; redactions and withholdings are audited (names and counts)."""
        result = self.firewall.screen(msg_type, content)
        self._record(msg_type, result)
        return result

    def screen_buffers(self, msg_type: str, buffers: list[Any]) -> ScreenedOutput:
        """Binary buffers of a child message: ``withheld`` means drop the whole message."""
        result = self.firewall.screen_buffers(msg_type, buffers)
        self._record(msg_type, result)
        return result

    def screen_reply(self, msg_type: str, content: dict[str, Any]) -> dict[str, Any]:
        """Screen a shell reply from the child before it is sent to the client (execute_reply,
        inspect_reply, complete_reply, history_reply, ...)."""
        screened = self.firewall.screen_reply(msg_type, content)
        self._record(
            msg_type, ScreenedOutput(content=screened, redactions=self.firewall.last_reply_redactions)
        )
        return screened

    def end_cell(self) -> list[ScreenedOutput]:
        """Held stream tails, screened: publish them (as ``stream`` messages) before the reply."""
        results = self.firewall.flush_all()
        for result in results:
            self._record("stream", result)
        return results

    def _record(self, msg_type: str, result: ScreenedOutput) -> None:
        if self._audit is None:
            return
        if result.redactions:
            self._audit(
                "output.redacted",
                {
                    "msg_type": msg_type,
                    "cell_id": self.firewall.cell_id,
                    "redactions": [r.model_dump() for r in result.redactions],
                },
            )
        if result.withheld or result.flagged:
            self._audit(
                "output.withheld" if result.withheld else "output.flagged",
                {"msg_type": msg_type, "cell_id": self.firewall.cell_id, "notice": result.notice},
            )

    # -- %%ironcage with-secret -------------------------------------------------------------------
    def begin_injection(self, names: Iterable[str], cell_id: str | None) -> dict[str, str]:
        """``{ENV_VAR: value}`` for the cell (raises ``CredentialRefused``)."""
        return self.broker.begin_injection(names, cell_id)

    def end_injection(self, cell_id: str | None) -> list[str]:
        return self.broker.end_injection(cell_id)

    @staticmethod
    def injection_code(env: Mapping[str, str]) -> str:
        """Silent code (silent=True, store_history=False) that sets the variables in the child."""
        return f"import os as _ironcage_os\n_ironcage_os.environ.update({dict(env)!r})\ndel _ironcage_os\n"

    @staticmethod
    def cleanup_code(env_vars: Iterable[str]) -> str:
        """Silent code that removes the variables again (the process stays tainted)."""
        return (
            "import os as _ironcage_os\n"
            f"for _ironcage_k in {sorted(env_vars)!r}:\n"
            "    _ironcage_os.environ.pop(_ironcage_k, None)\n"
            "del _ironcage_os, _ironcage_k\n"
        )

    @property
    def restart_required(self) -> bool:
        return self.broker.taint.restart_required

    def child_restarted(self) -> None:
        self.broker.child_restarted()

    # -- the broker's trusted-side API (tools, egress proxy), reachable as kernel.credentials.* ------
    @property
    def settings(self) -> CredentialSettings:
        return self.broker.settings

    def swap_sentinels(self, data: Any, host: str | None, tool: str | None = None) -> tuple[Any, list[str]]:
        return self.broker.swap_sentinels(data, host, tool)

    def restore_sentinels(self, data: Any) -> tuple[Any, list[str]]:
        return self.broker.restore_sentinels(data)

    def restore_hold_length(self, data: str | bytes) -> int:
        return self.broker.restore_hold_length(data)

    def value_for_tool(self, name: str, tool: str, host: str | None = None) -> str:
        return self.broker.value_for_tool(name, tool, host)

    def sentinel_for(self, name: str) -> str:
        return self.broker.sentinel_for(name)

    # -- status ----------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        info = self.broker.status()
        info["output_detectors"] = [
            name for name, on in self.firewall.settings.detectors.model_dump().items() if on
        ]
        info["secrets_watched"] = self.firewall.secret_names
        return info
