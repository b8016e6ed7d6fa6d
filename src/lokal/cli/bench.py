"""``lokal bench``: load a running lokal, or any OpenAI-compatible server, or lokal's engine in this process,
and report TTFT, per-stream and aggregate tok/s at several concurrency levels (table, JSON, PNG)."""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

import typer

from lokal.config import Settings
from lokal.errors import BadRequest


def parse_levels(text: str) -> list[int]:
    """``"1,2,4,8"`` → ``[1, 2, 4, 8]``."""
    try:
        levels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise BadRequest(f"concurrency must be comma-separated whole numbers, e.g. 1,2,4,8; got {text!r}") from None
    if not levels or any(level < 1 for level in levels):
        raise BadRequest(f"concurrency levels must be at least 1, got {text!r}")
    return levels


def parse_extra_body(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadRequest(f"--extra-body is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadRequest("--extra-body must be a JSON object, e.g. '{\"top_k\": 1}'")
    return value


def bench(
    model: Optional[str] = typer.Argument(None, help="Model (default: the server's first; in process: smollm2)."),
    url: Optional[str] = typer.Option(None, "--url", help="OpenAI-compatible base URL (default: LOKAL_HOST's /v1)."),
    in_process: bool = typer.Option(False, "--in-process", help="Run lokal's engine in this process, without HTTP."),
    concurrency: str = typer.Option("1,2,4,8", "--concurrency", "-c", help="Concurrency levels, comma separated."),
    requests: int = typer.Option(16, "--requests", "-n", help="Requests per concurrency level."),
    prompt_tokens: int = typer.Option(32, "--prompt-tokens", help="About this many prompt tokens per request."),
    first_prompt: int = typer.Option(0, "--first-prompt",
                                     help="Index of the first prompt: another value sends prompts no cache holds "
                                          "from a run with the default."),
    max_tokens: int = typer.Option(128, "--max-tokens", help="Tokens to generate per request."),
    ignore_eos: bool = typer.Option(True, "--ignore-eos/--stop-at-eos",
                                    help="Ask the server to generate exactly --max-tokens."),
    ignore_eos_as: str = typer.Option("auto", "--ignore-eos-as",
                                      help="How to ask: field (top-level ignore_eos), options (lokal), auto."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Stream tokens (TTFT needs streaming)."),
    api: str = typer.Option("completions", "--api", help="completions (raw prompt) or chat (chat template)."),
    scenario: str = typer.Option("load", "--scenario",
                                 help="load (concurrency levels), multi-turn (one growing chat), or both."),
    turns: int = typer.Option(8, "--turns", help="Multi-turn: number of turns."),
    turn_tokens: int = typer.Option(200, "--turn-tokens", help="Multi-turn: about this many tokens per user turn."),
    answer_tokens: int = typer.Option(48, "--answer-tokens", help="Multi-turn: tokens per answer."),
    extra_body: str = typer.Option("", "--extra-body", help="JSON object merged into every request body."),
    api_key: Optional[str] = typer.Option(None, "--api-key", help="Bearer token, for servers that want one."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds a request may take."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON instead of tables."),
    plot: Optional[str] = typer.Option(None, "--plot", help="Write a PNG of throughput and TTFT (needs matplotlib)."),
) -> None:
    """Benchmark a server (or the engine in process): TTFT p50/p95, decode tok/s per stream and in aggregate."""
    from rich.console import Console

    from lokal.bench import BenchConfig, run_bench
    from lokal.bench_report import plot as write_plot
    from lokal.bench_report import render

    if in_process and url:
        raise BadRequest("--in-process and --url exclude each other")
    settings = Settings()
    base_url = None if in_process else (url or settings.base_url + "/v1")
    config = BenchConfig(model=model, base_url=base_url, concurrency=parse_levels(concurrency), num_requests=requests,
                         prompt_tokens=prompt_tokens, first_prompt=first_prompt, max_tokens=max_tokens,
                         ignore_eos=ignore_eos,
                         is_streaming=stream, api=api, scenario=scenario, num_turns=turns,  # type: ignore[arg-type]
                         turn_tokens=turn_tokens, answer_tokens=answer_tokens,
                         ignore_eos_as=ignore_eos_as, extra_body=parse_extra_body(extra_body),  # type: ignore[arg-type]
                         api_key=api_key, timeout=timeout)
    config.validate()  # before a model is loaded
    if plot and config.scenario == "multi-turn":
        raise BadRequest("--plot draws the concurrency levels; use --scenario load or both")
    if plot:
        from lokal.bench_report import check_plot_dependency

        check_plot_dependency()  # before minutes of measuring
    if in_process:
        from lokal.engine import set_llama_logging

        set_llama_logging(bool(settings.debug))
    status = Console(stderr=True)
    report = run_bench(config, settings=settings, progress=lambda message: status.print(f"[dim]{message}[/dim]"))
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        render(report, Console())
    if plot:
        status.print(f"plot written to {write_plot(report, plot)}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)


__all__ = ["register", "bench", "parse_levels"]
