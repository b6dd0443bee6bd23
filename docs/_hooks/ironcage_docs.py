"""MkDocs hooks for the Iron Cage documentation site.

* Pages owned by other developers may not exist yet: navigation entries whose file is missing are
  dropped before the build (so ``strict: true`` still passes) and listed on stderr; set
  ``IRONCAGE_DOCS_REQUIRE_ALL=1`` to make a missing page an error (release builds).
* ``docs/perf/<area>.md`` (each developer's measured tables) are added under Operations.
* ``policy-reference.md`` is generated at build time from the pydantic schema by
  ``docs/gen_policy_reference.py`` (``render()``), so the reference can never drift from the code.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.ironcage")

GENERATED_REFERENCE = "policy-reference.md"
GENERATOR = "gen_policy_reference.py"


def _prune(items: list[Any], docs_dir: Path, missing: list[str], generated: set[str]) -> list[Any]:
    kept: list[Any] = []
    for item in items:
        if isinstance(item, dict):
            (title, value), = item.items()
            if isinstance(value, list):
                children = _prune(value, docs_dir, missing, generated)
                if children:
                    kept.append({title: children})
            elif isinstance(value, str) and not value.startswith(("http://", "https://")):
                if (docs_dir / value).exists() or value in generated:
                    kept.append(item)
                else:
                    missing.append(value)
            else:
                kept.append(item)
        elif isinstance(item, str):
            if (docs_dir / item).exists() or item in generated:
                kept.append(item)
            else:
                missing.append(item)
        else:
            kept.append(item)
    return kept


def missing_pages(config: Any) -> list[str]:
    """Navigation entries without a file (public for tests/test_docs_build.py)."""
    missing: list[str] = []
    _prune(config["nav"] or [], Path(config["docs_dir"]), missing, _generated(config))
    return missing


def _generated(config: Any) -> set[str]:
    return {GENERATED_REFERENCE} if (Path(config["docs_dir"]) / GENERATOR).exists() else set()


def _measurement_pages(docs_dir: Path) -> list[dict[str, str]]:
    """Each area's measured tables (docs/perf/<area>.md), listed under Operations."""
    pages = []
    for path in sorted((docs_dir / "perf").glob("*.md")):
        pages.append({f"Measurements: {path.stem}": f"perf/{path.name}"})
    return pages


def on_config(config: Any) -> Any:
    missing: list[str] = []
    docs_dir = Path(config["docs_dir"])
    nav = _prune(config["nav"] or [], docs_dir, missing, _generated(config))
    measurements = _measurement_pages(docs_dir)
    if measurements:
        for item in nav:
            if isinstance(item, dict) and "Operations" in item:
                item["Operations"].extend(measurements)
                break
        else:
            nav.append({"Measurements": measurements})
    config["nav"] = nav
    if missing:
        message = "documentation pages not written yet (left out of the navigation): " + ", ".join(missing)
        if os.environ.get("IRONCAGE_DOCS_REQUIRE_ALL") == "1":
            raise PluginError(message)
        print(f"ironcage docs: {message}", file=sys.stderr)
    return config


def _render_policy_reference(docs_dir: Path) -> str:
    spec = importlib.util.spec_from_file_location("ironcage_gen_policy_reference", docs_dir / GENERATOR)
    if spec is None or spec.loader is None:
        raise PluginError(f"cannot load {GENERATOR}")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
        return str(module.render())
    except Exception as exc:  # the reference must build from the schema, or the build fails
        raise PluginError(f"{GENERATOR} failed: {exc!r}") from exc


def on_files(files: Files, config: Any) -> Files:
    docs_dir = Path(config["docs_dir"])
    if not (docs_dir / GENERATOR).exists():
        return files
    content = _render_policy_reference(docs_dir)
    existing = files.get_file_from_path(GENERATED_REFERENCE)
    if existing is not None:
        files.remove(existing)
    files.append(File.generated(config, GENERATED_REFERENCE, content=content))
    return files
