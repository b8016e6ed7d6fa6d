"""What every pull source shares: the progress events, the ``Source`` protocol, a resumable blob download
and the last step that turns a stored GGUF blob into a model (config blob, small layers, manifest).

Order is what keeps the store whole: blobs first, each verified and renamed into place, the manifest last.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Generator, Iterator, Protocol
from urllib.parse import unquote, urlsplit

import httpx

from lokal import __version__
from lokal.errors import PullError
from lokal.store.blobs import BlobStore, BlobWriter
from lokal.store.manifests import CONFIG_MEDIA_TYPE, LAYER_KINDS, Layer, Manifest, config_blob
from lokal.store.names import MAX_PART_LENGTH, ModelName
from lokal.store.store import Store

CHUNK_SIZE = 1 << 20
PROGRESS_STEP = 1 << 20  # bytes between two progress events of one download
GGUF_MAGIC = b"GGUF"
USER_AGENT = f"lokal/{__version__}"


@dataclass
class Progress:
    """One event of Ollama's pull stream: ``pulling manifest``, ``pulling <digest[7:19]>`` with
    ``total``/``completed`` bytes, ``verifying sha256 digest``, ``writing manifest``, ``success``."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object Ollama's ``/api/pull`` streams (absent fields left out)."""
        return {key: value for key, value in vars(self).items() if value is not None}


class Source(Protocol):
    """Somewhere a model comes from. ``pull`` stores it under ``name`` and reports progress as it goes."""

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]: ...


def pulling_status(digest: str) -> str:
    return f"pulling {digest[7:19]}"


def http_client(*, insecure: bool = False, allow_private: bool = True) -> httpx.Client:
    """Redirects are followed: registries and the hub send blob downloads on to a CDN. With
    ``allow_private=False`` every connection (redirects too) must reach a public address (SSRF guard)."""
    timeout = httpx.Timeout(30.0, read=120.0)
    transport = None
    if not allow_private:
        from lokal.security.ssrf import public_only_transport

        transport = public_only_transport(verify=not insecure)
    return httpx.Client(follow_redirects=True, timeout=timeout, verify=not insecure, transport=transport,
                        headers={"User-Agent": USER_AGENT})


def describe_http_error(exc: httpx.HTTPError) -> str:
    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code} {exc.response.reason_phrase}".rstrip()
    if isinstance(exc, httpx.ConnectError):
        return f"cannot connect ({exc})" if str(exc) else "cannot connect"
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    return str(exc) or type(exc).__name__


def download_blob(client: httpx.Client, url: str, blobs: BlobStore, *, digest: str | None, size: int | None,
                  host: str, what: str, headers: dict[str, str] | None = None,
                  ) -> Generator[Progress, None, str]:
    """Download ``url`` into the store and return its digest (``yield from`` gives it back).

    With a known digest the download resumes a partial file with a Range request, is verified, and
    happens once however many pulls ask for it at the same time (the second finds the blob stored)."""
    lock_key = digest or "url-" + hashlib.sha256(url.encode()).hexdigest()[:32]
    with blobs.lock(lock_key):
        if digest is not None and blobs.exists(digest):
            stored = blobs.size(digest)
            yield Progress(pulling_status(digest), digest, stored, stored)
            return digest
        with blobs.writer(digest) as writer:
            try:
                yield from _stream_into(writer, client, url, digest=digest, size=size, headers=headers)
            except httpx.HTTPError as exc:
                kept = f"; {writer.offset} bytes kept, pull again to resume" if writer.is_resumable else ""
                raise PullError(f"pull from {host} failed while downloading {what}: "
                                f"{describe_http_error(exc)}{kept}") from exc
            return writer.commit()


def _stream_into(writer: BlobWriter, client: httpx.Client, url: str, *, digest: str | None, size: int | None,
                 headers: dict[str, str] | None) -> Iterator[Progress]:
    status = pulling_status(digest) if digest else f"pulling {file_name_of(url)}"
    already = writer.offset
    if size is not None and already >= size:
        return  # an earlier pull got every byte but stopped before committing; commit verifies them
    # Identity: the bytes on the wire are the blob, so sizes, ranges and resuming all count the same bytes.
    request_headers = {**(headers or {}), "Accept-Encoding": "identity"}
    if already:
        request_headers["Range"] = f"bytes={already}-"
    with client.stream("GET", url, headers=request_headers) as response:
        if already and response.status_code == 416:
            return  # nothing left to send: commit verifies the partial, and discards it if it is wrong
        response.raise_for_status()
        if response.status_code == 206 and not response.headers.get("Content-Range", "").startswith(
                f"bytes {already}-"):
            raise PullError(f"{url} answered a resume from byte {already} with "
                            f"{response.headers.get('Content-Range')!r}")
        # A server that ignores Range sends everything again: skip what the partial file already has.
        num_to_skip = already if response.status_code == 200 else 0
        total = size
        if total is None and "Content-Length" in response.headers:
            total = int(response.headers["Content-Length"]) + (already - num_to_skip)
        yield Progress(status, digest, total, already)
        reported = already
        # Chunks as they arrive (no re-chunking buffer), so a broken connection loses no received byte.
        for chunk in response.iter_bytes():
            if num_to_skip:
                skipped = min(num_to_skip, len(chunk))
                chunk, num_to_skip = chunk[skipped:], num_to_skip - skipped
                if not chunk:
                    continue
            writer.write(chunk)
            if writer.offset - reported >= PROGRESS_STEP:
                reported = writer.offset
                yield Progress(status, digest, total, reported)
        if writer.offset != reported:
            yield Progress(status, digest, total, writer.offset)


def write_gguf_model(store: Store, name: ModelName, model_digest: str, *, origin: str,
                     extra_layers: dict[str, bytes] | None = None) -> Iterator[Progress]:
    """Finish a pull of a single GGUF file already in the store: config blob from its metadata, the small
    layers the source provides (template, system, params, license), then the manifest."""
    from lokal.store.gguf_info import read_details  # numpy-heavy; only pulls need it

    model_path = store.blobs.plain_path(model_digest)
    with open(model_path, "rb") as file:
        if file.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise PullError(f"{origin} is not a GGUF file; lokal runs GGUF models")
    details = read_details(model_path)
    model_layer = Layer(LAYER_KINDS["model"], model_digest, store.blobs.size(model_digest))
    layers = [model_layer]
    for kind, data in (extra_layers or {}).items():
        layers.append(Layer(LAYER_KINDS[kind], store.blobs.add_bytes(data), len(data)))
    config = config_blob("gguf", details.family, details.families, details.parameter_size,
                         details.quantization_level, [layer.digest for layer in layers])
    manifest = Manifest(Layer(CONFIG_MEDIA_TYPE, store.blobs.add_bytes(config), len(config)), layers)
    yield Progress("verifying sha256 digest")
    yield Progress("writing manifest")
    store.write_manifest(name, manifest)
    yield Progress("success")


def file_name_of(url: str) -> str:
    return unquote(PurePosixPath(urlsplit(url).path).name) or urlsplit(url).netloc


_NOT_IN_NAMES = re.compile(r"[^a-z0-9_.\-]+")


def name_from_file(file_name: str) -> ModelName:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` → ``smollm2-135m-instruct.q4_1:latest``."""
    stem = file_name[:-len(".gguf")] if file_name.lower().endswith(".gguf") else file_name
    model = _NOT_IN_NAMES.sub("-", stem.lower())
    model = re.sub(r"\.{2,}", ".", model).strip("-._")[:MAX_PART_LENGTH].rstrip("-._")
    return ModelName.parse(model or "model")
