"""Pull a GGUF file from an ``http(s)://`` URL or a local path.

A URL download resumes with a Range request when its sha256 is known beforehand: from a ``#sha256=<hex>``
fragment on the URL, or from the ``X-Linked-Etag``/``ETag`` a CDN or the Hugging Face hub sends (the
sha256 of an LFS file). Without one the bytes are hashed as they arrive and a broken download starts over.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import httpx

from lokal.errors import BadRequest, PullError
from lokal.store.names import ModelName
from lokal.store.sources.base import (
    GGUF_MAGIC, Progress, describe_http_error, download_blob, file_name_of, http_client, name_from_file,
    pulling_status, write_gguf_model,
)
from lokal.store.store import Store

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_FRAGMENT = re.compile(r"sha256=([0-9a-fA-F]{64})")


def default_name_for_url(url: str) -> ModelName:
    return name_from_file(file_name_of(url))


class URLSource:
    def __init__(self, url: str, *, insecure: bool = False, allow_private: bool = True):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise BadRequest(f"not an http(s) URL: {url!r}")
        match = _FRAGMENT.fullmatch(parts.fragment)
        self.expected_digest = "sha256:" + match.group(1).lower() if match else None
        self.url = urlunsplit(parts._replace(fragment=""))
        self.host = parts.netloc
        self.insecure = insecure
        self.allow_private = allow_private  # False for pulls a remote caller asks a server for (SSRF)

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]:
        with http_client(insecure=self.insecure, allow_private=self.allow_private) as client, store.writing():
            digest, size = self._probe(client)
            model_digest = yield from download_blob(client, self.url, store.blobs, digest=digest, size=size,
                                                    host=self.host, what=file_name_of(self.url))
            yield from write_gguf_model(store, name, model_digest, origin=self.url)

    def _probe(self, client: httpx.Client) -> tuple[str | None, int | None]:
        """(sha256 digest if the server or the URL tells it, size if known) from a HEAD request."""
        try:
            response = client.head(self.url, headers={"Accept-Encoding": "identity"})
        except httpx.HTTPError as exc:
            raise PullError(f"pull from {self.host} failed: {describe_http_error(exc)}") from exc
        if response.status_code == 404:
            raise PullError(f"pull from {self.host} failed: {file_name_of(self.url)} does not exist (HTTP 404)")
        if response.status_code >= 400 and response.status_code != 405:  # 405: HEAD not allowed, GET will tell
            raise PullError(f"pull from {self.host} failed: HTTP {response.status_code}")
        # The hub names the LFS file in the redirect it answers with, before the CDN's own headers.
        headers = [r.headers for r in (*response.history, response)]
        linked_etag = next((h["X-Linked-Etag"] for h in headers if "X-Linked-Etag" in h), None)
        linked_size = next((h["X-Linked-Size"] for h in headers if "X-Linked-Size" in h), None)
        digest = self.expected_digest
        if digest is None:
            etag = (linked_etag or response.headers.get("ETag") or "").removeprefix("W/").strip('"').lower()
            digest = "sha256:" + etag if _SHA256_HEX.fullmatch(etag) else None
        size_text = linked_size or (response.headers.get("Content-Length") if response.status_code < 300 else None)
        return digest, int(size_text) if size_text and size_text.isdigit() else None


class FileSource:
    """A GGUF file on this machine, copied into the store (read once, hashed while copying)."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        try:
            with open(self.path, "rb") as file:
                is_gguf = file.read(len(GGUF_MAGIC)) == GGUF_MAGIC
        except OSError as exc:
            raise BadRequest(f"cannot read {path}: {exc.strerror or exc}") from None
        if not is_gguf:
            raise BadRequest(f"{path} is not a GGUF file; lokal runs GGUF models")

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]:
        size = self.path.stat().st_size
        status = f"copying {self.path.name}"
        yield Progress(status, None, size, 0)
        with store.writing():
            try:
                digest = store.blobs.add_file(self.path)
            except OSError as exc:
                raise BadRequest(f"cannot read {self.path}: {exc.strerror or exc}") from None
            yield Progress(pulling_status(digest), digest, size, size)
            yield from write_gguf_model(store, name, digest, origin=str(self.path))

