"""What this machine offers a model: memory, and an estimate of what a model needs from it."""

from __future__ import annotations

import os
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
