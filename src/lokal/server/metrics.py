"""Prometheus metrics of one server: HTTP requests, generations, residency, and the runtime's live state.

Each app owns its registry (two servers in one process, as in tests, never mix their numbers). Three kinds
of source feed it:
- the access middleware (``access.py``) reports each HTTP request and, for generations, what the event
  stream showed: time to first token, gaps between tokens, and the final ``Done``'s token counts;
- the runtime tells it about loads and unloads (``Runtime.residency_listeners``);
- at scrape time a collector reads the runtime and each loaded engine (queue, sequences, KV cells, prompt
  cache, prefix hits), so gauges are never stale.

Labels are bounded: model names as the store names them (only models that generated), route templates
(``/api/chat``, never the raw path), API flavour, method, status. Never prompts, never keys.
"""

from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import (CollectorRegistry, Counter, Histogram, ProcessCollector, disable_created_metrics,
                               generate_latest)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from lokal.types import Done

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# No ``*_created`` series: a timestamp per counter and histogram child doubles the series for nothing a
# dashboard uses (process-wide setting of prometheus_client).
disable_created_metrics()

# Seconds: from a fraction of a decode step to a cold load of a large model.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28)
TOKENS_PER_SECOND_BUCKETS = (1, 2, 5, 10, 20, 40, 80, 160, 320, 640, 1280)
LOAD_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self, runtime: Any):
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter("lokal_http_requests", "HTTP requests by API flavour, route template, method "
                                     "and status.", ["api", "route", "method", "status"], registry=r)
        self.http_duration = Histogram("lokal_http_request_duration_seconds", "Time from a request's arrival to "
                                       "the last byte of its response.", ["api", "route"],
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.generations = Counter("lokal_generations", "Generations finished, by model and why they ended "
                                   "(stop, length).", ["model", "reason"], registry=r)
        self.ttft = Histogram("lokal_time_to_first_token_seconds", "From a request's arrival to its first token "
                              "(queue wait, model load and prompt included).", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.inter_token = Histogram("lokal_inter_token_latency_seconds", "Time between consecutive tokens of a "
                                     "stream.", ["model"], buckets=INTER_TOKEN_BUCKETS, registry=r)
        self.queue_wait = Histogram("lokal_queue_wait_seconds", "Time before a request's prompt started "
                                    "computing, model load excluded: time to first token minus load and prompt "
                                    "evaluation.", ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.prompt_tokens = Counter("lokal_prompt_tokens", "Prompt tokens computed (Ollama's prompt_eval_count; "
                                     "prefix-cache hits are lokal_prefix_cache_hit_tokens_total).", ["model"],
                                     registry=r)
        self.generated_tokens = Counter("lokal_generated_tokens", "Tokens generated (Ollama's eval_count, "
                                        "OpenAI's completion_tokens).", ["model"], registry=r)
        self.tokens_per_second = Histogram("lokal_generation_tokens_per_second", "Decode speed of each "
                                           "generation (eval_count / eval_duration).", ["model"],
                                           buckets=TOKENS_PER_SECOND_BUCKETS, registry=r)
        self.load_seconds = Histogram("lokal_model_load_seconds", "Model loads and how long each took.", ["model"],
                                      buckets=LOAD_BUCKETS, registry=r)
        self.unload_seconds = Histogram("lokal_model_unload_seconds", "Model unloads by reason (requested, "
                                        "keep_alive, max_loaded, memory, reload, shutdown) and how long each took.",
                                        ["model", "reason"], buckets=LOAD_BUCKETS, registry=r)
        ProcessCollector(registry=r)  # process_resident_memory_bytes, process_cpu_seconds_total, open fds
        r.register(RuntimeCollector(runtime))
        listeners = getattr(runtime, "residency_listeners", None)
        if listeners is not None:
            listeners.append(self.on_residency)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def observe_http(self, api: str, route: str, method: str, status: int, seconds: float) -> None:
        self.http_requests.labels(api, route, method, str(status)).inc()
        self.http_duration.labels(api, route).observe(seconds)

    def observe_generation(self, done: Done, ttft: float | None, token_gaps: list[tuple[float, int]]) -> None:
        """One finished generation: ``ttft`` from arrival, ``token_gaps`` as (seconds, tokens it brought)."""
        model = done.model
        if not model or done.reason not in ("stop", "length"):
            return  # a load or unload request, not a generation
        self.generations.labels(model, done.reason).inc()
        self.prompt_tokens.labels(model).inc(done.prompt_eval_count)
        self.generated_tokens.labels(model).inc(done.eval_count)
        if done.eval_duration and done.eval_count:
            self.tokens_per_second.labels(model).observe(done.eval_tokens_per_second)
        if ttft is not None:
            self.ttft.labels(model).observe(ttft)
            wait = ttft - (done.load_duration + done.prompt_eval_duration) / 1e9
            self.queue_wait.labels(model).observe(max(0.0, wait))
        inter_token = self.inter_token.labels(model)
        for seconds, num_tokens in token_gaps:
            for _ in range(num_tokens):
                inter_token.observe(seconds / num_tokens)

    def on_residency(self, event: Any) -> None:
        if event.kind == "load":
            self.load_seconds.labels(event.model).observe(event.seconds)
        else:
            self.unload_seconds.labels(event.model, event.cause or "unknown").observe(event.seconds)


class RuntimeCollector(Collector):
    """The runtime's state, read at scrape time."""

    def __init__(self, runtime: Any):
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        runtime = self.runtime
        yield GaugeMetricFamily("lokal_requests_in_flight", "Requests between arrival and end, running or "
                                "waiting.", value=runtime.num_in_flight)
        yield GaugeMetricFamily("lokal_queue_depth", "Requests waiting beyond the loaded models' decoding slots "
                                "(the queue LOKAL_MAX_QUEUE bounds).", value=runtime.num_waiting)
        yield CounterMetricFamily("lokal_queue_refused", "Requests refused with 503 because the queue was full.",
                                  value=runtime.num_refused)
        running = runtime.running()
        yield GaugeMetricFamily("lokal_models_loaded", "Models loaded now.", value=len(running))
        memory = GaugeMetricFamily("lokal_model_memory_bytes", "Estimated memory of each loaded model (weights "
                                   "and KV cache).", labels=["model"])
        for model in running:
            memory.add_metric([model.name], model.size)
        yield memory
        sequences = GaugeMetricFamily("lokal_sequences", "Sequences per loaded model: running in a slot or "
                                      "waiting for one.", labels=["model", "state"])
        slots = GaugeMetricFamily("lokal_slots", "Decoding slots (num_parallel) per loaded model.", labels=["model"])
        cells = GaugeMetricFamily("lokal_kv_cells", "KV cache cells per loaded model.", labels=["model"])
        cells_used = GaugeMetricFamily("lokal_kv_cells_used", "KV cache cells holding tokens (running or cached).",
                                       labels=["model"])
        parked = GaugeMetricFamily("lokal_prompt_cache_parked_bytes", "Idle requests' KV parked in host memory "
                                   "for prompts that continue them (LOKAL_PROMPT_CACHE).", labels=["model"])
        hits = CounterMetricFamily("lokal_prefix_cache_hit_tokens", "Prompt tokens not computed because a cached "
                                   "prefix held them, since the model loaded.", labels=["model"])
        for name, engine in runtime.loaded_engines():
            stats = engine.stats()
            sequences.add_metric([name, "running"], stats.num_busy)
            sequences.add_metric([name, "waiting"], stats.num_waiting)
            slots.add_metric([name], stats.num_slots)
            cells.add_metric([name], stats.num_kv_cells)
            cells_used.add_metric([name], stats.num_kv_cells_used)
            parked.add_metric([name], stats.num_parked_bytes)
            hits.add_metric([name], stats.num_reused_tokens)
        yield from (sequences, slots, cells, cells_used, parked, hits)
