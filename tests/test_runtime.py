"""Residency: load on first use, keep_alive, LRU eviction, memory refusal, bounded queue, reloads."""

from __future__ import annotations

import asyncio
import time

import pytest

from lokal.config import Settings
from lokal.errors import InsufficientMemory, ModelNotFound, ServerBusy
from lokal.runtime import Runtime
from lokal.store.sources import pull
from lokal.store.store import Store
from lokal.types import Done, GenerateRequest, Token

GREEDY = {"temperature": 0, "num_predict": 8}
COUNTING = "1, 2, 3, 4, 5, 6,"


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    settings = Settings(environ={"LOKAL_MODELS": str(root)})
    store = Store(root)
    for name in ("smollm2", "gemma3:270m"):
        for _ in pull(store, name, settings):
            pass
    return root


def make_runtime(store_root, **env) -> Runtime:
    environ = {"LOKAL_MODELS": str(store_root), "LOKAL_NUM_PARALLEL": "2", "LOKAL_CONTEXT_LENGTH": "512"}
    environ.update({f"LOKAL_{k.upper()}": str(v) for k, v in env.items()})
    return Runtime(Settings(environ=environ))


async def complete(runtime: Runtime, model: str, prompt: str = COUNTING, **request) -> tuple[str, Done]:
    text, done = [], None
    async for event in runtime.generate(GenerateRequest(model=model, prompt=prompt, raw=True,
                                                        options=request.pop("options", GREEDY), **request)):
        if isinstance(event, Token):
            text.append(event.text)
        else:
            done = event
    assert done is not None
    return "".join(text), done


def run(coroutine):
    return asyncio.run(coroutine)


def test_loads_on_first_use_and_reports_load_time(store_root):
    async def scenario():
        runtime = make_runtime(store_root)
        try:
            assert runtime.running() == []
            text, done = await complete(runtime, "smollm2")
            assert text.startswith(" 7, 8")
            assert done.load_duration > 0 and done.total_duration >= done.load_duration
            _, second = await complete(runtime, "smollm2")
            assert second.load_duration == 0  # already resident
            [running] = runtime.running()
            assert running.name == "smollm2:latest" and running.context_length == 512
        finally:
            await runtime.close()
    run(scenario())


def test_empty_prompt_loads_and_keep_alive_zero_unloads(store_root):
    async def scenario():
        runtime = make_runtime(store_root)
        try:
            events = [e async for e in runtime.generate(GenerateRequest(model="smollm2"))]
            assert [e.reason for e in events] == ["load"]
            assert len(runtime.running()) == 1
            events = [e async for e in runtime.generate(GenerateRequest(model="smollm2", keep_alive=0))]
            assert [e.reason for e in events] == ["unload"]
            assert runtime.running() == []
        finally:
            await runtime.close()
    run(scenario())


def test_keep_alive_expiry_unloads(store_root):
    async def scenario():
        runtime = make_runtime(store_root)
        try:
            await complete(runtime, "smollm2", keep_alive=0.2)
            assert len(runtime.running()) == 1
            deadline = time.monotonic() + 30
            while runtime.running() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert runtime.running() == []
            # A negative keep_alive keeps the model with no expiry.
            await complete(runtime, "smollm2", keep_alive=-1)
            [running] = runtime.running()
            assert running.expires_at is None
        finally:
            await runtime.close()
    run(scenario())


def test_max_loaded_one_alternates_models_correctly(store_root):
    async def scenario():
        runtime = make_runtime(store_root, max_loaded_models=1)
        try:
            for _ in range(2):
                for model in ("smollm2", "gemma3:270m"):
                    text, _ = await complete(runtime, model, prompt="10, 20, 30, 40,")
                    assert text.strip().startswith("50"), (model, text)
                    assert [m.name for m in runtime.running()] == [model if ":" in model else model + ":latest"]
        finally:
            await runtime.close()
    run(scenario())


def test_sampling_options_reuse_the_engine_and_load_options_reload(store_root):
    async def scenario():
        runtime = make_runtime(store_root)
        try:
            await complete(runtime, "smollm2")
            engine = runtime.loaded_engine("smollm2")
            await complete(runtime, "smollm2", options={"temperature": 0.5, "top_k": 5, "seed": 1, "num_predict": 4})
            assert runtime.loaded_engine("smollm2") is engine
            _, done = await complete(runtime, "smollm2", options={**GREEDY, "num_ctx": 256})
            assert runtime.loaded_engine("smollm2") is not engine
            assert done.load_duration > 0
            assert runtime.running()[0].context_length == 256
        finally:
            await runtime.close()
    run(scenario())


def test_a_model_that_can_never_fit_is_refused_clearly(store_root):
    async def scenario():
        runtime = make_runtime(store_root)
        try:
            with pytest.raises(InsufficientMemory, match="requires .* GB"):
                await complete(runtime, "smollm2", options={"num_ctx": 50_000_000})
            assert runtime.running() == []
            text, _ = await complete(runtime, "smollm2")  # and the runtime still serves
            assert text.startswith(" 7")
        finally:
            await runtime.close()
    run(scenario())


def test_full_queue_fails_fast_with_server_busy(store_root):
    async def scenario():
        runtime = make_runtime(store_root, max_queue=1, num_parallel=1)
        try:
            long = {"temperature": 0, "num_predict": 64, "ignore_eos": True}
            results = await asyncio.gather(*(complete(runtime, "smollm2", options=long) for _ in range(4)),
                                           return_exceptions=True)
            busy = [r for r in results if isinstance(r, ServerBusy)]
            served = [r for r in results if not isinstance(r, BaseException)]
            assert busy and served
            assert all(done.eval_count == 64 for _, done in served)
            text, _ = await complete(runtime, "smollm2")  # healthy afterwards
            assert text.startswith(" 7")
        finally:
            await runtime.close()
    run(scenario())


def test_unknown_model(store_root):
    async def scenario():
        runtime = make_runtime(store_root)
        try:
            with pytest.raises(ModelNotFound, match='model "nope" not found, try pulling it first'):
                await complete(runtime, "nope")
        finally:
            await runtime.close()
    run(scenario())


def test_abandoned_stream_frees_its_slot(store_root):
    async def scenario():
        runtime = make_runtime(store_root, num_parallel=1)
        try:
            for _ in range(5):
                stream = runtime.generate(GenerateRequest(model="smollm2", prompt=COUNTING, raw=True,
                                                          options={"num_predict": 200, "ignore_eos": True}))
                assert isinstance(await anext(stream), Token)
                await stream.aclose()
            text, _ = await complete(runtime, "smollm2")  # the only slot is free again
            assert text.startswith(" 7")
        finally:
            await runtime.close()
    run(scenario())
