"""The prompt cache on disk: idle slots' KV written when an engine closes, read back when one opens, bounded,
and harmless when damaged. A chat continued on a new engine reuses its cached prefix and answers exactly as
the engine that computed it would have."""

from __future__ import annotations

import struct

from engine_runs import run_to_end

from lokal.engine import Engine, EngineConfig
from lokal.engine.kv_files import for_stream_count, load_prefixes, save_prefixes
from lokal.types import Done, SamplingOptions

TURN_1 = "<|im_start|>user\nList three fruits.<|im_end|>\n<|im_start|>assistant\n"
TURN_2 = "<|im_end|>\n<|im_start|>user\nAnd three vegetables?<|im_end|>\n<|im_start|>assistant\n"
GREEDY = SamplingOptions(temperature=0, num_predict=12)


def run(engine: Engine, tokens: list[int]) -> tuple[list[int], Done]:
    return run_to_end(engine, tokens, GREEDY)


def test_files_round_trip_newest_first_within_the_budget(tmp_path):
    save_prefixes(tmp_path, [([1, 2, 3], b"a" * 100)], budget=1000)
    save_prefixes(tmp_path, [([4, 5], b"b" * 100)], budget=1000)
    loaded = load_prefixes(tmp_path, budget=1000)
    assert [p.tokens for p in loaded] == [[4, 5], [1, 2, 3]] and loaded[1].saved.read() == b"a" * 100
    assert len(loaded[1].saved) == 100  # known without reading it: the KV stays on disk until a prompt reuses it
    assert [p.tokens for p in load_prefixes(tmp_path, budget=150)] == [[4, 5]]  # the reader keeps to its budget
    save_prefixes(tmp_path, [([6], b"c" * 800)], budget=1000)  # the writer too: the oldest file goes
    assert sorted(p.tokens[0] for p in load_prefixes(tmp_path, budget=10_000)) == [4, 6]


def test_damaged_or_foreign_files_are_skipped(tmp_path):
    save_prefixes(tmp_path, [([1, 2], b"x" * 50)], budget=1000)
    (tmp_path / "junk.kv").write_bytes(b"not a cache")
    (tmp_path / "short.kv").write_bytes(b"LKKV")
    assert [p.tokens for p in load_prefixes(tmp_path, budget=1000)] == [[1, 2]]
    assert load_prefixes(tmp_path / "missing", budget=1000) == []


def test_a_chat_continued_on_a_new_engine_reuses_the_cache_from_disk(smollm2_path, tmp_path):
    config = EngineConfig(num_ctx=512, num_parallel=2, prompt_cache_dir=str(tmp_path / "cache"))
    # The engine that computes turn 1 and answers turn 2 in memory: what the restored one must match.
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=2)) as engine:
        turn_1 = engine.tokenize(TURN_1)
        answer_1, _ = run(engine, turn_1)
        turn_2 = turn_1 + answer_1 + engine.tokenize(TURN_2, add_special=False)
        expected, in_memory = run(engine, turn_2)
    assert in_memory.prompt_eval_count < len(turn_2) - len(turn_1)

    with Engine(smollm2_path, config) as engine:
        assert run(engine, turn_1)[0] == answer_1
    assert list((tmp_path / "cache").glob("*.kv")), "closing wrote the idle slot's KV"

    with Engine(smollm2_path, config) as engine:  # "after a restart"
        ids, done = run(engine, turn_2)
    assert ids == expected
    assert done.prompt_eval_count == in_memory.prompt_eval_count  # only the new turn was computed


def test_a_chat_continued_under_another_num_parallel_still_reuses_the_cache(smollm2_path, tmp_path):
    """llama.cpp's sequence state records the saving context's number of KV streams (one per slot) and a
    context with another refuses it: without reframing, changing LOKAL_NUM_PARALLEL lost every cached chat."""
    cache = tmp_path / "cache"
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=3)) as engine:
        turn_1 = engine.tokenize(TURN_1)
        answer_1, _ = run(engine, turn_1)
        turn_2 = turn_1 + answer_1 + engine.tokenize(TURN_2, add_special=False)
        expected, in_memory = run(engine, turn_2)
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=2, prompt_cache_dir=str(cache))) as engine:
        assert run(engine, turn_1)[0] == answer_1
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=3, prompt_cache_dir=str(cache))) as engine:
        ids, done = run(engine, turn_2)
    assert ids == expected and done.prompt_eval_count == in_memory.prompt_eval_count


def test_a_sequence_state_is_reframed_for_another_number_of_streams():
    def u32(*values: int) -> bytes:
        return struct.pack(f"<{len(values)}I", *values)
    header = u32(0x12345678, 1)  # llama.cpp's magic number and the saving sequence's id, kept as they are
    cells = u32(4) + b"meta and KV of 4 cells"  # the filled stream's block: its cell count, then its cells
    saved = header + u32(3) + u32(0) + cells + u32(0)  # three streams, the sequence's own the second
    assert for_stream_count(saved, 3) == saved
    assert for_stream_count(saved, 2) == header + u32(2) + cells + u32(0)
    assert for_stream_count(saved, 1) == header + u32(1) + cells
    assert for_stream_count(for_stream_count(saved, 5), 3) == header + u32(3) + cells + u32(0, 0)
    for odd in (b"", header, header + u32(0), header + u32(3) + u32(0, 0, 0), header + u32(2) + cells + u32(9),
                header + u32(99) + cells):
        assert for_stream_count(odd, 2) == odd  # not laid out as expected: left for llama.cpp to refuse


def test_closing_releases_the_parked_caches_at_once(smollm2_path, tmp_path):
    """The engine sits in reference cycles that only the garbage collector breaks: an unloaded model kept its
    parked KV (up to the prompt_cache budget; 500 MB measured) until a collection that an idle server may
    never run. Closing drops it, whoever still holds the engine."""
    config = EngineConfig(num_ctx=512, num_parallel=1, prompt_cache_dir=str(tmp_path / "cache"))
    engine = Engine(smollm2_path, config)
    run(engine, engine.tokenize(TURN_1))
    run(engine, engine.tokenize("<|im_start|>user\nName a colour.<|im_end|>\n"))  # parks the first one's KV
    assert engine.stats().num_parked_bytes > 0
    engine.close()
    assert engine.stats().num_parked_bytes == 0 and engine.stats().num_kv_cells_used == 0
    assert len(list((tmp_path / "cache").glob("*.kv"))) == 2, "both caches were written before being dropped"


def test_a_cache_for_another_layout_is_ignored(smollm2_path, tmp_path):
    cache = tmp_path / "cache"
    save_prefixes(cache, [([1, 2, 3, 4], b"\x00" * 4096)], budget=1 << 20)  # not llama.cpp state
    with Engine(smollm2_path, EngineConfig(num_ctx=512, num_parallel=2, prompt_cache_dir=str(cache))) as engine:
        tokens = engine.tokenize(TURN_1)
        ids, done = run(engine, [1, 2, 3, 4] + tokens)  # llama.cpp refuses the state: computed from scratch
    assert ids and done.prompt_eval_count == len(tokens) + 4


def test_a_cache_file_gone_before_its_prefix_is_reused_costs_only_the_recompute(smollm2_path, tmp_path):
    cache = tmp_path / "cache"
    config = EngineConfig(num_ctx=512, num_parallel=2, prompt_cache_dir=str(cache))
    with Engine(smollm2_path, config) as engine:
        turn_1 = engine.tokenize(TURN_1)
        answer_1, _ = run(engine, turn_1)
    with Engine(smollm2_path, config) as engine:  # it read the file names and tokens, not the KV
        for path in cache.glob("*.kv"):
            path.unlink()
        ids, done = run(engine, turn_1)
    assert ids == answer_1 and done.prompt_eval_count == len(turn_1)


def test_unused_cached_prefixes_stay_on_disk_across_restarts(tmp_path):
    """A prefix read at load and never reused is not rewritten at close: its file is kept, now the newest."""
    save_prefixes(tmp_path, [([1, 2, 3], b"a" * 100)], budget=1000)
    (prefix,) = load_prefixes(tmp_path, budget=1000)
    before = prefix.saved.path.stat().st_mtime_ns
    assert save_prefixes(tmp_path, [(prefix.tokens, prefix.saved)], budget=1000) == 0
    assert prefix.saved.path.stat().st_mtime_ns >= before
    assert [(p.tokens, p.saved.read()) for p in load_prefixes(tmp_path, budget=1000)] == [([1, 2, 3], b"a" * 100)]
