"""The Python SDK for a running lokal server: ``lokal.Client`` and ``lokal.AsyncClient`` (httpx).

Every endpoint is a method, named after the Ollama client's where one exists; answers are the JSON
objects the server sends (dicts). ``stream=True`` gives an iterator of those objects (an async iterator
from ``await`` on the AsyncClient). Errors raise ``lokal.errors`` types: ``ModelNotFound`` for 404,
``BadRequest`` for other 4xx, ``ServerBusy`` for 503, ``ServerUnavailable`` when nothing answers.

    with lokal.Client() as client:
        print(client.generate("smollm2", "Why is the sky blue?")["response"])
        for chunk in client.chat("smollm2", [{"role": "user", "content": "Hi"}], stream=True):
            print(chunk["message"]["content"], end="")
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Iterator, Literal

import anyio
import httpx

from lokal.config import Settings, parse_host
from lokal.errors import (BadRequest, Cancelled, Forbidden, LokalError, ModelNotFound, ServerBusy, ServerUnavailable,
                          Unauthorized)
from lokal.store.blobs import file_sha256_hex

# Connecting fails fast; reading waits as long as a generation takes unless a timeout is given.
CONNECT_TIMEOUT_SECONDS = 10.0
UPLOAD_CHUNK_BYTES = 1024 * 1024


@dataclass(frozen=True)
class _Call:
    """One request and how to read its answer."""

    method: str
    path: str
    body: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    stream: Literal["ndjson", "sse"] | None = None  # a streamed answer, one object per line/event
    answer: Literal["json", "none", "exists", "last_line"] = "json"
    pick: str | None = None  # return this key of the JSON answer
    upload: Path | None = None  # a file to send as a blob (create_blob)


def _fields(**fields: Any) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}


def _image(image: bytes | str) -> str:
    return base64.b64encode(image).decode("ascii") if isinstance(image, (bytes, bytearray)) else image


def _message(message: dict[str, Any]) -> dict[str, Any]:
    if message.get("images"):
        return {**message, "images": [_image(image) for image in message["images"]]}
    return message


def base_url(host: str | None) -> str:
    if host is None:
        return Settings().base_url
    address, port = parse_host(host)
    if ":" in address:
        address = f"[{address}]"
    scheme = "https" if host.strip().lower().startswith("https://") else "http"
    return f"{scheme}://{address}:{port}"


def _security_options(api_key: str | None, ca_cert: str | Path | None, httpx_options: dict[str, Any]
                      ) -> dict[str, Any]:
    """The API key (``Authorization: Bearer``) and the CA to trust for https, from the arguments or
    LOKAL_API_KEY / LOKAL_CA_CERT."""
    options = dict(httpx_options)
    if api_key is None or ca_cert is None:
        settings = Settings()
        api_key = api_key if api_key is not None else settings.api_key
        ca_cert = ca_cert if ca_cert is not None else settings.ca_cert
    if api_key:
        options["headers"] = {"Authorization": f"Bearer {api_key}", **(options.get("headers") or {})}
    if ca_cert and "verify" not in options:
        import ssl

        options["verify"] = ssl.create_default_context(cafile=str(ca_cert))
    return options


def error_from(status: int, text: str) -> LokalError:
    """The lokal error for an error answer (Ollama's ``{"error": "..."}`` or OpenAI's error object)."""
    message = text.strip() or f"HTTP {status}"
    try:
        body = json.loads(text)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            message = str(error.get("message", message))
        elif error:
            message = str(error)
    except ValueError:
        pass
    if status == 404:
        return ModelNotFound("", message)
    if status == 503:
        return ServerBusy(message)
    if status == 499:
        return Cancelled(message)
    if status == 401:
        return Unauthorized(message + " (set LOKAL_API_KEY)")
    if status == 403:
        return Forbidden(message)
    error_object = BadRequest(message) if 400 <= status < 500 else LokalError(message)
    error_object.status = status  # type: ignore[misc]
    return error_object


_END = object()  # SSE's closing ``data: [DONE]``


def _parse_line(kind: Literal["ndjson", "sse"], line: str) -> Any:
    """The object on one streamed line; None to skip the line; _END at the end of an SSE stream.
    An error after the stream began arrives in-band and is raised here."""
    if kind == "sse":
        if not line.startswith("data:"):
            return None
        line = line[len("data:"):].strip()
        if line == "[DONE]":
            return _END
    if not line.strip():
        return None
    item = json.loads(line)
    if isinstance(item, dict) and item.get("error"):
        error = item["error"]
        raise LokalError(str(error.get("message", error)) if isinstance(error, dict) else str(error))
    return item


def _answer(call: _Call, response: httpx.Response) -> Any:
    if call.answer == "exists":
        return response.status_code == 200
    if response.is_error:
        raise error_from(response.status_code, response.text)
    if call.answer == "none":
        return None
    if call.answer == "last_line":
        return json.loads(response.text.strip().splitlines()[-1])
    data = response.json()
    return data[call.pick] if call.pick else data


def _unavailable(url: str, exc: Exception) -> ServerUnavailable:
    return ServerUnavailable(f"no lokal server answers at {url} ({exc}); start one with `lokal serve`")


def file_digest(path: Path) -> str:
    return "sha256:" + file_sha256_hex(path)


class _Endpoints:
    """Every endpoint once; the two clients differ only in how ``_send`` performs a call."""

    def _send(self, call: _Call) -> Any:
        raise NotImplementedError

    # ---- service ----------------------------------------------------------------------------------------

    def version(self) -> Any:
        """The server's version string."""
        return self._send(_Call("GET", "/api/version", pick="version"))

    def health(self) -> Any:
        return self._send(_Call("GET", "/api/health"))

    # ---- generation (Ollama API) ------------------------------------------------------------------------

    def generate(self, model: str, prompt: str | None = None, *, suffix: str | None = None,
                 system: str | None = None, template: str | None = None, context: list[int] | None = None,
                 raw: bool | None = None, format: str | dict[str, Any] | None = None,
                 images: list[bytes | str] | None = None, options: dict[str, Any] | None = None,
                 keep_alive: float | str | None = None, stream: bool = False) -> Any:
        """Complete ``prompt``; without a prompt, load the model (unload it with keep_alive=0)."""
        body = _fields(model=model, prompt=prompt, suffix=suffix, system=system, template=template,
                       context=context, raw=raw, format=format, options=options, keep_alive=keep_alive,
                       images=[_image(image) for image in images] if images else None, stream=stream)
        return self._send(_Call("POST", "/api/generate", body, stream="ndjson" if stream else None))

    def chat(self, model: str, messages: list[dict[str, Any]] | None = None, *,
             tools: list[dict[str, Any]] | None = None, format: str | dict[str, Any] | None = None,
             options: dict[str, Any] | None = None, keep_alive: float | str | None = None,
             stream: bool = False, think: bool | str | None = None) -> Any:
        body = _fields(model=model, messages=[_message(m) for m in messages or []], tools=tools, format=format,
                       options=options, keep_alive=keep_alive, stream=stream, think=think)
        return self._send(_Call("POST", "/api/chat", body, stream="ndjson" if stream else None))

    def embed(self, model: str, input: str | list[str], *, truncate: bool | None = None,
              dimensions: int | None = None, options: dict[str, Any] | None = None,
              keep_alive: float | str | None = None) -> Any:
        body = _fields(model=model, input=input, truncate=truncate, dimensions=dimensions, options=options,
                       keep_alive=keep_alive)
        return self._send(_Call("POST", "/api/embed", body))

    def embeddings(self, model: str, prompt: str, *, options: dict[str, Any] | None = None,
                   keep_alive: float | str | None = None) -> Any:
        """The legacy single-text endpoint: ``{"embedding": [...]}``."""
        body = _fields(model=model, prompt=prompt, options=options, keep_alive=keep_alive)
        return self._send(_Call("POST", "/api/embeddings", body))

    def load(self, model: str, keep_alive: float | str | None = None) -> Any:
        return self.generate(model, keep_alive=keep_alive)

    def stop(self, model: str) -> Any:
        """Unload a model now (``done_reason`` is ``unload``)."""
        return self.generate(model, keep_alive=0)

    # ---- models (Ollama API) ----------------------------------------------------------------------------

    def list(self) -> Any:
        return self._send(_Call("GET", "/api/tags"))

    def show(self, model: str, *, verbose: bool = False) -> Any:
        return self._send(_Call("POST", "/api/show", _fields(model=model, verbose=verbose or None)))

    def ps(self) -> Any:
        return self._send(_Call("GET", "/api/ps"))

    def pull(self, model: str, *, insecure: bool = False, stream: bool = False) -> Any:
        body = {"model": model, "insecure": insecure, "stream": stream}
        return self._send(_Call("POST", "/api/pull", body, stream="ndjson" if stream else None))

    def delete(self, model: str) -> Any:
        return self._send(_Call("DELETE", "/api/delete", {"model": model}, answer="none"))

    def copy(self, source: str, destination: str) -> Any:
        return self._send(_Call("POST", "/api/copy", {"source": source, "destination": destination}, answer="none"))

    def create(self, model: str, *, from_: str | None = None, files: dict[str, str] | None = None,
               adapters: dict[str, str] | None = None, template: str | None = None, system: str | None = None,
               license: str | list[str] | None = None, parameters: dict[str, Any] | None = None,
               messages: list[dict[str, Any]] | None = None, quantize: str | None = None,
               knowledge: dict[str, str] | None = None, draft: str | None = None, stream: bool = False) -> Any:
        body = _fields(model=model, files=files, adapters=adapters, template=template, system=system, license=license,
                       knowledge=knowledge, draft=draft,
                       parameters=parameters, messages=messages, quantize=quantize, stream=stream)
        if from_ is not None:
            body["from"] = from_
        return self._send(_Call("POST", "/api/create", body, stream="ndjson" if stream else None))

    def create_blob(self, path: str | Path) -> Any:
        """Upload a file (a GGUF for ``create(files=...)``); returns its digest."""
        return self._send(_Call("POST", "/api/blobs/", upload=Path(path)))

    def blob_exists(self, digest: str) -> Any:
        return self._send(_Call("HEAD", f"/api/blobs/{digest}", answer="exists"))

    # ---- OpenAI-compatible API --------------------------------------------------------------------------

    def chat_completions(self, model: str, messages: list[dict[str, Any]], *, stream: bool = False,
                         **fields: Any) -> Any:
        """POST /v1/chat/completions; ``fields`` are OpenAI's (temperature, max_tokens, response_format, …)."""
        body = {"model": model, "messages": messages, "stream": stream, **fields}
        return self._send(_Call("POST", "/v1/chat/completions", body, stream="sse" if stream else None))

    def completions(self, model: str, prompt: str, *, stream: bool = False, **fields: Any) -> Any:
        body = {"model": model, "prompt": prompt, "stream": stream, **fields}
        return self._send(_Call("POST", "/v1/completions", body, stream="sse" if stream else None))

    def openai_embeddings(self, model: str, input: str | list[str], **fields: Any) -> Any:
        return self._send(_Call("POST", "/v1/embeddings", {"model": model, "input": input, **fields}))

    def models(self) -> Any:
        """GET /v1/models: ``{"object": "list", "data": [...]}``."""
        return self._send(_Call("GET", "/v1/models"))

    def model(self, model: str) -> Any:
        return self._send(_Call("GET", f"/v1/models/{model}"))

    # ---- Foundry Local management -----------------------------------------------------------------------

    def foundry_models(self) -> Any:
        return self._send(_Call("GET", "/openai/models"))

    def foundry_loaded_models(self) -> Any:
        return self._send(_Call("GET", "/openai/loadedmodels"))

    def foundry_load(self, model: str, ttl: float = 600) -> Any:
        return self._send(_Call("GET", f"/openai/load/{model}", params={"ttl": ttl}, answer="none"))

    def foundry_unload(self, model: str, force: bool = False) -> Any:
        return self._send(_Call("GET", f"/openai/unload/{model}", params={"force": force}, answer="none"))

    def foundry_unload_all(self) -> Any:
        return self._send(_Call("GET", "/openai/unloadall", answer="none"))

    def foundry_status(self) -> Any:
        return self._send(_Call("GET", "/openai/status"))

    def foundry_download(self, model: str) -> Any:
        """Pull through Foundry's endpoint; returns ``{"success", "errorMessage"}``."""
        return self._send(_Call("POST", "/openai/download", {"model": model}, answer="last_line"))


class Client(_Endpoints):
    """A blocking client. ``host`` is ``host[:port]`` or a URL; default LOKAL_HOST."""

    def __init__(self, host: str | None = None, *, timeout: float | None = None, api_key: str | None = None,
                 ca_cert: str | Path | None = None, **httpx_options: Any):
        self.base_url = base_url(host)
        self._http = httpx.Client(base_url=self.base_url,
                                  timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS),
                                  **_security_options(api_key, ca_cert, httpx_options))

    def is_running(self) -> bool:
        """Whether a server answers at this address."""
        try:
            return self._http.get("/", timeout=2.0).status_code == 200
        except httpx.HTTPError:
            return False

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _send(self, call: _Call) -> Any:
        if call.stream:
            return self._stream(call)
        try:
            if call.upload is not None:
                return self._upload(call.upload)
            response = self._http.request(call.method, call.path, json=call.body, params=call.params)
        except httpx.TransportError as exc:
            raise _unavailable(self.base_url, exc) from None
        return _answer(call, response)

    def _upload(self, path: Path) -> str:
        digest = file_digest(path)
        if self._http.head(f"/api/blobs/{digest}").status_code != 200:
            with open(path, "rb") as file:
                chunks = iter(lambda: file.read(UPLOAD_CHUNK_BYTES), b"")
                response = self._http.post(f"/api/blobs/{digest}", content=chunks)
            if response.is_error:
                raise error_from(response.status_code, response.text)
        return digest

    def _stream(self, call: _Call) -> Iterator[Any]:
        assert call.stream is not None
        try:
            with self._http.stream(call.method, call.path, json=call.body, params=call.params) as response:
                if response.is_error:
                    response.read()
                    raise error_from(response.status_code, response.text)
                for line in response.iter_lines():
                    item = _parse_line(call.stream, line)
                    if item is _END:
                        return
                    if item is not None:
                        yield item
        except httpx.TransportError as exc:
            raise _unavailable(self.base_url, exc) from None


class AsyncClient(_Endpoints):
    """The asyncio client: the same methods, awaited; ``await client.chat(..., stream=True)`` gives an
    async iterator."""

    def __init__(self, host: str | None = None, *, timeout: float | None = None, api_key: str | None = None,
                 ca_cert: str | Path | None = None, **httpx_options: Any):
        self.base_url = base_url(host)
        self._http = httpx.AsyncClient(base_url=self.base_url,
                                       timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT_SECONDS),
                                       **_security_options(api_key, ca_cert, httpx_options))

    async def is_running(self) -> bool:
        try:
            return (await self._http.get("/", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def _send(self, call: _Call) -> Any:
        if call.stream:
            return self._stream(call)
        try:
            if call.upload is not None:
                return await self._upload(call.upload)
            response = await self._http.request(call.method, call.path, json=call.body, params=call.params)
        except httpx.TransportError as exc:
            raise _unavailable(self.base_url, exc) from None
        return _answer(call, response)

    async def _upload(self, path: Path) -> str:
        digest = await anyio.to_thread.run_sync(file_digest, path)
        if (await self._http.head(f"/api/blobs/{digest}")).status_code != 200:
            async def chunks() -> AsyncIterator[bytes]:
                async with await anyio.open_file(path, "rb") as file:
                    while chunk := await file.read(UPLOAD_CHUNK_BYTES):
                        yield chunk

            response = await self._http.post(f"/api/blobs/{digest}", content=chunks())
            if response.is_error:
                raise error_from(response.status_code, response.text)
        return digest

    async def _stream(self, call: _Call) -> AsyncIterator[Any]:
        assert call.stream is not None
        try:
            async with self._http.stream(call.method, call.path, json=call.body, params=call.params) as response:
                if response.is_error:
                    await response.aread()
                    raise error_from(response.status_code, response.text)
                async for line in response.aiter_lines():
                    item = _parse_line(call.stream, line)
                    if item is _END:
                        return
                    if item is not None:
                        yield item
        except httpx.TransportError as exc:
            raise _unavailable(self.base_url, exc) from None


__all__ = ["AsyncClient", "Client", "error_from"]
