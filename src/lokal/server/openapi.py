"""/openapi.json as the server behaves: FastAPI's generated document, corrected where the edge differs.

- Validation errors are 400 (app.py), not FastAPI's 422, with each flavour's error body: Ollama's
  ``{"error"}``, OpenAI's error object on /v1, Anthropic's on /v1/messages.
- Every status a route can answer is listed: 400 for a bad body or parameter, 413 for an oversized body,
  404 where a model or a stored object is named, and for routes that load a model 499 (client gone),
  503 (queue full or shutting down), 507 (not enough memory) and 500 (the model failed to load); pulls
  add 502 (the registry could not be reached or sent bad data).
- Streaming routes declare their media types (NDJSON, SSE) beside JSON.
- ``options`` lists the Ollama options lokal accepts, with the bounds it enforces, instead of "any object".
"""

from __future__ import annotations

import re
from dataclasses import fields
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from lokal.security.roles import Permission, permission_for
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
STATUS_TEXT = {400: "Invalid request", 401: "An API key is required (LOKAL_AUTH)",
               403: "The key's role or model list does not allow this", 404: "Model or object not found", 413: "Request body too large",
               499: "Client closed the connection", 500: "The model failed to load",
               429: "The key's rate limit is reached (see Retry-After)",
               502: "The registry could not be reached or sent bad data (a partial download is kept)",
               503: "Busy (queue full) or shutting down", 507: "Not enough memory to load the model"}
# ModelName's grammar (store/names.py): [host/][namespace/]model[:tag][@sha256:<hex>], no part with '..'.
_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"
MODEL_NAME_PATTERN = (rf"^(?!.*\.\.)([A-Za-z0-9][A-Za-z0-9_.:-]*/{_PART}/|{_PART}/)?{_PART}"
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
    if path in ("/api/pull", "/openai/download"):
        found.append(502)
    return sorted(set(found))


def access_statuses(path: str, method: str) -> list[int]:
    """401, 403 and 429 wherever the security table asks for a key: they are answered when keys are required
    (LOKAL_AUTH on, or a bind beyond loopback), so the document lists them for every guarded route."""
    template = re.sub(r"\{(name|model)\}", r"{\1:path}", path)
    permission = permission_for(method, path) or permission_for(method, template)
    return [] if permission is Permission.OPEN else [401, 403, 429]


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


_NULL = {"type": "null"}
_BASE64 = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"
_DURATION = r"^(-?\d+(\.\d+)?|(-?\d+(\.\d+)?(ms|s|m|h))+)$"
_KEEP_ALIVE = {"anyOf": [{"type": "number"}, {"type": "string", "pattern": _DURATION}, _NULL]}
_THINK = {"anyOf": [{"type": "boolean"}, {"enum": ["low", "medium", "high", "true", "false"]}, _NULL]}
_NO_TOP_LOGPROBS = {"anyOf": [{"const": 0}, _NULL]}
_TEXTS = {"anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_TOOL_CHOICE = {"anyOf": [{"enum": ["auto", "none", "required"]}, _NULL, {
    "type": "object", "required": ["type", "function"], "properties": {
        "type": {"const": "function"}, "function": {"type": "object", "required": ["name"],
                                                    "properties": {"name": {"type": "string", "minLength": 1}}}}}]}
_EFFORT = {"anyOf": [{"enum": ["low", "medium", "high", "none", "minimal"]}, _NULL]}
_ANTHROPIC_SYSTEM = {"anyOf": [{"type": "string"}, _NULL, {"type": "array", "items": {
    "type": "object", "required": ["type"], "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}
# What the handlers refuse beyond the wire types' own checks, as schema: component → field → schema.
ENFORCED: dict[str, dict[str, Any]] = {
    "GenerateRequest": {"keep_alive": _KEEP_ALIVE, "think": _THINK,
                        "images": {"anyOf": [{"type": "array", "items": {"type": "string", "pattern": _BASE64}}, _NULL]}},
    "ChatRequest": {"keep_alive": _KEEP_ALIVE, "think": _THINK},
    "Message-Input": {"images": {"anyOf": [{"type": "array", "items": {"type": "string", "pattern": _BASE64}}, _NULL]}},
    "EmbedRequest": {"keep_alive": _KEEP_ALIVE, "input": _TEXTS},
    "EmbeddingsRequest": {"keep_alive": _KEEP_ALIVE},
    "TokenizeRequest": {"keep_alive": _KEEP_ALIVE},
    "DetokenizeRequest": {"keep_alive": _KEEP_ALIVE},
    "RerankRequest": {"keep_alive": _KEEP_ALIVE},
    "ChatCompletionRequest": {
        "keep_alive": _KEEP_ALIVE, "n": {"anyOf": [{"const": 1}, _NULL]}, "logit_bias": {"anyOf": [
            {"type": "object", "maxProperties": 0}, _NULL]}, "audio": _NULL, "functions": _NULL, "function_call": _NULL,
        "web_search_options": _NULL, "moderation": _NULL, "tool_choice": _TOOL_CHOICE,
        "reasoning_effort": _EFFORT,
        "modalities": {"anyOf": [{"type": "array", "items": {"const": "text"}}, _NULL]},
        "response_format": {"anyOf": [_NULL, {"type": "object", "required": ["type"], "properties": {
            "type": {"enum": ["text", "json_object"]}}}, {"type": "object", "required": ["type", "json_schema"],
                                                           "properties": {"type": {"const": "json_schema"}, "json_schema": {
                                                               "type": "object", "properties": {"schema": {"type": "object"}}}}}]}},
    "ChatMessage": {"role": {"enum": ["system", "developer", "user", "assistant", "tool"]}, "audio": _NULL,
                    "function_call": _NULL,
                    "content": {"anyOf": [{"type": "string"}, _NULL, {"type": "array", "items": {"anyOf": [
                        {"type": "object", "required": ["type", "text"],
                         "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
                        {"type": "object", "required": ["type", "image_url"], "properties": {
                            "type": {"const": "image_url"}, "image_url": {"type": "object", "required": ["url"],
                                                                          "properties": {"url": {"type": "string", "pattern": r"^data:[^;,]*;base64,(?:[A-Za-z0-9+/]{4})*$"}}}}}]}}]}},
    "CompletionRequest": {"keep_alive": _KEEP_ALIVE, "prompt": {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 1}]},
        "n": {"anyOf": [{"const": 1}, _NULL]}, "best_of": {"anyOf": [{"const": 1}, _NULL]},
        "logit_bias": {"anyOf": [
            {"type": "object", "maxProperties": 0}, _NULL]}},
    "EmbeddingRequest": {"keep_alive": _KEEP_ALIVE, "input": {"anyOf": [
        {"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}},
    "CopyRequest": {"destination": {"type": "string", "pattern": MODEL_NAME_PATTERN.replace(
        "(@sha256[:-][0-9a-fA-F]{64})?", "")}},
    "MessageParam": {"content": {"anyOf": [{"type": "string"}, {"type": "array", "items": {
        "type": "object", "required": ["type", "text"],
        "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}}]}},
    "MessageRequest": {"keep_alive": _KEEP_ALIVE, "system": _ANTHROPIC_SYSTEM, "mcp_servers": {"anyOf": [
        {"type": "array", "maxItems": 0}, _NULL]}, "tool_choice": {"anyOf": [_NULL, {
            "type": "object", "required": ["type"], "properties": {"type": {"enum": ["auto", "any", "none"]}}}]}},
    "CountTokensRequest": {"system": _ANTHROPIC_SYSTEM, "tool_choice": {"anyOf": [_NULL, {
        "type": "object", "required": ["type"], "properties": {"type": {"enum": ["auto", "any", "none"]}}}]}},
    "ResponseRequest": {"keep_alive": _KEEP_ALIVE,
                        "background": {"anyOf": [{"const": False}, _NULL]},
                        "input": {"anyOf": [{"type": "string", "minLength": 1}, {"type": "array", "minItems": 1,
                                                                                  "items": {"type": "object", "required": ["role", "content"], "properties": {
                                                                                      "role": {"enum": ["user", "assistant", "system", "developer"]},
                                                                                      "content": {"type": "string"}}}}]},
                        "tool_choice": {"anyOf": [{"enum": ["auto", "none", "required"]}, _NULL]},
                        "tools": {"anyOf": [_NULL, {"type": "array", "items": {
                            "type": "object", "required": ["type", "name"], "properties": {
                                "type": {"const": "function"}, "name": {"type": "string", "minLength": 1},
                                "parameters": {"type": "object"}}}}]}},
    "ReasoningConfig": {"effort": _EFFORT},
    "ToolParam": {"type": {"anyOf": [{"const": "custom"}, _NULL]}},
}
# Bodies where one of several fields is needed.
ONE_OF_REQUIRED = {"CreateRequest": ["from", "files"]}
# Rules across fields, as schema: OpenAI refuses top_logprobs without logprobs: true.
ACROSS_FIELDS = {"ChatCompletionRequest": {"anyOf": [
    {"properties": {"top_logprobs": _NO_TOP_LOGPROBS}},
    {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}}]}}
DIGEST_PATTERN = r"^sha256[:-][0-9a-fA-F]{64}$"


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
            for status in statuses(plain_path, method, operation) + access_statuses(path, method):
                responses[str(status)] = {"description": STATUS_TEXT[status],
                                          "content": {"application/json": {"schema": error_ref}}}
            for parameter in operation.get("parameters", []):
                if parameter.get("in") == "path" and parameter.get("name") in ("model", "name"):
                    parameter.setdefault("schema", {})["pattern"] = MODEL_NAME_PATTERN
                if parameter.get("in") == "path" and parameter.get("name") == "digest":
                    parameter.setdefault("schema", {})["pattern"] = DIGEST_PATTERN
            if method == "head" or path.startswith(("/openai/load", "/openai/unload")) or path in (
                    "/api/delete", "/api/copy", "/api/blobs/{digest}"):
                for status in ("200", "201"):
                    if status in responses:  # answered with an empty body
                        responses[status].pop("content", None)
                if method == "head":  # a HEAD answer never has a body
                    responses.update({"404": {"description": "Not found"}})
                    for response in responses.values():
                        response.pop("content", None)
            media = STREAMING.get(path)
            ok = responses.get("200")
            if media and ok is not None:
                ok.setdefault("content", {})[media] = {"schema": {"type": "string"}}
    for name, component in components.items():
        if name in ERROR_SCHEMAS:
            continue
        properties = component.get("properties") or {}
        for field, enforced in ENFORCED.get(name, {}).items():
            if field in properties:
                properties[field] = {**enforced, "description": properties[field].get("description", "")}
        if name == "ResponseRequest":  # lokal answers something: an empty input is refused
            component["required"] = sorted({*component.get("required", []), "input"})
        if name in ONE_OF_REQUIRED:
            component["anyOf"] = [{"required": [field]} for field in ONE_OF_REQUIRED[name]]
        component.update(ACROSS_FIELDS.get(name, {}))
        for field in (MODEL_FIELDS & set(properties)) - set(ENFORCED.get(name, {})):
            if properties[field].get("type") == "string" and name.endswith("Request"):
                properties[field]["pattern"] = MODEL_NAME_PATTERN
        if "options" in properties and name.endswith(("Request", "Options")):
            properties["options"] = options_schema()
    return schema
