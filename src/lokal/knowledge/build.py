"""Building a knowledge layer at create time: chunks of the documents, embedded by the embedding model."""

from __future__ import annotations

import numpy as np

from lokal.errors import BadRequest
from lokal.knowledge.documents import Chunk
from lokal.knowledge.index import KnowledgeIndex
from lokal.store.store import Store

EMBED_BATCH = 16


def embed_chunks(store: Store, embed_model: str, chunks: list[Chunk]) -> KnowledgeIndex:
    """Embed ``chunks`` with ``embed_model`` (a model in the store) in this thread, with its own engine."""
    from lokal.engine import Engine, EngineConfig
    from lokal.store.gguf_info import is_embedding_model

    model = store.open(embed_model)
    if not is_embedding_model(model.details):
        raise BadRequest(f'embed_model "{embed_model}" is not an embedding model; use one such as all-minilm')
    trained = model.details.context_length or 512
    with Engine(str(model.path), EngineConfig(num_ctx=trained, num_parallel=1, embedding=True)) as engine:
        vectors = []
        for start in range(0, len(chunks), EMBED_BATCH):
            batch = chunks[start:start + EMBED_BATCH]
            tokens = [engine.tokenize(chunk.text, parse_special=False)[:trained] for chunk in batch]
            vectors += engine.embed(tokens)
    return KnowledgeIndex(model.display, tuple(chunks), np.asarray(vectors, dtype=np.float32))
