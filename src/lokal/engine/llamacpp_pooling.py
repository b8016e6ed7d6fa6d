"""Pooled outputs of a llama.cpp model (embedding vectors, a reranker's scores), from a context of their own.

Embeddings need pooling, which is fixed when a context is made, and every token of a sequence in one
micro-batch, and they must not disturb the generation slots' cached prefixes. So the runner keeps this second
context beside its generation one, made on first use and grown to the longest input seen.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import llama_cpp as llama

from lokal.errors import LokalError, ModelLoadError

if TYPE_CHECKING:
    from lokal.engine.llamacpp import Runner

EMBED_SEQS_PER_BATCH = 8
_MIN_EMBED_CONTEXT = 512


class PoolingContext:
    def __init__(self, runner: Runner):
        self._runner = runner
        self._ctx = None
        self._batch: llama.llama_batch | None = None
        self._size = 0  # tokens the context holds; 0 before first use

    def pooled(self, token_lists: Sequence[Sequence[int]], width: int) -> list[list[float]]:
        """The first ``width`` values of each token list's pooled output, as many lists in one decode as
        the context holds."""
        self._open(max(len(tokens) for tokens in token_lists))
        vectors: list[list[float]] = []
        group: list[Sequence[int]] = []
        num_tokens = 0
        for tokens in token_lists:
            if group and (num_tokens + len(tokens) > self._size or len(group) == EMBED_SEQS_PER_BATCH):
                vectors += self._decode(group, width)
                group, num_tokens = [], 0
            group.append(tokens)
            num_tokens += len(tokens)
        vectors += self._decode(group, width)
        return vectors

    def _open(self, longest: int) -> None:
        if longest <= self._size:
            return
        self.close()
        runner = self._runner
        size = min(max(_MIN_EMBED_CONTEXT, -(-longest // 256) * 256), max(runner.config.num_ctx, longest))
        params = runner.context_params(n_ctx=size, n_batch=size, n_seq_max=EMBED_SEQS_PER_BATCH)
        params.n_ubatch = size
        params.kv_unified = True  # its sequences share the one batch-sized cache, whatever their lengths
        params.embeddings = True
        arch = runner.metadata.get("general.architecture", "")
        has_own_pooling = f"{arch}.pooling_type" in runner.metadata
        params.pooling_type = llama.LLAMA_POOLING_TYPE_UNSPECIFIED if has_own_pooling else llama.LLAMA_POOLING_TYPE_MEAN
        self._ctx = llama.llama_init_from_model(runner.model, params)
        if not self._ctx:
            raise ModelLoadError(f"llama.cpp could not create an embedding context of {size} tokens")
        runner.apply_adapters(self._ctx)
        self._batch = llama.llama_batch_init(size, 0, 1)
        self._size = size

    def _decode(self, group: Sequence[Sequence[int]], width: int) -> list[list[float]]:
        batch = self._batch
        assert batch is not None
        n = 0
        for seq_id, tokens in enumerate(group):
            for position, token in enumerate(tokens):
                batch.token[n] = token
                batch.pos[n] = position
                batch.n_seq_id[n] = 1
                batch.seq_id[n][0] = seq_id
                batch.logits[n] = 1
                n += 1
        batch.n_tokens = n
        memory = llama.llama_get_memory(self._ctx)
        if memory:
            llama.llama_memory_clear(memory, True)
        status = llama.llama_decode(self._ctx, batch)
        if status != 0:
            raise LokalError(f"llama_decode failed with status {status} while embedding")
        vectors = []
        for seq_id in range(len(group)):
            pooled = llama.llama_get_embeddings_seq(self._ctx, seq_id)
            if not pooled:
                raise LokalError("llama.cpp returned no pooled embedding for this model")
            vectors.append(pooled[:width])
        return vectors

    def close(self) -> None:
        """Free the context and its batch; the next ``pooled`` makes them again. Idempotent."""
        free_context(self._ctx, self._batch)
        self._ctx, self._batch, self._size = None, None, 0


def free_context(ctx: object, batch: llama.llama_batch | None) -> None:
    """Free a llama context and the batch made for it; either may be absent (None or a null handle)."""
    if batch is not None:
        llama.llama_batch_free(batch)
    if ctx:
        llama.llama_free(ctx)
