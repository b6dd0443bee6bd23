"""Input firewall: static, explainable screening of cells and tool-call arguments (advisory; the OS
sandbox is the boundary)."""

from .findings import CATEGORIES, SEVERITY_RANK, Finding, MagicUse, PathUse, ScreenResult
from .screen import screen_arguments, screen_cell
from .settings import FirewallSettings

__all__ = [
    "CATEGORIES",
    "SEVERITY_RANK",
    "Finding",
    "FirewallSettings",
    "MagicUse",
    "PathUse",
    "ScreenResult",
    "screen_arguments",
    "screen_cell",
]
