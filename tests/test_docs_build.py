"""The documentation site builds with MkDocs in strict mode (warnings are errors)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.timeout(120)


def _mkdocs_available() -> bool:
    return importlib.util.find_spec("mkdocs") is not None and importlib.util.find_spec("material") is not None


@pytest.mark.skipif(not _mkdocs_available(), reason="mkdocs / mkdocs-material not installed (pip install .[docs])")
def test_docs_build_strict(tmp_path: Path) -> None:
    site = tmp_path / "site"
    env = dict(os.environ, PYTHONPATH=str(REPO), NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for page in ("index.html", "quickstart/index.html", "concepts/index.html", "threat-model/index.html",
                 "magics/index.html", "deployment/index.html", "ui/index.html", "ui-protocol/index.html"):
        assert (site / page).exists(), page
    if (REPO / "docs" / "gen_policy_reference.py").exists():
        # Generated from the pydantic schema at build time.
        assert (site / "policy-reference" / "index.html").exists()
    # The theme must not pull fonts from the network when the site is read offline.
    assert "fonts.googleapis.com" not in (site / "index.html").read_text()


def test_missing_pages_are_listed_not_fatal(tmp_path: Path) -> None:
    """The hook drops navigation entries without a file and names them."""
    spec = importlib.util.spec_from_file_location("ironcage_docs_hook", REPO / "docs" / "_hooks" / "ironcage_docs.py")
    if not _mkdocs_available():
        pytest.skip("mkdocs not installed")
    assert spec is not None and spec.loader is not None
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    (tmp_path / "here.md").write_text("# here\n")
    config = {
        "docs_dir": str(tmp_path),
        "nav": [{"Home": "here.md"}, {"Section": [{"Gone": "gone.md"}, {"Here": "here.md"}]},
                {"Empty": [{"Also gone": "also.md"}]}, {"Site": "https://example.org/"}],
    }
    assert hook.missing_pages(config) == ["gone.md", "also.md"]
    pruned = hook.on_config(config)
    assert pruned["nav"] == [{"Home": "here.md"}, {"Section": [{"Here": "here.md"}]}, {"Site": "https://example.org/"}]
    os.environ["IRONCAGE_DOCS_REQUIRE_ALL"] = "1"
    try:
        with pytest.raises(Exception, match="gone.md"):
            hook.on_config({"docs_dir": str(tmp_path), "nav": [{"Gone": "gone.md"}]})
    finally:
        del os.environ["IRONCAGE_DOCS_REQUIRE_ALL"]
