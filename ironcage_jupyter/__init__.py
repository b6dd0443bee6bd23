"""Iron Cage Python: a guardrail kernel for Jupyter."""

__version__ = "0.1.0"
