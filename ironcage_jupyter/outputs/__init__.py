"""The output firewall: screens everything the child kernel sends back."""

from .firewall import OutputFirewall, RedactionRecord, ScreenedOutput
from .known_values import KnownValueMatcher, encoded_forms
from .settings import OutputDetectors, OutputSettings

__all__ = [
    "KnownValueMatcher",
    "OutputDetectors",
    "OutputFirewall",
    "OutputSettings",
    "RedactionRecord",
    "ScreenedOutput",
    "encoded_forms",
]
