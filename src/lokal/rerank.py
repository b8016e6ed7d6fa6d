"""Reranking documents against a query with an embedding model: the relevance score of a document is
the cosine similarity of its embedding and the query's (the engine returns unit vectors, so a dot product).

Reranker GGUFs (cross-encoders with rank pooling, e.g. bge-reranker) score a query–document pair in one
pass instead; the engine does not run rank pooling yet, so such models are refused with a clear error
rather than scored wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lokal.errors import BadRequest, UnsupportedCapability
from lokal.types import EmbedRequest


@dataclass
class Ranked:
    index: int  # position in the request's documents
    relevance_score: float


@dataclass
class RerankResult:
    results: list[Ranked]  # best first
    prompt_eval_count: int


async def rerank(runtime: Any, model: str, query: str, documents: list[str], top_n: int | None = None,
                 keep_alive: float | None = None) -> RerankResult:
    if not documents:
        raise BadRequest("documents must not be empty")
    if top_n is not None and top_n < 1:
        raise BadRequest("top_n must be at least 1")
    details = runtime.store.open(model).details
    if details.pooling_type == "rank":
        raise UnsupportedCapability(f'model "{model}" is a reranker (rank pooling), which lokal does not run '
                                    "yet; rerank with an embedding model such as all-minilm")
    result = await runtime.embed(EmbedRequest(model=model, input=[query, *documents], keep_alive=keep_alive))
    query_vector, *document_vectors = result.embeddings
    scores = [sum(q * d for q, d in zip(query_vector, vector)) for vector in document_vectors]
    ranked = sorted((Ranked(index, score) for index, score in enumerate(scores)),
                    key=lambda item: item.relevance_score, reverse=True)
    return RerankResult(ranked[:top_n] if top_n else ranked, result.prompt_eval_count)
