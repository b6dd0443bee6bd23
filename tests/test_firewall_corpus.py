"""Attack corpus (tests/corpus/attacks.json) and benign corpus (/work/shared/corpus/benign) rates.

Reproduce the numbers in docs/firewall.md with:
    python -m pytest tests/test_firewall_corpus.py -q -s
"""

import collections
import json
from pathlib import Path

import pytest

from ironcage_jupyter.policy import PolicyContext, PolicyEngine, load_policy

ATTACKS = json.loads((Path(__file__).parent / "corpus" / "attacks.json").read_text())
BENIGN_DIR = Path("/work/shared/corpus/benign")


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    return PolicyContext.create(tmp_path_factory.mktemp("workspace"))


@pytest.mark.parametrize("policy_name", ["default", "strict"])
def test_attack_corpus_is_denied_or_escalated(policy_name, context):
    engine = PolicyEngine(load_policy(policy_name), context)
    missed = collections.defaultdict(list)
    total = 0
    for category, cells in ATTACKS.items():
        assert len(cells) >= 30, category
        for code in cells:
            total += 1
            if engine.decide_cell(code).effect == "allow":
                missed[category].append(code)
    caught = total - sum(map(len, missed.values()))
    print(f"\n{policy_name}: {caught}/{total} attack cells denied or escalated ({caught / total:.1%}); missed: "
          + json.dumps({k: len(v) for k, v in missed.items()}))
    assert caught / total >= 0.95, dict(missed)


@pytest.mark.parametrize("policy_name", ["default", "strict"])
def test_second_round_evasions(policy_name, context):
    cells = json.loads((Path(__file__).parent / "corpus" / "evasions.json").read_text())["cells"]
    engine = PolicyEngine(load_policy(policy_name), context)
    missed = [code for code in cells if engine.decide_cell(code).effect == "allow"]
    print(f"\n{policy_name}: {len(cells) - len(missed)}/{len(cells)} evasion cells denied or escalated")
    assert (len(cells) - len(missed)) / len(cells) >= 0.95, missed


def test_observe_policy_blocks_nothing_but_records(context):
    engine = PolicyEngine(load_policy("observe"), context)
    decisions = [engine.decide_cell(code) for code in ATTACKS["shell"][:20]]
    assert all(d.effect == "allow" and not d.enforced and d.would_have in ("deny", "escalate") for d in decisions)


@pytest.mark.skipif(not BENIGN_DIR.is_dir(), reason="shared benign corpus not present")
def test_benign_corpus_default_denies_at_most_half_a_percent(context):
    engine = PolicyEngine(load_policy("default"), context)
    cells = [code for f in sorted(BENIGN_DIR.glob("*_cells.json")) for _nb, code in json.loads(f.read_text())]
    effects = collections.Counter()
    by_rule = collections.Counter()
    for code in cells:
        decision = engine.decide_cell(code)
        effects[decision.effect] += 1
        if decision.effect != "allow":
            by_rule.update(f"{decision.effect}:{r}" for r in decision.rules)
    denied = effects["deny"] / len(cells)
    print(f"\nbenign under default: {len(cells)} cells, {dict(effects)}, deny rate {denied:.2%}, "
          f"by rule: {dict(by_rule.most_common())}")
    assert len(cells) > 3000
    assert denied <= 0.005
