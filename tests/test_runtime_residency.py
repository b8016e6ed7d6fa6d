"""Residency decisions with a stand-in engine, in milliseconds (as Ollama's sched_test does): keep-alive,
LRU eviction, memory refusal and eviction, the bounded queue, reloads on load options.

The store is real (the bundled models, so the memory estimate and chat template are real); only the engine
and the free-memory reading are the runtime's seams. tests/test_runtime.py proves the same wiring on the real
engine.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from lokal.config import Settings
from lokal.engine import EngineConfig, EngineStats
from lokal.errors import InsufficientMemory, ServerBusy
from lokal.runtime import Runtime
from lokal.store.sources import pull
from lokal.store.store import Store
from lokal.types import Done, GenerateRequest, Token

GB = 1 << 30


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    settings = Settings(environ={"LOKAL_MODELS": str(root)})
    store = Store(root)
    for name in ("smollm2", "gemma3:270m"):
        for _ in pull(store, name, settings):
            pass
    return root


class FakeHandle:
    def __init__(self, engine: FakeEngine):
        self.engine = engine
        self.is_cancelled = False

    def cancel(self) -> None:
        self.is_cancelled = True


class FakeEngine:
    """Answers every request with one token and Done at once, or, while ``gate`` is set, only once the
    test releases it. Records what the runtime does with it."""

    def __init__(self, path: Path, config: EngineConfig, gate: threading.Event | None):
        self.path = Path(path)
        self.config = config
        self.gate = gate
        self.is_closed = False
        self.close_reason = ""
        self.num_submitted = 0

    bos_text = ""
    eos_text = ""

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(text.encode())

    def submit(self, tokens, sampling, *, grammar=None, logprobs=None, sink) -> FakeHandle:
        self.num_submitted += 1
        handle = FakeHandle(self)
        sink.attach(handle)

        def answer() -> None:
            if self.gate is not None:
                self.gate.wait(10)
            sink.push([Token("ok", [1]), Done(reason="stop", eval_count=1)])

        threading.Thread(target=answer, daemon=True).start()
        return handle

    def embed(self, token_lists, normalize: bool = True) -> list[list[float]]:
        return [[1.0, 0.0] for _ in token_lists]

    def stats(self) -> EngineStats:
        return EngineStats(num_slots=self.config.num_parallel, num_busy=0, num_free=self.config.num_parallel,
                           num_waiting=0)

    def close(self, reason: str = "unloaded") -> None:
        self.is_closed = True
        self.close_reason = reason


class Harness:
    def __init__(self, store_root: Path, free_memory: int = 64 * GB, gate: threading.Event | None = None, **env):
        environ = {"LOKAL_MODELS": str(store_root), "LOKAL_NUM_PARALLEL": "2", "LOKAL_CONTEXT_LENGTH": "512"}
        environ.update({f"LOKAL_{k.upper()}": str(v) for k, v in env.items()})
        self.free = free_memory
        self.gate = gate
        self.opened: list[FakeEngine] = []
        self.runtime = Runtime(Settings(environ=environ), open_engine=self._open, free_memory=lambda: self.free)

    def _open(self, path: Path, config: EngineConfig, fmt: str, provider: object) -> FakeEngine:
        assert fmt == "gguf"
        engine = FakeEngine(path, config, self.gate)
        self.opened.append(engine)
        return engine

    async def complete(self, model: str, **request) -> Done:
        done = None
        async for event in self.runtime.generate(GenerateRequest(model=model, prompt="hi", raw=True, **request)):
            if isinstance(event, Done):
                done = event
        assert done is not None
        return done

    def loaded(self) -> list[str]:
        return [m.name for m in self.runtime.running()]


def run(coroutine):
    return asyncio.run(coroutine)


def test_the_default_seam_opens_the_real_engine_for_a_gguf(store_root):
    from lokal.engine.open import model_format

    store = Store(store_root)
    entry = store.get("smollm2")
    assert model_format(store.model_path(entry)) == "gguf"
    assert model_format(Path(__file__)) == ""
    assert model_format(Path(__file__).parent) == "onnx"  # an ONNX model is a folder


def test_loads_once_and_reuses_the_engine(store_root):
    async def scenario():
        h = Harness(store_root)
        first = await h.complete("smollm2")
        assert first.load_duration > 0
        second = await h.complete("smollm2", options={"temperature": 0.3})  # sampling options: same engine
        assert second.load_duration == 0
        assert len(h.opened) == 1 and h.opened[0].num_submitted == 2
        await h.runtime.close()
        assert h.opened[0].is_closed and "shutting down" in h.opened[0].close_reason
    run(scenario())


def test_load_options_reload_the_model(store_root):
    async def scenario():
        h = Harness(store_root)
        await h.complete("smollm2")
        await h.complete("smollm2", options={"num_ctx": 256})
        assert [e.config.num_ctx for e in h.opened] == [512, 256]
        assert h.opened[0].is_closed and not h.opened[1].is_closed
        await h.runtime.close()
    run(scenario())


def test_the_prompt_cache_on_disk_is_kept_apart_per_kv_layout(store_root):
    """Flash attention stores V by rows, without it V is transposed; llama.cpp refuses a sequence state saved
    in the other layout (``incompatible V transposition``), so each layout and KV type has its own folder."""
    async def scenario():
        h = Harness(store_root)
        await h.complete("smollm2", options={"flash_attention": False})
        await h.complete("smollm2", options={"flash_attention": True})
        h2 = Harness(store_root, kv_cache_type="q8_0")
        await h2.complete("smollm2")
        folders = [Path(e.config.prompt_cache_dir) for e in h.opened + h2.opened]
        assert len(set(folders)) == 3 and len({folder.parent for folder in folders}) == 1
        assert folders[0].name.endswith("-f16")  # without flash attention: the folder earlier versions wrote
        await h.runtime.close()
        await h2.runtime.close()
    run(scenario())


def test_keep_alive_zero_unloads_after_the_request_and_expiry_unloads_later(store_root):
    async def scenario():
        h = Harness(store_root)
        await h.complete("smollm2", keep_alive=0)
        for _ in range(100):
            if not h.loaded():
                break
            await asyncio.sleep(0.01)
        assert h.loaded() == [] and h.opened[0].is_closed
        await h.complete("smollm2", keep_alive=0.05)
        assert h.loaded() == ["smollm2:latest"]
        await asyncio.sleep(0.3)
        assert h.loaded() == [] and h.opened[1].is_closed
        await h.complete("smollm2", keep_alive=-1)
        [running] = h.runtime.running()
        assert running.expires_at is None
        await h.runtime.close()
    run(scenario())


def test_max_loaded_models_evicts_the_least_recently_used(store_root):
    async def scenario():
        Store(store_root).copy("smollm2", "third")  # a third model name (same weights) to push one out
        h = Harness(store_root, max_loaded_models=2)
        await h.complete("smollm2")
        await h.complete("gemma3:270m")
        await h.complete("smollm2")  # gemma3 is now the least recently used
        await h.complete("third")
        assert sorted(h.loaded()) == ["smollm2:latest", "third:latest"]
        smollm2, gemma3, third = h.opened
        assert gemma3.is_closed and not smollm2.is_closed and not third.is_closed
        await h.runtime.close()
    run(scenario())


def test_memory_refusal_when_nothing_can_make_room(store_root):
    async def scenario():
        h = Harness(store_root, free_memory=1 << 20)
        with pytest.raises(InsufficientMemory, match="requires .* GB of memory"):
            await h.complete("smollm2")
        assert h.opened == [] and h.loaded() == []
        h.free = 64 * GB  # the runtime still serves once memory is there
        await h.complete("smollm2")
        assert h.loaded() == ["smollm2:latest"]
        await h.runtime.close()
    run(scenario())


def test_memory_pressure_evicts_an_idle_model_first(store_root):
    async def scenario():
        h = Harness(store_root)
        await h.complete("smollm2")
        h.free = 1 << 20  # too little for gemma3 while smollm2 holds its memory …
        original_close = FakeEngine.close

        def close_and_free(engine: FakeEngine, reason: str = "") -> None:
            original_close(engine, reason)
            h.free = 64 * GB  # … until smollm2 is unloaded

        for engine in h.opened:
            engine.close = close_and_free.__get__(engine)  # type: ignore[method-assign]
        await h.complete("gemma3:270m")
        assert h.loaded() == ["gemma3:270m"]
        assert h.opened[0].is_closed
        await h.runtime.close()
    run(scenario())


def test_a_busy_model_is_never_evicted_the_newcomer_waits(store_root):
    async def scenario():
        gate = threading.Event()
        h = Harness(store_root, gate=gate, max_loaded_models=1)
        busy = asyncio.create_task(h.complete("smollm2"))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(h.complete("gemma3:270m"))
        await asyncio.sleep(0.1)
        assert not waiting.done() and h.loaded() == ["smollm2:latest"]
        gate.set()
        await busy
        await waiting
        assert h.loaded() == ["gemma3:270m"] and h.opened[0].is_closed
        await h.runtime.close()
    run(scenario())


def test_full_queue_fails_fast_with_server_busy(store_root):
    async def scenario():
        h = Harness(store_root, max_queue=1, num_parallel=1)
        await h.complete("smollm2")  # loaded: one decoding slot, so one more request may wait
        gate = h.opened[0].gate = threading.Event()
        tasks = [asyncio.create_task(h.complete("smollm2")) for _ in range(4)]
        await asyncio.sleep(0.1)
        gate.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        busy = [r for r in results if isinstance(r, ServerBusy)]
        served = [r for r in results if isinstance(r, Done)]
        assert len(served) == 2 and len(busy) == 2  # the slot's request and the one waiting; the rest refused
        assert "LOKAL_MAX_QUEUE" in str(busy[0])
        await h.complete("smollm2")  # healthy afterwards
        await h.runtime.close()
    run(scenario())
