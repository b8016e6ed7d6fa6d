"""benchmarks/compare.py's report: what one run measured (``Measurements``), rendered as the markdown section
it prints and appends to RESULTS.md, with each target's verdict. Pure formatting; compare.py measures."""

from __future__ import annotations

import argparse
import statistics
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from lokal.bench_report import BenchReport, LevelStats, describe_machine
from lokal.engine.cpu_build import default_flash_attention

TARGETS = {  # from the performance issue; measured on the machine described with each run
    "ratio_to_ceiling_c1": 0.82, "ratio_to_ceiling_c8": 0.92, "ttft_p50_ms_c1": 50.0,
    "ratio_to_llama_cpp_python_c4": 2.5, "multi_turn_ratio": 0.2, "idle_rss_mb": 350.0, "run_cold_seconds": 3.0,
}


@dataclass
class RestartedChat:
    turn_ttft_ms: list[float]  # every turn's; the last one asked of a restarted server
    cold_ttft_ms: float  # the last turn's request under an opening no cache holds, same server

    @property
    def last_vs_cold(self) -> float:
        return self.turn_ttft_ms[-1] / self.cold_ttft_ms


@dataclass
class Measurements:
    ceiling: list[LevelStats]
    lokal: BenchReport
    llama_cpp_python: BenchReport
    rounds: dict[str, list[BenchReport]]  # lokal and llama-server, alternating runs of the load scenario
    itl: dict[str, list[tuple[float, float]]]  # server → per round (p95 ITL ms without, with a long prompt)
    llama_server_turns: BenchReport | None
    rss_mb: dict[str, float]  # server → idle RSS after loading, in the run's configuration
    lokal_default_rss_mb: float
    run_cold_seconds: list[float]
    restarted_chat: RestartedChat
    # lokal and llama-server again, each round on prompts no earlier round sent (no cache holds them)
    cold_rounds: dict[str, list[BenchReport]] = field(default_factory=dict)


def _level(levels: list[LevelStats], concurrency: int) -> LevelStats | None:
    return next((level for level in levels if level.concurrency == concurrency), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _f(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def _verdict(value: float | None, limit: float, is_at_least: bool) -> str:
    if value is None:
        return "not measured"
    return "met" if (value >= limit if is_at_least else value <= limit) else "**missed**"


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def _peer_rows(ours: list[BenchReport], theirs: list[BenchReport], levels: list[int]) -> list[str]:
    lines = ["| concurrency | lokal tok/s | llama-server tok/s | tok/s ratio | lokal TTFT p50 ms | llama-server TTFT "
             "p50 ms | TTFT ratio | per-stream decode tok/s lokal / llama-server |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for concurrency in levels:
        a = [_level(report.levels, concurrency) for report in ours]
        b = [_level(report.levels, concurrency) for report in theirs]
        tps_ratio = _median([_ratio(x.aggregate_tps, y.aggregate_tps) for x, y in zip(a, b) if x and y])
        ttft_ratio = _median([_ratio(x.ttft_p50_ms, y.ttft_p50_ms) for x, y in zip(a, b) if x and y])
        lines.append(
            f"| {concurrency} | {_f(_median([x.aggregate_tps for x in a if x]))} | "
            f"{_f(_median([y.aggregate_tps for y in b if y]))} | {_f(tps_ratio, 2)} | "
            f"{_f(_median([x.ttft_p50_ms for x in a if x]))} | {_f(_median([y.ttft_p50_ms for y in b if y]))} | "
            f"{_f(ttft_ratio, 2)} | {_f(_median([x.decode_tps_p50 for x in a if x]))} / "
            f"{_f(_median([y.decode_tps_p50 for y in b if y]))} |")
    return lines + [""]


def peer_table(m: Measurements, args: argparse.Namespace) -> list[str]:
    """lokal vs llama-server: medians over the alternating runs, and the median of the per-round ratios."""
    ours, theirs = m.rounds.get("lokal", []), m.rounds.get("llama-server", [])
    if not theirs:
        return ["llama-server was not run (--no-llama-server).", ""]
    lines = [f"**lokal vs llama-server**, {len(ours)} alternating runs per level (lokal: LOKAL_NUM_PARALLEL="
             f"{max(args.concurrency)}; llama-server: --parallel {max(args.concurrency)}, --ctx-size "
             f"{args.num_ctx * max(args.concurrency)}). Both servers stay up through the rounds and every round "
             "sends the same prompts, so after the first round both answer from their prompt caches. Ratios are "
             "medians of each round's lokal / llama-server.", "", *_peer_rows(ours, theirs, args.concurrency)]
    if m.cold_rounds.get("llama-server"):
        lines += ["**Cold prompts**: the same, each round on prompts no earlier round sent, so no cache holds them "
                  "(what most users send):", "",
                  *_peer_rows(m.cold_rounds["lokal"], m.cold_rounds["llama-server"], args.concurrency)]
    if m.itl:
        lines += ["A ≈2,000-token prompt arriving while 7 streams decode (96 tokens each): their p95 inter-token "
                  "latency without and with it, median over the rounds:", "", "| server | p95 ITL ms without | with | "
                  "with / without |", "|---|---:|---:|---:|"]
        for name, rounds in m.itl.items():
            without = _median([a for a, _ in rounds])
            with_long = _median([b for _, b in rounds])
            lines.append(f"| {name} | {_f(without)} | {_f(with_long)} | {_f(_median([b / a for a, b in rounds]), 2)} |")
        lines.append("")
    return lines


def markdown(m: Measurements, args: argparse.Namespace) -> str:
    machine = describe_machine()
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    servers = {"lokal": m.lokal.levels, "llama-cpp-python": m.llama_cpp_python.levels}
    lines = [f"## {now} · {machine['cpu']}, {machine['physical_cores']} cores", "",
             f"Machine: {machine['cpu']}; {machine['physical_cores']} physical cores / {machine['logical_cpus']} "
             f"logical; {machine['memory_gib']} GiB RAM; {machine['os']}; Python {machine['python']}; "
             f"llama-cpp-python {machine['llama_cpp_python']}; lokal {machine['lokal']} ({git_revision()}).", "",
             f"Run: SmolLM2-135M-Instruct Q4_1, {args.threads} threads everywhere, {args.requests} streamed "
             f"/v1/completions requests per level, prompts of ≈{args.prompt_tokens} tokens, {args.max_tokens} tokens "
             f"out with EOS ignored (lokal: options.ignore_eos; llama-cpp-python: logit_bias −1e9 on the EOG tokens; "
             f"ceiling: the same mask in its sampler chain), temperature 0. lokal: LOKAL_NUM_PARALLEL="
             f"{max(args.concurrency)}, LOKAL_CONTEXT_LENGTH={args.num_ctx}; llama-cpp-python: n_ctx={args.num_ctx}. "
             f"Flash attention in lokal and the ceiling: {'on' if default_flash_attention() else 'off'} (lokal's "
             f"default with this build); llama-server: its default (auto).",
             "", *peer_table(m, args),
             "Further rows (one run each; lokal's is its first alternating run):", "", "| concurrency | ceiling tok/s | lokal tok/s | lokal / ceiling | llama-cpp-python tok/s | "
             "lokal / llama-cpp-python |", "|---:|---:|---:|---:|---:|---:|"]
    for concurrency in args.concurrency:
        ceiling, ours, peer = (_level(levels, concurrency) for levels in (m.ceiling, *servers.values()))
        tps = [level.aggregate_tps if level else None for level in (ceiling, ours, peer)]
        lines.append(f"| {concurrency} | {_f(tps[0])} | {_f(tps[1])} | {_f(_ratio(tps[1], tps[0]), 2)} | "
                     f"{_f(tps[2])} | {_f(_ratio(tps[1], tps[2]), 2)} |")
    lines += ["", "| concurrency | TTFT p50 / p95 ms: ceiling | lokal | llama-cpp-python | decode tok/s per stream: "
              "ceiling | lokal | llama-cpp-python |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for concurrency in args.concurrency:
        row = [_level(levels, concurrency) for levels in (m.ceiling, *servers.values())]
        ttft = [f"{_f(x.ttft_p50_ms)} / {_f(x.ttft_p95_ms)}" if x else "n/a" for x in row]
        decode = [_f(x.decode_tps_p50) if x else "n/a" for x in row]
        lines.append(f"| {concurrency} | {' | '.join(ttft)} | {' | '.join(decode)} |")
    problems = [f"{name} at concurrency {level.concurrency}: {level.num_errors} failed, {level.num_short} short"
                for name, levels in servers.items() for level in levels if level.num_errors or level.num_short]
    if problems:
        lines += ["", "Problems: " + "; ".join(problems) + "."]

    turns = {name: report.multi_turn for name, report in (("lokal", m.lokal), ("llama-server", m.llama_server_turns),
                                                          ("llama-cpp-python", m.llama_cpp_python)) if report}
    lines += ["", f"Multi-turn chat ({args.turns} turns, TTFT ms per turn; cold = the last turn's request under an "
              "opening no cache holds):", "", "| server | " + " | ".join(f"turn {i + 1}" for i in range(args.turns))
              + " | cold | last / cold |", "|---|" + "---:|" * (args.turns + 2)]
    for name, stats in turns.items():
        if stats is None:
            continue
        cells = [_f(turn.ttft_ms) for turn in stats.turns] + ["n/a"] * (args.turns - len(stats.turns))
        lines.append(f"| {name} | {' | '.join(cells)} | {_f(stats.cold_ttft_ms)} | {_f(stats.last_turn_vs_cold, 3)} |")
    restarted = m.restarted_chat
    lines.append(f"| lokal, restarted before turn {args.turns} | {' | '.join(_f(t) for t in restarted.turn_ttft_ms)} | "
                 f"{_f(restarted.cold_ttft_ms)} | {_f(restarted.last_vs_cold, 3)} |")
    run_times = ", ".join(f"{t:.2f}" for t in m.run_cold_seconds)
    lines += ["", "Idle RSS after loading SmolLM2, in this run's configuration: "
              + ", ".join(f"{name} {value:.0f} MiB" for name, value in m.rss_mb.items())
              + f"; lokal serve with default settings, restarted over this run's prompt cache: "
              f"{m.lokal_default_rss_mb:.0f} MiB.",
              f"`lokal run smollm2 \"hi\"`, fresh process, end to end: median "
              f"{statistics.median(m.run_cold_seconds):.2f} s of {run_times} s (the answer is sampled, so its length "
              "varies).", ""]
    lines += ["| target | value | verdict |", "|---|---:|---|"]
    for label, value, limit, is_at_least in targets(m):
        lines.append(f"| {label} | {_f(value, 2)} | {_verdict(value, limit, is_at_least)} |")
    return "\n".join(lines) + "\n"


def targets(m: Measurements) -> list[tuple[str, float | None, float, bool]]:
    def tps(levels: list[LevelStats], concurrency: int) -> float | None:
        level = _level(levels, concurrency)
        return level.aggregate_tps if level else None

    c1 = _level(m.lokal.levels, 1)
    multi_turn = m.lokal.multi_turn
    t = TARGETS
    versus_llama_server: list[tuple[str, float | None, float, bool]] = []
    for prefix, rounds in (("", m.rounds), ("cold prompts: ", m.cold_rounds)):
        ours, theirs = rounds.get("lokal", []), rounds.get("llama-server", [])
        for concurrency in (1, 4, 8):
            pairs = [(_level(x.levels, concurrency), _level(y.levels, concurrency)) for x, y in zip(ours, theirs)]
            pairs = [(x, y) for x, y in pairs if x and y]
            if pairs:
                versus_llama_server += [
                    (f"{prefix}lokal / llama-server tok/s at concurrency {concurrency} ≥ 1.0 (median ratio)",
                     _median([_ratio(x.aggregate_tps, y.aggregate_tps) for x, y in pairs]), 1.0, True),
                    (f"{prefix}lokal / llama-server TTFT p50 at concurrency {concurrency} ≤ 1.0 (median ratio)",
                     _median([_ratio(x.ttft_p50_ms, y.ttft_p50_ms) for x, y in pairs]), 1.0, False)]
    if m.itl.get("lokal") and m.itl.get("llama-server"):
        cost = {name: _median([b / a for a, b in rounds]) for name, rounds in m.itl.items()}
        versus_llama_server.append(("p95 ITL with / without a 2,000-token prompt: lokal's over llama-server's ≤ 1.0",
                                    _ratio(cost["lokal"], cost["llama-server"]), 1.0, False))
    return versus_llama_server + [
        ("lokal / ceiling at concurrency 1 ≥ 0.82", _ratio(tps(m.lokal.levels, 1), tps(m.ceiling, 1)),
         t["ratio_to_ceiling_c1"], True),
        ("lokal / ceiling at concurrency 8 ≥ 0.92", _ratio(tps(m.lokal.levels, 8), tps(m.ceiling, 8)),
         t["ratio_to_ceiling_c8"], True),
        ("TTFT p50 at concurrency 1 ≤ 50 ms", c1.ttft_p50_ms if c1 else None, t["ttft_p50_ms_c1"], False),
        ("lokal / llama-cpp-python at concurrency 4 ≥ 2.5",
         _ratio(tps(m.lokal.levels, 4), tps(m.llama_cpp_python.levels, 4)), t["ratio_to_llama_cpp_python_c4"], True),
        ("multi-turn last-turn TTFT / cold ≤ 0.2", multi_turn.last_turn_vs_cold if multi_turn else None,
         t["multi_turn_ratio"], False),
        ("the same, lokal serve restarted before the last turn ≤ 0.2", m.restarted_chat.last_vs_cold,
         t["multi_turn_ratio"], False),
        ("lokal serve idle RSS (default settings) ≤ 350 MiB", m.lokal_default_rss_mb, t["idle_rss_mb"], False),
        ("`lokal run smollm2 \"hi\"` cold ≤ 3 s (median)", statistics.median(m.run_cold_seconds),
         t["run_cold_seconds"], False),
    ]


def git_revision() -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=Path(__file__).parent, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
