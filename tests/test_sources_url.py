"""Pulls of a GGUF from an http(s) URL (served by a local server) and from a local file path."""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler

import pytest
from gguf import LlamaFileType

from lokal.config import Settings
from lokal.errors import BadRequest, DigestMismatch, PullError
from lokal.store import Store
from lokal.store.sources import pull
from lokal.store.sources.base import name_from_file
from fakes.models import file_type_name, sha256_of, smollm2_gguf, tiny_gguf
from fakes.server import FakeServer, Payload

FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DERIVED = "smollm2-135m-instruct.q4_1:latest"


class FileServer(FakeServer):
    """Plain static files; ``with_etag`` paths also send their sha256 as ETag, as an LFS CDN does."""

    def __init__(self) -> None:
        super().__init__()
        self.files: dict[str, Payload] = {}
        self.with_etag: set[str] = set()

    def route(self, request: BaseHTTPRequestHandler, method: str, path: str) -> None:
        if path.startswith("/hub/"):  # like huggingface.co/.../resolve/...: a redirect that names the LFS file
            payload = self.files[path.replace("/hub/", "/models/", 1)]
            return self.send_redirect(request, f"{self.url}{path.replace('/hub/', '/models/', 1)}", headers={
                "X-Linked-Etag": f'"{payload.sha256}"', "X-Linked-Size": str(payload.size)})
        payload = self.files.get(path)
        if payload is None:
            return self.send_json(request, 404, b"not found", content_type="text/plain")
        headers = {"ETag": f'"{payload.sha256}"'} if path in self.with_etag else {}
        self.send_payload(request, payload, headers)


@pytest.fixture
def server():
    with FileServer() as files:
        files.files[f"/models/{FILE}"] = Payload(path=smollm2_gguf())
        files.files["/models/etag/" + FILE] = Payload(path=smollm2_gguf())
        files.with_etag.add("/models/etag/" + FILE)
        files.files["/models/page.gguf"] = Payload(data=b"<html>please log in</html>")
        yield files


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(tmp_path / "models")


def settings() -> Settings:
    return Settings(environ={})


def test_url_pull_derives_the_name_from_the_file(server, store):
    pulling = pull(store, f"{server.url}/models/{FILE}", settings())
    assert pulling.name.display == DERIVED
    events = list(pulling)

    expected = sha256_of(smollm2_gguf())
    entry = store.get(DERIVED)
    assert entry.manifest.layer("model").digest == expected
    assert sha256_of(store.blobs.path(expected)) == expected
    config = json.loads(store.blobs.path(entry.manifest.config.digest).read_bytes())
    assert config["file_type"] == file_type_name(smollm2_gguf())
    assert events[-1].status == "success"
    assert [e.total for e in events if e.status == f"pulling {FILE}"][-1] == smollm2_gguf().stat().st_size


def test_url_pull_into_a_given_name(server, store):
    pulling = pull(store, f"{server.url}/models/{FILE}", settings(), target="team/tiny-chat:v1")
    list(pulling)
    assert store.get("team/tiny-chat:v1").manifest.layer("model").digest == sha256_of(smollm2_gguf())
    assert not store.exists(DERIVED)


def test_url_with_a_known_sha256_resumes_a_broken_download(server, store):
    url = f"{server.url}/models/etag/{FILE}"
    server.drop_after(f"/models/etag/{FILE}", 3_000_000)
    with pytest.raises(PullError) as error:
        list(pull(store, url, settings()))
    assert server.url.removeprefix("http://") in error.value.message and "resume" in error.value.message
    [partial] = store.blobs.root.glob("*-partial")
    kept = partial.stat().st_size

    list(pull(store, url, settings()))

    assert server.seen("GET", f"/models/etag/{FILE}")[-1].range == f"bytes={kept}-"
    assert store.get(DERIVED).manifest.layer("model").digest == sha256_of(smollm2_gguf())


def test_sha256_named_by_a_redirect_makes_the_download_resumable(server, store):
    server.drop_after(f"/models/{FILE}", 3_000_000)
    with pytest.raises(PullError, match="resume"):
        list(pull(store, f"{server.url}/hub/{FILE}", settings()))
    [partial] = store.blobs.root.glob("*-partial")
    assert partial.name == f"sha256-{sha256_of(smollm2_gguf()).removeprefix('sha256:')}-partial"
    kept = partial.stat().st_size

    list(pull(store, f"{server.url}/hub/{FILE}", settings()))
    assert server.seen("GET", f"/models/{FILE}")[-1].range == f"bytes={kept}-"
    assert store.get(DERIVED).manifest.layer("model").digest == sha256_of(smollm2_gguf())


def test_resume_from_a_server_that_ignores_range_skips_what_is_kept(server, store):
    url = f"{server.url}/models/etag/{FILE}"
    server.drop_after(f"/models/etag/{FILE}", 3_000_000)
    with pytest.raises(PullError):
        list(pull(store, url, settings()))
    [partial] = store.blobs.root.glob("*-partial")
    kept = partial.stat().st_size
    server.honors_range = False

    list(pull(store, url, settings()))

    again = server.seen("GET", f"/models/etag/{FILE}")[-1]
    assert again.range == f"bytes={kept}-" and again.num_body_bytes == smollm2_gguf().stat().st_size
    assert sha256_of(store.blobs.path(sha256_of(smollm2_gguf()))) == sha256_of(smollm2_gguf())


def test_url_without_a_known_sha256_starts_over_and_leaves_no_partial(server, store):
    server.drop_after(f"/models/{FILE}", 3_000_000)
    with pytest.raises(PullError):
        list(pull(store, f"{server.url}/models/{FILE}", settings()))
    assert list(store.blobs.root.glob("*-partial")) == []

    list(pull(store, f"{server.url}/models/{FILE}", settings()))
    assert server.seen("GET", f"/models/{FILE}")[-1].range is None
    assert store.get(DERIVED).manifest.layer("model").digest == sha256_of(smollm2_gguf())


def test_url_sha256_fragment_is_checked(server, store):
    wrong = "ab" * 32
    with pytest.raises(DigestMismatch):
        list(pull(store, f"{server.url}/models/{FILE}#sha256={wrong}", settings()))
    assert store.blobs.all_digests() == set() and store.list().models == []
    right = sha256_of(smollm2_gguf()).removeprefix("sha256:")
    list(pull(store, f"{server.url}/models/{FILE}#sha256={right}", settings()))
    assert store.exists(DERIVED)


def test_url_that_is_not_a_gguf_is_refused(server, store):
    with pytest.raises(PullError, match="not a GGUF"):
        list(pull(store, f"{server.url}/models/page.gguf", settings()))
    assert store.list().models == []


def test_url_not_found_is_a_pull_error(server, store):
    with pytest.raises(PullError, match="404"):
        list(pull(store, f"{server.url}/models/missing.gguf", settings()))


def test_local_file_by_absolute_and_relative_path(tmp_path, store, monkeypatch):
    model = tiny_gguf(tmp_path / "Tiny-Chat.Q8_0.gguf", file_type=LlamaFileType.MOSTLY_Q8_0)
    list(pull(store, str(model), settings()))
    entry = store.get("tiny-chat.q8_0")
    assert entry.manifest.layer("model").digest == sha256_of(model)
    config = json.loads(store.blobs.path(entry.manifest.config.digest).read_bytes())
    assert config["file_type"] == file_type_name(model)
    assert model.exists()  # copied, not moved

    monkeypatch.chdir(tmp_path)
    list(pull(store, "./Tiny-Chat.Q8_0.gguf", settings(), target="tiny:local"))
    assert store.get("tiny:local").manifest.layer("model").digest == sha256_of(model)


def test_local_file_that_is_not_gguf_or_missing_is_a_bad_request(tmp_path, store):
    text = tmp_path / "notes.gguf"
    text.write_text("not a model")
    with pytest.raises(BadRequest, match="not a GGUF"):
        pull(store, str(text), settings())
    with pytest.raises(BadRequest, match="not a file"):
        pull(store, str(tmp_path / "missing.gguf"), settings())
    assert store.list().models == []


@pytest.mark.parametrize("file_name, expected", [
    ("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct.q4_1:latest"),
    ("My Model (v2)!.gguf", "my-model-v2:latest"),
    ("qwen2.5-0.5b-instruct-q4_k_m.gguf", "qwen2.5-0.5b-instruct-q4_k_m:latest"),
    ("..weird..name...GGUF", "weird.name:latest"),
    ("!!!.gguf", "model:latest"),
    ("x" * 200 + ".gguf", "x" * 80 + ":latest"),
])
def test_name_from_file(file_name, expected):
    assert name_from_file(file_name).display == expected
