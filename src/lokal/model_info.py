"""What a stored model is, in Ollama's /api/show terms: used by ``lokal show`` and the server's /api/show.

Field names are Ollama's (``modelfile``, ``parameters``, ``template``, ``system``, ``license``, ``details``,
``model_info``, ``capabilities``, ``modified_at``), so ``to_dict()`` is the response body as is.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from lokal.errors import LokalError
from lokal.store.gguf_info import ModelDetails, is_embedding_model, read_details
from lokal.store.names import ModelName
from lokal.store.store import ModelEntry, Store
from lokal.store.stored_model import StoredModel
from lokal.templates import ChatTemplate

log = logging.getLogger("lokal.models")

# Column where Ollama's parameter values start ("%-30s %v").
PARAMETER_NAME_WIDTH = 30
# Metadata that /api/show leaves out of model_info: the chat template has its own field.
_OMITTED_METADATA = {"tokenizer.chat_template"}


@dataclass
class ModelDescription:
    name: str  # display form, e.g. "smollm2:latest"
    modelfile: str
    parameters: str
    template: str
    system: str
    license: str
    details: dict[str, Any]
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: datetime | None
    messages: list[dict[str, Any]] = field(default_factory=list)
    parameter_values: dict[str, Any] = field(default_factory=dict)  # the PARAMETERs, typed
    knowledge: list[str] = field(default_factory=list)  # (lokal) the FILE documents the model knows

    def to_dict(self) -> dict[str, Any]:
        """The /api/show response body."""
        body: dict[str, Any] = {
            "modelfile": self.modelfile,
            "parameters": self.parameters,
            "template": self.template,
            "system": self.system,
            "license": self.license,
            "details": dict(self.details),
            "model_info": dict(self.model_info),
            "capabilities": list(self.capabilities),
            "modified_at": self.modified_at.isoformat() if self.modified_at else None,
        }
        if self.messages:
            body["messages"] = list(self.messages)
        if self.knowledge:
            body["knowledge"] = list(self.knowledge)
        return body


def describe(store: Store, name: str | ModelName) -> ModelDescription:
    """Describe a stored model. Raises ``InvalidModelName`` / ``ModelNotFound`` / ``StoreError``."""
    return describe_stored(store.open(name))


def describe_stored(model: StoredModel) -> ModelDescription:
    entry, details = model.entry, model.details
    # The template that requests will use: the Modelfile's, the GGUF's, or the fallback for the family.
    template = model.chat_template.source
    system = model.system or ""
    license_text = model.license or ""
    parameter_values = dict(model.params)
    messages = [dict(message) for message in model.messages]
    modelfile = format_modelfile(
        entry.name.display, str(model.path), template=template, system=system,
        parameters=parameter_values, license_text=license_text, messages=messages,
        adapters=tuple(str(adapter.path) for adapter in model.adapters),
        draft=str(model.draft) if model.draft else None)
    return ModelDescription(
        name=entry.name.display,
        modelfile=modelfile,
        parameters=format_parameters(parameter_values),
        template=template,
        system=system,
        license=license_text,
        details=details_fields(details),
        model_info=model_info(details),
        capabilities=capabilities(details, model.chat_template),
        modified_at=entry.modified_at,
        messages=messages,
        parameter_values=parameter_values,
        knowledge=knowledge_files(model),
    )


def knowledge_files(model: StoredModel) -> list[str]:
    from lokal.knowledge.index import load_index

    return [file for path in model.knowledge for file in load_index(path).files]


def capabilities(details: ModelDetails, template: ChatTemplate) -> list[str]:
    """Ollama's ``capabilities``: completion, embedding or rerank (a rank-pooling reranker), plus tools, insert
    (fill-in-the-middle) and thinking when the template requests are rendered with handles them (tools also
    through a built-in template for the model's family, tool_templates.py)."""
    if details.pooling_type == "rank":
        return ["rerank"]  # a cross-encoder: it scores query–document pairs, it neither embeds nor completes
    if is_embedding_model(details):
        return ["embedding"]
    found = ["completion"]
    if template.supports_tools:
        found.append("tools")
    if template.supports_suffix:
        found.append("insert")
    if template.supports_thinking:
        found.append("thinking")
    return found


def details_fields(details: ModelDetails | None) -> dict[str, Any]:
    """Model details as Ollama's ``details`` object (/api/show, /api/tags, /api/ps); ONNX models add the
    execution provider they were built for (their quantization_level is the precision, e.g. int4)."""
    provider = details.metadata.get("onnx.execution_provider") if details else None
    fields = {
        "parent_model": "",
        "format": "onnx" if provider else "gguf",
        "family": details.family if details else "",
        "families": (details.families or None) if details else None,
        "parameter_size": (details.parameter_size or "") if details else "",
        "quantization_level": (details.quantization_level or "") if details else "",
    }
    if provider:
        fields["execution_provider"] = provider
    return fields


def listing_details(store: Store, entry: ModelEntry) -> dict[str, Any]:
    """The ``details`` of one /api/tags entry (and `lokal list --json`). Like Ollama, read from the
    manifest's config blob, which is cheap; models whose config lacks them fall back to the GGUF header."""
    try:
        config = json.loads(store.blobs.read_bytes(entry.manifest.config.digest))
    except (OSError, ValueError, LokalError):
        config = {}
    if isinstance(config, dict) and config.get("model_family") and config.get("file_type"):
        family = config["model_family"]
        return {"parent_model": "", "format": config.get("model_format") or "gguf", "family": family,
                "families": config.get("model_families") or [family],
                "parameter_size": config.get("model_type") or "", "quantization_level": config["file_type"],
                **({"execution_provider": config["execution_provider"]} if config.get("execution_provider") else {})}
    try:
        return details_fields(read_details(store.model_path(entry)))
    except LokalError as exc:  # one broken model must not hide the others
        log.warning("%s: %s", entry.name.display, exc.message)
        return details_fields(None)


def model_info(details: ModelDetails) -> dict[str, Any]:
    """GGUF metadata as /api/show's ``model_info``: every key, long arrays (vocabularies) as null like
    Ollama, and always the keys ``lokal show`` prints."""
    info: dict[str, Any] = {}
    for key, value in details.metadata.items():
        if key not in _OMITTED_METADATA:
            info[key] = value
    architecture = details.architecture or ""
    info.setdefault("general.architecture", architecture)
    if details.parameter_count:
        info.setdefault("general.parameter_count", int(details.parameter_count))
    if details.context_length:
        info.setdefault(f"{architecture}.context_length", int(details.context_length))
    if details.embedding_length:
        info.setdefault(f"{architecture}.embedding_length", int(details.embedding_length))
    return dict(sorted(info.items()))


def _parameter_items(parameters: dict[str, Any]) -> list[tuple[str, Any]]:
    """One (name, value) per line: list values (``stop``) give one line each, as in a Modelfile."""
    items = []
    for name, value in parameters.items():
        for single in value if isinstance(value, (list, tuple)) else [value]:
            items.append((name, single))
    return items


def _go_value(value: Any) -> str:
    """A value as Go's ``%#v`` prints it in Ollama's parameters text: strings quoted, numbers bare."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def format_parameters(parameters: dict[str, Any]) -> str:
    """Ollama's /api/show ``parameters``: ``stop                           "<|im_end|>"`` per line."""
    return "\n".join(f"{name:<{PARAMETER_NAME_WIDTH}} {_go_value(value)}"
                     for name, value in _parameter_items(parameters))


def _block(text: str) -> str:
    """TEMPLATE, SYSTEM and LICENSE are multi-line texts: always triple-quoted."""
    return f'"""{text}"""'


def _argument(value: Any) -> str:
    """A PARAMETER or MESSAGE argument quoted as Ollama's Modelfile writer does: bare unless it has a
    newline or edge spaces, then quoted (triple quotes when it contains a quote)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    text = str(value)
    if "\n" in text or text != text.strip():
        return f'"""{text}"""' if '"' in text else f'"{text}"'
    return text


def format_modelfile(display_name: str, model_path: str, *, template: str, system: str,
                     parameters: dict[str, Any], license_text: str, messages: list[dict[str, Any]],
                     adapters: tuple[str, ...] = (), draft: str | None = None) -> str:
    """The Modelfile that rebuilds this model, in the layout ``ollama show --modelfile`` prints."""
    lines = [
        '# Modelfile generated by "lokal show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {display_name}",
        "",
        f"FROM {model_path}",
    ]
    if template:
        lines.append(f"TEMPLATE {_block(template)}")
    if system:
        lines.append(f"SYSTEM {_block(system)}")
    lines += [f"ADAPTER {path}" for path in adapters]
    if draft:
        lines.append(f"DRAFT {draft}")
    lines += [f"PARAMETER {name} {_argument(value)}" for name, value in _parameter_items(parameters)]
    if license_text:
        lines.append(f"LICENSE {_block(license_text)}")
    for message in messages:
        lines.append(f"MESSAGE {message.get('role', 'user')} {_argument(message.get('content', ''))}")
    return "\n".join(lines) + "\n"
