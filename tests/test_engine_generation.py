"""The engine on the real SmolLM2 at temperature 0: equality with a plain llama.cpp loop, concurrency,
stop strings, limits, seeds, prefix reuse, async streaming and bad input."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from lokal.engine import AsyncSink, Engine, EngineConfig, SyncSink
from lokal.errors import BadRequest, Cancelled, ContextOverflow
from lokal.types import Done, SamplingOptions, Token

STORY_PROMPTS = ["Once upon a time, in a small village by the sea,",
                 "The three most important things to know about Python are",
                 "<|im_start|>user\nWrite a short poem about autumn leaves.<|im_end|>\n<|im_start|>assistant\n"]


def greedy(**options) -> SamplingOptions:
    return SamplingOptions(temperature=0, **options)


def generate(engine: Engine, tokens: list[int], sampling: SamplingOptions, grammar: str | None = None):
    """Run one request to the end: (text, generated ids in Token events, Done)."""
    sink = SyncSink()
    engine.submit(tokens, sampling, grammar=grammar, sink=sink)
    texts, ids, done = [], [], None
    for event in sink:
        if isinstance(event, Token):
            texts.append(event.text)
            ids += event.ids
        else:
            done = event
    assert isinstance(done, Done)
    return "".join(texts), ids, done


@pytest.fixture(scope="module")
def engine(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=4)) as engine:
        yield engine


def test_greedy_output_equals_a_plain_llama_cpp_loop_token_for_token(smollm2_path, greedy_reference):
    for prompt in STORY_PROMPTS:
        # A fresh engine per prompt, so that the request's KV cells sit where the reference's do: cached
        # prefixes of earlier requests shift them, which changes float rounding and with it near-tied tokens.
        with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=4)) as engine:
            tokens = engine.tokenize(prompt)
            expected = greedy_reference(smollm2_path, tokens, 32)
            assert len(expected) == 32, "the reference must produce 32 tokens for the test to mean something"
            text, ids, done = generate(engine, tokens, greedy(num_predict=32))
            assert ids == expected
            assert text == engine.detokenize(expected)
            assert done.reason == "length" and done.eval_count == 32
            assert done.context == tokens + expected


def counting_prompts() -> list[tuple[str, str]]:
    """(prompt, the continuation nothing but that sequence allows), continuations computed here."""
    return [(", ".join(str(i) for i in range(1, 7)) + ",", " " + ", ".join(str(i) for i in range(7, 10))),
            (" ".join("abcdefg"), " " + " ".join("hij")),
            (", ".join(str(i) for i in range(10, 50, 10)) + ",", " " + ", ".join(str(i) for i in (50, 60)))]


def test_concurrent_requests_each_get_their_own_continuation(engine):
    cases = counting_prompts()
    for _ in range(3):  # several rounds: slots are reused with different prompts each time
        sinks = []
        for i in range(8):  # 4 slots: half of them wait in the queue
            prompt, expected = cases[i % len(cases)]
            sink = SyncSink()
            engine.submit(engine.tokenize(prompt), greedy(num_predict=8), sink=sink)
            sinks.append((sink, expected))
        for sink, expected in sinks:
            text = "".join(event.text for event in sink if isinstance(event, Token))
            assert text.startswith(expected), (text, expected)
    assert engine.stats().num_busy == 0 and engine.num_live_samplers == 0


def test_stop_string_across_tokens_cuts_the_output_before_it(engine):
    tokens = engine.tokenize(STORY_PROMPTS[0])
    text, ids, _ = generate(engine, tokens, greedy(num_predict=40))
    # A stop string made of the end of one token and the start of the next, first seen at that boundary.
    offsets, boundary, stop = [0], None, None
    for token in ids:
        offsets.append(offsets[-1] + len(engine.token_piece(token).decode("utf-8", errors="ignore")))
    for k in range(5, len(ids) - 1):
        left, right = text[offsets[k] - 2:offsets[k]], text[offsets[k]:offsets[k] + 2]
        if len(left) == 2 and len(right) == 2 and text.find(left + right) == offsets[k] - 2:
            boundary, stop = offsets[k], left + right
            break
    assert stop is not None
    cut_text, _, done = generate(engine, tokens, greedy(num_predict=40, stop=[stop]))
    assert cut_text == text[:boundary - 2]
    assert done.reason == "stop"


def test_control_tokens_are_written_out_so_stop_strings_can_match_them(engine, smollm2_path, greedy_reference):
    prompt = engine.tokenize("Conversation log:\n<|im_start|>user\nhi<|im_end|>\n"
                             "<|im_start|>assistant\nHello<|im_end|>\n")
    start_of_turn = engine.tokenize("<|im_start|>")
    assert greedy_reference(smollm2_path, prompt, 1) == start_of_turn  # what the model does here, unprompted
    text, _, _ = generate(engine, prompt, greedy(num_predict=3))
    assert text.startswith("<|im_start|>")
    cut, ids, done = generate(engine, prompt, greedy(num_predict=3, stop=["<|im_start|>"]))
    assert cut == "" and ids == [] and done.reason == "stop" and done.context[len(prompt):] == start_of_turn


def test_num_predict_stops_with_length_after_exactly_that_many_tokens(engine):
    for num_predict in (1, 5, 17):
        text, ids, done = generate(engine, engine.tokenize("Hello"), greedy(num_predict=num_predict, ignore_eos=True))
        assert done.reason == "length" and done.eval_count == num_predict and len(ids) == num_predict


def test_end_of_generation_stops_with_stop_and_is_not_emitted(engine):
    prompt = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    text, ids, done = generate(engine, engine.tokenize(prompt), greedy(num_predict=200))
    assert done.reason == "stop" and done.eval_count == len(ids) + 1  # the end token counts, is not shown
    assert not any(engine.is_eog(token) for token in ids) and "<|im_end|>" not in text


def test_seed_makes_sampling_repeatable(engine):
    tokens = engine.tokenize(STORY_PROMPTS[0])
    options = SamplingOptions(temperature=0.8, seed=1234, num_predict=24, ignore_eos=True)
    first, _, _ = generate(engine, tokens, options)
    second, _, _ = generate(engine, tokens, options)
    assert first == second and first


def test_a_prompt_that_fills_the_context_is_refused(engine):
    too_long = engine.tokenize("hello " * 600)
    assert len(too_long) >= 512
    with pytest.raises(ContextOverflow):
        engine.submit(too_long, greedy(), sink=SyncSink())
    assert engine.num_live_samplers == 0


def test_generation_that_reaches_the_context_end_stops_with_length(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=64, num_parallel=2)) as engine:
        tokens = engine.tokenize(STORY_PROMPTS[1])
        _, ids, done = generate(engine, tokens, greedy(ignore_eos=True))
        assert done.reason == "length" and len(ids) == done.eval_count == 64 - len(tokens)


def test_prefix_reuse_computes_only_the_new_tokens(engine):
    first_prompt = engine.tokenize("A long story about a dragon who learned to cook. " * 8)
    _, first_ids, first = generate(engine, first_prompt, greedy(num_predict=12, ignore_eos=True))
    assert first.prompt_eval_count == len(first_prompt)  # no other test's prompt starts like this one
    new = engine.tokenize(" Then the dragon opened a restaurant.", add_special=False)
    follow_up = first.context + new
    _, _, second = generate(engine, follow_up, greedy(num_predict=4))
    # The first request's last generated token was sampled but never computed, so it is computed now.
    assert second.prompt_eval_count == len(new) + 1


def test_an_identical_prompt_computes_nothing_before_its_first_token(engine):
    # Its cache kept the logits the prompt ended with: the first token is sampled from them.
    prompt = engine.tokenize("The capital of France is a city called")
    _, first_ids, first = generate(engine, prompt, greedy(num_predict=6, ignore_eos=True))
    assert first.prompt_eval_count == len(prompt)  # no other test's prompt is this one
    _, again_ids, again = generate(engine, prompt, greedy(num_predict=6, ignore_eos=True))
    assert again.prompt_eval_count == 0 and again.prompt_eval_duration > 0
    assert again_ids == first_ids and again.context == first.context


def test_a_seeded_sample_of_an_identical_prompt_repeats_exactly(engine):
    prompt = engine.tokenize("Name a colour, any colour:")
    sampling = SamplingOptions(temperature=1.5, seed=1234, num_predict=8, ignore_eos=True)
    _, first_ids, first = generate(engine, prompt, sampling)
    _, again_ids, again = generate(engine, prompt, sampling)
    assert first.prompt_eval_count == len(prompt) and again.prompt_eval_count == 0
    assert again_ids == first_ids


def test_a_prompt_one_token_longer_than_a_cached_one_computes_that_token_only(engine):
    prompt = engine.tokenize("Rivers of Europe, in order of length:")
    _, _, first = generate(engine, prompt, greedy(num_predict=2))
    _, _, longer = generate(engine, prompt + engine.tokenize(" the", add_special=False), greedy(num_predict=2))
    assert first.prompt_eval_count == len(prompt) and longer.prompt_eval_count == 1


def test_a_cache_parked_while_another_request_ran_is_restored_and_continues_exactly(smollm2_path):
    # Plain: the story's KV stays in its slot. One slot: another request parks it in host memory, then it is
    # copied back. Two slots: the other request takes the empty slot and the story's KV never moves. Same KV
    # in the same cells each way, so the follow-up is the same token for token.
    answers = []
    for num_parallel, is_interleaved in ((1, False), (1, True), (2, True)):
        with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=num_parallel)) as engine:
            story = engine.tokenize("A long story about a lighthouse keeper and her cat. " * 6)
            _, _, first = generate(engine, story, greedy(num_predict=10, ignore_eos=True))
            if is_interleaved:
                _, _, other = generate(engine, engine.tokenize("Unrelated: list three colours."), greedy(num_predict=4))
                assert other.prompt_eval_count > 1
                is_parked = engine._scheduler.slots.num_parked_bytes > 0  # the story's KV left the context
                assert is_parked == (num_parallel == 1)
            # The story asked again: its logits came along with its KV, so nothing is computed.
            _, _, story_again = generate(engine, story, greedy(num_predict=10, ignore_eos=True))
            assert story_again.prompt_eval_count == 0 and story_again.context == first.context
            new = engine.tokenize(" The cat then", add_special=False)
            _, ids, follow_up = generate(engine, first.context + new, greedy(num_predict=16, ignore_eos=True))
            assert follow_up.prompt_eval_count == len(new) + 1
            answers.append(ids)
    assert answers[0] == answers[1] == answers[2] and len(answers[0]) == 16


def test_stats_are_ollamas(engine):
    tokens = engine.tokenize(STORY_PROMPTS[1])
    _, ids, done = generate(engine, engine.tokenize("Fresh words nobody said before: ") + tokens,
                            greedy(num_predict=10, ignore_eos=True))
    assert done.eval_count == 10 and done.prompt_eval_duration > 0 and done.eval_duration > 0
    assert done.total_duration >= done.prompt_eval_duration + done.eval_duration > 0


class Recording:
    """Mixed into a sink: remembers what the engine delivered, to tell a cancelled request from a finished one."""

    def __init__(self, *args):
        super().__init__(*args)
        self.delivered: list = []
        self.failure: BaseException | None = None

    def push(self, events):
        self.delivered += events
        super().push(events)

    def fail(self, exc):
        self.failure = exc
        super().fail(exc)

    def was_cancelled(self) -> bool:
        return isinstance(self.failure, Cancelled) and not any(isinstance(e, Done) for e in self.delivered)


class RecordingAsyncSink(Recording, AsyncSink):
    pass


class RecordingSyncSink(Recording, SyncSink):
    pass


def test_async_sink_streams_and_leaving_early_cancels(engine):
    prompt, expected = counting_prompts()[0]

    async def scenario():
        sink = AsyncSink(asyncio.get_running_loop())
        engine.submit(engine.tokenize(prompt), greedy(num_predict=8), sink=sink)
        text = "".join([event.text async for event in sink if isinstance(event, Token)])
        assert text.startswith(expected)
        abandoned = RecordingAsyncSink(asyncio.get_running_loop())
        engine.submit(engine.tokenize(prompt), greedy(num_predict=400, ignore_eos=True), sink=abandoned)
        async for _ in abandoned:
            break  # the consumer leaves after one event: the request must end
        for _ in range(4000):  # keep the loop alive: only the cancellation may end the request
            if abandoned.was_cancelled():
                break
            await asyncio.sleep(0.005)
        assert abandoned.was_cancelled()

    asyncio.run(scenario())
    wait_until_idle(engine)


def test_leaving_a_sync_stream_early_cancels_the_request(engine):
    sink = RecordingSyncSink()
    engine.submit(engine.tokenize("Count: 1, 2,"), greedy(num_predict=400, ignore_eos=True), sink=sink)
    stream = iter(sink)
    assert isinstance(next(stream), Token)
    stream.close()
    wait_for(sink.was_cancelled)
    wait_until_idle(engine)


def test_a_cancelled_consumer_that_keeps_listening_gets_cancelled(engine):
    sink = SyncSink()
    handle = engine.submit(engine.tokenize("Count: 1, 2,"), greedy(num_predict=400, ignore_eos=True), sink=sink)
    handle.cancel()
    with pytest.raises(Cancelled):
        for _ in sink:
            pass


def test_tokenize_is_safe_from_many_threads_while_generating(engine):
    texts = [f"Thread {i}: {STORY_PROMPTS[i % 3]} 東京 👋 {i * 7}" for i in range(64)]
    expected = [engine.tokenize(text) for text in texts]
    sink = SyncSink()
    engine.submit(engine.tokenize(STORY_PROMPTS[0]), greedy(num_predict=64, ignore_eos=True), sink=sink)
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(engine.tokenize, texts)) == expected
            assert list(pool.map(engine.detokenize, expected)) == texts
    assert sum(len(event.ids) for event in sink if isinstance(event, Token)) == 64


@pytest.mark.parametrize("tokens, message", [([], "no tokens"), ([-1, 5], "token ids"), ([10**9], "token ids"),
                                            ([1, 2.5], "integers"), (["a"], "integers")])
def test_bad_prompts_are_clear_errors_and_leak_nothing(engine, tokens, message):
    with pytest.raises(BadRequest, match=message):
        engine.submit(tokens, greedy(), sink=SyncSink())
    assert engine.num_live_samplers == 0


def test_unknown_token_ids_are_refused_everywhere(engine):
    for call in (lambda: engine.detokenize([1, engine.n_vocab]), lambda: engine.token_piece(-3),
                 lambda: engine.is_eog(engine.n_vocab + 5), lambda: engine.embed([[engine.n_vocab]])):
        with pytest.raises(BadRequest, match="token ids"):
            call()


def test_a_grammar_llama_cpp_cannot_compile_is_a_bad_request(engine):
    with pytest.raises(BadRequest, match="grammar"):
        engine.submit(engine.tokenize("x"), greedy(), grammar="root ::= (", sink=SyncSink())
    assert engine.num_live_samplers == 0


def test_model_facts(engine):
    assert engine.n_vocab == 49152 == int(engine.metadata["llama.vocab_size"])
    assert engine.n_ctx_train == int(engine.metadata["llama.context_length"])
    assert engine.n_ctx_per_seq == 512
    assert engine.eos == int(engine.metadata["tokenizer.ggml.eos_token_id"]) and engine.is_eog(engine.eos)
    assert engine.eos_text == "<|im_end|>" and engine.add_bos is False
    assert engine.tokenize("<|im_end|>") == [engine.eos]
    assert engine.tokenize("<|im_end|>", parse_special=False) != [engine.eos]


def test_close_is_idempotent_and_ends_waiting_requests(smollm2_path):
    engine = Engine(smollm2_path, EngineConfig(num_ctx=128, num_parallel=1))
    sinks = [SyncSink() for _ in range(3)]
    for sink in sinks:
        engine.submit(engine.tokenize("Hello"), greedy(num_predict=100, ignore_eos=True), sink=sink)
    engine.close()
    engine.close()
    for sink in sinks:
        events = []
        with pytest.raises(Cancelled):
            for event in sink:
                events.append(event)
        assert not any(isinstance(event, Done) for event in events)


def engine_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("lokal-engine-")]


def test_an_idle_engine_holds_no_thread_and_wakes_for_new_work(smollm2_path):
    """llama.cpp's OpenMP runtime slows every model ~3x while more threads than cores hold thread teams, so
    a loaded but idle engine must not keep the thread it computed on."""
    before = set(engine_threads())
    first = Engine(smollm2_path, EngineConfig(num_ctx=128, num_parallel=1))
    second = Engine(smollm2_path, EngineConfig(num_ctx=128, num_parallel=1))
    try:
        prompt = first.tokenize("1, 2, 3, 4, 5, 6,", add_special=True)
        for engine in (first, second, first):
            text, _, done = generate(engine, prompt, greedy(num_predict=6))
            assert text.startswith(" 7, 8") and done.eval_count == 6
            wait_for(lambda: not set(engine_threads()) - before)
        vectors = second.embed([prompt])  # embeddings wake it too
        assert len(vectors) == 1
        wait_for(lambda: not set(engine_threads()) - before)
    finally:
        first.close()
        second.close()


def wait_for(condition) -> None:
    """Block until ``condition()`` holds (cancellation takes effect at the engine's next step)."""
    waiter = threading.Event()
    for _ in range(4000):
        if condition():
            return
        waiter.wait(0.005)
    assert condition()


def wait_until_idle(engine: Engine) -> None:
    wait_for(lambda: engine.stats().num_busy == 0 and engine.stats().num_waiting == 0)
    assert engine.num_live_samplers == 0


@pytest.mark.parametrize("kv_cache_type", ["q8_0", "q4_0"])
def test_a_quantized_kv_cache_takes_less_memory_and_still_answers(smollm2_path, kv_cache_type, caplog):
    from lokal.hardware import KV_CACHE_TYPES, estimate_memory
    from lokal.store.gguf_info import read_details

    metadata = read_details(smollm2_path).metadata
    f16 = estimate_memory(0, metadata, 4096, "f16").kv_cache
    assert estimate_memory(0, metadata, 4096, kv_cache_type).kv_cache == int(f16 * KV_CACHE_TYPES[kv_cache_type] / 2)
    config = EngineConfig(num_ctx=256, num_parallel=1, kv_cache_type=kv_cache_type, flash_attention=True)
    with Engine(smollm2_path, config) as engine:
        text, _, done = generate(engine, engine.tokenize("1, 2, 3, 4, 5,"), greedy(num_predict=6))
        assert text.strip().startswith("6") and done.eval_count == 6
    assert "using f16" not in caplog.text  # with flash attention, llama.cpp takes the quantized cache


def test_a_quantized_kv_cache_without_flash_attention_falls_back_to_f16(smollm2_path, caplog):
    # llama.cpp needs flash attention for a quantized V cache: the engine loads with f16 rather than failing.
    config = EngineConfig(num_ctx=256, num_parallel=1, kv_cache_type="q8_0", flash_attention=False)
    with caplog.at_level("WARNING", logger="lokal.engine"), Engine(smollm2_path, config) as engine:
        text, _, _ = generate(engine, engine.tokenize("1, 2, 3, 4, 5,"), greedy(num_predict=4))
        assert text.strip().startswith("6")
    assert "using f16" in caplog.text
