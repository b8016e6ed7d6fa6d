"""How an engine is built: context size, slots, batch, threads, KV cache. Read by every layer of the engine
(the runner builds its llama context from it), so it lives apart from them all."""

from __future__ import annotations

from dataclasses import dataclass

from lokal.errors import ConfigError
from lokal.hardware import KV_CACHE_TYPES


@dataclass(frozen=True)
class EngineConfig:
    num_ctx: int = 4096  # tokens per sequence
    num_parallel: int = 4  # sequences decoded together (slots)
    num_batch: int = 512  # most tokens one step computes
    num_thread: int | None = None  # None: physical cores
    num_gpu: int = -1  # layers to offload; -1 all
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attention: bool | None = None  # where llama.cpp supports it; None: cpu_build.default_flash_attention
    kv_cache_type: str = "f16"  # a key of lokal.hardware.KV_CACHE_TYPES
    embedding: bool = False  # embedding-only use: no generation context at all
    prompt_cache: int = 512 << 20  # bytes of idle slots' KV parked in host memory for prefix reuse (kv.py)
    prefix_reuse: bool = True  # False: every prompt is computed in full (LOKAL_PREFIX_REUSE=0)
    prompt_cache_dir: str = ""  # where idle caches go when the engine closes and come from when it opens
    num_draft: int = 0  # speculative decoding: most guesses per step (draft.py); 0 off
    draft_model: str = ""  # a GGUF of the same vocabulary that makes the guesses; "" guesses by prompt lookup
    adapters: tuple[tuple[str, float], ...] = ()  # LoRA GGUFs with their scales, applied to every context

    def __post_init__(self) -> None:
        if self.num_ctx < 16:
            raise ConfigError("num_ctx must be at least 16")
        if self.num_parallel < 1:
            raise ConfigError("num_parallel must be at least 1")
        if self.kv_cache_type not in KV_CACHE_TYPES:
            raise ConfigError(f"kv_cache_type must be one of {', '.join(KV_CACHE_TYPES)}")
        if self.prompt_cache < 0:
            raise ConfigError("prompt_cache must be 0 or more bytes")
        if self.num_draft < 0:
            raise ConfigError("num_draft must be 0 or more")
        if self.num_batch < 1:
            raise ConfigError("num_batch must be at least 1")

    @property
    def batch_size(self) -> int:
        """Tokens one step may compute: num_batch, but at least one per slot so that no stream starves."""
        return max(self.num_batch, self.num_parallel)
