"""Pull from an Ollama registry (registry.ollama.ai or anything speaking its protocol).

``GET /v2/<namespace>/<model>/manifests/<tag>`` gives a Docker v2 manifest; every blob it names (config and
layers) comes from ``GET /v2/<namespace>/<model>/blobs/<digest>``, which the real registry redirects to a
CDN. Blobs are verified against their digests and stored as they are; the manifest is stored last.
"""

from __future__ import annotations

from typing import Iterator
from urllib.parse import urlsplit

import httpx

from lokal.errors import ModelNotFound, PullError, StoreError
from lokal.store.manifests import MANIFEST_MEDIA_TYPE, Manifest
from lokal.store.names import DEFAULT_HOST, ModelName
from lokal.store.sources.base import Progress, describe_http_error, download_blob, http_client
from lokal.store.store import Store


class RegistrySource:
    """``remote`` on the registry at ``base_url`` (e.g. ``https://registry.ollama.ai``)."""

    def __init__(self, base_url: str, remote: ModelName, *, insecure: bool = False, allow_private: bool = True):
        self.base_url = base_url.rstrip("/")
        self.remote = remote
        self.insecure = insecure
        self.allow_private = allow_private
        self.host = urlsplit(self.base_url).netloc or self.base_url

    @classmethod
    def for_name(cls, remote: ModelName, default_registry: str, *, insecure: bool = False,
                 allow_private: bool = True) -> RegistrySource:
        """Names on the default host go to ``LOKAL_REGISTRY`` (configured, so trusted); ``host/namespace/model``
        to that host (over plain HTTP only when ``insecure``, as ``ollama pull --insecure``), which a server
        reaches only at a public address unless ``allow_private``."""
        if remote.host.lower() == DEFAULT_HOST:
            return cls(default_registry, remote, insecure=insecure)
        scheme = "http" if insecure else "https"
        return cls(f"{scheme}://{remote.host}", remote, insecure=insecure, allow_private=allow_private)

    def _url(self, kind: str, reference: str) -> str:
        return f"{self.base_url}/v2/{self.remote.namespace}/{self.remote.model}/{kind}/{reference}"

    def pull(self, store: Store, name: ModelName) -> Iterator[Progress]:
        yield Progress("pulling manifest")
        with http_client(insecure=self.insecure, allow_private=self.allow_private) as client, store.writing():
            manifest = self._fetch_manifest(client)
            for layer in (manifest.config, *manifest.layers):
                yield from download_blob(client, self._url("blobs", layer.digest), store.blobs,
                                         digest=layer.digest, size=layer.size, host=self.host,
                                         what=f"blob {layer.digest} of {self.remote.display}")
            yield Progress("verifying sha256 digest")
            yield Progress("writing manifest")
            store.write_manifest(name, manifest)
        yield Progress("success")

    def _fetch_manifest(self, client: httpx.Client) -> Manifest:
        url = self._url("manifests", self.remote.tag)
        try:
            response = client.get(url, headers={"Accept": MANIFEST_MEDIA_TYPE})
        except httpx.HTTPError as exc:
            raise PullError(f"pull model manifest from {self.host} failed: {describe_http_error(exc)}") from exc
        if response.status_code == 404:
            raise ModelNotFound(self.remote.display, f"pull model manifest: file does not exist: "
                                                     f"{self.remote.display} is not in the registry at {self.host}")
        if response.status_code in (401, 403):
            raise PullError(f"pull model manifest: {self.host} refused access to {self.remote.display} "
                            f"(HTTP {response.status_code})")
        if response.status_code != 200:
            raise PullError(f"pull model manifest from {self.host} failed: HTTP {response.status_code}")
        try:
            return Manifest.from_json(response.content)
        except StoreError as exc:
            raise PullError(f"{self.host} sent an invalid manifest for {self.remote.display}: {exc.message}") from None
