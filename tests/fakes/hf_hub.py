"""A fake Hugging Face hub answering the paths huggingface_hub and a GGUF download use:

- ``GET /api/models/<owner>/<repo>[/revision/<rev>]`` → repo info with ``siblings`` (file name, size, LFS
  sha256 when ``?blobs=true``), like the real API; unknown repo → 404 with ``X-Error-Code: RepoNotFound``;
- ``HEAD``/``GET /<owner>/<repo>/resolve/<rev>/<file>`` → the file with ``X-Repo-Commit``, ``ETag``,
  ``X-Linked-Etag`` (the sha256), ``X-Linked-Size``, Range support; unknown file → 404 ``EntryNotFound``.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

from .server import FakeServer, Payload

COMMIT = "0f3b8a2c9d1e4f5a6b7c8d9e0f1a2b3c4d5e6f70"


class FakeHub(FakeServer):
    def __init__(self) -> None:
        super().__init__()
        self.repos: dict[str, dict[str, Payload]] = {}
        self.licenses: dict[str, str] = {}

    def add_file(self, repo: str, filename: str, payload: Payload) -> None:
        self.repos.setdefault(repo, {})[filename] = payload

    def route(self, request: BaseHTTPRequestHandler, method: str, path: str) -> None:
        parts = [unquote(p) for p in path.strip("/").split("/")]
        if parts[:2] == ["api", "models"] and len(parts) in (4, 6):
            return self._info(request, f"{parts[2]}/{parts[3]}", with_blobs="blobs=true" in request.path)
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(request, f"{parts[0]}/{parts[1]}", "/".join(parts[4:]))
        self.send_json(request, 404, b'{"error":"Not Found"}')

    def _info(self, request: BaseHTTPRequestHandler, repo: str, with_blobs: bool) -> None:
        files = self.repos.get(repo)
        if files is None:
            return self._not_found(request, "RepoNotFound", "Repository not found")
        siblings = []
        for name, payload in files.items():
            sibling: dict = {"rfilename": name}
            if with_blobs:
                sibling.update(size=payload.size, blobId="0" * 40,
                               lfs={"size": payload.size, "sha256": payload.sha256, "pointerSize": 134})
            siblings.append(sibling)
        body = {"_id": "fake", "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": COMMIT,
                "private": False, "disabled": False, "gated": False, "tags": ["gguf"], "siblings": siblings}
        if repo in self.licenses:
            body["cardData"] = {"license": self.licenses[repo]}
        self.send_json(request, 200, json.dumps(body).encode())

    def _resolve(self, request: BaseHTTPRequestHandler, repo: str, filename: str) -> None:
        files = self.repos.get(repo)
        if files is None:
            return self._not_found(request, "RepoNotFound", "Repository not found")
        payload = files.get(filename)
        if payload is None:
            return self._not_found(request, "EntryNotFound", "Entry not found")
        self.send_payload(request, payload, headers={
            "X-Repo-Commit": COMMIT, "ETag": f'"{payload.sha256}"', "X-Linked-Etag": f'"{payload.sha256}"',
            "X-Linked-Size": str(payload.size)})

    def _not_found(self, request: BaseHTTPRequestHandler, code: str, message: str) -> None:
        self.send_json(request, 404, json.dumps({"error": message}).encode(),
                       headers={"X-Error-Code": code, "X-Error-Message": message})
