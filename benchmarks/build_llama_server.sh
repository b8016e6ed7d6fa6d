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
PYTHON="${PYTHON:-python3}"
SRC="$CACHE/llama_cpp_python-$VERSION"
# A native build uses whatever instructions this CPU has, so a cached binary from another CPU can die with
# SIGILL: the build directory is keyed by the CPU's feature flags too.
#
# The CPU kernels are the ones lokal's engine runs: the instruction sets the installed llama-cpp-python reports
# (llama_print_system_info) are switched on one by one. A plain -march=native build can differ from that wheel,
# and on a VM that advertises more than it runs (avx512_fp16 here) it dies with SIGILL at the first decode.
FEATURES="$("$PYTHON" -c 'import llama_cpp; print(llama_cpp.llama_print_system_info().decode())' 2>/dev/null || true)"
ISA_FLAGS=()
for feature in AVX AVX2 AVX_VNNI F16C FMA BMI2 AVX512 AVX512_VBMI AVX512_VNNI AVX512_BF16 AMX_INT8; do
    if grep -q "\b$feature = 1" <<<"$FEATURES"; then ISA_FLAGS+=("-DGGML_$feature=ON"); else ISA_FLAGS+=("-DGGML_$feature=OFF"); fi
done
if [[ " ${ISA_FLAGS[*]} " == *" -DGGML_AMX_INT8=ON "* ]]; then ISA_FLAGS+=(-DGGML_AMX_TILE=ON); fi  # INT8 needs TILE
if [[ -z "$FEATURES" ]]; then ISA_FLAGS=(-DGGML_NATIVE=ON); else ISA_FLAGS=(-DGGML_NATIVE=OFF "${ISA_FLAGS[@]}"); fi
CPU_KEY="$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || sysctl -n machdep.cpu.features 2>/dev/null || uname -m;
             echo "${ISA_FLAGS[*]}") | cksum | cut -d' ' -f1)"
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

# Same switches lokal's wheel is built with where they matter for speed (its CPU kernels, OpenMP);
# no CURL (no network here), no tests/examples beyond the server.
cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" \
    -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=ON \
    "${ISA_FLAGS[@]}" \
    -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$BUILD" --target llama-server -j "$JOBS" >&2
echo "$BIN"
