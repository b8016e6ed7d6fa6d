"""What this machine offers a model: memory, and an estimate of what a model needs from it."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

# KV cache types (Ollama's OLLAMA_KV_CACHE_TYPE names) and their bytes per element: q8_0 and q4_0 store blocks of
# 32 values with one f16 scale.
KV_CACHE_TYPES = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
# Compute buffers, the vocabulary and allocator slack on top of weights + KV (measured on SmolLM2: ~60 MB).
_OVERHEAD_BYTES = 96 * 1024 * 1024


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), cgroup limit included."""
    available = _meminfo_available()
    limit = _cgroup_limit_remaining()
    return min(available, limit) if limit is not None else available


def process_rss() -> int | None:
    """Resident bytes of this process (Linux), None elsewhere: for the residency log lines."""
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """The highest resident size of this process while a ``with`` block runs, sampled on a thread every
    ``interval`` seconds (a model's memory peaks briefly while it loads and while batches run). ``peak`` stays
    None where ``process_rss`` knows nothing."""

    def __init__(self, interval: float = 0.01):
        self.interval = interval
        self.peak: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True, name="lokal-rss")

    def _sample(self) -> None:
        while True:
            self._sample_once()
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample_once()

    def _sample_once(self) -> None:
        rss = process_rss()
        if rss is not None and (self.peak is None or rss > self.peak):
            self.peak = rss


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 1024**3  # not Linux: assume a laptop-sized budget rather than refusing every model


def _cgroup_limit_remaining() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text().strip())
    except (OSError, ValueError):
        return None
    if limit == "max":
        return None
    return max(0, int(limit) - used)


@dataclass(frozen=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    overhead: int = _OVERHEAD_BYTES

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead


def estimate_memory(weights_bytes: int, metadata: dict[str, object], n_ctx_total: int,
                    kv_cache_type: str = "f16") -> MemoryEstimate:
    """Weights (file size; mmap pages them in) plus KV cache: layers × context × (K + V widths) × element size.

    K/V widths come from the GGUF head counts; grouped-query attention shrinks them by
    head_count / head_count_kv. Missing metadata falls back to the embedding width (an upper bound).
    """
    arch = str(metadata.get("general.architecture", ""))

    def meta_int(key: str, default: int) -> int:
        value = metadata.get(f"{arch}.{key}", default)
        if isinstance(value, (list, tuple)):  # per-layer arrays (some hybrids): take the widest
            value = max(value) if value else default
        try:
            return int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return default

    n_layer = meta_int("block_count", 32)
    n_embd = meta_int("embedding_length", 4096)
    n_head = max(1, meta_int("attention.head_count", 1))
    n_head_kv = max(1, meta_int("attention.head_count_kv", n_head))
    head_dim_k = meta_int("attention.key_length", n_embd // n_head)
    head_dim_v = meta_int("attention.value_length", n_embd // n_head)
    kv_width = n_head_kv * (head_dim_k + head_dim_v)
    kv = int(n_layer * n_ctx_total * kv_width * KV_CACHE_TYPES[kv_cache_type])
    return MemoryEstimate(weights=weights_bytes, kv_cache=kv)


# ---- devices: what this machine has, and which one a model should run on ------------------------------

DEVICES = ("cpu", "gpu", "npu")

# ONNX Runtime execution providers by the device class they drive, best first. Foundry Local names its
# variants after them (generic-cpu, cuda-gpu, openvino-npu, qnn-npu …).
ONNX_PROVIDERS: dict[str, tuple[str, ...]] = {
    "npu": ("QNNExecutionProvider", "OpenVINOExecutionProvider", "VitisAIExecutionProvider"),
    "gpu": ("CUDAExecutionProvider", "TensorrtExecutionProvider", "ROCMExecutionProvider",
            "MIGraphXExecutionProvider", "DmlExecutionProvider", "CoreMLExecutionProvider",
            "WebGpuExecutionProvider"),
    "cpu": ("CPUExecutionProvider",),
}
# The short provider names lokal uses on the command line and in catalog tags, and GenAI's own spelling.
PROVIDER_SHORT = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml",
                  "WebGpuExecutionProvider": "webgpu", "QNNExecutionProvider": "qnn",
                  "OpenVINOExecutionProvider": "openvino", "VitisAIExecutionProvider": "vitisai",
                  "ROCMExecutionProvider": "rocm", "MIGraphXExecutionProvider": "migraphx",
                  "TensorrtExecutionProvider": "trt-rtx", "CoreMLExecutionProvider": "coreml"}
# llama.cpp backends and the device class they serve.
LLAMA_BACKEND_DEVICE = {"CPU": "cpu", "CUDA": "gpu", "ROCm": "gpu", "HIP": "gpu", "Metal": "gpu",
                        "Vulkan": "gpu", "SYCL": "gpu", "OpenCL": "gpu", "CANN": "npu"}


@dataclass(frozen=True)
class Accelerator:
    kind: str  # "gpu" or "npu"
    vendor: str  # "nvidia", "amd", "apple", "intel", "qualcomm", …
    name: str
    memory: int | None = None  # bytes of device memory, where known
    driver: str | None = None


@dataclass(frozen=True)
class Hardware:
    """What this machine offers; ``detect()`` fills it in, tests build one by hand."""

    cpu_model: str
    cores_physical: int
    cores_logical: int
    isa: tuple[str, ...]  # "avx2", "avx512f", "amx", "neon", …
    memory_total: int
    memory_available: int
    gpus: tuple[Accelerator, ...] = ()
    npus: tuple[Accelerator, ...] = ()
    llama_backends: tuple[str, ...] = ("CPU",)
    onnx_providers: tuple[str, ...] = ()
    os: str = ""
    arch: str = ""

    def providers_for(self, device: str) -> tuple[str, ...]:
        """ONNX execution providers this install has for a device class, best first; an accelerator
        provider counts only when a device of that class was found."""
        if device != "cpu" and not (self.gpus if device == "gpu" else self.npus):
            return ()
        return tuple(p for p in ONNX_PROVIDERS.get(device, ()) if p in self.onnx_providers)

    def can_run(self, device: str, model_format: str) -> bool:
        """Whether a model of ``model_format`` (gguf or onnx) can run on ``device`` here."""
        if device == "cpu":
            return True
        if model_format == "onnx":
            return bool(self.providers_for(device))
        has_device = bool(self.gpus if device == "gpu" else self.npus)
        return has_device and any(LLAMA_BACKEND_DEVICE.get(b) == device for b in self.llama_backends)

    def to_dict(self) -> dict[str, object]:
        return {
            "cpu": {"model": self.cpu_model, "cores": self.cores_physical, "threads": self.cores_logical,
                    "isa": list(self.isa), "arch": self.arch},
            "memory": {"total": self.memory_total, "available": self.memory_available},
            "gpus": [vars(g) for g in self.gpus], "npus": [vars(n) for n in self.npus],
            "llama_cpp_backends": list(self.llama_backends),
            "onnx_execution_providers": list(self.onnx_providers),
            "devices": [d for d in DEVICES if d == "cpu" or self.can_run(d, "gguf") or self.can_run(d, "onnx")],
            "os": self.os,
        }


@dataclass(frozen=True)
class DeviceChoice:
    device: str  # cpu | gpu | npu
    provider: str | None  # ONNX execution provider for onnx models; None for GGUF
    reason: str  # one line for the log and `ps`


def choose_device(hardware: Hardware, preferred: str = "cpu", fallback: tuple[str, ...] | list[str] = (),
                  model_format: str = "gguf", offered: tuple[str, ...] | list[str] | None = None) -> DeviceChoice:
    """The first device in ``preferred, *fallback`` that this machine can run ``model_format`` on (and, when
    ``offered`` is given, that a model variant exists for). CPU is the last resort unless every device was
    named and none fits. Raises UnsupportedCapability with each refusal's reason."""
    from lokal.errors import UnsupportedCapability

    order = list(dict.fromkeys([preferred, *fallback]))
    refusals = []
    for device in order:
        if device not in DEVICES:
            raise UnsupportedCapability(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
        if offered is not None and device not in offered:
            refusals.append(f"no {device} variant")
            continue
        if not hardware.can_run(device, model_format):
            refusals.append(_why_not(hardware, device, model_format))
            continue
        provider = None
        if model_format == "onnx":
            provider = hardware.providers_for(device)[0]
        reason = f"{device} (preferred)" if device == order[0] else f"{device}, falling back: {'; '.join(refusals)}"
        return DeviceChoice(device=device, provider=provider, reason=reason)
    raise UnsupportedCapability(f"no device fits {' > '.join(order)}: {'; '.join(refusals)}")


def _why_not(hardware: Hardware, device: str, model_format: str) -> str:
    found = hardware.gpus if device == "gpu" else hardware.npus
    if not found:
        return f"no {device} found"
    if model_format == "onnx":
        return (f"{device} {found[0].name} found but no ONNX execution provider for it is installed "
                f"(have: {', '.join(hardware.onnx_providers) or 'none'})")
    return (f"{device} {found[0].name} found but this llama.cpp build has no backend for it "
            f"(have: {', '.join(hardware.llama_backends)})")


def detect() -> Hardware:
    """This machine, read from /proc, /sys, nvidia-smi/rocm-smi and the installed libraries. Never raises."""
    import platform

    cpu_model, isa = _cpu_info()
    logical = os.cpu_count() or 1
    try:
        from lokal.config import physical_cores

        physical = physical_cores()
    except Exception:
        physical = logical
    gpus = _nvidia_gpus() + _amd_gpus() + _apple_gpus()
    return Hardware(cpu_model=cpu_model, cores_physical=physical, cores_logical=logical, isa=isa,
                    memory_total=_meminfo("MemTotal"), memory_available=available_memory(),
                    gpus=tuple(gpus), npus=tuple(_npus()), llama_backends=_llama_backends(),
                    onnx_providers=_onnx_providers(), os=platform.system().lower(), arch=platform.machine())


_ISA_FLAGS = {"avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f",
              "avx512_bf16": "avx512_bf16", "avx512_vnni": "avx512_vnni", "avx_vnni": "avx_vnni",
              "amx_tile": "amx", "amx_bf16": "amx_bf16", "amx_int8": "amx_int8", "sse4_2": "sse4_2",
              "asimd": "neon", "asimddp": "dotprod", "sve": "sve", "i8mm": "i8mm"}


def _cpu_info() -> tuple[str, tuple[str, ...]]:
    import platform

    model, flags = "", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "Hardware", "cpu model") and not model:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    if platform.machine() in ("arm64", "aarch64") and platform.system() == "Darwin":
        flags.add("asimd")  # every Apple silicon core has NEON
    isa = tuple(dict.fromkeys(name for flag, name in _ISA_FLAGS.items() if flag in flags))
    return model or platform.processor() or platform.machine(), isa


def _meminfo(field_name: str) -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _run(command: list[str]) -> str | None:
    import shutil
    import subprocess

    if shutil.which(command[0]) is None:
        return None
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def _nvidia_gpus() -> list[Accelerator]:
    """NVIDIA GPUs through NVML (pynvml) when installed, else nvidia-smi."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
            found = []
            for index in range(pynvml.nvmlDeviceGetCount()):
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                name = pynvml.nvmlDeviceGetName(handle)
                found.append(Accelerator("gpu", "nvidia", name if isinstance(name, str) else name.decode(),
                                         int(pynvml.nvmlDeviceGetMemoryInfo(handle).total), str(driver)))
            return found
        finally:
            pynvml.nvmlShutdown()
    except Exception:
        pass
    out = _run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"])
    gpus = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            memory = int(float(parts[1])) * 1024 * 1024 if parts[1].replace(".", "").isdigit() else None
            gpus.append(Accelerator("gpu", "nvidia", parts[0], memory, parts[2]))
    return gpus


def _amd_gpus() -> list[Accelerator]:
    """AMD GPUs that ROCm's kernel driver exposes (KFD topology), named by rocm-smi when present."""
    nodes = Path("/sys/class/kfd/kfd/topology/nodes")
    gpus = []
    try:
        for node in sorted(nodes.iterdir()):
            properties = (node / "properties").read_text()
            if "simd_count 0" in properties or "simd_count" not in properties:
                continue  # a CPU node
            name = (node / "name").read_text().strip() or "AMD GPU"
            gpus.append(Accelerator("gpu", "amd", name, None, "rocm"))
    except OSError:
        pass
    return gpus


def _apple_gpus() -> list[Accelerator]:
    import platform

    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return [Accelerator("gpu", "apple", "Apple silicon GPU", None, "metal")]
    return []


def _npus() -> list[Accelerator]:
    """NPUs with a Linux kernel driver: Intel's (intel_vpu → /dev/accel), AMD's (amdxdna), Qualcomm's."""
    import platform

    found = []
    drivers = {"intel_vpu": ("intel", "Intel NPU"), "amdxdna": ("amd", "AMD Ryzen AI NPU"),
               "qaic": ("qualcomm", "Qualcomm Cloud AI"), "fastrpc": ("qualcomm", "Qualcomm Hexagon NPU")}
    try:
        for device in sorted(Path("/sys/class/accel").iterdir()):
            driver = (device / "device" / "driver").resolve().name
            vendor, name = drivers.get(driver, ("unknown", f"accelerator ({driver})"))
            found.append(Accelerator("npu", vendor, name, None, driver))
    except OSError:
        pass
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        found.append(Accelerator("npu", "apple", "Apple Neural Engine", None, "coreml"))
    return found


def _llama_backends() -> tuple[str, ...]:
    """llama.cpp backends compiled into the installed llama-cpp-python (CPU is always there)."""
    backends = ["CPU"]
    try:
        import llama_cpp

        if llama_cpp.llama_supports_gpu_offload():
            info = llama_cpp.llama_print_system_info().decode(errors="replace")
            for name in ("CUDA", "Metal", "HIP", "ROCm", "Vulkan", "SYCL", "OpenCL", "CANN"):
                if name.upper() in info.upper():
                    backends.append(name)
            if len(backends) == 1:
                backends.append("GPU")
    except Exception:
        pass
    return tuple(backends)


def _onnx_providers() -> tuple[str, ...]:
    """ONNX Runtime execution providers this install can use (empty without `lokal[onnx]`)."""
    try:
        import onnxruntime

        return tuple(onnxruntime.get_available_providers())
    except Exception:
        return ()
