"""The ONNX engine on the bundled SmolLM2 converted by `lokal convert` (once per session), and the store's
view of an ONNX model. Expected text comes from arithmetic (counting), not from our own earlier output."""

from __future__ import annotations

import json

import pytest

from lokal.engine import SyncSink
from lokal.errors import BadRequest, Cancelled, ContextOverflow, ModelNotFound
from lokal.store.store import Store
from lokal.types import Done, SamplingOptions, Token

ONNX_NAME = "smollm2:135m-onnx-int4-cpu"


@pytest.fixture(scope="module")
def engine(onnx_store):
    from lokal.engine.engine import EngineConfig
    from lokal.engine.onnx import OnnxEngine

    stored = Store(onnx_store).open(ONNX_NAME)
    with OnnxEngine(stored.path, EngineConfig(num_ctx=512, num_parallel=1)) as engine:
        yield engine


def run(engine, tokens, **options):
    sink = SyncSink()
    engine.submit(tokens, SamplingOptions(**{"temperature": 0, **options}), sink=sink)
    events = list(sink)
    assert isinstance(events[-1], Done)
    return "".join(e.text for e in events if isinstance(e, Token)), events[-1]


def test_convert_stores_one_onnx_manifest_named_like_foundry_variants(onnx_store):
    store = Store(onnx_store)
    entry = store.get(ONNX_NAME)
    files = {layer.from_ for layer in entry.manifest.layers}
    assert {"genai_config.json", "model.onnx", "tokenizer.json"} <= files
    assert all(layer.media_type == "application/vnd.lokal.image.onnx" for layer in entry.manifest.layers)
    stored = store.open(ONNX_NAME)
    assert stored.format == "onnx" and (stored.path / "genai_config.json").is_file()
    assert stored.details.quantization_level == "int4"
    assert stored.details.metadata["onnx.execution_provider"] == "cpu"
    assert "<|im_start|>" in (stored.details.chat_template or "")


def test_list_and_show_give_format_provider_and_precision(onnx_store):
    from lokal.model_info import describe, listing_details

    store = Store(onnx_store)
    details = listing_details(store, store.get(ONNX_NAME))
    assert (details["format"], details["quantization_level"], details["execution_provider"]) == ("onnx", "int4", "cpu")
    assert listing_details(store, store.get("smollm2"))["format"] == "gguf"
    shown = describe(store, ONNX_NAME)
    assert shown.details["format"] == "onnx" and shown.details["execution_provider"] == "cpu"
    assert "completion" in shown.capabilities


def test_greedy_counting_continues(engine):
    text, done = run(engine, engine.tokenize("1, 2, 3, 4, 5, 6,"), num_predict=6)
    assert text.startswith(" 7, 8,")
    assert done.reason == "length" and done.eval_count == 6
    assert done.prompt_eval_count == len(engine.tokenize("1, 2, 3, 4, 5, 6,"))
    assert done.eval_duration > 0 and done.prompt_eval_duration > 0


def test_stop_string_cuts_and_ends(engine):
    text, done = run(engine, engine.tokenize("1, 2, 3, 4, 5, 6,"), num_predict=20, stop=[" 9"])
    assert text == " 7, 8,"
    assert done.reason == "stop"


def test_json_guidance_output_parses_and_ends_at_end_of_turn(engine):
    prompt = "<|im_start|>user\nDescribe a cat as JSON<|im_end|>\n<|im_start|>assistant\n"
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}}, "required": ["name"],
              "additionalProperties": False}
    sink = SyncSink()
    engine.submit(engine.tokenize(prompt), SamplingOptions(temperature=0, num_predict=200), format=schema, sink=sink)
    events = list(sink)
    text = "".join(e.text for e in events if isinstance(e, Token))
    assert len(json.loads(text)["name"]) <= 16
    assert events[-1].reason == "stop" and "<|im_end|>" not in text  # the grammar ends it with end-of-turn


def test_bad_input_is_refused_before_queueing(engine):
    with pytest.raises(BadRequest):
        engine.submit([], SamplingOptions(), sink=SyncSink())
    with pytest.raises(BadRequest):
        engine.submit([10 ** 9], SamplingOptions(), sink=SyncSink())
    with pytest.raises(ContextOverflow):
        engine.submit([1] * 600, SamplingOptions(), sink=SyncSink())
    assert engine.stats().num_waiting == 0


def test_cancel_ends_the_request_and_the_next_one_runs(engine):
    sink = SyncSink()
    handle = engine.submit(engine.tokenize("Once upon a time"), SamplingOptions(temperature=0, num_predict=400,
                                                                                  ignore_eos=True), sink=sink)
    handle.cancel()
    with pytest.raises(Cancelled):
        list(sink)
    text, _ = run(engine, engine.tokenize("1, 2, 3, 4, 5, 6,"), num_predict=3)
    assert text.startswith(" 7")


def test_queue_serves_requests_in_turn(engine):
    sinks = [SyncSink() for _ in range(3)]
    prompt = engine.tokenize("1, 2, 3, 4, 5, 6,")
    for sink in sinks:
        engine.submit(prompt, SamplingOptions(temperature=0, num_predict=4), sink=sink)
    texts = ["".join(e.text for e in sink if isinstance(e, Token)) for sink in sinks]
    assert len(set(texts)) == 1 and texts[0].startswith(" 7")


def test_converting_an_unknown_model_is_a_clear_error(onnx_store):
    from lokal.convert.onnx_export import convert_to_onnx

    with pytest.raises(ModelNotFound):
        list(convert_to_onnx(Store(onnx_store), "no-such-model"))
    with pytest.raises(BadRequest, match="already an ONNX model"):
        list(convert_to_onnx(Store(onnx_store), ONNX_NAME))
    with pytest.raises(BadRequest, match="precision"):
        list(convert_to_onnx(Store(onnx_store), "smollm2", precision="int3"))


def test_show_command_names_format_and_provider(onnx_store, monkeypatch):
    from typer.testing import CliRunner

    from lokal.cli import app

    monkeypatch.setenv("LOKAL_MODELS", str(onnx_store))
    monkeypatch.setenv("LOKAL_HOST", "127.0.0.1:1")
    shown = CliRunner().invoke(app, ["show", ONNX_NAME])
    assert shown.exit_code == 0, shown.output
    assert "onnx" in shown.output and "execution provider" in shown.output and "int4" in shown.output


def test_runtime_counts_the_onnx_models_real_slots(onnx_store):
    """LOKAL_NUM_PARALLEL=8, but GenAI's engine batches at most its configured batch size (read here from
    GenAI itself): that many run, one more waits (LOKAL_MAX_QUEUE=1), the next is refused with ServerBusy (503),
    and `ps` says how many run at once."""
    import asyncio

    import onnxruntime_genai as og

    from lokal.config import Settings
    from lokal.errors import ServerBusy
    from lokal.runtime import Runtime
    from lokal.types import GenerateRequest

    stored = Store(onnx_store).open(ONNX_NAME)
    capacity = og.Engine(og.Model(str(stored.path))).get_capabilities().configured_max_batch_size
    assert 1 < capacity < 8

    def request(num_predict: int) -> GenerateRequest:
        return GenerateRequest(model=ONNX_NAME, prompt="Once upon a time", raw=True,
                               options={"temperature": 0, "num_predict": num_predict, "ignore_eos": True})

    async def scenario():
        runtime = Runtime(Settings(environ={"LOKAL_MODELS": str(onnx_store), "LOKAL_NUM_PARALLEL": "8",
                                            "LOKAL_MAX_QUEUE": "1", "LOKAL_CONTEXT_LENGTH": "1024"}))
        tasks = []
        try:
            assert (await _drain(runtime.generate(request(1)))).eval_count == 1  # loaded
            [running] = runtime.running()
            assert (running.num_parallel, running.concurrency) == (capacity, "batch")
            # long enough to still run while the others arrive; cancelled below
            tasks = [asyncio.create_task(_drain(runtime.generate(request(900)))) for _ in range(capacity + 1)]
            engine = runtime.loaded_engine(ONNX_NAME)
            while engine.stats().num_busy < capacity or runtime.num_in_flight < capacity + 1:
                await asyncio.sleep(0.01)
            assert runtime.num_waiting == 1 and engine.stats().num_waiting == 1
            with pytest.raises(ServerBusy, match="LOKAL_MAX_QUEUE"):
                await anext(runtime.generate(request(1)))
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await runtime.close()

    asyncio.run(scenario())


@pytest.fixture(scope="module")
def batched(onnx_store):
    from lokal.engine.engine import EngineConfig
    from lokal.engine.onnx import OnnxEngine

    stored = Store(onnx_store).open(ONNX_NAME)
    with OnnxEngine(stored.path, EngineConfig(num_ctx=512, num_parallel=4)) as engine:
        assert engine.concurrency == "batch" and engine.num_slots > 1
        yield engine


PROMPTS = ["1, 2, 3, 4, 5, 6,", "A, B, C, D, E, F,", "Once upon a time", "The capital of France is"]


def test_batched_streams_match_one_at_a_time(batched, engine):
    """Four requests decoded together by GenAI's Engine give, token for token, what the Generator path gives
    each alone (two separate GenAI implementations), including a stop string."""
    sinks = [SyncSink() for _ in PROMPTS]
    for prompt, sink in zip(PROMPTS, sinks):
        batched.submit(batched.tokenize(prompt), SamplingOptions(temperature=0, num_predict=12, stop=[" 9"]),
                       sink=sink)
    together = [list(sink) for sink in sinks]
    for prompt, events in zip(PROMPTS, together):
        alone, done_alone = run(engine, engine.tokenize(prompt), num_predict=12, stop=[" 9"])
        text = "".join(e.text for e in events if isinstance(e, Token))
        done = events[-1]
        assert isinstance(done, Done) and (text, done.reason, done.eval_count) == (alone, done_alone.reason,
                                                                                   done_alone.eval_count)
    assert together[0][-1].reason == "stop" and "".join(e.text for e in together[0][:-1]) == " 7, 8,"


def test_batched_cancel_leaves_the_others_running(batched):
    long_sink, short_sink = SyncSink(), SyncSink()
    handle = batched.submit(batched.tokenize("Once upon a time"),
                            SamplingOptions(temperature=0, num_predict=400, ignore_eos=True), sink=long_sink)
    batched.submit(batched.tokenize("1, 2, 3, 4, 5, 6,"), SamplingOptions(temperature=0, num_predict=4),
                   sink=short_sink)
    handle.cancel()
    with pytest.raises(Cancelled):
        list(long_sink)
    events = list(short_sink)
    assert "".join(e.text for e in events if isinstance(e, Token)).startswith(" 7") and events[-1].eval_count == 4
    assert batched.stats().num_busy == 0


def test_batched_json_schema_guidance(batched):
    prompt = "<|im_start|>user\nDescribe a cat as JSON<|im_end|>\n<|im_start|>assistant\n"
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 16}}, "required": ["name"],
              "additionalProperties": False}
    sink = SyncSink()
    batched.submit(batched.tokenize(prompt), SamplingOptions(temperature=0, num_predict=200), format=schema,
                   sink=sink)
    events = list(sink)
    text = "".join(e.text for e in events if isinstance(e, Token))
    assert len(json.loads(text)["name"]) <= 16 and events[-1].reason == "stop"


async def _drain(events) -> Done:
    done = None
    async for event in events:
        if isinstance(event, Done):
            done = event
    assert done is not None
    return done
