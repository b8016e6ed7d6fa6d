"""ONNX sentence-embedding models (``lokal convert`` of a BERT encoder, convert/onnx_embedding.py) on ONNX Runtime.

Embeds as sentence-transformers does: the tokenizer's ids ([CLS] … [SEP]), the encoder's token vectors, mean
pooling over the attention mask (or the [CLS] vector, as pooling.json says), then L2 normalization. The
runtime treats it like a GGUF embedding model: ``tokenize`` then ``embed``; it generates no text.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from lokal.engine.engine import EngineConfig, EngineStats
from lokal.engine.stream import Sink
from lokal.errors import BadRequest, ConfigError, ModelLoadError, UnsupportedCapability
from lokal.types import SamplingOptions

BATCH_SIZE = 32  # texts per session run: bounds the padded batch's memory


class OnnxEmbedder:
    concurrency = "queue"  # one batch at a time (ONNX Runtime spreads it over the cores itself)
    num_slots = 1
    chat_template = None
    bos_text = ""
    eos_text = ""

    def __init__(self, folder: str | Path, config: EngineConfig | None = None, provider: str | None = None):
        try:
            import onnxruntime
            from tokenizers import Tokenizer
        except ImportError:
            raise ConfigError("ONNX embedding models need onnxruntime and tokenizers: pip install 'lokal[onnx]'") \
                from None
        self.folder = Path(folder)
        self.config = config or EngineConfig()
        self.provider = provider or "CPUExecutionProvider"
        try:
            self.pooling = json.loads((self.folder / "pooling.json").read_text())
            self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
            providers = [self.provider] if self.provider in onnxruntime.get_available_providers() \
                else ["CPUExecutionProvider"]
            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = self.config.num_thread or 0
            self._session = onnxruntime.InferenceSession(str(self.folder / "model.onnx"), options,
                                                         providers=providers)
        except Exception as exc:  # ONNX Runtime and tokenizers raise their own exception types
            raise ModelLoadError(f"ONNX Runtime could not load the embedding model {self.folder}: {exc}") from None
        self._tokenizer.no_truncation()  # the runtime truncates (or refuses) to the context length
        self._tokenizer.no_padding()
        self._input_names = {node.name for node in self._session.get_inputs()}
        self.n_ctx_train = int(self.pooling.get("max_length") or 512)
        self.n_vocab = self._tokenizer.get_vocab_size()
        self.metadata: dict[str, Any] = {"onnx.execution_provider": self.provider}
        self._lock = threading.Lock()  # one batch at a time
        self._num_busy = 0

    @property
    def n_ctx_per_seq(self) -> int:
        return min(self.config.num_ctx, self.n_ctx_train)

    def tokenize(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        return list(self._tokenizer.encode(text, add_special_tokens=add_special).ids)

    def detokenize(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if ids and (min(ids) < 0 or max(ids) >= self.n_vocab):
            raise BadRequest(f"token ids must be between 0 and {self.n_vocab - 1}")
        return self._tokenizer.decode(ids)

    def submit(self, tokens: Sequence[int], sampling: SamplingOptions, *, grammar: str | None = None,
               format: Any = None, sink: Sink) -> Any:
        raise UnsupportedCapability("this is an embedding model: it makes vectors (/api/embed, /v1/embeddings), "
                                    "not text")

    def embed(self, token_lists: Sequence[Sequence[int]], normalize: bool = True) -> list[list[float]]:
        vectors: list[list[float]] = []
        with self._lock:
            self._num_busy = 1
            try:
                for start in range(0, len(token_lists), BATCH_SIZE):
                    vectors += self._embed_batch(token_lists[start:start + BATCH_SIZE], normalize)
            finally:
                self._num_busy = 0
        return vectors

    def _embed_batch(self, token_lists: Sequence[Sequence[int]], normalize: bool) -> list[list[float]]:
        if any(not tokens for tokens in token_lists):
            raise BadRequest("an input has no tokens to embed")
        width = max(len(tokens) for tokens in token_lists)
        ids = np.zeros((len(token_lists), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, tokens in enumerate(token_lists):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        hidden = self._session.run(None, {name: value for name, value in feeds.items()
                                          if name in self._input_names})[0]
        if self.pooling.get("pooling") == "cls":
            pooled = hidden[:, 0, :]
        else:  # mean over the real tokens, as sentence-transformers' Pooling does
            weights = mask[:, :, None].astype(hidden.dtype)
            pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        if normalize and self.pooling.get("normalize", True):
            pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return pooled.astype(np.float64).tolist()

    def stats(self) -> EngineStats:
        busy = self._num_busy
        return EngineStats(num_slots=1, num_busy=busy, num_free=1 - busy, num_waiting=0)

    def close(self, reason: str = "the model was unloaded before the request finished") -> None:
        with self._lock:
            self._session = None

    def __enter__(self) -> OnnxEmbedder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
