"""What the loaded llama.cpp CPU build runs fast: the facts about its kernels that choose lokal's defaults.

ggml compiled for a CPU with AVX512-FP16 (``-march=native`` on Sapphire Rapids and later, which is what
``pip install llama-cpp-python`` does there) does its f16 vector arithmetic 128 halves per loop step. An
attention head of 64 values never fills one, so flash attention's f16 loops fall to scalar code. Measured
with SmolLM2 (head size 64) on a 2-core Xeon: flash attention took 56 ms per token at 2,000 tokens of context
against 23 ms without it; built without AVX512-FP16, 18.6 ms with it and 19.9 without, and 1.3x faster
than without at short contexts. lokal's Makefile builds llama-cpp-python that way on such CPUs; with a
build that has those loops, flash attention stays off unless asked for.
"""

from __future__ import annotations

import functools
import importlib
import re
from pathlib import Path

# vfmadd132ph / vfmadd213ph / vfmadd231ph on 512-bit registers: EVEX prefix 0x62; P0 selects opcode map 6
# (low nibble 0110); P1 has W=0, the fixed bit 2 set and pp=01; P2 has vector length L'L=10 (512 bits).
_P0 = bytes(b for b in range(256) if b & 0x0F == 0x06)
_P1 = bytes(b for b in range(256) if b & 0x87 == 0x05)
_P2 = bytes(b for b in range(256) if b & 0x60 == 0x40)
_F16_FMA_512 = re.compile(b"\\x62[" + re.escape(_P0) + b"][" + re.escape(_P1) + b"][" + re.escape(_P2)
                          + b"][\\x98\\xa8\\xb8]")
# ggml's f16 loops unroll four of these each; a few stray byte matches elsewhere in a library are possible.
_MIN_MATCHES = 4


def cpu_has_avx512_fp16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:  # not Linux: no x86 server CPU to worry about here
        return False
    return any(line.startswith("flags") and "avx512_fp16" in line.split() for line in text.splitlines())


def has_f16_fma_512(library: Path) -> bool:
    """The library's code multiplies-adds packed f16 in 512-bit registers (see the module docstring)."""
    try:
        data = library.read_bytes()
    except OSError:
        return False
    matches = 0
    for _ in _F16_FMA_512.finditer(data):
        matches += 1
        if matches >= _MIN_MATCHES:
            return True
    return False


def loaded_ggml_cpu_libraries(maps: Path = Path("/proc/self/maps")) -> list[Path]:
    """The files of ggml's CPU backend this process has mapped (llama_cpp loads it with libllama)."""
    try:
        lines = maps.read_text().splitlines()
    except OSError:
        return []
    found = {line.split(maxsplit=5)[5] for line in lines if len(line.split(maxsplit=5)) == 6}
    return sorted(Path(path) for path in found if Path(path).name.startswith("libggml-cpu"))


@functools.cache
def flash_attention_is_slow() -> bool:
    """Flash attention in this process's llama.cpp runs its f16 loops in scalar code for small heads."""
    if not cpu_has_avx512_fp16():
        return False
    importlib.import_module("llama_cpp")  # maps the libraries looked at, if nothing has yet
    return any(has_f16_fma_512(library) for library in loaded_ggml_cpu_libraries())


def default_flash_attention() -> bool:
    """Flash attention unless asked otherwise, as llama-server runs it: on, except with a build whose flash
    attention is slow (see the module docstring)."""
    return not flash_attention_is_slow()


__all__ = ["cpu_has_avx512_fp16", "default_flash_attention", "flash_attention_is_slow", "has_f16_fma_512",
           "loaded_ggml_cpu_libraries"]
