"""The ONNX engine: one onnxruntime-genai model behind the same surface as the llama.cpp ``Engine``.

``submit`` → events into a sink (``Token`` … ``Done`` with the same stats), stop strings through the same
``Detokenizer``, ``Handle.cancel``, ``tokenize``/``detokenize``, ``close``. The runtime picks this engine
for a stored model of format ``onnx`` (store/onnx_layout.py) and never looks further.

Concurrency: continuous batching through GenAI's ``Engine`` (0.18+) when ``num_parallel`` > 1: requests join
and leave the running batch between steps, at most ``min(num_parallel, the engine's configured batch size)``
at once, the rest waiting in a FIFO queue (measured on the converted SmolLM2 int4 CPU model on 2 cores: 4
streams decode together at about 1.9× one stream's tok/s, with the same greedy tokens as a ``Generator``).
Where the ``Engine`` is missing (older GenAI) or ``num_parallel`` is 1, one ``Generator`` decodes one request at
a time. ``concurrency`` says which ("batch" or "queue") for ``lokal ps``. GenAI's decode releases the GIL.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lokal.engine.detok import Detokenizer
from lokal.engine.engine import EngineConfig, EngineStats
from lokal.engine.stream import Sink
from lokal.errors import (BadRequest, Cancelled, ConfigError, ContextOverflow, LokalError, ModelLoadError,
                          ServerBusy, UnsupportedCapability)
from lokal.json_files import read_json_object
from lokal.types import Done, DoneReason, Event, SamplingOptions, Token

log = logging.getLogger("lokal.engine")



def genai_available() -> bool:
    try:
        import onnxruntime_genai  # noqa: F401
    except ImportError:
        return False
    return True


def supports_guidance() -> bool:
    """Whether the installed onnxruntime-genai can constrain output to a JSON schema."""
    try:
        import onnxruntime_genai as og
    except ImportError:
        return False
    return hasattr(og.GeneratorParams, "set_guidance")


@dataclass
class _Request:
    tokens: list[int]
    sampling: SamplingOptions
    sink: Sink
    guidance: tuple[str, str] | None
    submitted_ns: int = field(default_factory=time.perf_counter_ns)
    is_cancelled: bool = False


class OnnxHandle:
    def __init__(self, request: _Request):
        self._request = request

    def cancel(self) -> None:
        self._request.is_cancelled = True  # read by the engine thread between tokens


class OnnxEngine:
    """One GenAI model folder; ``provider`` is an execution provider name (``CPUExecutionProvider`` …)."""

    def __init__(self, folder: str | Path, config: EngineConfig | None = None, provider: str | None = None):
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise ConfigError("ONNX models need onnxruntime-genai: pip install 'lokal[onnx]'") from None
        self._og = og
        self.config = config or EngineConfig()
        self.folder = Path(folder)
        self.provider = provider or "CPUExecutionProvider"
        try:
            genai_config = json.loads((self.folder / "genai_config.json").read_text())
            og_config = og.Config(str(self.folder))
            if self.provider != "CPUExecutionProvider":
                og_config.clear_providers()
                og_config.append_provider(_genai_provider_name(self.provider))
            self._model = og.Model(og_config)
            self._tokenizer = og.Tokenizer(self._model)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelLoadError(f"onnxruntime-genai could not load {self.folder}: {exc}") from None
        model_config = genai_config.get("model", {})
        self.n_ctx_train = int(model_config.get("context_length") or self.config.num_ctx)
        self.n_vocab = int(model_config.get("vocab_size") or 0)
        eos = model_config.get("eos_token_id")
        self._eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self._eos_ids |= {int(t) for t in self._tokenizer.eos_token_ids}
        tokenizer_config = read_json_object(self.folder / "tokenizer_config.json")
        self.chat_template: str | None = tokenizer_config.get("chat_template")
        self.bos_text = _token_text(tokenizer_config.get("bos_token"))
        self.eos_text = _token_text(tokenizer_config.get("eos_token"))
        self.metadata: dict[str, Any] = {"general.architecture": model_config.get("type", ""),
                                         "onnx.execution_provider": self.provider}
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self._lock = threading.Lock()
        self._num_busy = 0
        self._is_closing = False
        self._close_reason = ""
        self._batcher: _Batcher | None = None
        is_ready = threading.Event()  # the engine thread has decided: batched or one at a time
        self._thread = threading.Thread(target=self._work, args=(is_ready,), daemon=True,
                                        name=f"lokal-onnx-{self.folder.name}")
        self._thread.start()
        is_ready.wait()
        self.num_slots = self._batcher.num_slots if self._batcher else 1
        self.concurrency = "batch" if self._batcher else "queue"  # what `ps` shows

    def _open_batcher(self) -> _Batcher | None:
        """GenAI's batching Engine, made on the engine thread: GenAI allows its calls only on the thread that
        made it."""
        if self.config.num_parallel <= 1 or not hasattr(self._og, "Engine"):
            return None
        try:
            engine = self._og.Engine(self._model)
            capacity = int(engine.get_capabilities().configured_max_batch_size) or 1
        except (RuntimeError, ValueError) as exc:  # the model or provider cannot batch: one at a time
            log.info("ONNX continuous batching unavailable for %s (%s); serving one request at a time",
                     self.folder.name, exc)
            return None
        return _Batcher(engine, min(self.config.num_parallel, capacity))

    @property
    def n_ctx_per_seq(self) -> int:
        return min(self.config.num_ctx, self.n_ctx_train)

    # ---- vocabulary -------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        # GenAI's tokenizer always parses special tokens and adds what the tokenizer config says to add.
        return [int(t) for t in self._tokenizer.encode(text)]

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        self._check_ids(ids)
        return self._tokenizer.decode(ids) if ids else ""

    # ---- requests ---------------------------------------------------------------------------------------

    def submit(self, tokens: Sequence[int], sampling: SamplingOptions, *, grammar: str | None = None,
               format: Any = None, sink: Sink) -> OnnxHandle:
        """Queue a generation. ``format`` ("json" or a JSON schema) goes to GenAI's guidance; a llama.cpp
        ``grammar`` has no GenAI equivalent and is refused."""
        prompt = [int(t) for t in tokens]
        if not prompt:
            raise BadRequest("the prompt has no tokens")
        self._check_ids(prompt)
        if len(prompt) >= self.n_ctx_per_seq:
            raise ContextOverflow(f"the prompt is {len(prompt)} tokens but the context holds "
                                  f"{self.n_ctx_per_seq}; shorten it or raise num_ctx")
        guidance = None
        if format is not None:
            if not supports_guidance():
                raise UnsupportedCapability("structured output (format / response_format) needs an "
                                            "onnxruntime-genai with guidance; this one has none")
            schema = {"type": "object"} if format == "json" else format
            guidance = ("json_schema", json.dumps(schema))
        elif grammar:
            raise UnsupportedCapability("grammars are not supported for ONNX models")
        request = _Request(prompt, sampling, sink, guidance)
        handle = OnnxHandle(request)
        sink.attach(handle)  # type: ignore[arg-type]
        with self._lock:
            if self._is_closing:
                raise ServerBusy("the model is being unloaded; try again")
            self._queue.put(request)
        return handle

    def embed(self, token_lists: Sequence[Sequence[int]], normalize: bool = True) -> list[list[float]]:
        raise UnsupportedCapability("this ONNX model generates text; embeddings need an embedding model")

    def stats(self) -> EngineStats:
        batcher = self._batcher
        busy = len(batcher.running) if batcher is not None else self._num_busy
        return EngineStats(num_slots=self.num_slots, num_busy=busy, num_free=self.num_slots - busy,
                           num_waiting=self._queue.qsize())

    def close(self, reason: str = "the model was unloaded before the request finished") -> None:
        with self._lock:
            if self._is_closing:
                return
            self._is_closing = True
            self._close_reason = reason
            self._queue.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join()
        self._model = None  # frees the ORT session

    def __enter__(self) -> OnnxEngine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the engine thread ------------------------------------------------------------------------------

    def _work(self, is_ready: threading.Event) -> None:
        self._batcher = self._open_batcher()
        is_ready.set()
        if self._batcher is not None:
            self._work_batched(self._batcher)
            return
        while True:
            request = self._queue.get()
            if request is None or self._is_closing:
                if request is not None:  # taken off the queue as the model unloads: end it too
                    _fail(request, Cancelled(self._close_reason))
                break
            self._num_busy = 1
            try:
                self._generate(request)
            except LokalError as exc:
                _fail(request, exc)
            except Exception as exc:  # a GenAI failure mid-request: end this request, keep serving
                log.exception("ONNX generation failed")
                _fail(request, LokalError(f"the ONNX engine failed: {exc}"))
            finally:
                self._num_busy = 0
        self._drain_queue()

    def _generate(self, request: _Request) -> None:
        og = self._og
        sampling = request.sampling
        if request.is_cancelled:
            _fail(request, Cancelled())
            return
        params = og.GeneratorParams(self._model)
        room = self.n_ctx_per_seq
        if sampling.num_predict > 0:
            room = min(room, len(request.tokens) + sampling.num_predict)
        options: dict[str, Any] = {"max_length": room, "do_sample": sampling.temperature > 0,
                                   "repetition_penalty": sampling.repeat_penalty or 1.0}
        if sampling.temperature > 0:
            options.update(temperature=sampling.temperature, top_k=sampling.top_k or 0, top_p=sampling.top_p)
            if sampling.seed >= 0:
                options["random_seed"] = sampling.seed
        params.set_search_options(**options)
        if request.guidance is not None:
            params.set_guidance(*request.guidance)
        generator = og.Generator(self._model, params)
        stream = self._tokenizer.create_stream()
        detok = Detokenizer(lambda token: stream.decode(token).encode("utf-8"), sampling.stop)
        started = time.perf_counter_ns()
        generator.append_tokens(request.tokens)
        prompt_ns = time.perf_counter_ns() - started
        eval_started = time.perf_counter_ns()
        generated: list[int] = []
        reason: DoneReason | None = None
        pending: list[int] = []
        while reason is None:
            if request.is_cancelled or self._is_closing:
                _fail(request, Cancelled(self._close_reason) if self._is_closing else Cancelled())
                return
            if generator.is_done():
                reason = "length" if len(request.tokens) + len(generated) >= room else "stop"
                break
            generator.generate_next_token()
            token = int(generator.get_next_tokens()[0])
            if token in self._eos_ids and not sampling.ignore_eos:
                reason = "stop"
                break
            generated.append(token)
            pending.append(token)
            text = detok.add(token)
            if detok.is_stopped:
                reason = "stop"
            elif 0 < sampling.num_predict <= len(generated) or len(request.tokens) + len(generated) >= room:
                reason = "length"
            if reason is not None and not detok.is_stopped:
                text += detok.flush()
            if text:
                if not _push(request, [Token(text, pending)]):
                    return
                pending = []
        tail = detok.flush() if not detok.is_stopped else ""
        events: list[Event] = [Token(tail, pending)] if tail else []
        events.append(Done(reason=reason, prompt_count=len(request.tokens), prompt_eval_count=len(request.tokens),
                           prompt_eval_duration=prompt_ns,
                           eval_count=len(generated), eval_duration=time.perf_counter_ns() - eval_started,
                           total_duration=time.perf_counter_ns() - request.submitted_ns,
                           context=request.tokens + generated, stop_sequence=detok.matched_stop))
        _push(request, events)

    # ---- the engine thread, batched --------------------------------------------------------------------

    def _work_batched(self, batcher: _Batcher) -> None:
        while not self._is_closing:
            # Admit waiting requests into free slots; block only when nothing runs.
            while len(batcher.running) < batcher.num_slots:
                try:
                    request = self._queue.get(block=not batcher.running)
                except queue.Empty:
                    break
                if request is None or self._is_closing:
                    if request is not None:  # taken off the queue as the model unloads: end it too
                        _fail(request, Cancelled(self._close_reason))
                    break
                self._begin(batcher, request)
            for running in list(batcher.running.values()):
                if running.request.is_cancelled:
                    batcher.end(running, Cancelled())
            if not batcher.running:
                continue
            try:
                events = batcher.engine.run(batcher.buffer) or []
            except Exception as exc:  # a GenAI failure mid-step: end this step's requests, keep serving
                log.exception("ONNX batched step failed")
                for running in list(batcher.running.values()):
                    batcher.end(running, LokalError(f"the ONNX engine failed: {exc}"))
                continue
            for event in events:
                running = batcher.running.get(event.request)
                if running is not None:
                    self._on_event(batcher, running, event)
        for running in list(batcher.running.values()):
            batcher.end(running, Cancelled(self._close_reason))
        self._drain_queue()
        self._batcher = None  # GenAI's Engine goes away on its own thread

    def _begin(self, batcher: _Batcher, request: _Request) -> None:
        og, sampling = self._og, request.sampling
        if request.is_cancelled:
            _fail(request, Cancelled())
            return
        room = self.n_ctx_per_seq
        if sampling.num_predict > 0:
            room = min(room, len(request.tokens) + sampling.num_predict)
        try:
            og_request = batcher.engine.create_request()
            options = og.TurnOptions(og_request)
            max_new = max(1, room - len(request.tokens))
            options.set_max_generated_tokens(max_new)
            if sampling.ignore_eos:
                options.set_min_generated_tokens(max_new)
            options.set_do_sample(sampling.temperature > 0)
            options.set_repetition_penalty(sampling.repeat_penalty or 1.0)
            if sampling.temperature > 0:
                options.set_temperature(sampling.temperature)
                options.set_top_k(sampling.top_k or 0)
                options.set_top_p(sampling.top_p)
                if sampling.seed >= 0:
                    options.set_seed(sampling.seed)
            if request.guidance is not None:
                options.set_guidance(*request.guidance)
            started = time.perf_counter_ns()
            turn = og_request.begin_turn(np.asarray(request.tokens, dtype=np.int32), options)
        except Exception as exc:
            log.exception("ONNX request could not start")
            _fail(request, LokalError(f"the ONNX engine could not start the request: {exc}"))
            return
        stream = self._tokenizer.create_stream()
        detok = Detokenizer(lambda token: stream.decode(token).encode("utf-8"), sampling.stop)
        batcher.running[og_request] = _Running(request, og_request, turn, detok, started)

    def _on_event(self, batcher: _Batcher, running: _Running, event: Any) -> None:
        og, request = self._og, running.request
        flags = int(event.flags)
        if flags & int(og.EngineEventFlags.FAILED):
            batcher.end(running, LokalError(f"the ONNX engine failed the request: {event.error_code}"))
            return
        token = event.token
        finish = event.finish_reason
        reason: DoneReason | None = None
        text = ""
        if flags & int(og.EngineEventFlags.TOKEN) and token is not None and token >= 0:
            if running.first_token_ns is None:
                running.first_token_ns = time.perf_counter_ns()
            if token in self._eos_ids and not request.sampling.ignore_eos:
                reason = "stop"
            else:
                running.generated.append(int(token))
                running.pending.append(int(token))
                text = running.detok.add(int(token))
                if running.detok.is_stopped:
                    reason = "stop"
        if reason is None and finish != og.FinishReason.NONE:
            if finish == og.FinishReason.CANCELLED:
                batcher.end(running, Cancelled())
                return
            reason = "length" if finish in (og.FinishReason.MAX_GENERATED_TOKENS,
                                            og.FinishReason.MAX_SESSION_TOKENS) else "stop"
        if reason is None:
            if text and not _push(request, [Token(text, running.pending)]):
                batcher.end(running, None)  # the consumer is gone
                return
            if text:
                running.pending = []
            return
        if not running.detok.is_stopped:
            text += running.detok.flush()
        events: list[Event] = [Token(text, running.pending)] if text else []
        now = time.perf_counter_ns()
        first = running.first_token_ns or now
        events.append(Done(reason=reason, prompt_count=len(request.tokens), prompt_eval_count=len(request.tokens),
                           prompt_eval_duration=first - running.started_ns,
                           eval_count=len(running.generated), eval_duration=now - first,
                           total_duration=now - request.submitted_ns,
                           context=request.tokens + running.generated, stop_sequence=running.detok.matched_stop))
        batcher.end(running, None)  # first, so whoever reads the answer sees the slot free
        _push(request, events)

    def _drain_queue(self) -> None:
        while True:  # closing: end whatever still waits
            try:
                leftover = self._queue.get_nowait()
            except queue.Empty:
                break
            if leftover is not None:
                _fail(leftover, Cancelled(self._close_reason))

    def _check_ids(self, ids: list[int]) -> None:
        if self.n_vocab and ids and (min(ids) < 0 or max(ids) >= self.n_vocab):
            raise BadRequest(f"token ids must be between 0 and {self.n_vocab - 1}")


@dataclass
class _Running:
    """A request in the batched engine: its GenAI request and turn, and what it produced so far."""

    request: _Request
    og_request: Any
    turn: int
    detok: Detokenizer
    started_ns: int
    first_token_ns: int | None = None
    generated: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)  # token ids not yet sent with text


class _Batcher:
    """GenAI's continuous-batching ``Engine`` for one model, and the requests it runs (keyed by GenAI request)."""

    def __init__(self, engine: Any, num_slots: int):
        self.engine = engine
        self.num_slots = num_slots
        self.buffer = engine.create_event_buffer(max(64, 8 * num_slots))
        self.running: dict[Any, _Running] = {}

    def end(self, running: _Running, error: BaseException | None) -> None:
        """Take a request out of the batch; ``error`` (if any) goes to its consumer."""
        self.running.pop(running.og_request, None)
        try:
            running.og_request.cancel_turn(running.turn)  # no-op once the turn finished
        except Exception:
            pass
        running.og_request.close()
        if error is not None:
            _fail(running.request, error)


def _push(request: _Request, events: list[Event]) -> bool:
    try:
        request.sink.push(events)
        return True
    except Exception:  # the consumer is gone
        return False


def _fail(request: _Request, exc: BaseException) -> None:
    try:
        request.sink.fail(exc)
    except Exception:
        pass


def _token_text(value: Any) -> str:
    if isinstance(value, dict):  # {"content": "<|im_start|>", …} in older tokenizer configs
        value = value.get("content")
    return value if isinstance(value, str) else ""


def _genai_provider_name(provider: str) -> str:
    """ONNX Runtime's provider name → the short one GenAI's Config.append_provider takes."""
    from lokal.hardware import PROVIDER_SHORT

    short = PROVIDER_SHORT.get(provider, provider)
    return {"cuda": "cuda", "dml": "dml", "webgpu": "WebGPU", "qnn": "QNN", "openvino": "OpenVINO",
            "vitisai": "VitisAI"}.get(short, short)
