"""How the CLI prints: Ollama's plain tables, human sizes and times, Go-style durations, pull progress.

Plain text where scripts read the output (tables, show, stats), rich only for the live progress bars.
"""

from __future__ import annotations

import math
import sys
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Iterable, Sequence

from rich.console import Console
from rich.progress import (BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)

if TYPE_CHECKING:
    from lokal.model_info import ModelDescription
    from lokal.types import Done

TABLE_PADDING = "    "  # Ollama's tables: left aligned, no borders, four spaces between columns


def format_table(headers: Sequence[str] | None, rows: Iterable[Sequence[str]]) -> str:
    """Columns left-aligned and padded like Ollama's tablewriter output; trailing spaces trimmed."""
    lines = [list(headers)] if headers else []
    lines += [list(row) for row in rows]
    if not lines:
        return ""
    num_columns = max(len(line) for line in lines)
    widths = [max((len(line[i]) for line in lines if i < len(line)), default=0) for i in range(num_columns)]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(line)]
        out.append(TABLE_PADDING.join(cells).rstrip())
    return "\n".join(out) + "\n"


def human_bytes(num_bytes: int) -> str:
    """Decimal units as Ollama prints them: ``98 MB``, ``1.5 GB``, ``512 B``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            value = num_bytes / scale
            if value >= 10 or value == math.trunc(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{num_bytes} B"


def human_number(count: int) -> str:
    """Parameter counts as Ollama prints them: ``134.52M``, ``1.24B``, ``999``."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(count)


def _human_span(seconds: float) -> str:
    whole_seconds = int(seconds)
    if whole_seconds < 1:
        return "Less than a second"
    if whole_seconds == 1:
        return "1 second"
    if whole_seconds < 60:
        return f"{whole_seconds} seconds"
    minutes = int(seconds // 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(seconds / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 14:
        return f"{hours // 24} days"
    if hours < 24 * 60:
        return f"{hours // (24 * 7)} weeks"
    if hours < 24 * 730:
        return f"{hours // (24 * 30)} months"
    return f"{int(seconds // (3600 * 24 * 365))} years"


def human_time(moment: datetime | None, now: datetime | None = None, never: str = "Never") -> str:
    """Relative time like Ollama's MODIFIED column: ``2 minutes ago``, ``About an hour ago``."""
    if moment is None:
        return never
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    delta = (now - moment).total_seconds()
    if delta < 0:
        return _human_span(-delta) + " from now"
    return _human_span(delta) + " ago"


def go_duration(nanoseconds: int) -> str:
    """A duration the way Go's time.Duration prints it (``1.2345s``, ``12.5ms``, ``850µs``), as Ollama's
    --verbose stats show it."""
    if nanoseconds == 0:
        return "0s"
    sign = "-" if nanoseconds < 0 else ""
    ns = abs(nanoseconds)
    if ns < 1_000:
        return f"{sign}{ns}ns"
    if ns < 1_000_000:
        return sign + _decimal(ns, 1_000) + "µs"
    if ns < 1_000_000_000:
        return sign + _decimal(ns, 1_000_000) + "ms"
    hours, rest = divmod(ns, 3_600_000_000_000)
    minutes, rest = divmod(rest, 60_000_000_000)
    text = _decimal(rest, 1_000_000_000) + "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _decimal(value: int, scale: int) -> str:
    whole, fraction = divmod(value, scale)
    if not fraction:
        return str(whole)
    digits = str(fraction).rjust(len(str(scale)) - 1, "0").rstrip("0")
    return f"{whole}.{digits}"


def stats_lines(done: Done) -> list[str]:
    """Ollama's ``--verbose`` summary after an answer."""
    lines = []
    if done.total_duration > 0:
        lines.append(f"total duration:       {go_duration(done.total_duration)}")
    if done.load_duration > 0:
        lines.append(f"load duration:        {go_duration(done.load_duration)}")
    if done.prompt_eval_count > 0:
        lines.append(f"prompt eval count:    {done.prompt_eval_count} token(s)")
    if done.prompt_eval_duration > 0:
        lines.append(f"prompt eval duration: {go_duration(done.prompt_eval_duration)}")
        lines.append(f"prompt eval rate:     {done.prompt_tokens_per_second:.2f} tokens/s")
    if done.eval_count > 0:
        lines.append(f"eval count:           {done.eval_count} token(s)")
    if done.eval_duration > 0:
        lines.append(f"eval duration:        {go_duration(done.eval_duration)}")
        lines.append(f"eval rate:            {done.eval_tokens_per_second:.2f} tokens/s")
    return lines


# ---- lokal show ---------------------------------------------------------------------------------------


def _section(title: str, rows: list[list[str]]) -> str:
    return f"  {title}\n" + format_table(None, [["", *row] for row in rows]) + "\n"


def _non_empty_lines(text: str, limit: int | None = None) -> list[list[str]]:
    lines = [[line.strip()] for line in text.splitlines() if line.strip()]
    return lines if limit is None else lines[:limit]


def _metadata_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if value is None:  # a long array (vocabulary, merges) left out of the metadata
        return "[...]"
    if isinstance(value, (list, tuple)):
        return "[" + " ".join(_metadata_value(item) for item in value) + "]"
    return str(value)


def format_show(description: ModelDescription, verbose: bool = False) -> str:
    """``lokal show NAME``: Ollama's sections (Model, Capabilities, Parameters, System, License)."""
    info = description.model_info
    details = description.details
    architecture = str(info.get("general.architecture") or details.get("family") or "")
    parameters = details.get("parameter_size") or ""
    if not parameters and isinstance(info.get("general.parameter_count"), int):
        parameters = human_number(info["general.parameter_count"])
    model_rows = [["architecture", architecture], ["parameters", parameters]]
    for key, label in (("context_length", "context length"), ("embedding_length", "embedding length")):
        value = info.get(f"{architecture}.{key}")
        if value is not None:
            model_rows.append([label, _metadata_value(value)])
    model_rows.append(["quantization", details.get("quantization_level") or ""])
    if details.get("format") == "onnx":  # GGUF is the default and goes unsaid, as in Ollama
        model_rows += [["format", "onnx"], ["execution provider", details.get("execution_provider") or ""]]
    text = _section("Model", model_rows)
    if description.capabilities:
        text += _section("Capabilities", [[c] for c in description.capabilities])
    if description.parameters:
        text += _section("Parameters", [line.split(None, 1) for line in description.parameters.splitlines()
                                        if line.strip()])
    if description.system:
        text += _section("System", _non_empty_lines(description.system, 2))
    if description.license:
        text += _section("License", _non_empty_lines(description.license, 2))
    if verbose:
        text += _section("Metadata", [[key, _metadata_value(value)] for key, value in sorted(info.items())])
    return text


# ---- pull progress ------------------------------------------------------------------------------------


def stderr_console() -> Console:
    return Console(file=sys.stderr, highlight=False)


def show_pull(events: Iterable[object], console: Console | None = None) -> None:
    """Render pull ``Progress`` events on stderr as Ollama does: one bar per digest (bytes, speed, ETA),
    status lines in the order they come, ``success`` at the end. Not on a terminal (logs, pipes), each
    layer is one line instead of a bar. Errors propagate to the caller."""
    console = console or stderr_console()
    if not console.is_terminal:
        _log_pull(events, console)
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               DownloadColumn(binary_units=False), TransferSpeedColumn(), TimeRemainingColumn())
    bars: dict[str, TaskID] = {}
    progress: Progress | None = None  # live only while layers download, so status lines stay in order
    last_status = ""
    try:
        for event in events:
            status, digest = getattr(event, "status", ""), getattr(event, "digest", None)
            total, completed = getattr(event, "total", None), getattr(event, "completed", None)
            if digest and total:
                if progress is None:
                    progress = Progress(*columns, console=console)
                    progress.start()
                    bars.clear()
                if digest not in bars:
                    bars[digest] = progress.add_task(_layer_label(digest), total=total)
                progress.update(bars[digest], total=total, completed=completed or 0)
            elif status and status != last_status:
                if progress is not None:
                    progress.stop()
                    progress = None
                console.print(status, highlight=False, markup=False)
                last_status = status
    finally:
        if progress is not None:
            progress.stop()


def _layer_label(digest: str) -> str:
    return f"pulling {digest.removeprefix('sha256:')[:12]}"


def _log_pull(events: Iterable[object], console: Console) -> None:
    announced: set[str] = set()
    last_status = ""
    for event in events:
        status, digest = getattr(event, "status", ""), getattr(event, "digest", None)
        total = getattr(event, "total", None)
        if digest and total:
            if digest not in announced:
                announced.add(digest)
                console.print(f"{_layer_label(digest)} {human_bytes(total)}", highlight=False, markup=False)
        elif status and status != last_status:
            console.print(status, highlight=False, markup=False)
            last_status = status
