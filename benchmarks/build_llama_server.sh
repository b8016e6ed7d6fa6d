#!/usr/bin/env bash
# Build llama.cpp's llama-server from the llama.cpp that the pinned llama-cpp-python sdist vendors, so the
# benchmark peer runs exactly the kernels lokal's engine runs. Everything lands in a cache directory outside the
# repo ($LOKAL_BENCH_CACHE, default ~/.cache/lokal-bench) and is reused when present: the first build takes
# about 10 minutes on 2 cores, later calls print the binary's path at once.
#
#   benchmarks/build_llama_server.sh            # prints the path of llama-server
#   JOBS=1 nice benchmarks/build_llama_server.sh # gentler on a shared machine
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LOKAL_BENCH_CACHE:-$HOME/.cache/lokal-bench}"
JOBS="${JOBS:-$(nproc)}"
PIP="${PIP:-pip}"
SRC="$CACHE/llama_cpp_python-$VERSION"
# A native build uses whatever instructions this CPU has, so a cached binary from another CPU can die with
# SIGILL: the build directory is keyed by the CPU's feature flags too.
CPU_KEY="$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features 2>/dev/null || uname -m) \
    | cksum | cut -d' ' -f1)"
BUILD="$CACHE/build-$VERSION-$CPU_KEY"
BIN="$BUILD/bin/llama-server"

if [[ -x "$BIN" ]]; then
    echo "$BIN"
    exit 0
fi

mkdir -p "$CACHE"
SDIST="$CACHE/llama_cpp_python-$VERSION.tar.gz"
if [[ ! -f "$SDIST" ]]; then
    "$PIP" download --no-binary :all: --no-deps "llama-cpp-python==$VERSION" -d "$CACHE" >&2
fi
if [[ ! -d "$SRC/vendor/llama.cpp" ]]; then
    tar -xzf "$SDIST" -C "$CACHE"
fi

# Same switches lokal's wheel is built with where they matter for speed (native CPU kernels, OpenMP);
# no CURL (no network here), no tests/examples beyond the server.
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON \
    -DGGML_NATIVE=ON \
    -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$BUILD" --target llama-server -j "$JOBS" >&2
echo "$BIN"
