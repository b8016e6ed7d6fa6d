"""``lokal models test NAME [--benchmark]``: load a model in this process, answer one prompt, and report what
someone choosing a model asks first: load time, time to first token, tokens per second, and the memory the
model takes. ``--benchmark`` then runs ``lokal bench``'s load test on the same loaded model (no second load).

Memory is this process's resident size (RSS): before the model loads (Python and the libraries), with the
model loaded and idle after answering (weights paged in, KV cache allocated), and the highest seen from
loading through the benchmark (sampled every 10 ms). The model's share is each of the last two minus the
first.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from lokal.bench import BenchConfig, InProcessTarget, run_bench
from lokal.bench_report import BenchReport
from lokal.config import Settings
from lokal.hardware import PeakRss, process_rss


@dataclass
class SmokeTest:
    """The one answered prompt, timed from the client's side and by the engine."""

    text: str
    load_seconds: float
    first_token_ms: float | None  # request sent → first piece of text, the load included
    num_prompt_tokens: int
    prompt_tokens_per_second: float
    num_tokens: int
    tokens_per_second: float


@dataclass
class MemoryUse:
    """Resident bytes of this process; ``model_*`` are what loading and running the model added."""

    before_load: int
    idle: int
    peak: int

    @property
    def model_idle(self) -> int:
        return max(0, self.idle - self.before_load)

    @property
    def model_peak(self) -> int:
        return max(0, self.peak - self.before_load)


@dataclass
class ModelTestReport:
    model: str
    smoke: SmokeTest
    memory: MemoryUse | None  # None where the process's RSS cannot be read (not Linux)
    benchmark: BenchReport | None = None

    def to_dict(self) -> dict[str, Any]:
        memory = None
        if self.memory is not None:
            memory = {**asdict(self.memory), "model_idle": self.memory.model_idle,
                      "model_peak": self.memory.model_peak}
        return {"model": self.model, "smoke": asdict(self.smoke), "memory": memory,
                "benchmark": self.benchmark.to_dict() if self.benchmark else None}


def check_model(name: str, settings: Settings, prompt: str, num_predict: int = 64,
                bench: BenchConfig | None = None, progress: Callable[[str], None] | None = None) -> ModelTestReport:
    """Load ``name`` (pulling it if needed), answer ``prompt`` greedily, measure memory; with ``bench``, run
    that load test on the loaded model. ``bench.concurrency``'s highest level sets num_parallel, as a server
    configured for the run would have."""
    from lokal.llm import LLM

    options: dict[str, Any] = {"temperature": 0}
    if bench is not None:
        bench.validate()  # before a model is loaded
        options["num_parallel"] = max(bench.concurrency)
    with LLM(name, settings=settings, **options) as llm:
        before_load = process_rss()
        with PeakRss() as peak:
            smoke = _answer(llm, prompt, num_predict)
            idle = process_rss()
            report = None
            if bench is not None:
                bench.model = llm.model
                report = run_bench(bench, settings, progress, target=InProcessTarget(bench, llm))
    memory = None
    if before_load is not None and idle is not None and peak.peak is not None:
        memory = MemoryUse(before_load=before_load, idle=idle, peak=max(peak.peak, idle))
    return ModelTestReport(model=llm.model, smoke=smoke, memory=memory, benchmark=report)


def _answer(llm: Any, prompt: str, num_predict: int) -> SmokeTest:
    started = time.perf_counter()
    first_token_at = None
    pieces: list[str] = []
    done = None
    for chunk in llm.generate(prompt, stream=True, options={"num_predict": num_predict}):
        if chunk.text:
            first_token_at = first_token_at or time.perf_counter()
            pieces.append(chunk.text)
        if chunk.done is not None:
            done = chunk.done
    assert done is not None  # the runtime ends every stream with Done or raises
    return SmokeTest(text="".join(pieces), load_seconds=done.load_duration / 1e9,
                     first_token_ms=(first_token_at - started) * 1000 if first_token_at else None,
                     num_prompt_tokens=done.prompt_eval_count,
                     prompt_tokens_per_second=done.prompt_tokens_per_second,
                     num_tokens=done.eval_count, tokens_per_second=done.eval_tokens_per_second)


__all__ = ["SmokeTest", "MemoryUse", "ModelTestReport", "check_model"]
