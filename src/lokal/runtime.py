"""Model residency: which models are loaded, for how long, and who waits.

The runtime decides which models live (load on first use, keep_alive timers, LRU eviction of idle
models beyond LOKAL_MAX_LOADED_MODELS, a memory estimate against free RAM, a bounded wait queue).
Which tokens run is the engine's business. Sampling options never reload a model; load options do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator, Literal

from lokal.config import Settings, physical_cores
from lokal.engine import AsyncSink, EngineConfig, grammar_for
from lokal.engine.cpu_build import default_flash_attention
from lokal.engine.open import ModelEngine, open_engine
from lokal.engine.pages import release_free_heap
from lokal.errors import (BadRequest, InsufficientMemory, LokalError, ModelLoadError, ServerBusy,
                          UnsupportedCapability)
from lokal.hardware import DeviceChoice, available_memory, choose_device, detect, estimate_memory, process_rss
from lokal.knowledge.index import DEFAULT_MIN_SCORE, DEFAULT_TOP_K, Hit, knowledge_prompt, load_index
from lokal.output import output_splitter, split_events
from lokal.prompt import build_prompt
from lokal.security.encryption import DECRYPTED
from lokal.security.integrity import check_for_load
from lokal.store.gguf_info import ModelDetails, read_details
from lokal.store.names import ModelName
from lokal.store.onnx_layout import read_info as read_onnx_info
from lokal.store.opened import OpenedModels
from lokal.store.store import ModelEntry, Store
from lokal.store.stored_model import StoredModel
from lokal.templates import ChatTemplate
from lokal.tool_calls import forced_call_schema
from lokal.types import (Done, EmbedRequest, EmbedResult, Event, GenerateRequest, LoadOptions,
                         SamplingOptions, split_options)

log = logging.getLogger("lokal.runtime")

DEFAULT_NUM_CTX = 4096
DRAFT_NUM_PREDICT = 8  # guesses per step of a DRAFT model, unless draft_num_predict says otherwise


@dataclass
class RunningModel:
    name: str
    model: str
    digest: str
    size: int
    size_vram: int
    context_length: int
    expires_at: datetime | None
    details: ModelDetails
    format: str = "gguf"  # gguf | onnx
    device: str = "cpu"  # where it runs, chosen from LOKAL_DEVICE (hardware.choose_device)
    device_reason: str = ""
    concurrency: str = "batch"  # batch: continuous batching over num_parallel slots; queue: one at a time
    num_parallel: int = 1  # requests it decodes at once: the slots the queue's capacity counts


# Why a model was unloaded, as a bounded word for metrics (the log line says it in full).
UnloadCause = Literal["requested", "keep_alive", "max_loaded", "memory", "reload", "shutdown"]


@dataclass(frozen=True)
class ResidencyEvent:
    """A model loaded or unloaded, for listeners such as the server's metrics."""

    kind: Literal["load", "unload"]
    model: str
    seconds: float
    cause: UnloadCause | None = None  # unloads only


@dataclass
class LoadedModel:
    key: str
    entry: ModelEntry
    engine: ModelEngine  # Engine (llama.cpp) or OnnxEngine
    details: ModelDetails
    template: ChatTemplate
    config: EngineConfig
    memory: int
    format: str = "gguf"
    device: DeviceChoice | None = None
    files: tuple[Path, ...] = ()  # what the engine reads: the weights and adapters (plaintext copies if encrypted)
    num_active: int = 0
    keep_alive: float = 300.0
    expires_at: float | None = None  # wall clock; None while busy or kept forever
    last_used: float = field(default_factory=time.monotonic)
    expiry_timer: asyncio.TimerHandle | None = None
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def is_idle(self) -> bool:
        return self.num_active == 0

    @property
    def num_slots(self) -> int:
        """Requests it decodes at once: num_parallel, or what the engine can batch when that is fewer (an ONNX
        model batches up to GenAI's configured batch size, or one at a time): the queue's capacity counts these."""
        return getattr(self.engine, "num_slots", self.config.num_parallel)


def _model_key(name: ModelName) -> str:
    return str(name).lower()


OpenEngine = Callable[[Any, EngineConfig, str, Any], ModelEngine]  # (path, config, model format, device provider)


class Runtime:
    def __init__(self, settings: Settings, store: Store | None = None, *,
                 open_engine: OpenEngine = open_engine, free_memory: Callable[[], int] = available_memory):
        """``open_engine(path, config, model_format, provider)`` loads a model (blocking; run on a worker thread) and
        ``free_memory()`` says how many bytes a new model may take: the real ones by default, stand-ins in
        tests of residency decisions."""
        self.settings = settings
        self.store = store or Store.from_settings(settings)
        self._open_engine = open_engine
        self._free_memory = free_memory
        self._opened = OpenedModels(self.store)
        self._loaded: dict[str, LoadedModel] = {}
        self._lock = asyncio.Lock()  # serializes load/unload decisions
        # Signalled (under the same lock, so no wake-up is lost) when a model goes idle or unloads.
        self._changed = asyncio.Condition(self._lock)
        self._num_in_flight = 0
        self.num_refused = 0  # requests refused with 503 because the queue was full (metrics)
        self._closed = False
        self._detected_hardware: Any = None  # detected on the first load (nvidia-smi may take a moment)
        self.residency_listeners: list[Callable[[ResidencyEvent], None]] = []

    # ---- public API -------------------------------------------------------------------------------

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Event]:
        """Token events then one Done. Errors raise before the first event."""
        started = time.perf_counter_ns()
        name = ModelName.parse(request.model)
        keep_alive = self._keep_alive(request.keep_alive)
        if request.prompt is None and not request.messages:
            if keep_alive == 0:
                await self.unload(request.model)
                yield Done(reason="unload", total_duration=time.perf_counter_ns() - started)
                return
        stored = await self._open(request.model)
        sampling, load = split_options(request.options, *stored.options())
        # Before the model is taken: retrieval embeds with another model, which may need a loading slot.
        hits = await self._knowledge(stored, request)
        request, system = _with_knowledge(request, stored.system, hits)
        with self._queue_slot():
            model, load_ns = await self._acquire(name, stored, load)
            try:
                async for event in self._generate_on(model, request, sampling, stored, system, hits, started,
                                                       load_ns):
                    yield event
            finally:
                self._release(model, keep_alive)

    async def _generate_on(self, model: LoadedModel, request: GenerateRequest, sampling: SamplingOptions,
                           stored: StoredModel, system: str | None, hits: list[Hit], started: int,
                           load_ns: int) -> AsyncIterator[Event]:
        if request.prompt is None and not request.messages:
            yield Done(reason="load", load_duration=load_ns, total_duration=time.perf_counter_ns() - started)
            return
        if request.images or any(m.images for m in request.messages or []):
            # The engine runs no vision projector yet, so no model here can read images.
            raise UnsupportedCapability(f'model "{model.entry.name.display}" does not support images')
        prompt = build_prompt(request, template=model.template, tokenize=model.engine.tokenize,
                              num_ctx=model.config.num_ctx, num_predict=sampling.num_predict,
                              default_system=system, default_messages=stored.default_messages(),
                              bos_token=model.engine.bos_text, eos_token=model.engine.eos_text)
        # tool_choice required / a named function: the reply is one call, forced like a format.
        forced = forced_call_schema(request.tools, request.tool_choice) if request.tools else None
        output_format = forced or request.format
        sink = AsyncSink(asyncio.get_running_loop())
        if model.format == "onnx":  # GenAI constrains output with its own guidance, from the schema itself
            if request.logprobs is not None:
                raise UnsupportedCapability("logprobs are available for GGUF models only (ONNX Runtime GenAI "
                                            "does not expose the logits it samples from)")
            handle = model.engine.submit(prompt.tokens, sampling, format=output_format, sink=sink)
        else:
            handle = model.engine.submit(prompt.tokens, sampling, grammar=grammar_for(output_format), sink=sink,
                                         logprobs=request.logprobs)
        try:
            events: AsyncIterator[Event] = sink
            splitter = output_splitter(request, model.template, prompt.text, forced is not None)
            if splitter is not None:
                events = split_events(sink, splitter)
            async for event in events:
                if isinstance(event, Done):
                    event.knowledge = [hit.to_dict() for hit in hits]
                    event.model = model.entry.name.display
                    event.load_duration = load_ns
                    event.total_duration = time.perf_counter_ns() - started
                yield event
        finally:
            handle.cancel()  # no-op once finished; frees the slot when the consumer went away

    async def _knowledge(self, stored: StoredModel, request: GenerateRequest) -> list[Hit]:
        """The chunks of the model's FILE knowledge most similar to the latest user message."""
        query = next((m.content for m in reversed(request.messages or []) if m.role == "user"), request.prompt)
        if not stored.knowledge or not query or request.raw:
            return []
        params = stored.params
        hits: list[Hit] = []
        for path in stored.knowledge:
            index = await asyncio.to_thread(load_index, path)
            vector = (await self.embed(EmbedRequest(model=index.embed_model, input=[query]))).embeddings[0]
            hits += index.search(vector, int(params.get("knowledge_top_k", DEFAULT_TOP_K)),
                                 float(params.get("knowledge_min_score", DEFAULT_MIN_SCORE)))
        hits.sort(key=lambda hit: -hit.score)
        return hits[:int(params.get("knowledge_top_k", DEFAULT_TOP_K))]

    async def embed(self, request: EmbedRequest) -> EmbedResult:
        started = time.perf_counter_ns()
        name = ModelName.parse(request.model)
        stored = await self._open(request.model)
        _, load = split_options(request.options, *stored.options())
        if request.dimensions is not None and request.dimensions < 1:
            raise BadRequest("dimensions must be a positive integer")
        with self._queue_slot():
            model, load_ns = await self._acquire(name, stored, load)
            try:
                return await self._embed_on(model, request, started, load_ns)
            finally:
                self._release(model, self._keep_alive(request.keep_alive))

    async def _embed_on(self, model: LoadedModel, request: EmbedRequest, started: int, load_ns: int) -> EmbedResult:
        limit = model.config.num_ctx
        token_lists = []
        for text in request.input:
            tokens = model.engine.tokenize(text, add_special=True, parse_special=False)
            if len(tokens) > limit:
                if not request.truncate:
                    raise BadRequest(f"input length {len(tokens)} tokens exceeds the context length {limit}")
                tokens = tokens[:limit]
            token_lists.append(tokens)
        vectors = await asyncio.to_thread(model.engine.embed, token_lists)
        if request.dimensions is not None:
            vectors = [_shorten(v, request.dimensions) for v in vectors]
        return EmbedResult(embeddings=vectors, prompt_eval_count=sum(map(len, token_lists)),
                           load_duration=load_ns, total_duration=time.perf_counter_ns() - started)

    async def rerank_scores(self, model: str, query: str, documents: list[str],
                            keep_alive: float | None = None) -> tuple[list[float], int]:
        """A reranker's (rank pooling) relevance score for each document against ``query``, and the number of
        tokens it read: one sequence per document, formatted as llama-server's /rerank does, batched into as
        few decodes as the context allows."""
        async with self.using(model, keep_alive=keep_alive) as loaded:
            engine = loaded.engine
            if not getattr(engine, "is_reranker", False):
                raise UnsupportedCapability(f'model "{model}" is not a reranker (rank pooling)')
            limit = loaded.config.num_ctx
            query_tokens = engine.tokenize(query, add_special=False, parse_special=False)
            token_lists = []
            for document in documents:
                pair = engine.rerank_input(query_tokens, engine.tokenize(document, add_special=False,
                                                                         parse_special=False))
                if len(pair) > limit:
                    raise BadRequest(f"query and document {len(token_lists)} are {len(pair)} tokens together, "
                                     f"more than the context length {limit}")
                token_lists.append(pair)
            scores = await asyncio.to_thread(engine.rerank, token_lists)
            return scores, sum(map(len, token_lists))

    @asynccontextmanager
    async def using(self, model: str, options: dict[str, Any] | None = None,
                    keep_alive: float | None = None) -> AsyncIterator[LoadedModel]:
        """The loaded model (loading it if needed), held busy for the block: for work on its vocabulary
        and template that generates nothing (tokenize, detokenize, counting a chat's tokens)."""
        name = ModelName.parse(model)
        stored = self.store.open(model)
        _, load = split_options(options, *stored.options())
        with self._queue_slot():
            loaded, _ = await self._acquire(name, stored, load)
            try:
                yield loaded
            finally:
                self._release(loaded, self._keep_alive(keep_alive))

    async def tokenize(self, model: str, text: str, keep_alive: float | None = None) -> list[int]:
        """``text`` as the model's tokens, special-token text parsed, no BOS added (the template adds it)."""
        async with self.using(model, keep_alive=keep_alive) as loaded:
            return loaded.engine.tokenize(text, add_special=False, parse_special=True)

    async def detokenize(self, model: str, tokens: list[int], keep_alive: float | None = None) -> str:
        async with self.using(model, keep_alive=keep_alive) as loaded:
            detokenize = getattr(loaded.engine, "detokenize", None)
            if detokenize is None:
                raise UnsupportedCapability(f'model "{model}" cannot detokenize (its engine has no vocabulary API)')
            return detokenize(tokens)

    async def count_tokens(self, request: GenerateRequest) -> int:
        """How many tokens ``request``'s prompt is, templated as generating it would be (no truncation)."""
        stored = self.store.open(request.model)
        sampling, _ = split_options(request.options, *stored.options())
        async with self.using(request.model, request.options, request.keep_alive) as loaded:
            prompt = build_prompt(replace(request, truncate=False), template=loaded.template,
                                  tokenize=loaded.engine.tokenize, num_ctx=1 << 30,
                                  num_predict=sampling.num_predict, default_system=stored.system,
                                  default_messages=stored.default_messages(), bos_token=loaded.engine.bos_text,
                                  eos_token=loaded.engine.eos_text)
            return len(prompt.tokens)

    async def load(self, model: str, keep_alive: float | None = None) -> None:
        async for _ in self.generate(GenerateRequest(model=model, keep_alive=keep_alive)):
            pass

    async def unload(self, model: str) -> None:
        key = _model_key(ModelName.parse(model))
        async with self._lock:
            loaded = self._loaded.get(key)
            if loaded is None:
                return
            if loaded.is_idle:
                await self._evict(loaded, why="unload requested", cause="requested")
            else:
                loaded.keep_alive = 0  # unloads as soon as its last request finishes

    async def unload_all(self) -> None:
        for key in list(self._loaded):
            await self.unload(key)

    def running(self) -> list[RunningModel]:
        result = []
        for model in sorted(self._loaded.values(), key=lambda m: -m.last_used):
            expires = None
            if model.expires_at is not None:
                expires = datetime.fromtimestamp(model.expires_at, timezone.utc)
            elif model.keep_alive >= 0:  # busy: expires keep_alive after it finishes
                expires = datetime.now(timezone.utc) + timedelta(seconds=model.keep_alive)
            result.append(RunningModel(
                name=model.entry.name.display, model=model.entry.name.display, digest=model.entry.digest,
                size=model.memory, size_vram=0, context_length=model.config.num_ctx,
                expires_at=expires, details=model.details, format=model.format,
                device=model.device.device if model.device else "cpu",
                device_reason=model.device.reason if model.device else "",
                concurrency=getattr(model.engine, "concurrency", "batch"), num_parallel=model.num_slots))
        return result

    def loaded_engine(self, model: str) -> ModelEngine | None:
        loaded = self._loaded.get(_model_key(ModelName.parse(model)))
        return loaded.engine if loaded else None

    def loaded_engines(self) -> list[tuple[str, ModelEngine]]:
        """(model name, engine) of every loaded model, for metrics."""
        return [(model.entry.name.display, model.engine) for model in list(self._loaded.values())]

    @property
    def num_in_flight(self) -> int:
        """Requests between arrival and their end, running or waiting."""
        return self._num_in_flight

    @property
    def num_waiting(self) -> int:
        """Requests beyond the loaded models' decoding slots: the queue LOKAL_MAX_QUEUE bounds."""
        capacity = sum(m.num_slots for m in list(self._loaded.values()))
        return max(0, self._num_in_flight - capacity)

    async def close(self) -> None:
        """Refuse new requests, end running ones with an error, unload every model."""
        self._closed = True
        async with self._lock:
            for model in list(self._loaded.values()):
                await self._evict(model, why="server shutting down", cause="shutdown",
                                  reason="the server is shutting down")

    # ---- residency --------------------------------------------------------------------------------

    def _keep_alive(self, requested: float | None) -> float:
        return float(self.settings.keep_alive if requested is None else requested)

    @contextmanager
    def _queue_slot(self) -> Iterator[None]:
        """Counts a request from arrival to its end. Requests beyond the loaded models' decoding slots
        are waiting; more than LOKAL_MAX_QUEUE of those fail fast instead of piling up."""
        if self._closed:
            raise ServerBusy("server is shutting down")
        capacity = sum(m.num_slots for m in self._loaded.values())
        if self._num_in_flight - capacity >= self.settings.max_queue:
            log.warning("refused a request with 503: %d waiting, LOKAL_MAX_QUEUE=%d",
                        self._num_in_flight - capacity, self.settings.max_queue)
            self.num_refused += 1
            raise ServerBusy(f"server busy: more than {self.settings.max_queue} requests waiting (LOKAL_MAX_QUEUE)")
        self._num_in_flight += 1
        try:
            yield
        finally:
            self._num_in_flight -= 1

    def _engine_config(self, stored: StoredModel, load: LoadOptions) -> EngineConfig:
        details = stored.details
        trained = details.context_length or DEFAULT_NUM_CTX
        adapters = tuple((adapter.path, adapter.scale * load.adapter_scale) for adapter in stored.adapters)
        num_ctx = load.num_ctx or self.settings.context_length or min(DEFAULT_NUM_CTX, trained)
        flash_attention = self.settings.flash_attention if load.flash_attention is None else load.flash_attention
        if flash_attention is None:  # resolved here: the prompt cache's folder depends on it
            flash_attention = default_flash_attention()
        return EngineConfig(
            num_ctx=num_ctx,
            num_parallel=load.num_parallel or self.settings.num_parallel,
            num_batch=load.num_batch if load.num_batch != LoadOptions.num_batch else self.settings.num_batch,
            num_thread=load.num_thread or self.settings.num_thread or physical_cores(),
            # LOKAL_DEVICE preferring the CPU over a GPU this build could use keeps the layers on the CPU.
            num_gpu=load.num_gpu if self._gguf_device() != "cpu" else 0,
            use_mmap=load.use_mmap,
            use_mlock=load.use_mlock,
            flash_attention=flash_attention,
            prompt_cache=self.settings.prompt_cache << 20,
            prefix_reuse=self.settings.prefix_reuse,
            kv_cache_type=self.settings.kv_cache_type,
            # Idle caches survive unloads and restarts here, keyed by the weights' and adapters' blobs and the
            # adapters' scales (KV depends on them, not on a manifest's parameters) and the KV layout: its
            # element type, and with flash attention a V cache stored by rows rather than transposed. llama.cpp
            # refuses a cache saved in another layout, which would cost each reused prompt a failed restore.
            prompt_cache_dir=str(self.store.prompt_cache_dir(
                [stored.path.name, *(f"{path.name}@{scale:g}" for path, scale in adapters)],
                self.settings.kv_cache_type + ("-fa" if flash_attention else ""))),
            num_draft=self._num_draft(stored, load),
            draft_model=str(stored.draft) if stored.draft and stored.format == "gguf" else "",
            adapters=tuple((str(path), scale) for path, scale in adapters),
        )

    def _num_draft(self, stored: StoredModel, load: LoadOptions) -> int:
        """Guesses per step: the request's or Modelfile's draft_num_predict, else LOKAL_DRAFT_NUM_PREDICT;
        a model with a DRAFT guesses DRAFT_NUM_PREDICT unless one of those says otherwise (0 turns it off)."""
        if load.draft_num_predict is not None:
            return load.draft_num_predict
        if stored.draft and not self.settings.draft_num_predict:
            return DRAFT_NUM_PREDICT
        return self.settings.draft_num_predict

    async def _open(self, model: str) -> StoredModel:
        """The stored model once its blobs pass the load-time integrity check (sizes always; the weights'
        full sha256 when they changed since last verified, e.g. the first load after a pull; off the event
        loop, since that hashes the whole file). Reused while the model's files are unchanged."""
        stored = self._opened.get(model)
        if stored is not None:  # opened and checked before, and its files are unchanged since
            return stored
        entry = self.store.get(model)
        files = self._opened.snapshot(entry)
        await asyncio.to_thread(check_for_load, self.store, entry)
        stored = self.store.open(model)
        if stored.entry.digest == entry.digest:  # else the manifest changed under us: check it next time
            self._opened.remember(model, stored, files)
        return stored

    async def _acquire(self, name: ModelName, stored: StoredModel, load: LoadOptions) -> tuple[LoadedModel, int]:
        """The loaded model for this request (loading it if needed), marked busy. Returns load time in ns."""
        key = _model_key(name)
        entry, path, details = stored.entry, stored.path, stored.details
        async with self._lock:
            while True:
                loaded = self._loaded.get(key)
                wanted = self._engine_config(stored, load)
                if loaded is not None and loaded.config == wanted and loaded.entry.digest == entry.digest:
                    self._mark_busy(loaded)
                    return loaded, 0
                if loaded is not None and loaded.is_idle:
                    await self._evict(loaded, why="load options or the model changed", cause="reload")
                    loaded = None
                if loaded is None:
                    weights = entry.size if stored.format == "onnx" else path.stat().st_size
                    memory = estimate_memory(weights, details.metadata,
                                             wanted.num_ctx * wanted.num_parallel, wanted.kv_cache_type).total
                    if wanted.draft_model and wanted.num_draft:  # its weights and one sequence of KV
                        memory += estimate_memory(stored.draft.stat().st_size, read_details(stored.draft).metadata,
                                                  wanted.num_ctx, wanted.kv_cache_type).total
                    if await self._make_room(entry.name.display, memory):
                        started = time.perf_counter_ns()
                        model = await self._load(key, stored, wanted, memory)
                        load_ns = time.perf_counter_ns() - started
                        await asyncio.to_thread(release_free_heap)  # what loading parsed and threw away
                        log.info("loaded %s in %.2f s: %s KV cache, %.0f MB estimated; %s", entry.name.display,
                                 load_ns / 1e9, wanted.kv_cache_type, memory / 1e6, self._residency())
                        self._tell(ResidencyEvent("load", entry.name.display, load_ns / 1e9))
                        self._mark_busy(model)
                        return model, load_ns
                # The model is busy with other options, or every slot holds a busy model: wait for a change.
                await self._changed.wait()

    async def _make_room(self, name: str, needed: int) -> bool:
        """Evict idle models until model ``name`` (``needed`` bytes) fits; False when it must wait for busy ones."""
        idle = sorted((m for m in self._loaded.values() if m.is_idle), key=lambda m: m.last_used)
        while len(self._loaded) >= self.settings.max_loaded_models:
            if not idle:
                return False
            await self._evict(idle.pop(0), cause="max_loaded",
                              why=f"LOKAL_MAX_LOADED_MODELS={self.settings.max_loaded_models}, "
                                  f"least recently used, making room for {name}")
        while needed > self._free_memory():
            if not idle:
                if not self._loaded:
                    raise InsufficientMemory(
                        f"model requires {needed / 1e9:.1f} GB of memory but only "
                        f"{self._free_memory() / 1e9:.1f} GB is available; try a smaller num_ctx or num_parallel")
                return False
            await self._evict(idle.pop(0), cause="memory", why=f"memory: {name} needs {needed / 1e9:.2f} GB, "
                                                              f"{self._free_memory() / 1e9:.2f} GB available")
        return True

    async def _load(self, key: str, stored: StoredModel, config: EngineConfig, memory: int) -> LoadedModel:
        entry, path = stored.entry, stored.path
        model_format = stored.format
        device = await asyncio.to_thread(self._choose_device, entry, model_format)
        log.info("loading %s (%s, num_ctx=%d, num_parallel=%d) on %s", entry.name.display, model_format,
                 config.num_ctx, config.num_parallel, device.reason)
        try:
            engine = await asyncio.to_thread(self._open_engine, path, config, model_format, device.provider)
        except LokalError:
            raise
        except Exception as exc:  # llama.cpp reports load failures as a bare None/ValueError
            raise ModelLoadError(f'failed to load model "{entry.name.display}": {exc}') from exc
        model = LoadedModel(key=key, entry=entry, engine=engine, details=stored.details, template=stored.chat_template,
                            config=config, memory=memory, format=model_format, device=device,
                            files=(stored.path, *(adapter.path for adapter in stored.adapters),
                                   *((stored.draft,) if config.draft_model else ())))
        self._loaded[key] = model
        return model

    def _choose_device(self, entry: ModelEntry, model_format: str) -> DeviceChoice:
        """Where the model runs: the first device of LOKAL_DEVICE this machine (and, for ONNX, the
        provider the model was built for) can serve; the choice and its reason go to the log and `ps`."""
        preferred, *fallback = self.settings.device
        offered = None
        if model_format == "onnx":
            built_for = read_onnx_info(self.store, entry).provider
            offered = ["cpu"] if built_for == "cpu" else ["gpu"] if built_for in ("cuda", "dml", "webgpu") \
                else ["npu"]
        return choose_device(self._hardware(), preferred, fallback, model_format, offered)

    def _gguf_device(self) -> str:
        preferred, *fallback = self.settings.device
        try:
            return choose_device(self._hardware(), preferred, fallback, "gguf").device
        except LokalError:
            return "cpu"

    def _hardware(self) -> Any:
        if self._detected_hardware is None:
            self._detected_hardware = detect()
        return self._detected_hardware

    def _residency(self) -> str:
        """Models loaded and process memory, the tail of every load/unload log line."""
        rss = process_rss()
        return (f"{len(self._loaded)} of {self.settings.max_loaded_models} models loaded"
                + (f", process RSS {rss / 1e6:.0f} MB" if rss is not None else ""))

    def _tell(self, event: ResidencyEvent) -> None:
        for listener in self.residency_listeners:
            try:
                listener(event)
            except Exception:  # a broken listener must not break residency
                log.exception("residency listener failed")

    def _mark_busy(self, model: LoadedModel) -> None:
        model.num_active += 1
        model.last_used = time.monotonic()
        model.expires_at = None
        if model.expiry_timer is not None:
            model.expiry_timer.cancel()
            model.expiry_timer = None

    def _release(self, model: LoadedModel, keep_alive: float) -> None:
        model.num_active -= 1
        model.keep_alive = keep_alive
        model.last_used = time.monotonic()
        if model.num_active == 0:
            loop = asyncio.get_running_loop()
            if keep_alive == 0:
                loop.create_task(self._expire(model))
            elif keep_alive > 0:
                model.expires_at = time.time() + keep_alive
                model.expiry_timer = loop.call_later(keep_alive, lambda: loop.create_task(self._expire(model)))
        loop = asyncio.get_running_loop()
        loop.create_task(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _expire(self, model: LoadedModel) -> None:
        async with self._lock:
            if self._loaded.get(model.key) is model and model.is_idle:
                await self._evict(model, why=f"keep_alive {model.keep_alive:g} s expired", cause="keep_alive")

    async def _evict(self, model: LoadedModel, why: str, cause: UnloadCause,
                     reason: str = "the model was unloaded before the request finished") -> None:
        """Unload a model (``why`` goes to the log); requests still running on it end with ``reason``.
        Caller holds self._lock."""
        if self._loaded.get(model.key) is model:
            del self._loaded[model.key]
        if model.expiry_timer is not None:
            model.expiry_timer.cancel()
        started = time.perf_counter()
        await asyncio.to_thread(model.engine.close, reason)
        for path in model.files:  # an encrypted store's plaintext copies go with the model
            DECRYPTED.release(path)
        await asyncio.to_thread(release_free_heap)  # the model's vocabulary and buffers, freed but still resident
        seconds = time.perf_counter() - started
        log.info("unloaded %s (%s) in %.2f s; %s", model.entry.name.display, why, seconds, self._residency())
        self._tell(ResidencyEvent("unload", model.entry.name.display, seconds, cause))
        self._changed.notify_all()


def _with_knowledge(request: GenerateRequest, system: str | None,
                    hits: list[Hit]) -> tuple[GenerateRequest, str | None]:
    """The request and the model's system prompt with the knowledge excerpts added to whichever system
    prompt the request will use: its own (a system message, or /api/generate's ``system``) or the model's."""
    if not hits:
        return request, system
    if request.messages is not None:
        messages = list(request.messages)
        for index, message in enumerate(messages):
            if message.role == "system":
                messages[index] = dataclasses.replace(message, content=knowledge_prompt(message.content, hits))
                return dataclasses.replace(request, messages=messages), system
        return request, knowledge_prompt(system, hits)
    if request.system:
        return dataclasses.replace(request, system=knowledge_prompt(request.system, hits)), system
    return request, knowledge_prompt(system, hits)


def _shorten(vector: list[float], dimensions: int) -> list[float]:
    """Matryoshka-style truncation: keep the first dimensions, renormalize (Ollama does the same)."""
    head = vector[:dimensions]
    norm = sum(x * x for x in head) ** 0.5
    return [x / norm for x in head] if norm else head

