"""Reranking documents against a query. Which path a model takes depends on what it is:

- a reranker GGUF (a cross-encoder with rank pooling, e.g. ms-marco-MiniLM or bge-reranker imported from its
  safetensors folder): each query–document pair is read in one pass, formatted as llama-server's /rerank does,
  and its score is the model's classification head output (a logit: unbounded, higher is more relevant);
- an embedding model (e.g. all-minilm): the cosine similarity of the document's embedding and the query's (the
  engine returns unit vectors, so a dot product), in [-1, 1].

A chat or completion model is refused (400): its pooled hidden states are not trained to compare texts, so
scores from them would look plausible and mean little.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lokal.errors import BadRequest, UnsupportedCapability
from lokal.store.gguf_info import is_embedding_model
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
        scores, prompt_eval_count = await runtime.rerank_scores(model, query, documents, keep_alive)
    elif not is_embedding_model(details):
        raise UnsupportedCapability(f'model "{model}" is neither a reranker nor an embedding model; rerank with '
                                    "a reranker or an embedding model such as all-minilm")
    else:
        result = await runtime.embed(EmbedRequest(model=model, input=[query, *documents], keep_alive=keep_alive))
        query_vector, *document_vectors = result.embeddings
        scores = [sum(q * d for q, d in zip(query_vector, vector)) for vector in document_vectors]
        prompt_eval_count = result.prompt_eval_count
    ranked = sorted((Ranked(index, score) for index, score in enumerate(scores)),
                    key=lambda item: item.relevance_score, reverse=True)
    return RerankResult(ranked[:top_n] if top_n else ranked, prompt_eval_count)
