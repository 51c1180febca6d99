# Two commands set up a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# torch is installed first, pinned: on a CPU machine torch==2.13.0 is the CPU build (an unpinned torch pulls
# gigabytes of CUDA wheels). A GPU user installs the CUDA build of torch first (see README), then `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/korllama demo

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check korllama tests

clean:
	rm -rf runs .pytest_cache
