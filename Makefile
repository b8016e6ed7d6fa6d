# The project's two commands: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DEFAULT_MODEL ?= smollm2

.PHONY: serve test install install-dev llama-cpp clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# llama.cpp built natively for a CPU with AVX512-FP16 (Xeon Sapphire Rapids and later) runs its f16 vector
# loops 128 values a step, so small models' attention heads of 64 fall to scalar code and flash attention
# runs 3-4x slower (src/lokal/engine/cpu_build.py). There llama-cpp-python is built native but for those
# instructions, before lokal's own install finds it present. pip's wheel cache ignores CMAKE_ARGS, so that
# build skips the cache; where llama-cpp-python is installed already, this does nothing.
LLAMA_CPP_PIN := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml)
HAS_AVX512_FP16 := $(shell grep -qw avx512_fp16 /proc/cpuinfo 2>/dev/null && echo yes)

llama-cpp: $(BIN)/python
ifeq ($(HAS_AVX512_FP16),yes)
	$(BIN)/pip show --quiet llama-cpp-python >/dev/null 2>&1 || \
		CMAKE_ARGS="$$CMAKE_ARGS -DCMAKE_C_FLAGS=-mno-avx512fp16 -DCMAKE_CXX_FLAGS=-mno-avx512fp16" \
		$(BIN)/pip install --quiet --no-cache-dir '$(LLAMA_CPP_PIN)'
endif

install: llama-cpp
	$(BIN)/pip install --quiet -e .

install-dev: llama-cpp
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
