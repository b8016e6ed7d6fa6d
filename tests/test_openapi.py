"""/openapi.json tells the truth: schemathesis generates requests for every route from the document (valid
and invalid ones, a few per route) against a live ``lokal serve`` and runs all of its checks: no server
errors, only documented status codes, content types and response shapes, invalid input rejected,
schema-valid input not refused with an undocumented error.

Pull and download are left out: with no registry reachable every valid name ends in a 502 from the
network, which is the truth but not the server's to fix."""

from __future__ import annotations

import httpx
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from schemathesis.checks import not_a_server_error
from server_fixture import live_server, model_store, start_server  # noqa: F401

from lokal.security.keys import KeyStore
from lokal.security.roles import Role

SERVER_ENV = {"registry": "http://127.0.0.1:9", "keep_alive": "0"}
NEEDS_NETWORK = r"^/(api/pull|openai/download)$"
MAX_EXAMPLES = 4
# What JSON Schema cannot say: an upload must hash to the digest in its path, and create needs "from" or
# "files" (documented as anyOf, which schemathesis's coverage phase does not honour). Those two operations
# skip only the check that schema-valid input is accepted.
CONTENT_DEPENDENT = {("POST", "/api/blobs/{digest}"), ("POST", "/api/create")}


def run_every_operation(url: str, max_examples: int, **call: object) -> tuple[int, list[str]]:
    """Schemathesis over every documented operation of the server at ``url``; returns (operations, failures)."""
    headers = call.get("headers") or {}
    schema = schemathesis.openapi.from_url(url + "/openapi.json", headers=headers).exclude(path_regex=NEEDS_NETWORK)
    failures: list[str] = []
    num_operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        num_operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def check(case):
            excluded = [positive_data_acceptance] if (case.method.upper(), case.path) in CONTENT_DEPENDENT else []
            case.call_and_validate(timeout=120, excluded_checks=excluded, **call)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every route is checked; failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    return num_operations, failures


def test_every_route_behaves_as_documented(live_server):
    num_operations, failures = run_every_operation(live_server.url, MAX_EXAMPLES)
    assert num_operations > 30
    assert not failures, "\n\n".join(failures)


def test_no_server_error_with_auth_on(model_store, tmp_path_factory):
    """With keys required (LOKAL_AUTH=on) and an admin key on every request, no generated request gets a 5xx:
    the security middleware in front of every route adds no failure of its own."""
    admin = KeyStore(model_store / "security" / "keys.json").create(Role.ADMIN, name="schemathesis").key
    server = start_server(model_store, tmp_path_factory.mktemp("auth") / "serve.log", auth="on", **SERVER_ENV)
    try:
        num_operations, failures = run_every_operation(server.url, 2, headers={"Authorization": f"Bearer {admin}"},
                                                       checks=[not_a_server_error])
        assert num_operations > 30
        assert not failures, "\n\n".join(failures)
        assert httpx.get(server.url + "/api/tags").status_code == 401  # the key really was needed
    finally:
        assert server.stop() == 0, server.log()


def test_document_lists_errors_and_stream_types(live_server):
    document = httpx.get(live_server.url + "/openapi.json").json()
    chat = document["paths"]["/api/chat"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "429", "499", "503"} <= set(chat) and "422" not in chat
    assert "401" not in document["paths"]["/api/health"]["get"]["responses"]  # liveness never needs a key
    pull = document["paths"]["/api/pull"]["post"]["responses"]
    assert "502" in pull  # SERVER_ENV's registry is unreachable: the answer is a 502, as documented
    answer = httpx.post(live_server.url + "/api/pull", json={"model": "nothing-here", "stream": False}, timeout=60)
    assert answer.status_code == 502 and "error" in answer.json()
    assert "application/x-ndjson" in chat["200"]["content"]
    completions = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "text/event-stream" in completions["200"]["content"]
    assert completions["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    messages = document["paths"]["/v1/messages"]["post"]["responses"]
    assert messages["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/AnthropicError")
