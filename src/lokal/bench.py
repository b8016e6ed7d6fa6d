"""The load generator of ``lokal bench``: streamed requests at several concurrency levels, and a multi-turn
chat, against any OpenAI-compatible base URL (lokal, llama.cpp's server, llama-cpp-python's, vLLM, …) or
against lokal's engine in this process (``lokal.llm.LLM``, no HTTP). Statistics live in ``bench_report``.

Each level is a closed loop: ``concurrency`` workers, each sending its next request when the previous one
ends. Every request of a run has its own prompt, so no level profits from the previous one's prefix cache;
the prompts are a pure function of their index, so every server sees the same ones.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Literal, Protocol
from urllib.parse import urlsplit

import httpx
import orjson

from lokal.bench_report import (BenchReport, RequestResult, describe_machine, multi_turn_stats, summarize)
from lokal.config import Settings
from lokal.errors import BadRequest, ServerUnavailable

Api = Literal["completions", "chat"]
Scenario = Literal["load", "multi-turn", "both"]
# How a request asks to ignore EOS: top-level "ignore_eos" (llama.cpp's server, vLLM, SGLang), or inside
# lokal's "options" extension; "auto" picks "options" when the server says it is lokal.
IgnoreEosAs = Literal["auto", "field", "options"]

# Each prompt opens with a word of its own first letter, so consecutive prompts share no first token
# and a server's prefix cache cannot shorten one with another.
OPENING_WORDS = ("Amber", "Bright", "Cedar", "Dusty", "Eager", "Fuzzy", "Golden", "Hollow", "Icy", "Jolly", "Kind",
                 "Lucky", "Misty", "Noble", "Olive", "Proud", "Quiet", "Rusty", "Silver", "Tiny", "Upper", "Vivid",
                 "Windy", "Xenial", "Young", "Zesty")
# Common words: about one token each in the usual BPE vocabularies, so N words ≈ N prompt tokens.
COMMON_WORDS = tuple("""the of and to in is that for it as was with be by on not he this are or his from at which
but have an they you were her she there one all we their has been would more when will who so if no out up
what about into them can only other new some could time these two may then do first any my now such like our
over man me even most made after also did many before must through back years where much your way well down
should because each just those people how too little state good very make world still own see men work long get
here between both life being under never day same another know while last might us great old year off come since
against go came right used take three""".split())
# The first request of every run, not counted: it loads the model (a digit, so it shares no prefix either).
WARMUP_PROMPT = "0 1 2 3"


@dataclass
class BenchConfig:
    """What ``run_bench`` measures. ``base_url=None`` runs the engine in this process."""

    model: str | None = None  # None: the server's first model (in-process: smollm2)
    base_url: str | None = None  # OpenAI-compatible, e.g. http://127.0.0.1:11434/v1
    concurrency: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    num_requests: int = 16  # per level
    prompt_tokens: int = 32  # about; the server's usage says exactly
    # Prompts are a pure function of their index, numbered from here: a run with another first_prompt (far
    # enough apart) sends prompts that no server's cache holds from the runs before it.
    first_prompt: int = 0
    max_tokens: int = 128
    ignore_eos: bool = True
    is_streaming: bool = True
    api: Api = "completions"  # raw text: the same tokens on every server; "chat" applies the template
    scenario: Scenario = "load"
    num_turns: int = 8
    turn_tokens: int = 200  # about, per user message; with answer_tokens, 8 turns grow to ~2k tokens
    answer_tokens: int = 48
    ignore_eos_as: IgnoreEosAs = "auto"
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every HTTP request body
    api_key: str | None = None
    timeout: float = 600.0  # seconds per request
    is_warmed_up: bool = True  # send one uncounted request first, so loading the model is not measured

    def validate(self) -> None:
        if self.scenario in ("load", "both"):
            if not self.concurrency or any(c < 1 for c in self.concurrency):
                raise BadRequest("concurrency levels must be whole numbers of at least 1")
            if self.num_requests < 1:
                raise BadRequest("the number of requests must be at least 1")
        for name in ("prompt_tokens", "max_tokens", "num_turns", "turn_tokens", "answer_tokens"):
            if getattr(self, name) < 1:
                raise BadRequest(f"{name.replace('_', ' ')} must be at least 1")
        if self.timeout <= 0:
            raise BadRequest("timeout must be positive")
        if self.first_prompt < 0:
            raise BadRequest("first prompt must be 0 or more")
        if self.api not in ("completions", "chat"):
            raise BadRequest(f"api must be completions or chat, got {self.api!r}")
        if self.scenario not in ("load", "multi-turn", "both"):
            raise BadRequest(f"scenario must be load, multi-turn or both, got {self.scenario!r}")
        if self.ignore_eos_as not in ("auto", "field", "options"):
            raise BadRequest(f"ignore_eos_as must be auto, field or options, got {self.ignore_eos_as!r}")
        if not isinstance(self.extra_body, dict):
            raise BadRequest("extra_body must be a JSON object")


def prompt_text(index: int, num_words: int) -> str:
    """The ``index``-th prompt of a run: about ``num_words`` tokens, the same on every call."""
    rng = random.Random(index)
    words = [OPENING_WORDS[index % len(OPENING_WORDS)]]
    words += [rng.choice(COMMON_WORDS) for _ in range(num_words - 1)]
    return " ".join(words)


@dataclass
class Work:
    """One request's input: raw text (completions) or a conversation (chat)."""

    prompt: str | None = None
    messages: list[dict[str, str]] | None = None


def work_for(api: Api, index: int, num_words: int) -> Work:
    text = prompt_text(index, num_words)
    return Work(prompt=text) if api == "completions" else Work(messages=[{"role": "user", "content": text}])


class Target(Protocol):
    description: dict[str, Any]

    async def complete(self, work: Work, max_tokens: int) -> RequestResult: ...

    async def aclose(self) -> None: ...


# ---- HTTP: any OpenAI-compatible server ------------------------------------------------------------------


def normalize_base_url(url: str) -> str:
    """``http://host:port`` gets ``/v1``, as OpenAI clients expect it; a URL with a path is kept."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(f"base URL must look like http://127.0.0.1:11434/v1, got {url!r}")
    path = parts.path.rstrip("/") or "/v1"
    return f"{parts.scheme}://{parts.netloc}{path}"


def _error_message(status: int, body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"HTTP {status}: {body[:200].decode(errors='replace').strip()}"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    if error is None and isinstance(data, dict):
        error = data.get("detail")
    return f"HTTP {status}: {error if error is not None else data}"


class HttpTarget:
    """Streams OpenAI completions or chat completions over one pooled ``httpx.AsyncClient``."""

    def __init__(self, config: BenchConfig, base_url: str, model: str, ignore_eos_as: Literal["field", "options"]):
        self.config = config
        self.base_url = base_url
        self.model = model
        self.ignore_eos_as = ignore_eos_as
        self.description = {"kind": "http", "base_url": base_url, "model": model, "ignore_eos_as": ignore_eos_as}
        self._client = _http_client(config)

    @classmethod
    async def connect(cls, config: BenchConfig) -> HttpTarget:
        """Check the server answers, pick the model and the way to ask for ignore_eos."""
        base_url = normalize_base_url(config.base_url or "")
        async with _http_client(config) as client:
            try:
                response = await client.get(base_url + "/models", timeout=30)
            except httpx.HTTPError as exc:
                raise ServerUnavailable(f"no server answers at {base_url} ({type(exc).__name__}: {exc}); start one "
                                        f"(lokal serve), pass another --url, or bench in process") from None
            if response.status_code != 200:
                raise ServerUnavailable(f"{base_url}/models: {_error_message(response.status_code, response.content)}")
            try:
                available = [entry["id"] for entry in response.json().get("data", [])]
            except (ValueError, TypeError, KeyError, AttributeError):
                raise ServerUnavailable(f"{base_url}/models did not answer an OpenAI model list") from None
            model = config.model or (available[0] if available else None)
            if model is None:
                raise BadRequest(f"{base_url} lists no models; name the model to bench")
            ignore_eos_as = config.ignore_eos_as
            if ignore_eos_as == "auto":
                ignore_eos_as = "options" if await _is_lokal(client, base_url) else "field"
        return cls(config, base_url, model, ignore_eos_as)

    def body(self, work: Work, max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "temperature": 0,
                                "stream": self.config.is_streaming}
        if work.messages is not None:
            body["messages"] = work.messages
        else:
            body["prompt"] = work.prompt
        if self.config.is_streaming:
            body["stream_options"] = {"include_usage": True}
        if self.config.ignore_eos:
            if self.ignore_eos_as == "options":
                body["options"] = {"ignore_eos": True}
            else:
                body["ignore_eos"] = True
        for key, value in self.config.extra_body.items():
            if key == "options" and isinstance(value, dict) and isinstance(body.get("options"), dict):
                body["options"] = {**body["options"], **value}
            else:
                body[key] = value
        return body

    async def complete(self, work: Work, max_tokens: int) -> RequestResult:
        path = "/chat/completions" if work.messages is not None else "/completions"
        content = orjson.dumps(self.body(work, max_tokens))
        result = RequestResult(started_at=time.perf_counter())
        try:
            async with self._client.stream("POST", self.base_url + path, content=content,
                                           headers={"content-type": "application/json"}) as response:
                if response.status_code != 200:
                    result.error = _error_message(response.status_code, await response.aread())
                elif self.config.is_streaming:
                    await _read_events(response, result)
                else:
                    _read_whole(orjson.loads(await response.aread()), result)
        except httpx.HTTPError as exc:
            result.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except (ValueError, TypeError, AttributeError, KeyError) as exc:  # JSON, but not the shapes OpenAI's API sends
            result.error = f"unreadable response ({type(exc).__name__}: {exc})"
        result.finished_at = time.perf_counter()
        return result

    async def aclose(self) -> None:
        await self._client.aclose()


def _http_client(config: BenchConfig) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {config.api_key}"} if config.api_key else None
    # No pool limit below the highest concurrency: waiting for a connection would count as server latency.
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=max(config.concurrency or [1]) + 2)
    return httpx.AsyncClient(timeout=httpx.Timeout(config.timeout, connect=30), limits=limits, headers=headers)


async def _is_lokal(client: httpx.AsyncClient, base_url: str) -> bool:
    parts = urlsplit(base_url)
    try:
        response = await client.get(f"{parts.scheme}://{parts.netloc}/", timeout=10)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and response.text.startswith("lokal")


def _choice_text(choice: dict[str, Any]) -> str | None:
    if "text" in choice:
        return choice["text"]
    return (choice.get("delta") or choice.get("message") or {}).get("content")


async def _read_events(response: httpx.Response, result: RequestResult) -> None:
    """Fill ``result`` from an SSE stream of completion chunks (``data: {...}`` … ``data: [DONE]``)."""
    pieces: list[str] = []
    num_pieces = 0
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        chunk = orjson.loads(data)
        if "error" in chunk:
            error = chunk["error"]
            result.error = str(error.get("message", error) if isinstance(error, dict) else error)
            break
        for choice in chunk.get("choices") or ():
            text = _choice_text(choice)
            if text:
                now = time.perf_counter()
                if result.first_token_at is None:
                    result.first_token_at = now
                result.last_token_at = now
                pieces.append(text)
                num_pieces += 1
        usage = chunk.get("usage")
        if usage:
            result.num_prompt_tokens = usage.get("prompt_tokens")
            result.num_completion_tokens = usage.get("completion_tokens", 0)
            result.is_counted_by_server = True
    result.text = "".join(pieces)
    if not result.is_counted_by_server:
        # No usage in the stream (llama-cpp-python's server): each chunk carries one token there.
        result.num_completion_tokens = num_pieces


def _read_whole(data: dict[str, Any], result: RequestResult) -> None:
    choices = data.get("choices") or [{}]
    result.text = _choice_text(choices[0]) or ""
    usage = data.get("usage") or {}
    result.num_prompt_tokens = usage.get("prompt_tokens")
    result.num_completion_tokens = usage.get("completion_tokens", 0)
    result.is_counted_by_server = bool(usage)


# ---- in process: lokal's engine through lokal.llm.LLM ------------------------------------------------------


class InProcessTarget:
    """lokal's runtime and engine in this process: what the server adds on top is what HTTP costs."""

    def __init__(self, config: BenchConfig, llm: Any):
        self.config = config
        self.llm = llm
        self.description = {"kind": "in-process", "base_url": None, "model": llm.model}

    @classmethod
    async def load(cls, config: BenchConfig, settings: Settings | None) -> InProcessTarget:
        from lokal.llm import LLM

        # One engine slot per concurrent request, as a server configured for the run would have.
        num_parallel = max(config.concurrency or [1])
        llm = await asyncio.to_thread(LLM, config.model or "smollm2", settings=settings, num_parallel=num_parallel)
        return cls(config, llm)

    async def complete(self, work: Work, max_tokens: int) -> RequestResult:
        options = {"temperature": 0, "num_predict": max_tokens, "ignore_eos": self.config.ignore_eos}
        result = RequestResult(started_at=time.perf_counter())
        pieces: list[str] = []
        try:
            if work.messages is not None:
                chunks = await self.llm.achat(work.messages, stream=True, options=options)
            else:
                chunks = await self.llm.agenerate(work.prompt, stream=True, raw=True, options=options)
            async for chunk in chunks:
                if chunk.text:
                    now = time.perf_counter()
                    if result.first_token_at is None:
                        result.first_token_at = now
                    result.last_token_at = now
                    pieces.append(chunk.text)
                if chunk.done is not None:
                    result.num_prompt_tokens = chunk.done.prompt_eval_count
                    result.num_completion_tokens = chunk.done.eval_count
                    result.is_counted_by_server = True
        except Exception as exc:  # a bench counts failures; the report shows the message
            result.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
        result.text = "".join(pieces)
        result.finished_at = time.perf_counter()
        return result

    async def aclose(self) -> None:
        await asyncio.to_thread(self.llm.close)


# ---- the runs ------------------------------------------------------------------------------------------------

Progress = Callable[[str], None]


async def run_level(target: Target, config: BenchConfig, concurrency: int, first_index: int
                    ) -> tuple[list[RequestResult], float]:
    """``num_requests`` requests with at most ``concurrency`` in flight; the results and the wall time."""
    works = [work_for(config.api, first_index + i, config.prompt_tokens) for i in range(config.num_requests)]
    results: list[RequestResult | None] = [None] * len(works)
    next_indices = iter(range(len(works)))

    async def worker() -> None:
        for index in next_indices:  # shared iterator: each worker takes the next unsent request
            results[index] = await target.complete(works[index], config.max_tokens)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(min(concurrency, len(works)))))
    wall = time.perf_counter() - started
    return [r for r in results if r is not None], wall


def conversation_opening(nonce: int) -> dict[str, str]:
    return {"role": "system",
            "content": f"{OPENING_WORDS[nonce % len(OPENING_WORDS)]} session {nonce}. You are a helpful assistant."}


async def run_multi_turn(target: Target, config: BenchConfig, first_index: int
                         ) -> tuple[list[RequestResult], RequestResult | None]:
    """One conversation of ``num_turns`` turns, then its last request again under another opening (cold)."""
    history = [conversation_opening(first_index)]
    results: list[RequestResult] = []
    last_request: list[dict[str, str]] = []
    for turn in range(config.num_turns):
        history.append({"role": "user", "content": prompt_text(first_index + 1 + turn, config.turn_tokens)})
        last_request = list(history)
        result = await target.complete(Work(messages=last_request), config.answer_tokens)
        results.append(result)
        if not result.is_ok:
            return results, None
        history.append({"role": "assistant", "content": result.text})
    # Same length and content, but an opening no cache has seen: nothing of it can be reused.
    cold = [conversation_opening(first_index + 1)] + last_request[1:]
    return results, await target.complete(Work(messages=cold), config.answer_tokens)


async def _open_target(config: BenchConfig, settings: Settings | None) -> Target:
    if config.base_url is None:
        return await InProcessTarget.load(config, settings)
    return await HttpTarget.connect(config)


async def run_bench_async(config: BenchConfig, settings: Settings | None = None,
                          progress: Progress | None = None, target: Target | None = None) -> BenchReport:
    """``target``: one the caller opened and will close (`lokal models test` benchmarks the model it loaded);
    by default one is opened from ``config`` and closed at the end."""
    config.validate()
    say = progress or (lambda message: None)
    started_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    is_own_target = target is None
    if target is None:
        target = await _open_target(config, settings)
    try:
        settings_shown = {**asdict(config), "api_key": "***" if config.api_key else None}  # reports get shared
        report = BenchReport(target=target.description, settings=settings_shown, machine=describe_machine(),
                             started_at=started_at)
        if config.is_warmed_up:
            say("warming up (loading the model)")
            warmup = await target.complete(Work(prompt=WARMUP_PROMPT) if config.api == "completions" else
                                           Work(messages=[{"role": "user", "content": WARMUP_PROMPT}]), 1)
            if not warmup.is_ok:
                raise ServerUnavailable(f"the warm-up request failed: {warmup.error}")
        next_index = config.first_prompt
        if config.scenario in ("load", "both"):
            expected = config.max_tokens if config.ignore_eos else None
            for concurrency in config.concurrency:
                say(f"concurrency {concurrency}: {config.num_requests} requests × {config.max_tokens} tokens")
                results, wall = await run_level(target, config, concurrency, next_index)
                next_index += len(results)
                report.levels.append(summarize(concurrency, results, wall, expected))
        if config.scenario in ("multi-turn", "both"):
            say(f"multi-turn chat: {config.num_turns} turns")
            turns, cold = await run_multi_turn(target, config, next_index)
            report.multi_turn = multi_turn_stats(turns, cold)
        return report
    finally:
        if is_own_target:
            await target.aclose()


def run_bench(config: BenchConfig, settings: Settings | None = None, progress: Progress | None = None,
              target: Target | None = None) -> BenchReport:
    """Run the benchmark ``config`` describes and return its report (blocking)."""
    return asyncio.run(run_bench_async(config, settings, progress, target))


__all__ = ["BenchConfig", "Work", "HttpTarget", "InProcessTarget", "prompt_text", "work_for", "run_level",
           "run_multi_turn", "run_bench", "run_bench_async", "normalize_base_url"]
