#!/bin/sh
# Installs lokal from the source tree $2 (default: .) into a new virtual environment at $1.
# The Dockerfile's builder stage runs this; tests/test_deploy_docker.py runs it too, so the steps the image
# takes are exercised without a Docker engine. llama-cpp-python compiles llama.cpp here (pip reuses a wheel
# it built before, from its cache, when one matches).
set -eu
venv="$1"
source_dir="${2:-.}"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "$source_dir"
"$venv/bin/lokal" --version
