"""Operations through a real `lokal serve`: Prometheus metrics that move with real requests (parsed with
prometheus_client's own parser, compared with the usage the official clients report), request ids, JSON
access logs, /ready with LOKAL_PRELOAD and `lokal serve --preload`, and the Grafana dashboard's queries
naming metrics the server really exports."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_fixture import MODEL, free_port, live_server, model_store  # noqa: F401

# One server for the module: preloads the model, logs JSON.
SERVER_ENV = {"preload": MODEL, "log_format": "json"}
OPTIONS = {"temperature": 0, "num_predict": 6}
DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "lokal-dashboard.json"
NUM_SLOTS, CONTEXT_LENGTH = 4, 1024  # what server_fixture starts every server with


def scrape(url: str, path: str = "/metrics") -> dict[tuple[str, frozenset], float]:
    response = httpx.get(url + path, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of every sample called ``name`` whose labels include ``labels`` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


@pytest.fixture(scope="module")
def ready_server(live_server):
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        response = httpx.get(live_server.url + "/ready", timeout=10)
        if response.status_code == 200:
            return live_server
        assert response.status_code == 503, response.text
        time.sleep(0.2)
    raise AssertionError(f"/ready never answered 200\n{live_server.log()}")


def test_ready_after_preload_with_the_model_loaded(ready_server):
    body = httpx.get(ready_server.url + "/ready", timeout=10).json()
    assert body["status"] == "ready"
    running = [m["name"] for m in httpx.get(ready_server.url + "/api/ps", timeout=10).json()["models"]]
    assert running and running[0].startswith(MODEL)


def test_metrics_count_requests_and_tokens_as_the_clients_report_them(ready_server):
    url = ready_server.url
    before = scrape(url)
    client = ollama.Client(host=url, timeout=300)
    generated = prompt = 0
    answers = [client.generate(MODEL, f"Name a colour, number {i}.", options=OPTIONS) for i in range(3)]
    chunks = list(client.chat(MODEL, [{"role": "user", "content": "Say hi."}], stream=True, options=OPTIONS))
    for answer in [*answers, chunks[-1]]:
        generated += answer.eval_count
        prompt += answer.prompt_eval_count
    with pytest.raises(ollama.ResponseError):
        client.generate("no-such-model", "hello")
    middle = scrape(url)
    oai = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    completion = oai.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Hello"}],
                                             max_tokens=5, temperature=0)
    generated += completion.usage.completion_tokens
    assert httpx.get(url + "/no/such/path", timeout=10).status_code == 404
    after = scrape(url)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("lokal_http_requests_total", api="ollama", route="/api/generate", method="POST", status="200") == 3
    assert delta("lokal_http_requests_total", route="/api/generate", status="404") == 1
    assert delta("lokal_http_requests_total", api="ollama", route="/api/chat", status="200") == 1
    assert delta("lokal_http_requests_total", api="openai", route="/v1/chat/completions", status="200") == 1
    assert delta("lokal_http_requests_total", route="unmatched", status="404") == 1
    assert delta("lokal_http_request_duration_seconds_count", route="/api/generate") == 4
    # Tokens: exactly what the responses reported (prompt: Ollama's prompt_eval_count, computed tokens).
    assert delta("lokal_generated_tokens_total", model=f"{MODEL}:latest") == generated
    assert value(middle, "lokal_prompt_tokens_total") - value(before, "lokal_prompt_tokens_total") == prompt
    assert delta("lokal_generations_total", model=f"{MODEL}:latest") == 5
    assert delta("lokal_time_to_first_token_seconds_count", model=f"{MODEL}:latest") == 5
    assert delta("lokal_queue_wait_seconds_count", model=f"{MODEL}:latest") == 5
    assert 0 < delta("lokal_inter_token_latency_seconds_count", model=f"{MODEL}:latest") <= generated
    assert delta("lokal_generation_tokens_per_second_count", model=f"{MODEL}:latest") == 5
    # The model was loaded once, by the preload; nothing is running or waiting now.
    assert value(after, "lokal_model_load_seconds_count", model=f"{MODEL}:latest") == 1
    assert value(after, "lokal_models_loaded") == 1
    assert value(after, "lokal_sequences", state="running") == 0
    assert value(after, "lokal_sequences", state="waiting") == 0
    assert value(after, "lokal_queue_depth") == 0
    assert value(after, "lokal_slots", model=f"{MODEL}:latest") == NUM_SLOTS
    assert value(after, "lokal_kv_cells", model=f"{MODEL}:latest") == NUM_SLOTS * CONTEXT_LENGTH
    assert 0 < value(after, "lokal_kv_cells_used", model=f"{MODEL}:latest") <= NUM_SLOTS * CONTEXT_LENGTH
    assert value(after, "process_resident_memory_bytes") > 50e6
    assert value(after, "process_cpu_seconds_total") > 0
    # /api/metrics is the same exposition (the seed's second scrape path).
    assert value(scrape(url, "/api/metrics"), "lokal_generated_tokens_total") == value(after, "lokal_generated_tokens_total")


def test_prompt_tokens_count_computed_ones_and_prefix_hits_count_the_rest(ready_server):
    url = ready_server.url
    client = ollama.Client(host=url, timeout=300)
    prompt = "Here is a long sentence about lighthouses, harbours and the sea, to be continued twice: "
    before = scrape(url)
    first = client.generate(MODEL, prompt, raw=True, options=OPTIONS, keep_alive=-1)
    second = client.generate(MODEL, prompt, raw=True, options=OPTIONS, keep_alive=-1)
    after = scrape(url)
    # The prompt's size as llama.cpp's own tokenizer sees it: context minus what was generated (both "length").
    assert first.done_reason == second.done_reason == "length"
    num_prompt = len(first.context) - first.eval_count
    assert len(second.context) - second.eval_count == num_prompt
    assert second.prompt_eval_count < first.prompt_eval_count  # the second reused the first's cache
    hits = (value(after, "lokal_prefix_cache_hit_tokens_total") - value(before, "lokal_prefix_cache_hit_tokens_total"))
    assert hits == (num_prompt - first.prompt_eval_count) + (num_prompt - second.prompt_eval_count)
    computed = value(after, "lokal_prompt_tokens_total") - value(before, "lokal_prompt_tokens_total")
    assert computed == first.prompt_eval_count + second.prompt_eval_count


def test_request_ids_are_echoed_and_the_access_line_is_json_with_tokens(ready_server):
    url = ready_server.url
    response = httpx.post(url + "/api/generate", headers={"X-Request-Id": "trace-42.a"}, timeout=120,
                          json={"model": MODEL, "prompt": "Hi", "stream": False, "options": OPTIONS})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42.a"
    body = response.json()
    generated = httpx.get(url + "/api/version", timeout=10).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # An id with characters that could forge log lines is replaced, not echoed.
    assert httpx.get(url + "/api/version", headers={"X-Request-Id": "a b\tc"}, timeout=10
                     ).headers["x-request-id"] != "a b\tc"
    time.sleep(0.2)
    lines = ready_server.log().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]  # every line is JSON
    access = [e for e in entries if e.get("logger") == "lokal.access" and e.get("request_id") == "trace-42.a"]
    assert len(access) == 1, access
    [entry] = access
    assert entry["status"] == 200 and entry["route"] == "/api/generate" and entry["model"] == f"{MODEL}:latest"
    assert entry["prompt_tokens"] == body["prompt_eval_count"]
    assert entry["completion_tokens"] == body["eval_count"]
    assert entry["duration_ms"] > 0 and entry["ttft_ms"] > 0
    assert any(e.get("message", "").startswith("preloaded") for e in entries)


def test_the_grafana_dashboard_queries_only_metrics_the_server_exports(ready_server):
    text = httpx.get(ready_server.url + "/metrics", timeout=30).text
    exported = {family.name for family in text_string_to_metric_families(text)}  # even those with no sample yet
    dashboard = json.loads(DASHBOARD.read_text())
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            names = re.findall(r"\b((?:lokal|process)_[a-z_]+)\{", target["expr"])
            queried |= {re.sub(r"_(bucket|count|sum|total)$", "", name) for name in names}
    assert queried, "no queries found"
    assert queried <= exported, queried - exported
    # Every one of lokal's own metrics has a panel.
    ours = {name for name in exported if name.startswith("lokal_")}
    assert ours <= queried, ours - queried


def test_a_preload_that_fails_keeps_the_server_alive_but_not_ready(model_store, tmp_path):
    """Through the CLI flag: `lokal serve --preload MODEL`."""
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("LOKAL_", "OLLAMA_"))}
    environ.update(LOKAL_HOST=f"127.0.0.1:{port}", LOKAL_MODELS=str(model_store), PYTHONUNBUFFERED="1")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "lokal", "serve", "--preload", "no-such-model"],
                                   env=environ, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        ready = None
        while time.monotonic() < deadline:
            try:
                ready = httpx.get(url + "/ready", timeout=5)
                if "failed" in ready.text:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert ready is not None and ready.status_code == 503, log_path.read_text()
        assert ready.json() == {"status": "not ready",
                                "reason": 'preloading "no-such-model" failed: '
                                          'model "no-such-model" not found, try pulling it first'}
        assert httpx.get(url + "/api/health", timeout=5).status_code == 200
    finally:
        process.terminate()
        assert process.wait(30) == 0, log_path.read_text()
