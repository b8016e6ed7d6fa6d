"""A model's knowledge layer: chunks of its FILE documents with their embeddings, and the search over them.

Stored as one JSON blob (media type ``application/vnd.lokal.image.knowledge``)::

    {"embed_model": "all-minilm", "files": ["guide.txt"],
     "chunks": [{"file": "guide.txt", "offset": 0, "text": "...", "vector": [0.01, ...]}, ...]}

Vectors are unit length (the engine normalizes them), so a dot product is the cosine similarity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from lokal.errors import StoreError
from lokal.knowledge.documents import Chunk

DEFAULT_EMBED_MODEL = "all-minilm"
DEFAULT_TOP_K = 3
DEFAULT_MIN_SCORE = 0.3
# PARAMETERs that steer knowledge; they belong to the model, not to the sampler or the loader.
KNOWLEDGE_PARAMETERS = {"embed_model": str, "knowledge_top_k": int, "knowledge_min_score": float}


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    score: float

    def to_dict(self) -> dict[str, Any]:
        """What responses list under ``knowledge``: the file, the chunk's text and its similarity."""
        return {"file": self.chunk.file, "chunk": self.chunk.text, "offset": self.chunk.offset,
                "score": round(self.score, 4)}


@dataclass(frozen=True)
class KnowledgeIndex:
    embed_model: str
    chunks: tuple[Chunk, ...]
    vectors: np.ndarray  # one unit row per chunk

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(chunk.file for chunk in self.chunks))

    def to_json(self) -> bytes:
        return json.dumps({"embed_model": self.embed_model, "files": self.files, "chunks": [
            {"file": c.file, "offset": c.offset, "text": c.text, "vector": [round(float(x), 6) for x in v]}
            for c, v in zip(self.chunks, self.vectors)]}).encode()

    @classmethod
    def from_json(cls, data: bytes, where: str) -> KnowledgeIndex:
        try:
            body = json.loads(data)
            chunks = tuple(Chunk(c["file"], int(c["offset"]), c["text"]) for c in body["chunks"])
            vectors = np.array([c["vector"] for c in body["chunks"]], dtype=np.float32).reshape(len(chunks), -1)
            return cls(str(body["embed_model"]), chunks, vectors)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"the knowledge layer {where} is corrupt: {exc}") from None

    def search(self, query: list[float], top_k: int, min_score: float) -> list[Hit]:
        """The ``top_k`` chunks most similar to ``query`` with a cosine of at least ``min_score``, best first."""
        if not self.chunks or top_k <= 0:
            return []
        scores = self.vectors @ np.asarray(query, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:top_k]
        return [Hit(self.chunks[i], float(scores[i])) for i in order if scores[i] >= min_score]


@lru_cache(maxsize=16)
def load_index(path: Path) -> KnowledgeIndex:
    """A knowledge blob, parsed once: blobs are content-addressed, so the path names one content forever."""
    return KnowledgeIndex.from_json(path.read_bytes(), path.name)


def knowledge_prompt(system: str | None, hits: list[Hit]) -> str | None:
    """The system prompt with the retrieved passages appended, each under its source's name."""
    if not hits:
        return system
    passages = "\n\n".join(f"[{hit.chunk.file}]\n{hit.chunk.text}" for hit in hits)
    intro = ("Use the following excerpts from the reference documents when they are relevant to the question. "
             "Name the document you use.")
    return f"{system.rstrip()}\n\n{intro}\n\n{passages}" if system else f"{intro}\n\n{passages}"
