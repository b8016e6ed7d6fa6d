"""/openapi.json as the server behaves: FastAPI's generated document, corrected where the edge differs.

- Validation errors are 400 (app.py), not FastAPI's 422, with each flavour's error body: Ollama's
  ``{"error"}``, OpenAI's error object on /v1, Anthropic's on /v1/messages.
- Every status a route can answer is listed: 400 for a bad body or parameter, 413 for an oversized body,
  404 where a model or a stored object is named, and for routes that load a model 499 (client gone),
  503 (queue full or shutting down), 507 (not enough memory) and 500 (the model failed to load).
- Streaming routes declare their media types (NDJSON, SSE) beside JSON.
- ``options`` lists the Ollama options lokal accepts, with the bounds it enforces, instead of "any object".
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lokal.server.streaming import NDJSON, SSE
from lokal.types import _IGNORED_OPTIONS, LoadOptions, SamplingOptions

ERROR_SCHEMAS: dict[str, dict[str, Any]] = {
    "OllamaError": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
    "AnthropicError": {"type": "object", "required": ["type", "error"], "properties": {
        "type": {"const": "error"}, "error": {"type": "object", "required": ["type", "message"],
                                              "properties": {"type": {"type": "string"},
                                                             "message": {"type": "string"}}}}},
}
STATUS_TEXT = {400: "Invalid request", 404: "Model or object not found", 413: "Request body too large",
               499: "Client closed the connection", 500: "The model failed to load",
               503: "Busy (queue full) or shutting down", 507: "Not enough memory to load the model"}
# ModelName's grammar (store/names.py): [host/][namespace/]model[:tag][@sha256:<hex>].
MODEL_NAME_PATTERN = (r"^([A-Za-z0-9][A-Za-z0-9_.:-]*/){0,2}[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"
                      r"(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,79})?(@sha256[:-][0-9a-fA-F]{64})?$")
MODEL_FIELDS = {"model", "source", "destination", "from"}
# Routes that stream unless asked not to, and how.
STREAMING = {"/api/generate": NDJSON, "/api/chat": NDJSON, "/api/pull": NDJSON, "/api/create": NDJSON,
             "/v1/chat/completions": SSE, "/v1/completions": SSE, "/v1/responses": SSE, "/v1/messages": SSE}
# Routes that need no model and take no input: nothing but 200.
ALWAYS_OK = {"/", "/api/version", "/api/health", "/api/ps", "/openai/loadedmodels", "/openai/status", "/metrics",
             "/api/metrics"}
# Routes that list or manage the store without loading a model.
STORE_ONLY = {"/api/tags", "/v1/models", "/openai/models", "/api/show", "/api/delete", "/api/copy",
              "/api/pull", "/api/create", "/api/blobs/{digest}", "/v1/models/{model}", "/openai/unloadall",
              "/openai/unload/{name}", "/openai/download", "/v1/responses/{response_id}",
              "/v1/responses/{response_id}/input_items"}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the corrected document (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            app.openapi_schema = correct(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def error_schema_name(path: str) -> str:
    if path.startswith("/v1/messages"):
        return "AnthropicError"
    return "OpenAIError" if path.startswith("/v1/") else "OllamaError"


def statuses(path: str, method: str, operation: dict[str, Any]) -> list[int]:
    if path in ALWAYS_OK:
        return []
    if path == "/ready":
        return [503]
    found = [400]
    if "requestBody" in operation:
        found.append(413)
    if path not in ("/api/tags", "/v1/models", "/openai/models", "/openai/unloadall"):
        found.append(404)
    if path not in STORE_ONLY or path == "/openai/unload/{name}":
        found += [499, 500, 503, 507]
    if path in ("/api/pull", "/openai/download", "/api/create"):
        found += [499, 507]
    return sorted(set(found))


def options_schema() -> dict[str, Any]:
    """The ``options`` object as split_options accepts it (types and the bounds _validate enforces)."""
    kinds = {"int": {"type": "integer"}, "float": {"type": "number"}, "bool": {"type": "boolean"},
             "list[str]": {"type": "array", "items": {"type": "string"}}}
    bounds = {"temperature": {"minimum": 0}, "top_p": {"minimum": 0, "maximum": 1},
              "min_p": {"minimum": 0, "maximum": 1}, "top_k": {"minimum": 0}, "num_ctx": {"minimum": 16},
              "num_batch": {"minimum": 1}, "num_parallel": {"minimum": 1}}
    properties: dict[str, Any] = {}
    for spec in (*fields(SamplingOptions), *fields(LoadOptions)):
        kind = str(spec.type).replace(" | None", "")
        properties[spec.name] = {**kinds.get(kind, {}), **bounds.get(spec.name, {})}
        properties[spec.name] = {"anyOf": [properties[spec.name], {"type": "null"}]}
    for name in sorted(_IGNORED_OPTIONS):
        properties[name] = {"description": "accepted and ignored"}
    return {"type": "object", "properties": properties, "additionalProperties": False,
            "description": "Ollama options over the model's PARAMETERs; null means unset."}


def correct(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(ERROR_SCHEMAS)
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)
    for path, operations in schema.get("paths", {}).items():
        plain_path = path.replace("{name:path}", "{name}").replace("{model:path}", "{model}")
        for method, operation in operations.items():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            error_ref = {"$ref": f"#/components/schemas/{error_schema_name(path)}"}
            for status in statuses(plain_path, method, operation):
                responses[str(status)] = {"description": STATUS_TEXT[status],
                                          "content": {"application/json": {"schema": error_ref}}}
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in ("model", "name"):
                    parameter.setdefault("schema", {})["pattern"] = MODEL_NAME_PATTERN
            media = STREAMING.get(path)
            ok = responses.get("200")
            if media and ok is not None:
                ok.setdefault("content", {})[media] = {"schema": {"type": "string"}}
    for name, component in components.items():
        if name in ERROR_SCHEMAS:
            continue
        properties = component.get("properties") or {}
        for field in MODEL_FIELDS & set(properties):
            if properties[field].get("type") == "string" and name.endswith("Request"):
                properties[field]["pattern"] = MODEL_NAME_PATTERN
        if "options" in properties and name.endswith(("Request", "Options")):
            properties["options"] = options_schema()
    return schema
