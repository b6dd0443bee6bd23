"""Policy loading: built-ins, extends, errors with file/line/field, fuzzing."""

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironcage_jupyter.policy import PolicyError, builtin_names, load_policy, load_policy_text
from ironcage_jupyter.policy.models import policy_json_schema


def test_builtins_load():
    assert {"default", "strict", "observe"} <= set(builtin_names())
    observe = load_policy("observe")
    assert observe.mode == "observe" and observe.extends is None
    assert {r.id for r in observe.rules} == {r.id for r in load_policy("default").rules}


@pytest.mark.parametrize("text, line, field, words", [
    ("rules:\n  - id: a\n    subject: cell\n    effect: alow\n", 4, "rules[0].effect", "allow"),
    ("name: x\nbogus: 1\n", 2, "bogus", "unknown key"),
    ("rules: [\n", None, "", "YAML syntax"),
    ("firewall:\n  extra_injection_patterns: ['(']\n", 2, "firewall.extra_injection_patterns", "regular expression"),
    ("rules:\n  - id: a\n    subject: cell\n    effect: deny\n    match:\n      code_patterns: ['[a-']\n", 6,
     "rules[0].match.code_patterns", "regular expression"),
    ("limits:\n  memory_mb: lots\n", 2, "limits.memory_mb", "integer"),
    ("rules:\n  - id: a\n    subject: cell\n    effect: allow\n    match: {domains: [x.com]}\n", 2, "rules[0]", "subject"),
    ("network:\n  allow_domains: ['*.*.com']\n", 2, "network.allow_domains", "domain"),
    ("name: a\nname: b\n", 2, "name", "duplicate"),
    ("- 1\n- 2\n", 1, "", "mapping"),
])
def test_errors_name_file_line_and_field(tmp_path, text, line, field, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy(str(path))
    error = info.value
    assert error.file == str(path)
    if line is not None:
        assert error.line == line
    assert error.field == field
    assert words.lower() in str(error).lower()


def test_extends_relative_and_cycles(tmp_path):
    (tmp_path / "base.yaml").write_text("extends: strict\nname: base\n")
    (tmp_path / "child.yaml").write_text("extends: ./base.yaml\nname: child\nrules:\n"
                                         "  - {id: cells, subject: cell, effect: deny, reason: no cells}\n")
    child = load_policy(str(tmp_path / "child.yaml"))
    assert child.name == "child"
    assert next(r for r in child.rules if r.id == "cells").effect == "deny"
    assert child.escalation.allow_session_approval is False  # inherited from strict
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(PolicyError, match="cyclic extends"):
        load_policy(str(tmp_path / "a.yaml"))
    (tmp_path / "self.yaml").write_text("extends: self.yaml\n")
    with pytest.raises(PolicyError, match="cyclic"):
        load_policy(str(tmp_path / "self.yaml"))
    (tmp_path / "missing.yaml").write_text("extends: nope-not-here\n")
    with pytest.raises(PolicyError) as info:
        load_policy(str(tmp_path / "missing.yaml"))
    assert info.value.field == "extends" and info.value.line == 1


def test_unknown_builtin_and_missing_file(tmp_path):
    with pytest.raises(PolicyError, match="no built-in"):
        load_policy("no-such-policy")
    with pytest.raises(PolicyError, match="not found"):
        load_policy(str(tmp_path / "none.yaml"))


def test_schema_covers_every_section():
    schema = policy_json_schema()
    for key in ["rules", "firewall", "network", "escalation", "isolation", "limits", "credentials", "outputs",
                "audit", "tools", "budgets", "locked", "extends", "mode"]:
        assert key in schema["properties"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=400))
def test_fuzz_text(text):
    try:
        load_policy_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert exc.issues and exc.file == "fuzz.yaml" and str(exc)


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=12)
    | st.sampled_from(["allow", "deny", "cell", "tool", "*", "[", "low", "shell"]),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(
        st.sampled_from(["id", "subject", "effect", "match", "rules", "network", "categories", "domains", "x",
                         "paths", "roles", "allow_domains", "firewall", "bandit", "limits", "mode"]),
        children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["name", "rules", "network", "firewall", "mode", "locked", "extends_x",
                                         "escalation", "limits"]), yaml_values, max_size=4))
def test_fuzz_structures(doc):
    text = yaml.safe_dump(doc)
    try:
        load_policy_text(text, "fuzz.yaml")
    except PolicyError as exc:
        assert all(issue.file == "fuzz.yaml" for issue in exc.issues)


@pytest.mark.parametrize("name", ["default", "strict", "observe"])
def test_show_yaml_round_trips(name):
    from ironcage_jupyter.policy import policy_show, policy_summary

    policy = load_policy(name)
    again = load_policy_text(policy_show(policy, yaml=True), "shown.yaml")
    assert again == policy
    assert policy.name in policy_summary(policy) and "| Mode |" in policy_summary(policy, markdown=True)
    table = policy_show(policy, markdown=True)
    assert all(f"`{rule.id}`" in table for rule in policy.rules)


def test_builtins_load_from_an_installed_wheel(tmp_path):
    """The wheel force-includes policies/ as ironcage_jupyter/policies; load_policy finds them there."""
    import subprocess
    import sys
    import zipfile
    from pathlib import Path

    hatchling = pytest.importorskip("hatchling.builders.wheel")
    repo = Path(__file__).resolve().parent.parent
    wheel = next(iter(hatchling.WheelBuilder(str(repo)).build(directory=str(tmp_path / "dist"), versions=["standard"])))
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = ("from ironcage_jupyter.policy import load_policy, builtin_names; "
            "import ironcage_jupyter, sys; assert ironcage_jupyter.__file__.startswith(sys.argv[1]); "
            "print(sorted(builtin_names()), load_policy('observe').mode)")
    out = subprocess.run([sys.executable, "-c", code, str(site)], cwd=tmp_path, env={"PYTHONPATH": str(site)},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "['default', 'observe', 'strict'] observe" in out.stdout
