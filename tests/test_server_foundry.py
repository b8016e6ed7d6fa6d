"""Foundry Local's management endpoints, called the way its Python SDK (FoundryLocalManager) calls them:
GETs with query parameters, and a download whose progress lines end with one JSON object."""

from __future__ import annotations

import json

import httpx
import pytest
from server_fixture import MODEL, live_server, model_store  # noqa: F401


@pytest.fixture(scope="module")
def http(live_server) -> httpx.Client:
    with httpx.Client(base_url=live_server.url, timeout=300) as client:
        yield client


def download(http: httpx.Client, model: object) -> dict:
    """The SDK's post_with_progress: lines up to the first '{' are progress; the rest is the result."""
    final_json = ""
    with http.stream("POST", "/openai/download", json={"model": model, "token": None, "IgnorePipeReport": True}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if final_json or line.startswith("{"):
                final_json += line
    return json.loads(final_json)


def loaded(http: httpx.Client) -> list[str]:
    return http.get("/openai/loadedmodels").json()


def test_status_names_the_model_directory(http, live_server):
    status = http.get("/openai/status").json()
    assert status["modelDirPath"] == str(live_server.models)
    assert status["endpoints"] == [live_server.url]


def test_models_lists_the_store(http):
    assert "smollm2:latest" in http.get("/openai/models").json()


def test_load_with_ttl_then_unload(http):
    assert http.get(f"/openai/load/{MODEL}", params={"ttl": 600}).status_code == 200
    assert loaded(http) == ["smollm2:latest"]
    (running,) = http.get("/api/ps").json()["models"]
    assert running["expires_at"] > "2000"  # an expiry, not "forever"
    assert http.get(f"/openai/unload/{MODEL}", params={"force": False}).status_code == 200
    assert loaded(http) == []


def test_unload_all(http):
    http.get(f"/openai/load/{MODEL}").raise_for_status()
    assert loaded(http) == ["smollm2:latest"]
    assert http.get("/openai/unloadall").status_code == 200
    assert loaded(http) == []


def test_load_of_a_model_not_in_the_store_is_a_404(http):
    answer = http.get("/openai/load/no-such-model")
    assert answer.status_code == 404 and "not found" in answer.json()["error"]


def test_download_reports_success_or_the_error(http):
    entry = {"Name": MODEL, "Uri": "azureml://registries/x/models/y", "Publisher": "x",
             "ProviderType": "AzureFoundryLocal", "PromptTemplate": None}
    assert download(http, entry) == {"success": True, "errorMessage": None}
    failed = download(http, "not a valid name!")
    assert failed["success"] is False and "invalid model name" in failed["errorMessage"]
