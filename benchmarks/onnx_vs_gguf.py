"""GGUF (llama.cpp) vs ONNX (ONNX Runtime GenAI) on the same model, single stream, in lokal's own engines.

Converts the bundled SmolLM2 with `lokal convert` if the store lacks the ONNX variant, then alternates runs
(GGUF, ONNX, GGUF, …: this machine's speed drifts within minutes, so only alternating runs compare) of one
greedy request with a fixed prompt and a fixed number of generated tokens (EOS ignored). Prints a Markdown
table of prefill and decode tok/s (median of the runs) and appends it to RESULTS.md with --write.

    python benchmarks/onnx_vs_gguf.py --store /tmp/onnx-bench --runs 5 --tokens 128 [--write]
"""

from __future__ import annotations

import argparse
import platform
import statistics
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default="/tmp/lokal-onnx-bench")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=128)
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
    config = EngineConfig(num_ctx=1024, num_parallel=1, num_thread=physical_cores())
    gguf = Engine(str(store.open("smollm2").path), config)
    onnx = OnnxEngine(store.open(ONNX_NAME).path, config)
    results: dict[str, list[Done]] = {"GGUF Q4_1 (llama.cpp)": [], "ONNX int4 (GenAI, CPU EP)": []}
    engines = {"GGUF Q4_1 (llama.cpp)": gguf, "ONNX int4 (GenAI, CPU EP)": onnx}
    tokens = {label: engine.tokenize(PROMPT) for label, engine in engines.items()}
    for label, engine in engines.items():  # warm-up, not counted
        measure(engine, tokens[label], 8)
    for _ in range(args.runs):
        for label, engine in engines.items():
            results[label].append(measure(engine, tokens[label], args.tokens))
    gguf.close()
    onnx.close()
    rows = []
    for label, runs in results.items():
        decode = statistics.median(d.eval_tokens_per_second for d in runs)
        prefill = statistics.median(d.prompt_tokens_per_second for d in runs)
        spread = f"{min(d.eval_tokens_per_second for d in runs):.1f}–{max(d.eval_tokens_per_second for d in runs):.1f}"
        rows.append(f"| {label} | {runs[0].prompt_eval_count} | {prefill:.0f} | {decode:.1f} | {spread} |")
    cpu = platform.processor() or platform.machine()
    table = "\n".join([
        f"## {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC · GGUF vs ONNX, single stream ({cpu}, "
        f"{physical_cores()} cores)",
        "",
        f"`benchmarks/onnx_vs_gguf.py --runs {args.runs} --tokens {args.tokens}`: SmolLM2-135M-Instruct, the bundled "
        f"Q4_1 GGUF and its `lokal convert` int4 ONNX, in lokal's engines in one process, runs alternated; one "
        f"greedy request, {args.tokens} tokens out with EOS ignored; medians over {args.runs} runs. The machine is "
        f"shared: compare the two rows, not the absolute figures.",
        "",
        "| backend | prompt tokens | prefill tok/s | decode tok/s (median) | decode range |",
        "|---|---:|---:|---:|---:|",
        *rows,
        "",
    ])
    print(table)
    if args.write:
        with open(Path(__file__).with_name("RESULTS.md"), "a") as results_file:
            results_file.write("\n" + table)


if __name__ == "__main__":
    main()
