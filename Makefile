# One command for the main job (`make demo`) and one for the tests (`make test`); both install what
# they need on a fresh Debian/Ubuntu machine: system packages (as root), a local venv, npm packages,
# the lab extension build, the package and its kernelspec.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
NPM := npm --no-audit --no-fund --loglevel=error

.PHONY: all venv system-deps test demo bench docs lint clean

all: test

system-deps:
	@bash .ci/system-deps.sh

# Order matters: the lab extension is built (with jupyter-builder from the venv) before the package is
# installed, because the wheel ships the built extension as shared data.
$(STAMP): pyproject.toml labextension/package-lock.json tests/mcp/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q jupyter-builder "jupyterlab>=4.4,<5"
	cd tests/mcp && $(NPM) ci
	cd labextension && $(NPM) ci
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" npm run build
	$(PIP) install -q -e ".[test]"
	$(PY) -m ironcage_jupyter.cli install --sys-prefix
	touch $(STAMP)

venv: system-deps $(STAMP)

test: venv
	cd labextension && npx jest --silent
	$(PY) -m pytest -q

demo: venv
	$(PY) examples/run_demo.py

bench: venv
	$(PY) benchmarks/bench_kernel.py --markdown

docs: venv
	$(VENV)/bin/mkdocs build --strict

lint: venv
	$(VENV)/bin/ruff check ironcage_jupyter tests benchmarks
	$(VENV)/bin/mypy ironcage_jupyter

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts site
