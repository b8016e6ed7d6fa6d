# The project's two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEFAULT_MODEL ?= smollm2

.PHONY: serve test install install-dev clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e .

install-dev: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'

# Puts the bundled default model in the store (offline), then serves the Ollama and OpenAI APIs
# on LOKAL_HOST (127.0.0.1:11434). Ctrl+C stops it.
serve: install
	$(BIN)/lokal pull $(DEFAULT_MODEL)
	$(BIN)/lokal serve

# pytest exits 5 when it collects no tests; that is a failure of the suite, not a pass.
test: install-dev
	$(BIN)/python -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) build src/*.egg-info
