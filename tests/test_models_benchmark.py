"""`lokal models test NAME --benchmark` on the bundled SmolLM2 with few tokens: the smoke answer, TTFT and
tok/s per concurrency level, the model's memory, and the PNG plot. Expected counts come from what was asked
(EOS ignored, so every answer has exactly --max-tokens tokens) and the GGUF's size on disk."""

from __future__ import annotations

import json
import os

import pytest
from typer.testing import CliRunner

from lokal.bench_report import BenchReport, summarize, text_chart
from lokal.cli import app

MAX_TOKENS = 6
NUM_REQUESTS = 2


@pytest.fixture(scope="module")
def tested(tmp_path_factory):
    """One run of the command (one model load): its JSON report and the plot it wrote."""
    root = tmp_path_factory.mktemp("models-test")
    plot = root / "bench.png"
    environ = {"LOKAL_MODELS": str(root / "store"), "LOKAL_HOST": "127.0.0.1:1", "LOKAL_CONTEXT_LENGTH": "512"}
    result = CliRunner().invoke(app, ["models", "test", "smollm2", "--benchmark", "--concurrency", "1,2",
                                      "--requests", str(NUM_REQUESTS), "--max-tokens", str(MAX_TOKENS),
                                      "--plot", str(plot), "--json"], env=environ)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), plot


def test_smoke_answer_and_speed(tested):
    report, _ = tested
    smoke = report["smoke"]
    assert report["model"] == "smollm2:latest"
    assert 0 < smoke["num_tokens"] <= MAX_TOKENS and smoke["text"]
    assert smoke["num_prompt_tokens"] > 0 and smoke["tokens_per_second"] > 0 and smoke["first_token_ms"] > 0


def test_benchmark_levels_have_ttft_and_tokens_per_second(tested):
    report, _ = tested
    levels = report["benchmark"]["levels"]
    assert [level["concurrency"] for level in levels] == [1, 2]
    for level in levels:
        assert (level["num_ok"], level["num_errors"], level["num_short"]) == (NUM_REQUESTS, 0, 0)
        assert level["num_completion_tokens"] == NUM_REQUESTS * MAX_TOKENS  # EOS ignored: exactly as asked
        assert level["ttft_p50_ms"] > 0 and level["decode_tps_p50"] > 0 and level["aggregate_tps"] > 0


def test_memory_counts_the_weights(tested, smollm2_path):
    """Answering reads every weight, so the resident size the model added holds at least most of the file
    (mapped or copied); the peak is at least the idle figure."""
    memory = tested[0]["memory"]
    weights = os.path.getsize(smollm2_path)
    assert memory["model_idle"] >= 0.5 * weights, (memory, weights)
    assert memory["peak"] >= memory["idle"] > memory["before_load"] > 0
    assert memory["model_peak"] == memory["peak"] - memory["before_load"]


def test_plot_is_a_png_with_three_panels(tested):
    import matplotlib.image

    _, plot = tested
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width = matplotlib.image.imread(plot).shape[:2]
    assert width > 2.5 * height  # tok/s, TTFT and memory side by side


def test_plot_needs_the_benchmark(tmp_path):
    result = CliRunner().invoke(app, ["models", "test", "smollm2", "--plot", str(tmp_path / "x.png")],
                                env={"LOKAL_MODELS": str(tmp_path), "LOKAL_HOST": "127.0.0.1:1"})
    assert result.exit_code == 1 and "--benchmark" in result.output
    assert not (tmp_path / "x.png").exists()


def test_text_chart_scales_bars_to_the_largest_value():
    from lokal.bench_report import RequestResult

    def level(concurrency: int, tokens: int):
        result = RequestResult(started_at=0.0, first_token_at=0.1, last_token_at=1.0, finished_at=1.0,
                               num_completion_tokens=tokens)
        return summarize(concurrency, [result], wall_seconds=1.0)

    report = BenchReport(target={}, settings={}, machine={}, started_at="", levels=[level(1, 50), level(2, 100)])
    lines = text_chart(report, {"idle": 200_000_000}, width=10).splitlines()
    assert lines[1].endswith("│█████      50.0") and lines[2].endswith("│██████████ 100.0")
    assert lines[3] == "memory, MB" and lines[4].endswith("│██████████ 200.0")
