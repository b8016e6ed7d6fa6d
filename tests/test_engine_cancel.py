"""Cancellation at random points: slots free, nothing leaks, the engine keeps answering correctly."""

from __future__ import annotations

import random
import threading

from lokal.engine import Engine, EngineConfig, SyncSink, grammar_for
from lokal.types import SamplingOptions, Token


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def wait_until_idle(engine: Engine) -> None:
    idle = threading.Event()
    for _ in range(4000):
        stats = engine.stats()
        if stats.num_busy == 0 and stats.num_waiting == 0:
            idle.set()
            break
        idle.wait(0.005)
    assert idle.is_set(), engine.stats()


def test_a_thousand_starts_and_cancels_leak_nothing(smollm2_path):
    rng = random.Random(7)
    json_grammar = grammar_for("json")
    with Engine(smollm2_path, EngineConfig(num_ctx=256, num_parallel=4)) as engine:
        prompts = [engine.tokenize(f"Story number {i}: once upon a time") for i in range(10)]
        rss_after_100 = 0
        for round_start in range(0, 1000, 10):
            started = []
            for i in range(10):  # ten at a time: some run, some wait for a slot
                sampling = SamplingOptions(temperature=rng.choice([0.0, 0.8]), num_predict=64, ignore_eos=True)
                sink = SyncSink()
                handle = engine.submit(prompts[i], sampling, grammar=json_grammar if i % 3 == 0 else None,
                                       sink=sink)
                started.append((handle, sink))
            for i, (handle, sink) in enumerate(started):
                if i == round_start // 10 % 10:  # one in ten surely mid-generation: after its first event
                    next(iter(sink))
                elif rng.random() < 0.5:  # the others at once or after a moment, wherever that falls
                    threading.Event().wait(rng.random() * 0.005)
                handle.cancel()
            if round_start + 10 == 100:
                wait_until_idle(engine)
                rss_after_100 = rss_bytes()
        wait_until_idle(engine)
        rss_after_1000 = rss_bytes()
        assert engine.num_live_samplers == 0
        stats = engine.stats()
        assert stats.num_free == stats.num_slots == 4 and stats.num_waiting == 0
        # Memory, not time: 900 more cancelled requests must not grow the process noticeably.
        assert rss_after_1000 - rss_after_100 < 32 * 2**20, (rss_after_100, rss_after_1000)

        sink = SyncSink()
        engine.submit(engine.tokenize("1, 2, 3, 4, 5, 6,"), SamplingOptions(temperature=0, num_predict=8), sink=sink)
        text = "".join(event.text for event in sink if isinstance(event, Token))
        assert text.startswith(" " + ", ".join(str(n) for n in range(7, 10)))


def test_cancelling_twice_or_after_the_end_is_harmless(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=128, num_parallel=1)) as engine:
        sink = SyncSink()
        handle = engine.submit(engine.tokenize("Hi"), SamplingOptions(temperature=0, num_predict=3), sink=sink)
        events = list(sink)
        handle.cancel()
        handle.cancel()
        assert len(events) >= 1 and events[-1].eval_count == 3
        wait_until_idle(engine)
        assert engine.num_live_samplers == 0
