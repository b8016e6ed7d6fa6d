"""Which llama.cpp builds get flash attention by default: the code scan and the CPU check behind it."""

from __future__ import annotations

from pathlib import Path

from lokal.engine import cpu_build

# Four instructions as GCC emits them in ggml's unrolled f16 loop built with -mavx512fp16 (objdump of a
# native llama-cpp-python build on a Sapphire Rapids CPU): vfmadd213ph (%rdx),%zmm0,%zmm1 and its offsets.
F16_LOOP = bytes.fromhex("62f67d48a80a" "62f67d48a84afd" "62f67d48a84afe" "62f67d48a84aff")
# The same loop on 256-bit registers (L'L=01) and an AVX-512 f32 FMA (vfmadd213ps, map 2): not matches.
F16_YMM = bytes.fromhex("62f67d28a80a") * 4
F32_FMA = bytes.fromhex("62f27d48a80a") * 4


def test_the_scan_finds_ggmls_f16_loop_and_nothing_like_it(tmp_path: Path):
    def scan(data: bytes) -> bool:
        library = tmp_path / "libggml-cpu.so"
        library.write_bytes(b"\x90" * 100 + data + b"\xc3" * 100)
        return cpu_build.has_f16_fma_512(library)

    assert scan(F16_LOOP)
    assert not scan(F16_LOOP[:13])  # two instructions: could be stray bytes
    assert not scan(F16_YMM)
    assert not scan(F32_FMA)
    assert not cpu_build.has_f16_fma_512(tmp_path / "missing.so")


def test_the_cpu_flag_is_read_from_cpuinfo(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_fp16 amx_tile\n")
    assert cpu_build.cpu_has_avx512_fp16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16\n")
    assert not cpu_build.cpu_has_avx512_fp16(cpuinfo)
    assert not cpu_build.cpu_has_avx512_fp16(tmp_path / "absent")


def test_the_loaded_ggml_cpu_library_is_found_and_judged():
    import llama_cpp  # noqa: F401  (maps the libraries)

    libraries = cpu_build.loaded_ggml_cpu_libraries()
    assert libraries and all(path.name.startswith("libggml-cpu") for path in libraries)
    # The default follows the loaded build: on unless this CPU has AVX512-FP16 and the build uses it.
    is_slow = cpu_build.cpu_has_avx512_fp16() and any(cpu_build.has_f16_fma_512(path) for path in libraries)
    assert cpu_build.default_flash_attention() is not is_slow
