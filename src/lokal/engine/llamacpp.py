"""Runner for GGUF models: the engine's one way into llama.cpp (llama-cpp-python's low-level ctypes API),
with its two helpers: llamacpp_sampling.py (sampler chains) and llamacpp_pooling.py (the embedding context).

It owns the model, one llama context for generation (``n_seq_max = num_parallel`` sequences, each with its
own KV stream), one preallocated batch, every request's sampler chain, and, created on first use, a second
small context for embeddings. The engine thread makes every call except those that only read the
vocabulary (tokenize, detokenize, token pieces, building a sampler chain); llama.cpp's vocabulary is
immutable after load and its tokenizer keeps per-call state, so those are safe from any thread.
"""

from __future__ import annotations

import ctypes
import logging
import math
import mmap
import os
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence

import llama_cpp as llama
import numpy as np

from lokal.config import physical_cores
from lokal.engine.cpu_build import default_flash_attention
from lokal.engine.kv import PromptLogits
from lokal.engine.kv_files import KvFile, for_stream_count
from lokal.engine.llamacpp_pooling import PoolingContext, free_context
from lokal.engine.llamacpp_sampling import Candidates, Sampler, fill_chain, free_c_samplers, sample_from_logits
from lokal.engine.logprobs import token_logprob
from lokal.engine.pages import anonymous_mappings, release_zeroed_pages
from lokal.errors import BadRequest, LokalError, ModelLoadError
from lokal.types import SamplingOptions

if TYPE_CHECKING:
    from lokal.engine.config import EngineConfig
    from lokal.engine.request import Chunk

OWN_MAPPING_BYTES = 1 << 20  # saved KV at least this large gets a mapping of its own (see save_slot)
CLEAR_MARGIN = 1.0  # logits; batched and one-token kernels differ by orders of magnitude less (see decode)


@llama.llama_log_callback
def _discard_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    return None


def set_llama_logging(enabled: bool) -> None:
    """llama.cpp's own log lines (many per load, a few per decode): on stderr when enabled, else dropped."""
    if enabled:
        from llama_cpp._logger import llama_log_callback, set_verbose

        set_verbose(True)
        llama.llama_log_set(llama_log_callback, ctypes.c_void_p(0))
    else:
        llama.llama_log_set(_discard_log, ctypes.c_void_p(0))


log = logging.getLogger("lokal.engine")

_KV_CACHE_GGML_TYPES = {"f16": llama.GGML_TYPE_F16, "q8_0": llama.GGML_TYPE_Q8_0, "q4_0": llama.GGML_TYPE_Q4_0}


def extra_buffers_are_safe() -> bool:
    # ggml's AMX buffer type faults (ldtilecfg) in VMs that advertise AMX without letting guests use tiles;
    # extra buffer types are a speed-up, never required, so leave them off wherever AMX is claimed.
    return b"AMX_INT8 = 1" not in llama.llama_print_system_info()


def flash_attn_type(enabled: bool | None = None) -> int:
    """llama.cpp's flash attention setting for a context: where the model supports it (AUTO) when ``enabled``,
    else off; None takes lokal's default for this build (cpu_build.default_flash_attention)."""
    if enabled is None:
        enabled = default_flash_attention()
    return llama.LLAMA_FLASH_ATTN_TYPE_AUTO if enabled else llama.LLAMA_FLASH_ATTN_TYPE_DISABLED


def _load_mode(use_mmap: bool, use_mlock: bool) -> int:
    if use_mmap:
        return llama.LLAMA_LOAD_MODE_MMAP_MLOCK if use_mlock else llama.LLAMA_LOAD_MODE_MMAP
    return llama.LLAMA_LOAD_MODE_MLOCK if use_mlock else llama.LLAMA_LOAD_MODE_NONE


class Runner:
    def __init__(self, model_path: str, config: EngineConfig, vocab_only: bool = False):
        """``vocab_only``: read the vocabulary and metadata, no weights and no context (to inspect a model)."""
        if not os.path.isfile(model_path):
            raise ModelLoadError(f"model file not found: {model_path}")
        self.config = config
        self.num_threads = config.num_thread or physical_cores()
        self._model = None
        self._ctx = None
        self._batch: llama.llama_batch | None = None
        self._pooling = PoolingContext(self)
        self._samplers: dict[int, Sampler] = {}  # live ones by id
        self._candidates: Candidates | None = None  # for grammar requests and cached logits, made on first use
        self._samplers_lock = threading.Lock()
        self._pieces: dict[int, bytes] = {}
        self._special_pieces: dict[int, bytes] = {}

        params = llama.llama_model_default_params()
        params.n_gpu_layers = config.num_gpu
        params.load_mode = _load_mode(config.use_mmap, config.use_mlock)
        params.use_extra_bufts = extra_buffers_are_safe()
        params.vocab_only = vocab_only
        self._model = llama.llama_model_load_from_file(model_path.encode(), params)
        if not self._model:
            raise ModelLoadError(f"llama.cpp could not load {model_path} (not a GGUF model it supports?)")
        self._vocab = llama.llama_model_get_vocab(self._model)
        self.n_vocab = llama.llama_vocab_n_tokens(self._vocab)
        self.n_embd = llama.llama_model_n_embd(self._model)
        self.n_ctx_train = llama.llama_model_n_ctx_train(self._model)
        self.metadata = self._read_metadata()
        self.bos = self._special(llama.llama_vocab_bos(self._vocab))
        self.eos = self._special(llama.llama_vocab_eos(self._vocab))
        self.eot = self._special(llama.llama_vocab_eot(self._vocab))
        self.add_bos = bool(llama.llama_vocab_get_add_bos(self._vocab))
        # Every end-of-generation token (EOS, EOT, end-of-turn, …), for ignore_eos to ban.
        self.eog_ids = [t for t in range(self.n_vocab) if llama.llama_vocab_is_eog(self._vocab, t)]
        if vocab_only:
            return
        self._adapters = self._load_adapters(config.adapters)
        if not config.embedding:
            self._open_generation_context()

    # ---- vocabulary (safe from any thread) ------------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        capacity = len(data) + 8
        for _ in range(2):
            buffer = (llama.llama_token * capacity)()
            n = llama.llama_tokenize(self._vocab, data, len(data), buffer, capacity, add_special, parse_special)
            if n >= 0:
                return buffer[:n]
            capacity = -n
        raise LokalError(f"tokenizing {len(data)} bytes failed")

    def detokenize(self, ids: Sequence[int]) -> str:
        """The inverse of ``tokenize``: control tokens written out, the BOS/EOS the model adds dropped."""
        if not ids:
            return ""
        tokens = (llama.llama_token * len(ids))(*ids)
        capacity = len(ids) * 8 + 16
        for _ in range(2):
            buffer = ctypes.create_string_buffer(capacity)
            n = llama.llama_detokenize(self._vocab, tokens, len(ids), buffer, capacity, True, True)
            if n >= 0:
                return buffer.raw[:n].decode("utf-8", errors="replace")
            capacity = -n
        raise LokalError(f"detokenizing {len(ids)} tokens failed")

    def token_piece(self, token: int, special: bool = False) -> bytes:
        """Bytes of one token, possibly part of a UTF-8 character. Control tokens are empty unless ``special``."""
        cache = self._special_pieces if special else self._pieces
        piece = cache.get(token)
        if piece is None:
            buffer = ctypes.create_string_buffer(64)
            n = llama.llama_token_to_piece(self._vocab, token, buffer, 64, 0, special)
            if n < 0:
                buffer = ctypes.create_string_buffer(-n)
                n = llama.llama_token_to_piece(self._vocab, token, buffer, -n, 0, special)
            piece = cache[token] = buffer.raw[:n]
        return piece

    def token_text(self, token: int) -> bytes:
        """The vocabulary's own text of a token (uncached: for comparing whole vocabularies)."""
        return llama.llama_vocab_get_text(self._vocab, token) or b""

    def output_piece(self, token: int) -> bytes:
        """A generated token as the output shows it: control tokens written out (as Ollama does), so that
        stop strings such as ``<|im_start|>`` can match them; end-of-generation tokens never get here."""
        return self.token_piece(token, special=True)

    def is_eog(self, token: int) -> bool:
        return bool(llama.llama_vocab_is_eog(self._vocab, token))

    # ---- sampler chains ---------------------------------------------------------------------------------

    def new_sampler(self, sampling: SamplingOptions, grammar: str | None = None,
                    history: Sequence[int] = ()) -> Sampler:
        """C samplers for one request: penalties → [grammar] → top_k → typical → top_p → min_p → temp →
        dist(seed), or greedy at temperature 0. ``history`` (the prompt) primes the penalties."""
        params = llama.llama_sampler_chain_default_params()
        params.no_perf = True
        sampler = Sampler(llama.llama_sampler_chain_init(params))
        try:
            if grammar:
                sampler.grammar = llama.llama_sampler_init_grammar(self._vocab, grammar.encode("utf-8"), b"root")
                if not sampler.grammar:
                    raise BadRequest("format: llama.cpp could not compile the grammar for it")
            fill_chain(sampler.chain, sampling, history, n_vocab=self.n_vocab, eog_ids=self.eog_ids,
                       num_ctx=self.config.num_ctx)
        except BaseException:
            free_c_samplers(sampler)
            raise
        with self._samplers_lock:
            self._samplers[id(sampler)] = sampler
        return sampler

    def free_sampler(self, sampler: Sampler) -> None:
        """Free a request's samplers once; later calls (and ones ``close`` already freed) are no-ops."""
        with self._samplers_lock:
            if self._samplers.pop(id(sampler), None) is None:
                return
        free_c_samplers(sampler)

    @property
    def num_live_samplers(self) -> int:
        return len(self._samplers)

    @property
    def model(self) -> Any:
        """llama.cpp's model handle, for the contexts made from it (llamacpp_pooling)."""
        return self._model

    @property
    def _has_plain_kv_cache(self) -> bool:
        """Memory that is one KV cache: not a sliding-window pair, nor recurrent state (see for_stream_count)."""
        model = self._model
        return not (llama.llama_model_is_recurrent(model) or llama.llama_model_is_hybrid(model)
                    or llama.llama_model_n_swa(model) > 0)

    def _logits(self, index: int) -> np.ndarray:
        """The logits at batch position ``index`` of the last decode: a view of llama.cpp's buffer."""
        return np.ctypeslib.as_array(llama.llama_get_logits_ith(self._ctx, index), shape=(self.n_vocab,))

    def _sample(self, sampler: Sampler, index: int, cached: np.ndarray | None = None) -> int:
        """The next token from the logits of batch position ``index``, or from ``cached`` logits (a prompt
        cache's); the samplers accept it."""
        if sampler.grammar is None and cached is None:
            return llama.llama_sampler_sample(sampler.chain, self._ctx, index)
        if self._candidates is None:
            self._candidates = Candidates(self.n_vocab)
        return sample_from_logits(sampler, self._logits(index) if cached is None else cached, self._candidates)

    # ---- generation (engine thread) ---------------------------------------------------------------------

    def _load_adapters(self, adapters: Sequence[tuple[str, float]]) -> list[tuple[Any, float]]:
        """LoRA adapters, loaded once per model (llama.cpp frees them with the model)."""
        loaded = []
        for path, scale in adapters:
            adapter = llama.llama_adapter_lora_init(self._model, path.encode())
            if not adapter:
                self.close()
                raise ModelLoadError(f"llama.cpp could not apply the LoRA adapter {path} to this model")
            loaded.append((adapter, scale))
        return loaded

    def apply_adapters(self, ctx: Any) -> None:
        if not self._adapters:
            return
        adapters = (llama.llama_adapter_lora_p_ctypes * len(self._adapters))(*(a for a, _ in self._adapters))
        scales = (ctypes.c_float * len(self._adapters))(*(s for _, s in self._adapters))
        if llama.llama_set_adapters_lora(ctx, adapters, len(self._adapters), scales) != 0:
            raise ModelLoadError("llama.cpp could not set the model's LoRA adapters on its context")

    def _open_generation_context(self) -> None:
        config = self.config
        # One KV stream per sequence (not unified), as llama-server runs: each sequence attends over its own
        # cells only. llama.cpp computes one micro-batch per run of consecutive sequence ids, which is why the
        # slot table keeps busy slots packed at the low ids and ``decode`` orders a batch by slot.
        params = self.context_params(n_ctx=config.num_ctx * config.num_parallel, n_batch=config.batch_size,
                                      n_seq_max=config.num_parallel)
        params.flash_attn_type = flash_attn_type(config.flash_attention)
        params.type_k = params.type_v = _KV_CACHE_GGML_TYPES[config.kv_cache_type]
        mapped_before = anonymous_mappings()
        self._ctx = llama.llama_init_from_model(self._model, params)
        if not self._ctx and config.kv_cache_type != "f16":
            # A quantized V cache needs flash attention, which llama.cpp may not run for this model (or it is
            # switched off): f16 always works, at twice the memory.
            log.warning("llama.cpp refused a %s KV cache for this model; using f16", config.kv_cache_type)
            params.type_k = params.type_v = _KV_CACHE_GGML_TYPES["f16"]
            self._ctx = llama.llama_init_from_model(self._model, params)
        if not self._ctx:
            self.close()
            raise ModelLoadError(f"llama.cpp could not create a context of {params.n_ctx} tokens")
        self.apply_adapters(self._ctx)
        self._memory = llama.llama_get_memory(self._ctx)
        self.num_released_bytes = release_zeroed_pages(mapped_before)
        self._batch = llama.llama_batch_init(config.batch_size, 0, 1)
        # Views over the batch's C arrays, so a step fills whole runs with one slice assignment.
        size = config.batch_size
        self._batch_tokens = ctypes.cast(self._batch.token, ctypes.POINTER(llama.llama_token * size)).contents
        self._batch_pos = ctypes.cast(self._batch.pos, ctypes.POINTER(llama.llama_pos * size)).contents
        self._batch_logits = ctypes.cast(self._batch.logits, ctypes.POINTER(ctypes.c_int8 * size)).contents
        self._batch_seq_ids = self._batch.seq_id
        self._no_logits = [0] * size
        for i in range(size):
            self._batch.n_seq_id[i] = 1

    def context_params(self, n_ctx: int, n_batch: int, n_seq_max: int) -> llama.llama_context_params:
        params = llama.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq_max
        params.kv_unified = False  # see _open_generation_context
        params.n_threads = params.n_threads_batch = self.num_threads
        params.no_perf = True
        return params

    def decode(self, chunks: Sequence[Chunk]) -> list[list[int]]:
        """Compute one step's chunks in one llama_decode; sample the chunks that reach their request's last
        token (in plan order) and return each one's tokens. llama_sampler_sample also accepts each token.

        A chunk with a draft (guessed next tokens) gets logits at every guess too: sample at the real last
        token, and while that equals the next guess, sample at that guess. Each token is thus drawn from the
        model's own distribution given the tokens before it, as without guessing. For greedy requests a batch
        of several tokens runs llama.cpp's blocked matrix kernels, which round differently from the one-token
        path: so a greedy token is only taken where its logit leads the runner-up by ``CLEAR_MARGIN``, far
        beyond that rounding; at a closer call the step stops there and the next step computes that position
        alone, exactly as decoding one token at a time would. The KV of the rejected guesses is dropped."""
        if self._ctx is None:
            raise LokalError("this model is loaded for embeddings only")
        tokens, positions, logits = self._batch_tokens, self._batch_pos, self._batch_logits
        seq_ids = self._batch_seq_ids
        to_sample: list[tuple[Chunk, int]] = []
        n = 0
        for chunk in sorted(chunks, key=lambda chunk: chunk.request.slot):
            if chunk.cached_logits is not None:  # nothing to compute: sampled from the prompt cache's logits
                to_sample.append((chunk, -1))
                continue
            request = chunk.request
            end = n + chunk.end - chunk.start
            tokens[n:end] = request.tokens[chunk.start:chunk.end]
            positions[n:end] = range(chunk.start, chunk.end)
            logits[n:end] = self._no_logits[:end - n]
            draft = chunk.draft
            if draft:
                tokens[end:end + len(draft)] = draft
                positions[end:end + len(draft)] = range(chunk.end, chunk.end + len(draft))
                logits[end:end + len(draft)] = [1] * len(draft)
            slot = request.slot
            for i in range(n, end + len(draft)):
                seq_ids[i][0] = slot
            if chunk.needs_sample:
                logits[end - 1] = 1
                to_sample.append((chunk, end - 1))
            n = end + len(draft)
        self._batch.n_tokens = n
        status = llama.llama_decode(self._ctx, self._batch) if n else 0
        if status != 0:
            raise LokalError(f"llama_decode failed with status {status} on a batch of {n} tokens")
        sampled: dict[int, list[int]] = {}
        for chunk, index in to_sample:
            sampler = chunk.request.sampler
            if chunk.cached_logits is not None:
                sampled[id(chunk)] = [self._sample(sampler, index, chunk.cached_logits)]
                self._note_logprob(chunk, index, sampled[id(chunk)][0], chunk.cached_logits)
                continue
            if not chunk.draft:
                # The prompt's last token: keep its logits for the same prompt asked again (only prefix reuse
                # reads them: without it, nothing is cached).
                if chunk.is_prefill and self.config.prefix_reuse:
                    values = self._logits(index).copy()
                    chunk.request.prompt_logits = PromptLogits(chunk.end, values, values.nbytes)
                sampled[id(chunk)] = [self._sample(sampler, index)]
                self._note_logprob(chunk, index, sampled[id(chunk)][0])
                continue
            out: list[int] = []
            is_greedy = chunk.request.sampling.temperature <= 0
            for i in range(len(chunk.draft) + 1):
                if is_greedy and not self._is_clear(index + i):
                    chunk.request.needs_exact_step = True
                    break
                token = self._sample(sampler, index + i)
                self._note_logprob(chunk, index + i, token)
                out.append(token)
                if i == len(chunk.draft) or token != chunk.draft[i] or self.is_eog(token):
                    break
            # The KV of every emitted token but the last stays; the last one is computed next step, as
            # without guessing. With nothing emitted, even the real last token is computed again.
            chunk.num_accepted = len(out) - 1
            llama.llama_memory_seq_rm(self._memory, chunk.request.slot, chunk.end + chunk.num_accepted, -1)
            sampled[id(chunk)] = out
        return [sampled[id(chunk)] for chunk in chunks if chunk.needs_sample]

    def _note_logprob(self, chunk: Chunk, index: int, token: int, cached: np.ndarray | None = None) -> None:
        """For requests that asked: the sampled token's log-probability from the logits it came from (batch
        position ``index``'s, or ``cached``)."""
        num_top = chunk.request.num_top_logprobs
        if num_top is not None:
            logits = self._logits(index) if cached is None else cached
            chunk.logprobs.append(token_logprob(logits, token, num_top, self.output_piece))

    def _is_clear(self, index: int) -> bool:
        """The logits at batch position ``index`` have one clear leader (see ``decode``)."""
        logits = self._logits(index)
        top_two = np.partition(logits, -2)[-2:]
        return float(top_two[1] - top_two[0]) >= CLEAR_MARGIN

    def guess(self, tokens: Sequence[int], num_cached: int, max_tokens: int, min_probability: float,
              vocab_limit: int) -> list[int]:
        """Speculative decoding's draft model (a runner of one sequence): its KV holds ``tokens[:num_cached]``;
        compute the rest, then guess up to ``max_tokens`` next tokens greedily, each from the one before. Stops
        before a guess whose probability is below ``min_probability`` (the target would likely refuse it),
        that ends generation or that the target's vocabulary (``vocab_limit`` ids) lacks. Afterwards the KV
        holds ``tokens`` and every guess but the last."""
        memory, size = self._memory, self.config.batch_size
        num_cached = min(num_cached, len(tokens) - 1)  # the last token's logits are computed here
        if not llama.llama_memory_seq_rm(memory, 0, num_cached, -1):
            llama.llama_memory_seq_rm(memory, 0, -1, -1)
            num_cached = 0
        pending, position, guesses = list(tokens[num_cached:]), num_cached, []
        while True:
            for start in range(0, len(pending), size):
                part = pending[start:start + size]
                n = len(part)
                self._batch_tokens[:n] = part
                self._batch_pos[:n] = range(position, position + n)
                self._batch_logits[:n] = self._no_logits[:n]
                self._batch_logits[n - 1] = 1
                for i in range(n):
                    self._batch_seq_ids[i][0] = 0
                self._batch.n_tokens = n
                status = llama.llama_decode(self._ctx, self._batch)
                if status != 0:
                    raise LokalError(f"llama_decode failed with status {status} in the draft model")
                position += n
            logits = self._logits(-1)
            token = int(np.argmax(logits))
            probability = 1.0 / float(np.exp(logits - logits[token]).sum())
            if probability < min_probability or token >= vocab_limit or self.is_eog(token):
                return guesses
            guesses.append(token)
            if len(guesses) == max_tokens:
                return guesses
            pending = [token]

    def trim(self, slot: int, keep: int) -> int:
        """Drop slot ``slot``'s KV from position ``keep`` on; returns how many positions stay cached."""
        memory = self._memory
        if keep > 0 and llama.llama_memory_seq_pos_min(memory, slot) > 0:
            keep = 0  # a sliding-window cache already dropped early positions: the prefix is incomplete
        # Never claim positions the slot does not hold (a cache restored from disk may hold fewer).
        keep = min(keep, llama.llama_memory_seq_pos_max(memory, slot) + 1)
        if not llama.llama_memory_seq_rm(memory, slot, keep, -1):
            llama.llama_memory_seq_rm(memory, slot, -1, -1)
            keep = 0
        return keep

    def save_slot(self, slot: int, clear: bool = True) -> bytearray | mmap.mmap:
        """Copy slot ``slot``'s KV out (llama.cpp's sequence state format), then clear the slot (if ``clear``).
        A large one goes into a mapping of its own, handed back to the system when the cache is dropped. (A
        zeroed ctypes array of a 2,000-token cache, 46 MB, took 25 ms to allocate before a 7.5 ms copy while
        running streams waited; numpy's allocator was faster only by reusing heap memory it then kept: 25 % more
        RSS over three model switches.)"""
        size = llama.llama_state_seq_get_size(self._ctx, slot)
        saved = _new_mapping(size) if size >= OWN_MAPPING_BYTES else bytearray(size)
        written = llama.llama_state_seq_get_data(self._ctx, _bytes_pointer(saved), size, slot)
        if clear:
            llama.llama_memory_seq_rm(self._memory, slot, -1, -1)
        if written != size:
            raise LokalError(f"saving the KV of slot {slot} wrote {written} of {size} bytes")
        return saved

    def restore_slot(self, slot: int, saved: bytearray | mmap.mmap | KvFile) -> bool:
        """Copy KV saved by ``save_slot`` (or cached on disk) into slot ``slot`` (emptied first); False when
        it finds no room, or the file is gone."""
        if isinstance(saved, KvFile):
            data = saved.read()
            if data is None:
                return False
            if self._has_plain_kv_cache:  # one stream per sequence, whatever num_parallel wrote the file
                data = for_stream_count(data, llama.llama_n_seq_max(self._ctx))
            saved = data
        if llama.llama_state_seq_set_data(self._ctx, _bytes_pointer(saved), len(saved), slot) == 0:
            llama.llama_memory_seq_rm(self._memory, slot, -1, -1)
            return False
        return True

    # ---- embeddings (engine thread) ---------------------------------------------------------------------

    @property
    def is_reranker(self) -> bool:
        """Rank pooling: a cross-encoder whose pooled output is its classification head's score."""
        arch = self.metadata.get("general.architecture", "")
        return self.metadata.get(f"{arch}.pooling_type") == str(llama.LLAMA_POOLING_TYPE_RANK)

    def rerank_input(self, query: Sequence[int], document: Sequence[int]) -> list[int]:
        """One query–document pair as llama-server's rerank formats it for a model without a rerank template:
        [BOS] query [EOS] [SEP] document [EOS], each special token only where the vocabulary adds it (for
        BERT: [CLS] query [SEP] document [SEP]); EOS falls back to SEP where the vocabulary has none."""
        eos = llama.llama_vocab_eos(self._vocab)
        sep = llama.llama_vocab_sep(self._vocab)
        eos = sep if eos == llama.LLAMA_TOKEN_NULL else eos
        add_eos = bool(llama.llama_vocab_get_add_eos(self._vocab))
        tokens = [llama.llama_vocab_bos(self._vocab)] if self.add_bos else []
        tokens += query
        tokens += [eos] if add_eos else []
        tokens += [sep] if llama.llama_vocab_get_add_sep(self._vocab) else []
        tokens += document
        tokens += [eos] if add_eos else []
        return tokens

    def rerank(self, token_lists: Sequence[Sequence[int]]) -> list[float]:
        """The relevance score of each formatted pair (``rerank_input``): the rank-pooled output."""
        return [vector[0] for vector in self._pooled(token_lists)]

    def embed(self, token_lists: Sequence[Sequence[int]], normalize: bool = True) -> list[list[float]]:
        """One vector per token list, pooled as the model says (mean for decoder models that don't say)."""
        vectors = self._pooled(token_lists)
        return [_normalized(v) for v in vectors] if normalize else vectors

    def _pooled(self, token_lists: Sequence[Sequence[int]]) -> list[list[float]]:
        # Rank pooling yields the classification head's outputs (one score for a reranker), not a vector.
        width = llama.llama_model_n_cls_out(self._model) if self.is_reranker else self.n_embd
        return self._pooling.pooled(token_lists, width)

    # ---- lifetime ---------------------------------------------------------------------------------------

    def close(self) -> None:
        """Free every C object, samplers first and the model last. Idempotent."""
        with self._samplers_lock:
            samplers, self._samplers = list(self._samplers.values()), {}
        for sampler in samplers:
            free_c_samplers(sampler)
        self._pooling.close()
        free_context(self._ctx, self._batch)
        self._ctx, self._batch = None, None
        if self._model:
            llama.llama_model_free(self._model)
            self._model = None

    def _special(self, token: int) -> int | None:
        return None if token == llama.LLAMA_TOKEN_NULL else token

    def _read_metadata(self) -> dict[str, str]:
        """Every GGUF key/value, values as llama.cpp prints them (long arrays abbreviated)."""
        return {_read_string(llama.llama_model_meta_key_by_index, self._model, i):
                _read_string(llama.llama_model_meta_val_str_by_index, self._model, i)
                for i in range(llama.llama_model_meta_count(self._model))}


def _new_mapping(size: int) -> mmap.mmap:
    """Anonymous memory of its own, its pages made in one call (MAP_POPULATE: 17–21 ms for 46 MB against 31 ms
    faulting them in one by one as the copy writes)."""
    return mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_POPULATE", 0))


def _bytes_pointer(buffer: bytes | bytearray | mmap.mmap) -> Any:
    """A buffer's memory as the ``uint8_t *`` llama.cpp's state functions take (read-only bytes too: a restore
    only reads it). No copy; the caller keeps ``buffer`` alive through the call."""
    return np.frombuffer(buffer, dtype=np.uint8).ctypes.data_as(ctypes.POINTER(ctypes.c_uint8))


def _read_string(getter: Callable[[object, int, ctypes.Array, int], int], model: object, index: int) -> str:
    """A C string from a llama.cpp getter that returns the length it needs (snprintf style)."""
    size = 256
    while True:
        buffer = ctypes.create_string_buffer(size)
        needed = getter(model, index, buffer, size)
        if needed < size:
            return buffer.value.decode("utf-8", errors="replace")
        size = needed + 1


def _normalized(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in vector))
    return [x / norm for x in vector] if norm > 0 else vector
