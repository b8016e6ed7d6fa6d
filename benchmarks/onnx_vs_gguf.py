"""GGUF (llama.cpp) vs ONNX (ONNX Runtime GenAI) on the same model, in lokal's own engines: one stream, and
``--concurrency`` streams decoded together (continuous batching in both engines).

Converts the bundled SmolLM2 with `lokal convert` if the store lacks the ONNX variant, then alternates runs
(GGUF, ONNX, GGUF, …: this machine's speed drifts within minutes, so only alternating runs compare) of one
greedy request with a fixed prompt and a fixed number of generated tokens (EOS ignored), then of
``--concurrency`` such requests at once. Prints a Markdown table of prefill and decode tok/s (median of the
runs) and the aggregate tok/s of the concurrent runs, and appends it to RESULTS.md with --write.

    python benchmarks/onnx_vs_gguf.py --store /tmp/onnx-bench --runs 5 --tokens 128 --concurrency 4 [--write]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

from lokal.config import Settings, physical_cores
from lokal.engine import Engine, EngineConfig, SyncSink, set_llama_logging
from lokal.engine.onnx import OnnxEngine
from lokal.store.sources import pull
from lokal.store.store import Store
from lokal.types import Done, SamplingOptions

ONNX_NAME = "smollm2:135m-onnx-int4-cpu"
PROMPT = "Write a long story about a lighthouse keeper who finds a message in a bottle. " * 2


def measure(engine, tokens: list[int], num_predict: int) -> Done:
    sink = SyncSink()
    engine.submit(tokens, SamplingOptions(temperature=0, num_predict=num_predict, ignore_eos=True), sink=sink)
    done = [event for event in sink if isinstance(event, Done)][-1]
    assert done.eval_count == num_predict, done
    return done


def measure_together(engine, prompts: list[list[int]], num_predict: int) -> float:
    """Aggregate decode tok/s of ``len(prompts)`` requests submitted at once: all tokens / wall time."""
    sinks = [SyncSink() for _ in prompts]
    started = time.perf_counter()
    for tokens, sink in zip(prompts, sinks):
        engine.submit(tokens, SamplingOptions(temperature=0, num_predict=num_predict, ignore_eos=True), sink=sink)
    dones = [[event for event in sink if isinstance(event, Done)][-1] for sink in sinks]
    wall = time.perf_counter() - started
    assert all(done.eval_count == num_predict for done in dones), dones
    return len(prompts) * num_predict / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/lokal-onnx-bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--concurrency", type=int, default=4, help="Streams decoded together (num_parallel).")
    parser.add_argument("--write", action="store_true", help="Append the table to benchmarks/RESULTS.md")
    args = parser.parse_args()
    set_llama_logging(False)
    store = Store(args.store)
    settings = Settings(environ={"LOKAL_MODELS": args.store})
    if not store.exists("smollm2"):
        for _ in pull(store, "smollm2", settings):
            pass
    if not store.exists(ONNX_NAME):
        from lokal.convert.onnx_export import convert_to_onnx

        for progress in convert_to_onnx(store, "smollm2"):
            print(progress.status)
    config = EngineConfig(num_ctx=1024, num_parallel=args.concurrency, num_thread=physical_cores())
    gguf = Engine(str(store.open("smollm2").path), config)
    onnx = OnnxEngine(store.open(ONNX_NAME).path, config)
    results: dict[str, list[Done]] = {"GGUF Q4_1 (llama.cpp)": [], "ONNX int4 (GenAI, CPU EP)": []}
    engines = {"GGUF Q4_1 (llama.cpp)": gguf, "ONNX int4 (GenAI, CPU EP)": onnx}
    tokens = {label: engine.tokenize(PROMPT) for label, engine in engines.items()}
    for label, engine in engines.items():  # warm-up, not counted
        measure(engine, tokens[label], 8)
    together: dict[str, list[float]] = {label: [] for label in engines}
    # Distinct openings, so no stream reuses another's cached prefix.
    prompts = {label: [engine.tokenize(f"Story {i}. {PROMPT}") for i in range(args.concurrency)]
               for label, engine in engines.items()}
    for _ in range(args.runs):
        for label, engine in engines.items():
            results[label].append(measure(engine, tokens[label], args.tokens))
            together[label].append(measure_together(engine, prompts[label], args.tokens))
    gguf.close()
    onnx.close()
    rows = []
    for label, runs in results.items():
        decode = statistics.median(d.eval_tokens_per_second for d in runs)
        prefill = statistics.median(d.prompt_tokens_per_second for d in runs)
        spread = f"{min(d.eval_tokens_per_second for d in runs):.1f}–{max(d.eval_tokens_per_second for d in runs):.1f}"
        rows.append(f"| {label} | {runs[0].prompt_eval_count} | {prefill:.0f} | {decode:.1f} | {spread} | "
                    f"{statistics.median(together[label]):.1f} ({getattr(engines[label], 'concurrency', 'batch')}) |")
    cpu = platform.processor() or platform.machine()
    table = "\n".join([
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · GGUF vs ONNX, 1 and {args.concurrency} streams ({cpu}, "
        f"{physical_cores()} cores)",
        "",
        f"`benchmarks/onnx_vs_gguf.py --runs {args.runs} --tokens {args.tokens} --concurrency {args.concurrency}`: "
        f"SmolLM2-135M-Instruct, the bundled Q4_1 GGUF and its `lokal convert` int4 ONNX, in lokal's engines in one "
        f"process, runs alternated; one greedy request, {args.tokens} tokens out with EOS ignored, then {args.concurrency} such requests at once "
        f"(engines loaded with num_parallel {args.concurrency}); medians over {args.runs} runs. The machine is "
        f"shared: compare the two rows, not the absolute figures.",
        "",
        f"| backend | prompt tokens | prefill tok/s | decode tok/s (median) | decode range | "
        f"{args.concurrency} streams: aggregate tok/s |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
    ])
    print(table)
    if args.write:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as results_file:
            results_file.write("\n" + table)


if __name__ == "__main__":
    main()
