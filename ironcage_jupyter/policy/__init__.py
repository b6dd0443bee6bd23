"""Policy engine: YAML policies, deterministic decisions (default deny, deny-overrides, invariants)."""

from .compare import is_loosening, loosening_reasons
from .engine import ApprovalCache, Decision, ElementDecision, PolicyEngine, request_key
from .escalation import Answer, EscalationQuestion, format_question, parse_answer
from .loader import PolicyError, PolicyIssue, builtin_names, load_policy, load_policy_text
from .models import Match, Policy, Rule
from .paths import canonicalize, is_within
from .report import ExplainReport, explain, policy_show, policy_summary
from .subjects import CredentialRequest, NetworkRequest, PolicyContext, ToolCall, ToolSpec

__all__ = [
    "Answer", "ApprovalCache", "CredentialRequest", "NetworkRequest", "ToolCall", "Decision", "ElementDecision", "EscalationQuestion", "ExplainReport", "Match",
    "Policy", "PolicyContext", "PolicyEngine", "PolicyError", "PolicyIssue", "Rule", "ToolSpec", "builtin_names",
    "canonicalize", "explain", "format_question", "is_loosening", "is_within", "load_policy", "load_policy_text",
    "loosening_reasons", "parse_answer", "policy_show", "policy_summary", "request_key",
]
