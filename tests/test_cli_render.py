"""The CLI's formatting helpers: Ollama's sizes, relative times, Go durations, tables and stats lines."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

from lokal.cli.render import format_table, go_duration, human_bytes, human_number, human_time, show_pull, stats_lines
from lokal.types import Done


def test_human_bytes_uses_decimal_units_like_ollama():
    assert human_bytes(98_362_432) == "98 MB"
    assert human_bytes(1_500_000_000) == "1.5 GB"
    assert human_bytes(2_000_000_000) == "2 GB"
    assert human_bytes(271_000_000) == "271 MB"
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_000) == "1 KB"


def test_human_number_for_parameter_counts():
    assert human_number(134_515_008) == "134.52M"
    assert human_number(1_240_000_000) == "1.24B"
    assert human_number(268_000_000) == "268M"
    assert human_number(512) == "512"


def test_human_time_is_relative_to_now():
    now = datetime(2025, 1, 10, 12, 0, tzinfo=timezone.utc)
    cases = {
        timedelta(seconds=0.4): "Less than a second ago",
        timedelta(seconds=30): "30 seconds ago",
        timedelta(seconds=70): "About a minute ago",
        timedelta(minutes=2, seconds=5): "2 minutes ago",
        timedelta(minutes=61): "About an hour ago",
        timedelta(hours=5): "5 hours ago",
        timedelta(days=3): "3 days ago",
        timedelta(days=21): "3 weeks ago",
        timedelta(days=100): "3 months ago",
        timedelta(days=800): "2 years ago",
    }
    for age, expected in cases.items():
        assert human_time(now - age, now=now) == expected
    assert human_time(now + timedelta(minutes=5), now=now) == "5 minutes from now"
    assert human_time(None) == "Never"


def test_go_duration_matches_go_time_duration_strings():
    assert go_duration(0) == "0s"
    assert go_duration(850) == "850ns"
    assert go_duration(12_500) == "12.5µs"
    assert go_duration(43_210_000) == "43.21ms"
    assert go_duration(1_234_567_891) == "1.234567891s"
    assert go_duration(2_000_000_000) == "2s"
    assert go_duration(62_500_000_000) == "1m2.5s"
    assert go_duration(3_723_000_000_000) == "1h2m3s"


@given(st.integers(min_value=1_000, max_value=10**13))
def test_go_duration_round_trips_to_the_same_nanoseconds(nanoseconds):
    text = go_duration(nanoseconds)
    total, number = 0.0, ""
    units = {"h": 3600e9, "m": 60e9, "s": 1e9, "ms": 1e6, "µs": 1e3, "ns": 1}
    index = 0
    while index < len(text):
        char = text[index]
        if char.isdigit() or char == ".":
            number += char
            index += 1
            continue
        unit = next(u for u in ("ms", "µs", "ns", "h", "m", "s") if text.startswith(u, index))
        total += float(number) * units[unit]
        number, index = "", index + len(unit)
    assert abs(total - nanoseconds) <= max(1, nanoseconds * 1e-12)


def test_format_table_aligns_columns_with_four_spaces():
    text = format_table(["NAME", "ID"], [["smollm2:latest", "abc"], ["x:1", "defghi"]])
    lines = text.splitlines()
    column = len("smollm2:latest") + 4
    assert lines[0] == "NAME".ljust(column) + "ID"
    assert lines[1] == "smollm2:latest    abc"
    assert lines[2] == "x:1".ljust(column) + "defghi"


def test_stats_lines_follow_ollama_layout_and_rates():
    done = Done(reason="stop", prompt_eval_count=20, prompt_eval_duration=50_000_000, eval_count=30,
                eval_duration=200_000_000, load_duration=1_000_000, total_duration=300_000_000)
    lines = stats_lines(done)
    labels = [line.split(":")[0] for line in lines]
    assert labels == ["total duration", "load duration", "prompt eval count", "prompt eval duration",
                      "prompt eval rate", "eval count", "eval duration", "eval rate"]
    assert all(line[22] != " " and line[21] == " " for line in lines)  # values start in one column
    assert lines[4].endswith(f"{20 / 0.05:.2f} tokens/s")
    assert lines[7].endswith(f"{30 / 0.2:.2f} tokens/s")
    assert lines[5].endswith("30 token(s)")
    # Nothing measured, nothing printed.
    assert stats_lines(Done(reason="load")) == []


class _Event:
    def __init__(self, status, digest=None, total=None, completed=None):
        self.status, self.digest, self.total, self.completed = status, digest, total, completed


_DIGEST = "sha256:" + "ab" * 32
_PULL_EVENTS = [_Event("pulling manifest"), _Event("pulling abababababab", _DIGEST, 2_000_000, 0),
                _Event("pulling abababababab", _DIGEST, 2_000_000, 2_000_000), _Event("verifying sha256 digest"),
                _Event("writing manifest"), _Event("success")]


def test_show_pull_draws_a_bar_per_layer_on_a_terminal():
    buffer = io.StringIO()
    show_pull(iter(_PULL_EVENTS), console=Console(file=buffer, width=120, force_terminal=True))
    output = buffer.getvalue()
    for status in ("pulling manifest", "verifying sha256 digest", "writing manifest", "success"):
        assert status in output
    assert "pulling abababababab" in output and "100%" in output and "2.0/2.0 MB" in output
    # In the order they happened: manifest, the finished bar, then verifying, writing, success.
    positions = [output.index(text) for text in ("pulling manifest", "2.0/2.0 MB", "verifying sha256 digest",
                                                 "writing manifest", "success")]
    assert positions == sorted(positions)


def test_show_pull_logs_one_line_per_event_elsewhere():
    buffer = io.StringIO()
    show_pull(iter(_PULL_EVENTS), console=Console(file=buffer, width=120))
    assert buffer.getvalue().splitlines() == ["pulling manifest", "pulling abababababab 2 MB",
                                              "verifying sha256 digest", "writing manifest", "success"]
