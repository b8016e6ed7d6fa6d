"""``lokal bench``: the statistics on known inputs, real short runs against a live ``lokal serve`` and against
the engine in process, and the CLI command. Counts and structure are checked, never times."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from server_fixture import free_port, live_server, model_store  # noqa: F401
from typer.testing import CliRunner

from lokal.bench import (OPENING_WORDS, BenchConfig, HttpTarget, Work, normalize_base_url, prompt_text, run_bench,
                         work_for)
from lokal.bench_report import (BenchReport, RequestResult, multi_turn_stats, percentile, render, summarize)
from lokal.cli import _ErrorsAtTheEdge
from lokal.cli.bench import parse_levels, register
from lokal.config import Settings
from lokal.errors import BadRequest, ServerUnavailable

MAX_TOKENS = 8
PROMPT_WORDS = 16


# ---- statistics on known inputs ----------------------------------------------------------------------------


@given(st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), min_size=1, max_size=50),
       st.floats(min_value=0, max_value=100))
def test_percentile_is_numpys_linear_interpolation(values, p):
    assert percentile(values, p) == pytest.approx(float(np.percentile(values, p)), rel=1e-9, abs=1e-6)


def test_percentile_on_hand_computed_cases():
    # rank = (n − 1)·p/100 between the sorted neighbours: [10, 20, 30, 40] at p95 → rank 2.85 → 30 + 0.85·10.
    assert percentile([40, 10, 30, 20], 95) == pytest.approx(38.5)
    assert percentile([40, 10, 30, 20], 50) == pytest.approx(25.0)
    assert percentile([7.0], 95) == 7.0
    assert percentile([3, 1, 2], 0) == 1 and percentile([3, 1, 2], 100) == 3


def test_percentile_refuses_nothing_and_out_of_range():
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile([1.0], 101)


def test_request_rates_from_its_timestamps():
    result = RequestResult(started_at=10.0, first_token_at=10.25, last_token_at=11.25, finished_at=11.5,
                           num_prompt_tokens=20, num_completion_tokens=5)
    assert result.ttft == pytest.approx(0.25)
    assert result.latency == pytest.approx(1.5)
    assert result.decode_tokens_per_second == pytest.approx((5 - 1) / 1.0)  # 4 gaps between 5 tokens
    assert result.prompt_tokens_per_second == pytest.approx(20 / 0.25)
    single = RequestResult(started_at=0, first_token_at=1, last_token_at=1, finished_at=1, num_completion_tokens=1)
    assert single.decode_tokens_per_second is None  # one token has no decode interval


def _synthetic(start: float, ttft: float, gap: float, num_tokens: int, num_prompt: int | None = 30,
               error: str | None = None) -> RequestResult:
    first = start + ttft
    last = first + gap * (num_tokens - 1)
    return RequestResult(started_at=start, first_token_at=first, last_token_at=last, finished_at=last + 0.001,
                         num_prompt_tokens=num_prompt, num_completion_tokens=num_tokens, is_counted_by_server=True,
                         error=error)


def test_summarize_matches_an_independent_computation():
    rng = np.random.default_rng(7)
    specs = [(float(rng.uniform(0, 2)), float(rng.uniform(0.01, 0.3)), float(rng.uniform(0.003, 0.02)),
              int(rng.integers(4, 20))) for _ in range(9)]
    results = [_synthetic(*spec) for spec in specs]
    results.append(_synthetic(0.5, 0.1, 0.01, 3, error="HTTP 503: busy"))
    results.append(_synthetic(0.6, 0.1, 0.01, 3, error="HTTP 503: busy"))
    wall = 4.0
    stats = summarize(4, results, wall, expected_tokens=16)

    ttfts = np.array([s[1] for s in specs])
    rates = np.array([(n - 1) / (gap * (n - 1)) for _, _, gap, n in specs])
    assert (stats.num_requests, stats.num_ok, stats.num_errors) == (11, 9, 2)
    assert stats.errors == {"HTTP 503: busy": 2}
    assert stats.num_short == sum(n < 16 for *_, n in specs)
    assert stats.num_completion_tokens == sum(n for *_, n in specs)
    assert stats.num_prompt_tokens == 30 * 9
    assert stats.aggregate_tps == pytest.approx(sum(n for *_, n in specs) / wall)
    assert stats.ttft_p50_ms == pytest.approx(np.percentile(ttfts, 50) * 1000)
    assert stats.ttft_p95_ms == pytest.approx(np.percentile(ttfts, 95) * 1000)
    assert stats.decode_tps_p50 == pytest.approx(np.percentile(rates, 50))
    assert stats.prompt_tps_p50 == pytest.approx(np.percentile(30 / ttfts, 50))
    assert stats.is_counted_by_server


def test_summarize_without_prompt_counts_or_successes():
    stats = summarize(1, [_synthetic(0, 0.1, 0.01, 5, num_prompt=None)], 1.0)
    assert stats.num_prompt_tokens is None and stats.prompt_tps_p50 is None and stats.num_short == 0
    failed = summarize(2, [_synthetic(0, 0.1, 0.01, 5, error="boom")], 1.0)
    assert failed.num_ok == 0 and failed.ttft_p50_ms is None and failed.aggregate_tps == 0.0
    assert not failed.is_counted_by_server


def test_multi_turn_ratio_is_last_turn_over_cold():
    turns = [_synthetic(0, 0.2, 0.01, 4), _synthetic(1, 0.05, 0.01, 4)]
    cold = _synthetic(2, 0.5, 0.01, 4)
    stats = multi_turn_stats(turns, cold)
    assert [t.turn for t in stats.turns] == [1, 2]
    assert stats.last_turn_vs_cold == pytest.approx(0.05 / 0.5)
    assert multi_turn_stats(turns, None).last_turn_vs_cold is None


# ---- inputs ------------------------------------------------------------------------------------------------


def test_prompts_are_reproducible_and_open_differently():
    assert prompt_text(5, 20) == prompt_text(5, 20)
    assert len(prompt_text(5, 20).split()) == 20
    openings = [prompt_text(i, 4).split()[0] for i in range(len(OPENING_WORDS))]
    assert len({word[0] for word in openings}) == len(OPENING_WORDS)  # no two share a first letter
    assert work_for("chat", 1, 4).messages == [{"role": "user", "content": prompt_text(1, 4)}]
    assert work_for("completions", 1, 4).prompt == prompt_text(1, 4)


def test_base_urls_and_config_are_checked():
    assert normalize_base_url("http://127.0.0.1:8000") == "http://127.0.0.1:8000/v1"
    assert normalize_base_url("http://127.0.0.1:8000/v1/") == "http://127.0.0.1:8000/v1"
    with pytest.raises(BadRequest):
        normalize_base_url("127.0.0.1:8000")
    for bad in ({"concurrency": [0]}, {"concurrency": []}, {"num_requests": 0}, {"max_tokens": 0},
                {"api": "embeddings"}, {"scenario": "soak"}, {"ignore_eos_as": "header"}, {"first_prompt": -1}):
        with pytest.raises(BadRequest):
            BenchConfig(base_url="http://127.0.0.1:1/v1", **bad).validate()
    assert parse_levels("1, 2,8") == [1, 2, 8]
    with pytest.raises(BadRequest):
        parse_levels("1,two")


def test_request_bodies_ask_for_exact_lengths():
    config = BenchConfig(base_url="http://127.0.0.1:1/v1", extra_body={"options": {"top_k": 1}, "seed": 3})
    lokal_style = HttpTarget(config, "http://127.0.0.1:1/v1", "m", ignore_eos_as="options")
    field_style = HttpTarget(config, "http://127.0.0.1:1/v1", "m", ignore_eos_as="field")
    body = lokal_style.body(Work(prompt="hi"), 5)
    assert body["options"] == {"ignore_eos": True, "top_k": 1} and "ignore_eos" not in body
    assert body["max_tokens"] == 5 and body["temperature"] == 0 and body["seed"] == 3 and body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    other = field_style.body(Work(messages=[{"role": "user", "content": "hi"}]), 5)
    assert other["ignore_eos"] is True and other["options"] == {"top_k": 1} and "prompt" not in other


# ---- real runs -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer(smollm2_path):
    """llama-cpp-python's own tokenizer on the same GGUF (vocabulary only), independent of lokal's engine."""
    import llama_cpp

    vocab = llama_cpp.Llama(model_path=smollm2_path, vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode(), add_bos=True, special=False)


def test_bench_against_a_live_server_counts_every_token(live_server, tokenizer):  # noqa: F811
    # First test on this module's fresh server: no cached prefix can shorten the prompt counts.
    config = BenchConfig(base_url=live_server.url + "/v1", concurrency=[1, 2], num_requests=2,
                         prompt_tokens=PROMPT_WORDS, max_tokens=MAX_TOKENS)
    report = json.loads(run_bench(config).to_json())

    assert report["report_version"] == 1
    assert report["target"] == {"kind": "http", "base_url": live_server.url + "/v1", "model": "smollm2:latest",
                                "ignore_eos_as": "options"}  # told apart from other servers by its root
    assert set(report["machine"]) >= {"cpu", "physical_cores", "memory_gib", "python", "llama_cpp_python"}
    assert report["multi_turn"] is None
    assert [level["concurrency"] for level in report["levels"]] == [1, 2]
    for number, level in enumerate(report["levels"]):
        indices = range(number * 2, number * 2 + 2)  # every request of a run has its own prompt
        assert (level["num_requests"], level["num_ok"], level["num_errors"], level["num_short"]) == (2, 2, 0, 0)
        assert level["errors"] == {}
        assert level["num_completion_tokens"] == 2 * MAX_TOKENS  # EOS ignored: exactly max_tokens each
        assert level["is_counted_by_server"]
        assert level["num_prompt_tokens"] == sum(len(tokenizer(prompt_text(i, PROMPT_WORDS))) for i in indices)
        assert level["ttft_p50_ms"] > 0 and level["ttft_p95_ms"] >= level["ttft_p50_ms"]
        assert level["decode_tps_p50"] > 0 and level["aggregate_tps"] > 0 and level["prompt_tps_p50"] > 0


def test_multi_turn_against_a_live_server(live_server):  # noqa: F811
    config = BenchConfig(base_url=live_server.url + "/v1", scenario="multi-turn", num_turns=2, turn_tokens=8,
                         answer_tokens=3, is_warmed_up=False)
    report = run_bench(config)
    stats = report.multi_turn
    assert report.levels == [] and stats is not None
    assert [(t.turn, t.error, t.num_completion_tokens) for t in stats.turns] == [(1, None, 3), (2, None, 3)]
    assert stats.cold_error is None and stats.cold_ttft_ms is not None
    assert stats.last_turn_vs_cold is not None and stats.last_turn_vs_cold > 0
    data = json.loads(report.to_json())["multi_turn"]
    assert len(data["turns"]) == 2 and data["last_turn_vs_cold"] == pytest.approx(stats.last_turn_vs_cold)


def test_refused_requests_are_counted_not_raised(live_server):  # noqa: F811
    config = BenchConfig(base_url=live_server.url + "/v1", model="no-such-model", concurrency=[2], num_requests=2,
                         max_tokens=2, is_warmed_up=False)
    level = run_bench(config).levels[0]
    assert (level.num_ok, level.num_errors, level.num_completion_tokens) == (0, 2, 0)
    [(message, count)] = level.errors.items()
    assert count == 2 and message.startswith("HTTP 404") and "no-such-model" in message
    with pytest.raises(ServerUnavailable, match="warm-up"):
        run_bench(BenchConfig(base_url=live_server.url + "/v1", model="no-such-model", concurrency=[1],
                              num_requests=1))


def test_unstreamed_requests_count_tokens_from_usage(live_server):  # noqa: F811
    config = BenchConfig(base_url=live_server.url + "/v1", concurrency=[2], num_requests=2, max_tokens=4,
                         prompt_tokens=8, is_streaming=False, api="chat", is_warmed_up=False)
    level = run_bench(config).levels[0]
    assert (level.num_ok, level.num_completion_tokens, level.is_counted_by_server) == (2, 8, True)
    assert level.ttft_p50_ms is None and level.decode_tps_p50 is None and level.latency_p50_ms > 0


def test_nothing_listening_is_server_unavailable():
    with pytest.raises(ServerUnavailable, match="no server answers"):
        run_bench(BenchConfig(base_url=f"http://127.0.0.1:{free_port()}/v1", concurrency=[1], num_requests=1))


def test_in_process_engine(model_store, tokenizer):  # noqa: F811
    settings = Settings(environ={"LOKAL_MODELS": str(model_store), "LOKAL_CONTEXT_LENGTH": "512"})
    config = BenchConfig(concurrency=[2], num_requests=2, prompt_tokens=PROMPT_WORDS, max_tokens=MAX_TOKENS)
    report = run_bench(config, settings=settings)
    [level] = report.levels
    assert report.target == {"kind": "in-process", "base_url": None, "model": "smollm2:latest"}
    assert (level.num_ok, level.num_short, level.num_completion_tokens) == (2, 0, 2 * MAX_TOKENS)
    assert level.num_prompt_tokens == sum(len(tokenizer(prompt_text(i, PROMPT_WORDS))) for i in (0, 1))
    # Another first prompt: prompts the first run did not send, so none of them is cached (a cold run).
    config.first_prompt = 1000
    [cold] = run_bench(config, settings=settings).levels
    assert cold.num_prompt_tokens == sum(len(tokenizer(prompt_text(i, PROMPT_WORDS))) for i in (1000, 1001))
    assert prompt_text(1000, PROMPT_WORDS) not in {prompt_text(i, PROMPT_WORDS) for i in range(2)}


# ---- the command ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli() -> typer.Typer:
    """``bench`` registered on an app with lokal's error edge, as ``lokal.cli`` wires its commands."""
    app = typer.Typer(cls=_ErrorsAtTheEdge)

    @app.callback()
    def root() -> None:
        pass

    register(app)
    return app


def test_cli_json(cli, live_server):  # noqa: F811
    result = CliRunner().invoke(cli, ["bench", "--url", live_server.url, "-c", "1", "-n", "2", "--max-tokens", "4",
                                      "--prompt-tokens", "8", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    [level] = report["levels"]
    assert (level["num_ok"], level["num_completion_tokens"]) == (2, 8)
    assert report["settings"]["max_tokens"] == 4 and report["target"]["base_url"] == live_server.url + "/v1"


def test_cli_table_and_plot(cli, live_server, tmp_path):  # noqa: F811
    png = tmp_path / "bench.png"
    result = CliRunner().invoke(cli, ["bench", "smollm2", "--url", live_server.url + "/v1", "-c", "1,2", "-n", "2",
                                      "--max-tokens", "3", "--prompt-tokens", "8", "--plot", str(png)])
    assert result.exit_code == 0, result.output
    assert "ok/req" in result.stdout and result.stdout.count("2/2") == 2
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("arguments, message", [
    (["-c", "0"], "at least 1"),
    (["-c", "one"], "comma-separated"),
    (["--extra-body", "[1]"], "JSON object"),
    (["--in-process", "--url", "http://127.0.0.1:1"], "exclude each other"),
    (["--scenario", "soak"], "scenario"),
])
def test_cli_bad_input_is_a_clear_error(cli, arguments, message):
    result = CliRunner().invoke(cli, ["bench", *arguments])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and message in result.stderr


def test_render_handles_failed_levels():
    from rich.console import Console

    report = BenchReport(target={"kind": "http", "base_url": "http://x/v1", "model": "m"},
                         settings={"prompt_tokens": 8, "max_tokens": 4, "ignore_eos": True},
                         machine={}, started_at="2026-01-01T00:00:00+00:00",
                         levels=[summarize(1, [_synthetic(0, 0.1, 0.01, 2, error="HTTP 500: oops")], 1.0),
                                 summarize(2, [_synthetic(0, 0.1, 0.01, 2)], 1.0, expected_tokens=4)])
    console = Console(record=True, width=120)
    render(report, console)
    text = console.export_text()
    assert "0/1" in text and "1 failed" in text and "1 short" in text and "HTTP 500: oops" in text
    assert math.isclose(report.levels[1].aggregate_tps, 2.0)


def test_compare_report_ratios_and_verdicts(monkeypatch):
    """benchmarks/compare.py's markdown (compare_report.py): ratios against the ceiling and the peer, and the
    targets' verdicts."""
    import argparse
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "compare_report.py"
    spec = importlib.util.spec_from_file_location("lokal_benchmarks_compare_report", path)
    compare = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, compare)  # its dataclasses look their module up there
    spec.loader.exec_module(compare)

    def level(concurrency: int, tps: float) -> object:
        # 10 requests of 100 tokens each over a wall time that gives the wanted aggregate rate
        results = [_synthetic(0, 0.04, 0.005, 100) for _ in range(10)]
        return summarize(concurrency, results, wall_seconds=1000 / tps, expected_tokens=100)

    def report(levels: list) -> BenchReport:
        return BenchReport(target={}, settings={}, machine={}, started_at="", levels=levels,
                           multi_turn=multi_turn_stats([_synthetic(0, 0.5, 0.01, 4), _synthetic(0, 0.05, 0.01, 4)],
                                                       _synthetic(0, 0.5, 0.01, 4)))

    args = argparse.Namespace(concurrency=[1, 4, 8], requests=10, prompt_tokens=32, max_tokens=100, threads=2,
                              num_ctx=3072, turns=2)
    ceiling = [level(1, 200), level(4, 280), level(8, 300)]
    lokal_rounds = [report([level(1, tps), level(4, 266), level(8, 270)]) for tps in (110, 90, 120)]
    server_rounds = [report([level(1, 100), level(4, 280), level(8, 250)]) for _ in range(3)]
    measured = compare.Measurements(ceiling=ceiling, lokal=report([level(1, 180), level(4, 266), level(8, 270)]),
                                    llama_cpp_python=report([level(1, 150), level(4, 100), level(8, 100)]),
                                    rounds={"lokal": lokal_rounds, "llama-server": server_rounds},
                                    itl={"lokal": [(10.0, 12.0)] * 3, "llama-server": [(10.0, 15.0)] * 3},
                                    llama_server_turns=None,
                                    rss_mb={"lokal": 300.0}, lokal_default_rss_mb=400.0, run_cold_seconds=[2.0, 2.5, 9],
                                    restarted_chat=compare.RestartedChat([500.0, 600.0], cold_ttft_ms=2000.0),
                                    cold_rounds={"lokal": [report([level(1, 95), level(4, 300), level(8, 300)])] * 3,
                                                 "llama-server": server_rounds})
    text = compare.markdown(measured, args)
    assert f"| 1 | 200.0 | 180.0 | {180 / 200:.2f} | 150.0 | {180 / 150:.2f} |" in text
    assert f"| 4 | 280.0 | 266.0 | {266 / 280:.2f} | 100.0 | {266 / 100:.2f} |" in text
    verdicts = {}  # target → (value, verdict), from the rows of the targets table
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 3 and ("≥" in cells[0] or "≤" in cells[0]):
            verdicts[cells[0]] = (cells[1], cells[2])
    # + tok/s and TTFT at 1, 4, 8 (cached and cold), the long prompt, and the multi-turn ratio across a restart
    assert len(verdicts) == len(compare.TARGETS) + 2 * 3 * 2 + 1 + 1
    assert verdicts["cold prompts: lokal / llama-server tok/s at concurrency 1 ≥ 1.0 (median ratio)"] == (
        "0.95", "**missed**")
    assert verdicts["cold prompts: lokal / llama-server tok/s at concurrency 8 ≥ 1.0 (median ratio)"] == ("1.20", "met")
    assert "**Cold prompts**" in text and "| 4 | 300.0 | 280.0 | 1.07 |" in text
    # Against llama-server: the median of the per-round ratios (1.10, 0.90, 1.20 at concurrency 1).
    assert verdicts["lokal / llama-server tok/s at concurrency 1 ≥ 1.0 (median ratio)"] == ("1.10", "met")
    assert verdicts["lokal / llama-server tok/s at concurrency 4 ≥ 1.0 (median ratio)"] == (f"{266 / 280:.2f}", "**missed**")
    assert verdicts["p95 ITL with / without a 2,000-token prompt: lokal's over llama-server's ≤ 1.0"] == (
        f"{1.2 / 1.5:.2f}", "met")
    assert "| 1 | 110.0 | 100.0 | 1.10 |" in text
    assert verdicts["lokal / ceiling at concurrency 1 ≥ 0.82"] == (f"{180 / 200:.2f}", "met")
    assert verdicts["lokal / ceiling at concurrency 8 ≥ 0.92"] == (f"{270 / 300:.2f}", "**missed**")
    assert verdicts["TTFT p50 at concurrency 1 ≤ 50 ms"] == ("40.00", "met")
    assert verdicts["multi-turn last-turn TTFT / cold ≤ 0.2"] == ("0.10", "met")
    assert verdicts["the same, lokal serve restarted before the last turn ≤ 0.2"] == ("0.30", "**missed**")
    assert "| lokal, restarted before turn 2 | 500.0 | 600.0 | 2000.0 | 0.300 |" in text
    assert verdicts["lokal serve idle RSS (default settings) ≤ 350 MiB"] == ("400.00", "**missed**")
    assert verdicts['`lokal run smollm2 "hi"` cold ≤ 3 s (median)'] == ("2.50", "met")
