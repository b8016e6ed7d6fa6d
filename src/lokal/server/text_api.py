"""What a model's vocabulary and embeddings answer without generating: tokenize and detokenize
(/api/tokenize, /api/detokenize, as Ollama's unmerged ollama#3582 and llama-server's /tokenize), and
reranking (/api/rerank and /v1/rerank in the Cohere/Jina shape that llama-server serves).

Reranking scores by cosine similarity of an embedding model's vectors (see ``lokal.rerank``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from lokal.rerank import rerank
from lokal.server.edge import WireModel, parse_keep_alive, runtime_of
from lokal.server.streaming import JSONResponse, until_disconnected

router = APIRouter()


class TokenizeRequest(WireModel):
    model: str = Field(min_length=1)
    """Model whose vocabulary to use."""
    text: str
    """Text to tokenize; special-token text such as ``<|im_start|>`` becomes its token, no BOS is added."""
    keep_alive: float | str | None = None
    """How long the model stays loaded afterwards."""


class TokenizeResponse(BaseModel):
    model: str
    tokens: list[int]


class DetokenizeRequest(WireModel):
    model: str = Field(min_length=1)
    """Model whose vocabulary to use."""
    tokens: list[int]
    """Token ids."""
    keep_alive: float | str | None = None
    """How long the model stays loaded afterwards."""


class DetokenizeResponse(BaseModel):
    model: str
    text: str


class RerankDocument(WireModel):
    text: str


class RerankRequest(WireModel):
    model: str = Field(min_length=1)
    """A reranker (rank pooling: its classification head scores each query–document pair) or an embedding model
    (e.g. all-minilm: documents are scored by the cosine similarity of their embeddings to the query's)."""
    query: str
    """What the documents are ranked against."""
    documents: list[str | RerankDocument] = Field(min_length=1)
    """Texts to rank (strings, or objects with a ``text``)."""
    top_n: int | None = Field(default=None, ge=1)
    """Return only the best ``top_n`` results."""
    return_documents: bool = False
    """Include each document's text in its result."""
    keep_alive: float | str | None = None
    """How long the model stays loaded afterwards."""


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, str] | None = None


class RerankResponse(BaseModel):
    model: str
    object: str = "list"
    results: list[RerankResult]
    usage: dict[str, int]


@router.post("/api/tokenize", response_model=TokenizeResponse, tags=["tokens"])
async def tokenize(body: TokenizeRequest, request: Request) -> Response:
    tokens = await until_disconnected(request, runtime_of(request).tokenize(
        body.model, body.text, keep_alive=parse_keep_alive(body.keep_alive)))
    return JSONResponse({"model": body.model, "tokens": tokens})


@router.post("/api/detokenize", response_model=DetokenizeResponse, tags=["tokens"])
async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
    text = await until_disconnected(request, runtime_of(request).detokenize(
        body.model, body.tokens, keep_alive=parse_keep_alive(body.keep_alive)))
    return JSONResponse({"model": body.model, "text": text})


async def _rerank(body: RerankRequest, request: Request) -> Response:
    texts = [doc if isinstance(doc, str) else doc.text for doc in body.documents]
    result = await until_disconnected(request, rerank(runtime_of(request), body.model, body.query, texts,
                                                      body.top_n, parse_keep_alive(body.keep_alive)))
    results: list[dict[str, Any]] = []
    for ranked in result.results:
        item: dict[str, Any] = {"index": ranked.index, "relevance_score": ranked.relevance_score}
        if body.return_documents:
            item["document"] = {"text": texts[ranked.index]}
        results.append(item)
    usage = {"prompt_tokens": result.prompt_eval_count, "total_tokens": result.prompt_eval_count}
    return JSONResponse({"model": body.model, "object": "list", "results": results, "usage": usage})


@router.post("/api/rerank", response_model=RerankResponse, tags=["tokens"])
async def rerank_ollama(body: RerankRequest, request: Request) -> Response:
    """Rank documents by relevance to a query, best first."""
    return await _rerank(body, request)


@router.post("/v1/rerank", response_model=RerankResponse, tags=["openai"])
async def rerank_v1(body: RerankRequest, request: Request) -> Response:
    """Rank documents by relevance to a query, best first (Cohere/Jina shape; errors as OpenAI's)."""
    return await _rerank(body, request)
