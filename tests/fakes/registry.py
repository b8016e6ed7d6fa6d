"""A fake Ollama registry speaking the pull half of the Docker registry v2 protocol, as registry.ollama.ai does:

- ``GET /v2/<namespace>/<model>/manifests/<tag>`` → the manifest JSON (404 MANIFEST_UNKNOWN if unknown);
- ``GET /v2/<namespace>/<model>/blobs/<digest>`` → 307 to ``/cdn/<digest>`` (the real one redirects to a CDN),
  which serves the bytes with Range support.

``publish`` builds a manifest the way Ollama does (config blob + model/template/params/license layers) from
real files, computing digests here, independently of lokal.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from pathlib import Path

from .server import FakeServer, Payload

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
OLLAMA_TYPES = {
    "model": "application/vnd.ollama.image.model",
    "template": "application/vnd.ollama.image.template",
    "system": "application/vnd.ollama.image.system",
    "params": "application/vnd.ollama.image.params",
    "license": "application/vnd.ollama.image.license",
}


class FakeRegistry(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.manifests: dict[tuple[str, str, str], bytes] = {}
        self.blobs: dict[str, Payload] = {}

    def publish(self, name: str, model: Path, *, template: str | None = None, params: dict | None = None,
                system: str | None = None, license: str | None = None) -> dict:
        """Serve a model under ``namespace/model:tag``; returns the manifest as a dict."""
        repository, _, tag = name.partition(":")
        namespace, _, model_name = repository.rpartition("/")
        layers = [self._add(OLLAMA_TYPES["model"], Payload(path=model))]
        for kind, text in (("template", template), ("system", system), ("license", license)):
            if text is not None:
                layers.append(self._add(OLLAMA_TYPES[kind], Payload(data=text.encode())))
        if params is not None:
            layers.append(self._add(OLLAMA_TYPES["params"], Payload(data=json.dumps(params).encode())))
        config = json.dumps({"model_format": "gguf", "model_family": "llama", "model_families": ["llama"],
                             "model_type": "135M", "file_type": "Q4_1", "architecture": "amd64", "os": "linux",
                             "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]}})
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE,
                    "config": self._add(CONFIG_TYPE, Payload(data=config.encode())), "layers": layers}
        self.manifests[(namespace or "library", model_name, tag or "latest")] = json.dumps(manifest).encode()
        return manifest

    def corrupt(self, digest: str) -> None:
        """Serve other bytes (same length) under ``digest``, as a broken mirror would."""
        original = self.blobs[digest]
        data = bytearray(original.read(0, original.size))
        data[len(data) // 2] ^= 0xFF
        self.blobs[digest] = Payload(data=bytes(data))

    def blob_gets(self, digest: str) -> list:
        return self.seen("GET", f"/cdn/{digest}")

    def _add(self, media_type: str, payload: Payload) -> dict:
        digest = payload.digest
        self.blobs[digest] = payload
        return {"mediaType": media_type, "digest": digest, "size": payload.size}

    def route(self, request: BaseHTTPRequestHandler, method: str, path: str) -> None:
        parts = path.strip("/").split("/")
        if len(parts) == 5 and parts[0] == "v2" and parts[3] == "manifests":
            manifest = self.manifests.get((parts[1], parts[2], parts[4]))
            if manifest is None:
                body = {"errors": [{"code": "MANIFEST_UNKNOWN", "message": "manifest unknown"}]}
                return self.send_json(request, 404, json.dumps(body).encode())
            return self.send_json(request, 200, manifest, content_type=MANIFEST_TYPE)
        if len(parts) == 5 and parts[0] == "v2" and parts[3] == "blobs" and parts[4] in self.blobs:
            return self.send_redirect(request, f"{self.url}/cdn/{parts[4]}")
        if len(parts) == 2 and parts[0] == "cdn" and parts[1] in self.blobs:
            return self.send_payload(request, self.blobs[parts[1]])
        body = {"errors": [{"code": "BLOB_UNKNOWN", "message": "blob unknown"}]}
        self.send_json(request, 404, json.dumps(body).encode())
