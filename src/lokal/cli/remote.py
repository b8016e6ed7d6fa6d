"""The CLI as a client of a running server (Ollama's cmd → api.Client split).

When a server answers at LOKAL_HOST, `lokal run/list/pull/rm/show/cp` go through it, so they share its
loaded models and its store; otherwise they work in-process. Both paths return the same values.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

from lokal.cli.models import ListedModel, ListedModels
from lokal.client import Client
from lokal.model_info import ModelDescription
from lokal.store.sources import Progress
from lokal.types import Done

_DONE_FIELDS = ("prompt_eval_count", "prompt_eval_duration", "eval_count", "eval_duration", "load_duration",
                "total_duration")


def server_client(base_url: str) -> Client | None:
    """A client for the server at ``base_url`` if one answers there, else None."""
    client = Client(base_url)
    if client.is_running():
        return client
    client.close()
    return None


def _parse_time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


class HttpBackend:
    """``ModelsBackend`` over the Ollama API of a running server."""

    def __init__(self, client: Client):
        self.client = client

    def list(self) -> ListedModels:
        models = [ListedModel(name=m["name"], digest="sha256:" + m["digest"], size=m["size"],
                              modified_at=_parse_time(m.get("modified_at")), details=m.get("details") or {})
                  for m in self.client.list()["models"]]
        return ListedModels(models=models, errors=[])

    def describe(self, name: str) -> ModelDescription:
        return description_from(name, self.client.show(name, verbose=True))

    def exists(self, name: str) -> bool:
        from lokal.errors import ModelNotFound

        try:
            self.client.show(name)
        except ModelNotFound:
            return False
        return True

    def pull(self, name: str) -> Iterator[Progress]:
        for event in self.client.pull(name, stream=True):
            yield Progress(status=event.get("status", ""), digest=event.get("digest"), total=event.get("total"),
                           completed=event.get("completed"))

    def remove(self, name: str) -> None:
        self.client.delete(name)

    def copy(self, source: str, destination: str) -> None:
        self.client.copy(source, destination)

    def create(self, name: str, modelfile: Path, quantize: str | None) -> Iterator[Progress]:
        """As Ollama's client: local files go up as blobs (skipped when the server has them), then one
        /api/create names them by digest."""
        from lokal.create import read_modelfile, spec_from_modelfile

        parsed = read_modelfile(modelfile)
        spec = spec_from_modelfile(name, parsed, modelfile.parent, self.client.create_blob, quantize)
        events = self.client.create(name, from_=spec.source, files=spec.files, adapters=spec.adapters,
                                    template=spec.template, system=spec.system, license=spec.license,
                                    parameters=spec.parameters, messages=spec.messages or None,
                                    quantize=spec.quantize, knowledge=spec.knowledge, draft=spec.draft,
                                    stream=True)
        for event in events:
            yield Progress(status=event.get("status", ""), digest=event.get("digest"), total=event.get("total"),
                           completed=event.get("completed"))


def description_from(name: str, body: dict[str, Any]) -> ModelDescription:
    """/api/show's body as the ModelDescription the CLI renders."""
    return ModelDescription(name=name, modelfile=body.get("modelfile", ""), parameters=body.get("parameters", ""),
                            template=body.get("template", ""), system=body.get("system", ""),
                            license=body.get("license", ""), details=body.get("details") or {},
                            model_info=body.get("model_info") or {}, capabilities=body.get("capabilities") or [],
                            modified_at=_parse_time(body.get("modified_at")), messages=body.get("messages") or [],
                            knowledge=body.get("knowledge") or [])


class RemoteLLM:
    """What `lokal run` needs of an ``LLM`` (chat, info, close), answered by the server's /api/chat."""

    def __init__(self, client: Client, model: str):
        self.client = client
        self.model = model

    def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, format: str | None = None,
             options: dict[str, Any] | None = None, keep_alive: float | None = None,
             think: bool | str | None = None) -> Iterator[Any]:
        lines = self.client.chat(self.model, messages, stream=True, format=format, options=options,
                                 keep_alive=keep_alive, think=think)
        chunks = self._chunks(lines)
        if stream:
            return chunks
        for _ in chunks:  # a load request (no messages): nothing to show, only wait for it
            pass
        return iter(())

    @staticmethod
    def _chunks(lines: Iterator[dict[str, Any]]) -> Iterator[Any]:
        from lokal.llm import Chunk  # the engine's import chain only when answering

        try:
            for line in lines:
                message = line.get("message") or {}
                text, thinking = message.get("content", ""), message.get("thinking") or ""
                if line.get("done"):
                    done = Done(reason=line.get("done_reason") or "stop",
                                **{k: int(line.get(k) or 0) for k in _DONE_FIELDS})
                    yield Chunk(text=text, done=done, thinking=thinking)
                    return
                yield Chunk(text=text, thinking=thinking)
        finally:
            close = getattr(lines, "close", None)
            if close is not None:
                close()  # leaving early (Ctrl-C) closes the stream, which cancels the generation server-side

    def info(self) -> ModelDescription:
        return description_from(self.model, self.client.show(self.model, verbose=True))

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> RemoteLLM:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
