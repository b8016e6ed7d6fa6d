"""/openapi.json tells the truth: schemathesis generates requests for every route from the document (valid
and invalid ones, a few per route) against a live ``lokal serve`` and runs all of its checks: no server
errors, only documented status codes, content types and response shapes, invalid input rejected,
schema-valid input not refused with an undocumented error.

Pull and download are left out: with no registry reachable every valid name ends in a 502 from the
network, which is the truth but not the server's to fix."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from server_fixture import live_server, model_store  # noqa: F401

SERVER_ENV = {"registry": "http://127.0.0.1:9", "keep_alive": "0"}
NEEDS_NETWORK = r"^/(api/pull|openai/download)$"
MAX_EXAMPLES = 4
# What JSON Schema cannot say: an upload must hash to the digest in its path, and create needs "from" or
# "files" (documented as anyOf, which schemathesis's coverage phase does not honour). Those two operations
# skip only the check that schema-valid input is accepted.
CONTENT_DEPENDENT = {("POST", "/api/blobs/{digest}"), ("POST", "/api/create")}


def test_every_route_behaves_as_documented(live_server):
    schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json").exclude(path_regex=NEEDS_NETWORK)
    failures: list[str] = []
    num_operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        num_operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck),
                  derandomize=True, database=None)
        def check(case):
            excluded = [positive_data_acceptance] if (case.method.upper(), case.path) in CONTENT_DEPENDENT else []
            case.call_and_validate(timeout=120, excluded_checks=excluded)

        try:
            check()
        except (Exception, BaseExceptionGroup) as exc:  # every route is checked; failures are reported together
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert num_operations > 30
    assert not failures, "\n\n".join(failures)


def test_document_lists_errors_and_stream_types(live_server):
    import httpx

    document = httpx.get(live_server.url + "/openapi.json").json()
    chat = document["paths"]["/api/chat"]["post"]["responses"]
    assert {"400", "404", "413", "499", "503"} <= set(chat) and "422" not in chat
    assert "application/x-ndjson" in chat["200"]["content"]
    completions = document["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert "text/event-stream" in completions["200"]["content"]
    assert completions["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/OpenAIError")
    messages = document["paths"]["/v1/messages"]["post"]["responses"]
    assert messages["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/AnthropicError")
