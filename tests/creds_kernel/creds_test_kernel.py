"""The ironcage wrapper kernel with the credential session installed exactly as
``ironcage_jupyter.credentials.wiring.install`` does it; settings come from a JSON file named by
IRONCAGE_TEST_CREDENTIALS (until the policy loader feeds them). Audit events go to a JSONL file."""

from __future__ import annotations

import json
import os
from typing import Any

from ironcage_jupyter.credentials.session import CredentialSession
from ironcage_jupyter.credentials.settings import CredentialSettings
from ironcage_jupyter.credentials.wiring import install
from ironcage_jupyter.kernel import IronCageKernel
from ironcage_jupyter.outputs.settings import OutputSettings
from ironcage_jupyter.sandbox.settings import ResourceLimits


class CredentialsTestKernel(IronCageKernel):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        with open(os.environ["IRONCAGE_TEST_CREDENTIALS"]) as fh:
            config = json.load(fh)
        audit_path = config["audit_log"]

        def audit(event_type: str, detail: dict[str, Any]) -> None:
            with open(audit_path, "a") as out:
                out.write(json.dumps({"event": event_type, "detail": detail}) + "\n")

        session = CredentialSession(
            CredentialSettings.model_validate(config.get("credentials", {})),
            OutputSettings.model_validate(config.get("outputs", {})),
            ResourceLimits.model_validate(config.get("limits", {})),
            audit,
        )
        install(self, session)
