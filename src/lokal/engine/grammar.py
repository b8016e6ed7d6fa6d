"""``format`` → a GBNF grammar that llama.cpp's grammar sampler constrains generation with.

``"json"`` means any JSON object; a dict is a JSON schema, converted by llama-cpp-python's port of
llama.cpp's schema converter. The runner compiles the grammar when the request is submitted, so a
grammar llama.cpp cannot parse also fails as a ``BadRequest`` before any token is generated.
"""

from __future__ import annotations

import json
from typing import Any

from llama_cpp.llama_grammar import JSON_GBNF, json_schema_to_gbnf

from lokal.errors import BadRequest


def grammar_for(format: Any) -> str | None:
    """The grammar for a request's ``format``: None, ``"json"`` or a JSON schema object."""
    if format is None or format == "":
        return None
    if format == "json":
        return JSON_GBNF
    if isinstance(format, dict):
        return _schema_grammar(format)
    raise BadRequest(f'format must be "json" or a JSON schema object, got {format!r}')


def _schema_grammar(schema: dict[str, Any]) -> str:
    try:
        text = json.dumps(schema)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"format is not a valid JSON schema: {exc}") from None
    # Keep the properties in the order the schema lists them, as Ollama does.
    properties = schema.get("properties")
    order = list(properties) if isinstance(properties, dict) else []
    try:
        return json_schema_to_gbnf(text, prop_order=order)
    except Exception as exc:  # the converter validates with assert/KeyError/ValueError alike
        detail = str(exc) or type(exc).__name__
        raise BadRequest(f"format is not a supported JSON schema: {detail}") from None
