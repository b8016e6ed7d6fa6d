"""One stored model, read once: what every consumer (runtime, show, create, the CLI) needs to know about it.

``Store.open(name)`` reads the manifest and every small layer in one go and returns a ``StoredModel``, as
Ollama's ``GetModel`` does; nobody goes back to the store for a model's system prompt or template.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lokal.errors import BadRequest
from lokal.store.names import ModelName

if TYPE_CHECKING:
    from lokal.store.gguf_info import ModelDetails
    from lokal.store.store import ModelEntry
    from lokal.templates import ChatTemplate
    from lokal.types import LoadOptions, Message, SamplingOptions


@dataclass(frozen=True)
class Adapter:
    path: Path  # a LoRA GGUF blob
    scale: float = 1.0


@dataclass(frozen=True)
class StoredModel:
    entry: ModelEntry
    path: Path  # the GGUF of the model layer, present with the manifest's size
    details: ModelDetails
    params: dict[str, Any]  # the Modelfile PARAMETERs as stored, e.g. {"stop": ["<|im_end|>"]}
    system: str | None
    template: str | None  # the Modelfile TEMPLATE; None = the GGUF's own chat template
    license: str | None  # the LICENSE layers joined, else the GGUF's general.license
    messages: tuple[dict[str, Any], ...]
    adapters: tuple[Adapter, ...] = ()
    knowledge: tuple[Path, ...] = ()  # knowledge layer blobs (chunks with their embeddings)
    draft: Path | None = None  # the GGUF of the DRAFT model that guesses ahead (speculative decoding)
    format: str = "gguf"

    @property
    def name(self) -> ModelName:
        return self.entry.name

    @property
    def display(self) -> str:
        return self.entry.name.display

    @property
    def digest(self) -> str:
        return self.entry.digest

    @cached_property
    def chat_template(self) -> ChatTemplate:
        """The template requests are rendered with: the Modelfile's, the GGUF's, or the family fallback."""
        from lokal.templates import ChatTemplate

        return ChatTemplate.from_model(self.details.chat_template, self.template,
                                       architecture=self.details.architecture)

    def options(self) -> tuple[SamplingOptions, LoadOptions]:
        """The PARAMETERs as typed defaults for requests; a bad stored value is a 400 naming the model."""
        from lokal.knowledge.index import KNOWLEDGE_PARAMETERS
        from lokal.types import split_options

        try:
            return split_options({k: v for k, v in self.params.items() if k not in KNOWLEDGE_PARAMETERS})
        except BadRequest as exc:
            raise BadRequest(f'model "{self.display}" has an invalid PARAMETER: {exc.message}') from None

    def default_messages(self) -> list[Message]:
        from lokal.types import Message

        return [Message(role=m.get("role", "user"), content=m.get("content", "")) for m in self.messages]
