"""The engine: one loaded model, its own thread, continuous batching over its slots.

Each step is schedule → run → postprocess: the scheduler says which tokens to compute, the runner computes
them in one ``llama_decode`` and samples, and postprocessing turns tokens into text, applies the stop
conditions and pushes each request's events to its sink in one call. The stepping thread lives while there
is work and ends when there is none (see ``_work`` for why); the next request starts another.
``submit``, ``Handle.cancel``, ``embed``, ``stats`` and ``close`` are safe from any thread.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from lokal.engine.config import EngineConfig
from lokal.engine.detok import Detokenizer
from lokal.engine.draft import DraftModel, Drafter, PromptLookup
from lokal.engine.kv import SlotTable
from lokal.engine.kv_files import load_prefixes, save_prefixes
from lokal.engine.llamacpp import Runner
from lokal.engine.request import Request
from lokal.engine.scheduler import Scheduler
from lokal.engine.stream import Sink
from lokal.errors import (
    BadRequest,
    Cancelled,
    ContextOverflow,
    LokalError,
    ServerBusy,
    UnsupportedCapability,
)
from lokal.types import MAX_TOP_LOGPROBS, Done, DoneReason, Event, Logprob, SamplingOptions, Token

log = logging.getLogger("lokal.engine")


@dataclass(frozen=True)
class EngineStats:
    num_slots: int
    num_busy: int  # slots running a request
    num_free: int
    num_waiting: int  # requests waiting for a slot
    # For metrics (read without the engine lock: a scrape may see a step half-applied, never a torn number).
    num_kv_cells: int = 0  # KV cells the context holds: num_ctx × num_parallel
    num_kv_cells_used: int = 0  # cells holding a running or idle slot's tokens
    num_parked_bytes: int = 0  # idle slots' KV parked in host memory (prompt cache)
    num_reused_tokens: int = 0  # prompt tokens prefix reuse saved, since the model loaded


class Handle:
    """What ``submit`` returns: ``cancel()`` ends the request; its slot frees at the next step."""

    def __init__(self, engine: Engine, request: Request):
        self._engine = engine
        self._request = request

    @property
    def request_id(self) -> int:
        return self._request.request_id

    def cancel(self) -> None:
        self._engine._cancel(self._request)


class Engine:
    def __init__(self, model_path: str, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self._lock = threading.Lock()  # guards the inbox, cancels, jobs and the worker
        self._inbox: list[Request] = []
        self._cancelled: list[Request] = []
        self._jobs: list[Callable[[], None]] = []
        self._is_closing = False
        self._is_closed = False
        self._close_reason = ""
        self._thread_name = f"lokal-engine-{model_path.rsplit('/', 1)[-1]}"
        self._worker: threading.Thread | None = None  # the thread stepping requests; None while idle
        self.num_draft_proposed = 0  # speculative decoding: tokens guessed, all requests
        self.num_draft_accepted = 0  # … and those the model confirmed
        self._draft_model: DraftModel | None = None
        ready: Future[Runner] = Future()
        loader = threading.Thread(target=self._load, args=(model_path, ready), daemon=True, name=self._thread_name)
        loader.start()
        self._runner = ready.result()  # a load failure raises here
        loader.join()

    # ---- model facts ------------------------------------------------------------------------------------

    @property
    def metadata(self) -> dict[str, str]:
        return self._runner.metadata

    @property
    def n_ctx_train(self) -> int:
        return self._runner.n_ctx_train

    @property
    def n_ctx_per_seq(self) -> int:
        return self.config.num_ctx

    @property
    def n_vocab(self) -> int:
        return self._runner.n_vocab

    @property
    def n_embd(self) -> int:
        return self._runner.n_embd

    @property
    def bos(self) -> int | None:
        return self._runner.bos

    @property
    def eos(self) -> int | None:
        return self._runner.eos

    @property
    def eot(self) -> int | None:
        return self._runner.eot

    @property
    def add_bos(self) -> bool:
        return self._runner.add_bos

    @property
    def bos_text(self) -> str:
        return self._special_text(self._runner.bos)

    @property
    def eos_text(self) -> str:
        return self._special_text(self._runner.eos)

    def is_eog(self, token: int) -> bool:
        self._check_ids([token])
        return self._runner.is_eog(token)

    # ---- vocabulary: safe from any thread ---------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return self._runner.tokenize(text, add_special, parse_special)

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = list(ids)
        self._check_ids(ids)
        return self._runner.detokenize(ids)

    def token_piece(self, token: int, special: bool = False) -> bytes:
        self._check_ids([token])
        return self._runner.token_piece(token, special)

    # ---- requests ---------------------------------------------------------------------------------------

    def submit(self, tokens: Sequence[int], sampling: SamplingOptions, *, grammar: str | None = None,
               sink: Sink, logprobs: int | None = None) -> Handle:
        """Queue a generation. Events go to ``sink``; bad input raises here, before anything is queued.
        ``logprobs`` n (0–20): each ``Token`` carries its tokens' log-probabilities and n likeliest alternatives."""
        if self.config.embedding:
            raise UnsupportedCapability("this model is loaded for embeddings only")
        if logprobs is not None and not 0 <= logprobs <= MAX_TOP_LOGPROBS:
            raise BadRequest(f"top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}")
        prompt = list(tokens)
        self._check_tokens(prompt)
        if len(prompt) >= self.n_ctx_per_seq:
            raise ContextOverflow(f"the prompt is {len(prompt)} tokens but the context holds "
                                  f"{self.n_ctx_per_seq}; shorten it or raise num_ctx")
        if grammar and sampling.ignore_eos:
            sampling = replace(sampling, ignore_eos=False)  # a grammar says where the output ends
        sampler = self._runner.new_sampler(sampling, grammar, prompt)
        request = Request(tokens=prompt, sampling=sampling, sink=sink, sampler=sampler,
                          drafter=self._drafter_for(sampling, grammar, logprobs), num_top_logprobs=logprobs,
                          detok=Detokenizer(self._runner.output_piece, sampling.stop))
        handle = Handle(self, request)
        sink.attach(handle)
        with self._lock:
            if self._is_closing:
                self._runner.free_sampler(sampler)
                raise ServerBusy("the model is being unloaded; try again")
            self._inbox.append(request)
            self._ensure_worker()
        return handle

    def _drafter_for(self, sampling: SamplingOptions, grammar: str | None, logprobs: int | None) -> Drafter | None:
        """Who guesses ahead for a request (speculative decoding), if anyone. Not grammar-constrained ones
        (a guess would have to pass the grammar too), nor greedy ones with penalties: a greedy guess is
        checked against the raw logits' clear leader (see Runner.decode), which penalties move. Nor requests
        for logprobs: a guessed position's logits come from the batched kernels, which round differently,
        and its logprobs would differ in the last digits from the one-token step's."""
        if not self.config.num_draft or grammar or logprobs is not None:
            return None
        has_penalties = (sampling.repeat_penalty != 1.0 or sampling.frequency_penalty != 0.0
                         or sampling.presence_penalty != 0.0)
        if sampling.temperature <= 0 and has_penalties:
            return None
        return self._draft_model or PromptLookup()

    def embed(self, token_lists: Sequence[Sequence[int]], normalize: bool = True) -> list[list[float]]:
        """One vector per token list, computed on the engine thread between steps (blocks the caller)."""
        if self._runner.is_reranker:
            raise UnsupportedCapability("this model is a reranker (rank pooling): it scores query–document "
                                        "pairs with /api/rerank or /v1/rerank, it does not embed")
        return self._pooled(token_lists, lambda lists: self._runner.embed(lists, normalize))

    @property
    def is_reranker(self) -> bool:
        return self._runner.is_reranker

    def rerank_input(self, query: Sequence[int], document: Sequence[int]) -> list[int]:
        """The token list ``rerank`` scores for a query–document pair (both tokenized without specials)."""
        return self._runner.rerank_input(query, document)

    def rerank(self, token_lists: Sequence[Sequence[int]]) -> list[float]:
        """A reranker's relevance score for each ``rerank_input`` list, on the engine thread (blocks)."""
        return self._pooled(token_lists, self._runner.rerank)

    def _pooled(self, token_lists: Sequence[Sequence[int]], run: Callable[[list[list[int]]], list[Any]]) -> list[Any]:
        lists = [list(tokens) for tokens in token_lists]
        for tokens in lists:
            if not tokens:
                raise BadRequest("cannot embed an empty input")
            self._check_tokens(tokens)
            if len(tokens) > self.config.num_ctx:
                raise ContextOverflow(f"an input is {len(tokens)} tokens but the context holds {self.config.num_ctx}")
        if not lists:
            return []
        result: Future[list[Any]] = Future()

        def job() -> None:
            try:
                result.set_result(run(lists))
            except BaseException as exc:
                result.set_exception(exc)

        with self._lock:
            if self._is_closing:
                raise ServerBusy("the model is being unloaded; try again")
            self._jobs.append(job)
            self._ensure_worker()
        return result.result()

    def stats(self) -> EngineStats:
        scheduler = self._scheduler
        slots = scheduler.slots
        num_busy = slots.num_busy
        running = list(scheduler.running)
        num_used = (sum(request.num_computed for request in running)
                    + sum(len(slot.tokens) for slot in list(slots.slots) if not slot.is_busy))
        return EngineStats(num_slots=len(slots.slots), num_busy=num_busy, num_free=len(slots.slots) - num_busy,
                           num_waiting=len(scheduler.waiting) + len(self._inbox),
                           num_kv_cells=self.config.num_ctx * self.config.num_parallel,
                           num_kv_cells_used=num_used, num_parked_bytes=slots.num_parked_bytes,
                           num_reused_tokens=scheduler.num_reused_tokens)

    @property
    def num_live_samplers(self) -> int:
        return self._runner.num_live_samplers

    def close(self, reason: str = "the model was unloaded before the request finished") -> None:
        """Stop the thread, end unfinished requests with ``Cancelled(reason)`` and free every C object.
        Idempotent."""
        with self._lock:
            self._is_closing = True
            self._close_reason = reason
            worker = self._worker
        if worker is None:  # idle: nothing steps, so shut down here
            self._shut_down(self._runner, Cancelled(reason))
        elif worker is not threading.current_thread():
            worker.join()  # it shuts down at its next step

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- the engine thread ------------------------------------------------------------------------------

    # Why the stepping thread ends when idle: llama.cpp computes with OpenMP, and libgomp keeps a thread team
    # for every thread that ever computed. Once more threads hold teams than there are cores, it throttles
    # its spin-waiting and every model in the process decodes ~3x slower. An idle engine that keeps its
    # thread would do that to the busy one; a thread per busy period costs ~0.1 ms when work arrives.

    def _load(self, model_path: str, ready: Future[Runner]) -> None:
        try:
            runner = Runner(model_path, self.config)
        except BaseException as exc:
            ready.set_exception(exc)
            return
        if self.config.draft_model and self.config.num_draft and not self.config.embedding:
            try:
                self._draft_model = DraftModel(self.config.draft_model, self.config, runner)
            except BaseException as exc:
                runner.close()
                ready.set_exception(exc)
                return
        slots = SlotTable(self.config.num_parallel, runner, self.config.prompt_cache,
                          reuse_prefix=self.config.prefix_reuse)
        if self.config.prompt_cache_dir and self.config.prefix_reuse and not self.config.embedding:
            cached = load_prefixes(Path(self.config.prompt_cache_dir), self.config.prompt_cache)
            for prefix in reversed(cached):  # oldest first: the newest ends up the most recently used
                slots.adopt(prefix.tokens, prefix.saved)  # read from disk when a prompt reuses it
            if cached:
                log.debug("prompt cache: %d cached prefixes read from %s", len(cached), self.config.prompt_cache_dir)
        self._scheduler = Scheduler(slots, self.config.batch_size, num_ctx=self.config.num_ctx,
                                    num_draft=self.config.num_draft)
        ready.set_result(runner)

    def _ensure_worker(self) -> None:
        """Start the stepping thread if the engine is idle. Caller holds ``self._lock``."""
        if self._worker is None and not self._is_closed:
            self._worker = threading.Thread(target=self._work, daemon=True, name=self._thread_name)
            self._worker.start()

    def _work(self) -> None:
        runner = self._runner
        try:
            if not self._loop(runner):
                return  # idle: the thread ends; the next submit starts another
            reason: BaseException = Cancelled(self._close_reason)
        except Exception as exc:  # a bug, not bad input: end every request with it rather than hang them
            log.exception("engine thread failed")
            reason = LokalError(f"the engine failed: {exc}")
        self._shut_down(runner, reason)

    def _loop(self, runner: Runner) -> bool:
        """Step until there is nothing to do (returns False) or the engine closes (returns True)."""
        scheduler = self._scheduler
        while True:
            with self._lock:
                if self._is_closing:
                    return True
                if not (self._inbox or self._cancelled or self._jobs or scheduler.has_work):
                    self._worker = None
                    return False
                new, self._inbox = self._inbox, []
                cancelled, self._cancelled = self._cancelled, []
                jobs, self._jobs = self._jobs, []
            for request in new:
                scheduler.add(request)
            for request in cancelled:
                self._end(request, error=Cancelled())
            for job in jobs:
                job()
            if scheduler.has_work:
                self._step(runner)

    def _step(self, runner: Runner) -> None:
        started = time.perf_counter_ns()  # planning included: a draft model guesses there
        plan = self._scheduler.plan()
        if not plan.chunks:
            return
        try:
            sampled = runner.decode(plan.chunks)
        except LokalError as exc:
            for chunk in plan.chunks:
                chunk.request.num_computed = 0  # the KV state of a failed decode is unknown: drop the slot's cache
                self._end(chunk.request, error=exc)
            return
        elapsed = time.perf_counter_ns() - started
        self._scheduler.update(plan)
        self._scheduler.cost.observe(plan.num_tokens, elapsed / 1e9)
        next_sampled = iter(sampled)
        for chunk in plan.chunks:
            request = chunk.request
            if chunk.draft:
                self.num_draft_proposed += len(chunk.draft)
                accepted = max(chunk.num_accepted, 0)  # -1: even the real token is computed again
                self.num_draft_accepted += accepted
                if request.drafter is not None:  # a step cut short by a close call was wasted too: back off
                    request.drafter.judged(len(chunk.draft), accepted)
            if chunk.is_prefill:
                request.prompt_eval_ns += elapsed
            else:
                request.eval_ns += elapsed
            if chunk.needs_sample:
                for i, token in enumerate(next(next_sampled)):  # several when guesses were accepted
                    if request.is_finished or request.done_reason is not None:
                        break
                    self._postprocess(request, token, chunk.logprobs[i] if chunk.logprobs else None)

    def _postprocess(self, request: Request, token: int, logprob: Logprob | None = None) -> None:
        request.num_generated += 1
        reason: DoneReason | None = None
        text = ""
        if self._runner.is_eog(token):  # never sampled under ignore_eos: the sampler bans it
            reason = "stop"
        else:
            request.tokens.append(token)
            request.pending_ids.append(token)
            if logprob is not None:
                request.pending_logprobs.append(logprob)
            text = request.detok.add(token)
            num_predict = request.sampling.num_predict
            if request.detok.is_stopped:
                reason = "stop"
            elif 0 < num_predict <= request.num_generated or request.num_tokens >= self.n_ctx_per_seq:
                reason = "length"
        if reason is not None and not request.detok.is_stopped:
            text += request.detok.flush()
        events: list[Event] = []
        if text:  # ids whose text is held back (half a character, maybe a stop) wait for it
            logprobs = request.pending_logprobs if request.num_top_logprobs is not None else None
            events.append(Token(text, request.pending_ids, logprobs=logprobs))
            request.pending_ids, request.pending_logprobs = [], []
        if reason is not None:
            request.done_reason = reason
            events.append(self._done(request, reason))
        if events and not self._push(request, events):
            return
        if reason is not None:
            self._end(request)

    def _done(self, request: Request, reason: DoneReason) -> Done:
        return Done(reason=reason, prompt_count=request.num_prompt_tokens,
                    prompt_eval_count=request.num_prompt_evaluated,
                    prompt_eval_duration=request.prompt_eval_ns, eval_count=request.num_generated,
                    eval_duration=request.eval_ns, total_duration=time.perf_counter_ns() - request.submitted_ns,
                    context=list(request.tokens), stop_sequence=request.detok.matched_stop)

    def _push(self, request: Request, events: list[Event]) -> bool:
        try:
            request.sink.push(events)
            return True
        except Exception:  # the consumer is gone (e.g. its event loop closed): nothing left to deliver to
            self._end(request)
            return False

    def _end(self, request: Request, error: BaseException | None = None) -> None:
        """Take a request out for good: free its slot (keeping the KV it computed) and its sampler."""
        if request.is_finished:
            return
        request.is_finished = True
        self._scheduler.finish(request)
        self._runner.free_sampler(request.sampler)
        if error is not None:
            try:
                request.sink.fail(error)
            except Exception:
                pass

    def _cancel(self, request: Request) -> None:
        with self._lock:
            if request.is_finished or request.is_cancel_requested or self._is_closed:
                return
            request.is_cancel_requested = True
            self._cancelled.append(request)
            self._ensure_worker()

    def _shut_down(self, runner: Runner, reason: BaseException) -> None:
        with self._lock:
            if self._is_closed:
                return
            self._is_closing = self._is_closed = True
            leftover = self._inbox + list(self._scheduler.waiting) + list(self._scheduler.running)
            jobs, self._inbox, self._jobs = self._jobs, [], []
        for request in leftover:
            self._end(request, error=reason)
        for job in jobs:
            job()  # fails cleanly: the runner is still open; let embed callers finish
        if self.config.prompt_cache_dir and self.config.prefix_reuse and not self.config.embedding:
            try:
                save_prefixes(Path(self.config.prompt_cache_dir), self._scheduler.slots.cached_prefixes(),
                              self.config.prompt_cache)
            except LokalError as exc:  # a slot's KV could not be read: that cache is simply lost
                log.warning("prompt cache not written: %s", exc)
        # Now, not whenever the garbage collector breaks the cycles this engine is in: up to the whole
        # prompt_cache budget of parked KV (measured: 500 MB more resident after an unload, 628 against 126 MiB).
        self._scheduler.slots.forget()
        if self._draft_model is not None:
            self._draft_model.close()
        runner.close()

    def _check_tokens(self, tokens: list[int]) -> None:
        if not tokens:
            raise BadRequest("the prompt has no tokens")
        self._check_ids(tokens)

    def _check_ids(self, ids: list[int]) -> None:
        # llama.cpp looks token ids up unchecked (or throws through C): an unknown id would crash the process.
        if not all(isinstance(token, int) for token in ids):
            raise BadRequest("token ids must be integers")
        if ids and (min(ids) < 0 or max(ids) >= self._runner.n_vocab):
            raise BadRequest(f"token ids must be between 0 and {self._runner.n_vocab - 1}")

    def _special_text(self, token: int | None) -> str:
        if token is None:
            return ""
        return self._runner.token_piece(token, special=True).decode("utf-8", errors="replace")
