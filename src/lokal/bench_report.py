"""The measuring half of ``lokal bench``: per-request measurements in; per-level statistics, a rich table,
JSON and a PNG plot out. Nothing here talks to a server (``lokal.bench`` does).

Definitions (all from the client's side of the wire):

- TTFT: request sent → first non-empty piece of text received.
- per-stream decode tok/s: (completion tokens − 1) / (last piece − first piece), for one request.
- aggregate tok/s: completion tokens of all successful requests / wall time of the level.
- prompt tok/s: prompt tokens / TTFT of one request (prefill speed as a client sees it, queueing included).
  Servers that reuse a cached prefix report only the tokens they computed, as Ollama does.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from lokal.errors import MissingDependency

REPORT_VERSION = 1


@dataclass
class RequestResult:
    """One request as the client saw it; times are ``time.perf_counter()`` seconds."""

    started_at: float
    finished_at: float = 0.0
    first_token_at: float | None = None
    last_token_at: float | None = None
    num_prompt_tokens: int | None = None  # as the server reported it; None when it did not
    num_completion_tokens: int = 0
    is_counted_by_server: bool = False  # completion tokens from the server's usage, else counted pieces
    text: str = ""
    error: str | None = None

    @property
    def is_ok(self) -> bool:
        return self.error is None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.started_at

    @property
    def latency(self) -> float:
        return self.finished_at - self.started_at

    @property
    def decode_tokens_per_second(self) -> float | None:
        if self.first_token_at is None or self.last_token_at is None or self.num_completion_tokens < 2:
            return None
        span = self.last_token_at - self.first_token_at
        return (self.num_completion_tokens - 1) / span if span > 0 else None

    @property
    def prompt_tokens_per_second(self) -> float | None:
        ttft = self.ttft
        if not self.num_prompt_tokens or not ttft or ttft <= 0:
            return None
        return self.num_prompt_tokens / ttft


def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0–100), interpolating linearly between the closest ranks (numpy's default)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= p <= 100:
        raise ValueError(f"percentile must be between 0 and 100, got {p}")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100
    below, above = math.floor(rank), math.ceil(rank)
    return ordered[below] + (ordered[above] - ordered[below]) * (rank - below)


def _percentile_or_none(values: Sequence[float], p: float) -> float | None:
    return percentile(values, p) if values else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000


@dataclass
class LevelStats:
    """One concurrency level: ``num_requests`` requests, at most ``concurrency`` in flight."""

    concurrency: int
    num_requests: int
    num_ok: int
    num_errors: int
    num_short: int  # successful requests with fewer tokens than asked while EOS was to be ignored
    wall_seconds: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None
    decode_tps_p50: float | None  # per stream
    aggregate_tps: float
    prompt_tps_p50: float | None
    num_prompt_tokens: int | None  # None when the server reported no prompt tokens
    num_completion_tokens: int
    is_counted_by_server: bool  # every completion count came from the server's usage
    errors: dict[str, int] = field(default_factory=dict)


def summarize(concurrency: int, results: Sequence[RequestResult], wall_seconds: float,
              expected_tokens: int | None = None) -> LevelStats:
    """Statistics of one level. ``expected_tokens`` (max_tokens when EOS is ignored) counts short answers."""
    ok = [r for r in results if r.is_ok]
    errors: dict[str, int] = {}
    for result in results:
        if result.error is not None:
            errors[result.error] = errors.get(result.error, 0) + 1
    ttfts = [t for t in (r.ttft for r in ok) if t is not None]
    latencies = [r.latency for r in ok]
    decode_rates = [v for v in (r.decode_tokens_per_second for r in ok) if v is not None]
    prompt_rates = [v for v in (r.prompt_tokens_per_second for r in ok) if v is not None]
    prompt_counts = [r.num_prompt_tokens for r in ok if r.num_prompt_tokens is not None]
    num_completion_tokens = sum(r.num_completion_tokens for r in ok)
    num_short = 0 if expected_tokens is None else sum(r.num_completion_tokens < expected_tokens for r in ok)
    return LevelStats(
        concurrency=concurrency, num_requests=len(results), num_ok=len(ok), num_errors=len(results) - len(ok),
        num_short=num_short, wall_seconds=wall_seconds,
        ttft_p50_ms=_ms(_percentile_or_none(ttfts, 50)), ttft_p95_ms=_ms(_percentile_or_none(ttfts, 95)),
        latency_p50_ms=_ms(_percentile_or_none(latencies, 50)),
        latency_p95_ms=_ms(_percentile_or_none(latencies, 95)),
        decode_tps_p50=_percentile_or_none(decode_rates, 50),
        aggregate_tps=num_completion_tokens / wall_seconds if wall_seconds > 0 else 0.0,
        prompt_tps_p50=_percentile_or_none(prompt_rates, 50),
        num_prompt_tokens=sum(prompt_counts) if ok and len(prompt_counts) == len(ok) else None,
        num_completion_tokens=num_completion_tokens,
        is_counted_by_server=bool(ok) and all(r.is_counted_by_server for r in ok),
        errors=errors)


@dataclass
class TurnStats:
    turn: int  # 1-based
    num_prompt_tokens: int | None
    num_completion_tokens: int
    ttft_ms: float | None
    error: str | None = None


@dataclass
class MultiTurnStats:
    """One chat whose history grows turn by turn, then its last request again with a prefix that no cache
    holds ("cold"): the ratio shows how much prefix reuse saves."""

    turns: list[TurnStats]
    cold_ttft_ms: float | None
    cold_num_prompt_tokens: int | None
    cold_error: str | None = None

    @property
    def last_turn_vs_cold(self) -> float | None:
        if not self.turns or self.turns[-1].ttft_ms is None or not self.cold_ttft_ms:
            return None
        return self.turns[-1].ttft_ms / self.cold_ttft_ms


def multi_turn_stats(turn_results: Sequence[RequestResult], cold: RequestResult | None) -> MultiTurnStats:
    turns = [TurnStats(turn=i + 1, num_prompt_tokens=r.num_prompt_tokens,
                       num_completion_tokens=r.num_completion_tokens, ttft_ms=_ms(r.ttft), error=r.error)
             for i, r in enumerate(turn_results)]
    return MultiTurnStats(turns=turns, cold_ttft_ms=_ms(cold.ttft) if cold else None,
                          cold_num_prompt_tokens=cold.num_prompt_tokens if cold else None,
                          cold_error=cold.error if cold else None)


@dataclass
class BenchReport:
    target: dict[str, Any]  # kind (http | in-process), base_url, model
    settings: dict[str, Any]  # the BenchConfig that produced it
    machine: dict[str, Any]
    started_at: str  # ISO 8601, UTC
    levels: list[LevelStats] = field(default_factory=list)
    multi_turn: MultiTurnStats | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["report_version"] = REPORT_VERSION
        if self.multi_turn is not None:
            data["multi_turn"]["last_turn_vs_cold"] = self.multi_turn.last_turn_vs_cold
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


def describe_machine() -> dict[str, Any]:
    """What a benchmark number needs next to it to mean anything."""
    from lokal.config import physical_cores

    return {"cpu": _cpu_model(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
            "memory_gib": _memory_gib(), "os": platform.platform(), "python": sys.version.split()[0],
            "llama_cpp_python": _version_of("llama_cpp_python"), "lokal": _version_of("lokal")}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return None


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


# ---- rendering ---------------------------------------------------------------------------------------------


def _fixed(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def render(report: BenchReport, console: Any) -> None:
    """Rich tables of the levels and the multi-turn scenario onto ``console`` (a ``rich.console.Console``)."""
    from rich.table import Table

    target = report.target
    where = target.get("base_url") or "in-process"
    if report.levels:
        settings = report.settings
        table = Table(title=f"lokal bench · {target.get('model')} @ {where} · prompt ≈{settings.get('prompt_tokens')}"
                            f" tok, {settings.get('max_tokens')} tok out"
                            f"{', EOS ignored' if settings.get('ignore_eos') else ''}")
        table.caption = "TTFT in ms; tok/s: decode per stream (p50), all streams together, prompt (p50)"
        for header in ("conc.", "ok/req", "TTFT p50", "TTFT p95", "tok/s stream", "tok/s total", "prompt tok/s",
                       "errors"):
            table.add_column(header, justify="right")
        for level in report.levels:
            problems = []
            if level.num_errors:
                problems.append(f"{level.num_errors} failed")
            if level.num_short:
                problems.append(f"{level.num_short} short")
            table.add_row(str(level.concurrency), f"{level.num_ok}/{level.num_requests}",
                          _fixed(level.ttft_p50_ms), _fixed(level.ttft_p95_ms), _fixed(level.decode_tps_p50),
                          _fixed(level.aggregate_tps), _fixed(level.prompt_tps_p50), ", ".join(problems) or "0")
        console.print(table)
        for level in report.levels:
            for message, count in level.errors.items():
                console.print(f"[red]concurrency {level.concurrency}: {count} × {message}[/red]")
        if any(level.num_short for level in report.levels):
            console.print("[yellow]short answers: the server did not honour ignore_eos "
                          "(see --ignore-eos-as and --extra-body)[/yellow]")
    if report.multi_turn is not None:
        _render_multi_turn(report.multi_turn, console)


def _render_multi_turn(stats: MultiTurnStats, console: Any) -> None:
    from rich.table import Table

    table = Table(title="multi-turn chat: TTFT per turn")
    for header in ("turn", "prompt tokens computed", "TTFT ms", "tokens out"):
        table.add_column(header, justify="right")
    for turn in stats.turns:
        table.add_row(str(turn.turn), str(turn.num_prompt_tokens if turn.num_prompt_tokens is not None else "–"),
                      _fixed(turn.ttft_ms), str(turn.num_completion_tokens) if turn.error is None else turn.error)
    table.add_row("cold", str(stats.cold_num_prompt_tokens if stats.cold_num_prompt_tokens is not None else "–"),
                  _fixed(stats.cold_ttft_ms), stats.cold_error or "")
    console.print(table)
    ratio = stats.last_turn_vs_cold
    if ratio is not None:
        console.print(f"last turn TTFT / same prompt cold: {ratio:.3f}")


def check_plot_dependency() -> None:
    """Raise before a long run whose plot could not be drawn."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        raise MissingDependency("the plot needs matplotlib: pip install 'lokal[bench]' (or matplotlib)")


def plot(report: BenchReport, path: str | Path, memory: dict[str, int] | None = None) -> Path:
    """A PNG of aggregate and per-stream tok/s (left) and TTFT p50/p95 (middle) against concurrency, and with
    ``memory`` (label → bytes) a third panel of memory bars."""
    check_plot_dependency()
    import matplotlib

    matplotlib.use("Agg")  # files only; never a window
    import matplotlib.pyplot as plt

    levels = report.levels
    concurrency = [level.concurrency for level in levels]
    if memory:
        figure, (throughput, latency, memory_axes) = plt.subplots(1, 3, figsize=(15, 4.2))
        labels = list(memory)
        bars = memory_axes.bar(labels, [memory[label] / 1e6 for label in labels], color="tab:gray")
        memory_axes.bar_label(bars, fmt="%.0f")
        memory_axes.set(ylabel="MB", title="memory (resident)")
        memory_axes.grid(alpha=0.3, axis="y")
    else:
        figure, (throughput, latency) = plt.subplots(1, 2, figsize=(11, 4.2))
    throughput.plot(concurrency, [level.aggregate_tps for level in levels], marker="o", label="aggregate")
    throughput.plot(concurrency, [level.decode_tps_p50 or math.nan for level in levels], marker="s",
                    label="per stream (p50)")
    throughput.set(xlabel="concurrent requests", ylabel="tokens / s", title="decode throughput")
    latency.plot(concurrency, [level.ttft_p50_ms or math.nan for level in levels], marker="o", label="p50")
    latency.plot(concurrency, [level.ttft_p95_ms or math.nan for level in levels], marker="s", label="p95")
    latency.set(xlabel="concurrent requests", ylabel="ms", title="time to first token")
    for axes in (throughput, latency):
        axes.set_xticks(concurrency)
        axes.set_ylim(bottom=0)
        axes.grid(alpha=0.3)
        axes.legend()
    figure.suptitle(f"{report.target.get('model')} @ {report.target.get('base_url') or 'in-process'} · "
                    f"{report.machine.get('cpu')}", fontsize=9)
    figure.tight_layout()
    output = Path(path)
    figure.savefig(output, format="png", dpi=110)
    plt.close(figure)
    return output


def text_chart(report: BenchReport, memory: dict[str, int] | None = None, width: int = 40) -> str:
    """The plot's numbers as plain-text bars, for a terminal: aggregate tok/s per concurrency level and,
    with ``memory`` (label → bytes), memory in MB."""
    sections = [("aggregate tok/s by concurrent requests", [(str(level.concurrency), level.aggregate_tps)
                                                             for level in report.levels])]
    if memory:
        sections.append(("memory, MB", [(label, value / 1e6) for label, value in memory.items()]))
    lines = []
    for title, rows in sections:
        if not rows:
            continue
        lines.append(title)
        label_width = max(len(label) for label, _ in rows)
        top = max(value for _, value in rows) or 1.0
        for label, value in rows:
            lines.append(f"  {label:>{label_width}} │{'█' * round(width * value / top):<{width}} {value:.1f}")
    return "\n".join(lines)


__all__ = ["RequestResult", "LevelStats", "TurnStats", "MultiTurnStats", "BenchReport", "percentile", "summarize",
           "multi_turn_stats", "describe_machine", "render", "plot", "text_chart", "check_plot_dependency"]
