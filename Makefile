# One command for the main job (`make demo`) and one for the tests (`make test`); both install what
# they need on a fresh Debian/Ubuntu machine: system packages (as root), a local venv, the package.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: all venv system-deps test demo bench lint clean

all: test

system-deps:
	@bash .ci/system-deps.sh

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e ".[test]"
	$(PY) -m ironcage_jupyter.cli install --sys-prefix
	touch $(STAMP)

NODE_STAMP := $(VENV)/.node-installed

# npm packages: the reference MCP filesystem server for the tool tests, and the JupyterLab extension
# (built into ironcage_jupyter/labextension, which the wheel ships prebuilt).
$(NODE_STAMP): $(STAMP) tests/mcp/package-lock.json labextension/package-lock.json
	cd tests/mcp && npm ci --no-audit --no-fund --loglevel=error
	cd labextension && npm ci --no-audit --no-fund --loglevel=error
	cd labextension && PATH="$(abspath $(VENV))/bin:$$PATH" npm run build
	touch $(NODE_STAMP)

venv: system-deps $(STAMP) $(NODE_STAMP)

test: venv
	$(PY) -m pytest -q

demo: venv
	$(PY) examples/run_demo.py

bench: venv
	$(PY) benchmarks/bench_kernel.py --markdown

lint: venv
	$(VENV)/bin/ruff check ironcage_jupyter tests benchmarks
	$(VENV)/bin/mypy ironcage_jupyter

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
