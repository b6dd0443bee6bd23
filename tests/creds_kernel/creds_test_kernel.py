"""The ironcage wrapper kernel with its credential session built from a JSON file named by
IRONCAGE_TEST_CREDENTIALS (grants, output settings, limits) instead of the policy, and audit events
appended to a JSONL file, so leak tests can check both the client's view and the audit trail."""

from __future__ import annotations

import json
import os
from typing import Any

from ironcage_jupyter.credentials.session import CredentialSession
from ironcage_jupyter.credentials.settings import CredentialSettings
from ironcage_jupyter.credentials.sources import default_sources
from ironcage_jupyter.kernel import IronCageKernel
from ironcage_jupyter.outputs.settings import OutputSettings
from ironcage_jupyter.sandbox.settings import ResourceLimits


class CredentialsTestKernel(IronCageKernel):
    def _make_credential_session(self) -> CredentialSession:
        with open(os.environ["IRONCAGE_TEST_CREDENTIALS"]) as fh:
            config = json.load(fh)
        audit_path = config["audit_log"]

        def audit(event_type: str, detail: dict[str, Any]) -> None:
            with open(audit_path, "a") as out:
                out.write(json.dumps({"event": event_type, "detail": detail}) + "\n")

        credentials = CredentialSettings.model_validate(config.get("credentials", {}))
        return CredentialSession(
            credentials,
            OutputSettings.model_validate(config.get("outputs", {})),
            ResourceLimits.model_validate(config.get("limits", {})),
            audit,
            sources=default_sources(os.environ, credentials.vault_mount),
        )
