"""The role matrix: every route the app serves × every role, generated from the app's live route list.

A route missing from ``lokal.security.roles.ROUTE_PERMISSIONS`` fails ``test_every_route_declares_a_permission``
(and is refused to every key when auth is on), so a new route cannot be forgotten: add its line to the table.
Expected outcomes follow the issue's role definitions, not the table: no key → 401; a role below the route's
permission → 403; a role at or above it → anything but 401/403 (the handler then answers, usually 400 for
the empty body the matrix sends, or 404 for the made-up model).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from lokal.config import Settings
from lokal.security.keys import KeyStore
from lokal.security.policy import keys_path
from lokal.security.roles import MINIMUM_ROLE, ROUTE_PERMISSIONS, Permission, Role
from lokal.server.app import create_app
from lokal.server.guard import effective_routes

# The app's routes do not depend on its runtime: list them once at collection time.
LIVE_ROUTES = sorted({(method, route.path) for route in effective_routes(create_app(SimpleNamespace()))
                      for method in (getattr(route, "methods", None) or ())})
ROLES = [None, *Role]
PATH_VALUES = {"digest": "sha256:" + "0" * 64, "model": "no-such-model", "name": "no-such-model"}


def concrete(path: str) -> str:
    """``/api/blobs/{digest}`` → a path that matches it."""
    import re

    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: PATH_VALUES.get(m.group(1), "x"), path)


def test_every_route_declares_a_permission():
    assert len(LIVE_ROUTES) > 30 and ("POST", "/v1/chat/completions") in LIVE_ROUTES  # prefixes applied
    missing = [f"{method} {path}" for method, path in LIVE_ROUTES if (method, path) not in ROUTE_PERMISSIONS]
    assert not missing, ("routes without a permission in lokal/security/roles.py ROUTE_PERMISSIONS "
                         f"(add one line each): {missing}")


def test_every_declared_permission_has_a_route():
    stale = [f"{method} {path}" for method, path in ROUTE_PERMISSIONS if (method, path) not in LIVE_ROUTES]
    assert not stale, f"ROUTE_PERMISSIONS names routes the app does not serve: {stale}"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    """An app with auth on over an empty store, and one key per role (plus a revoked and a restricted one)."""
    from lokal.runtime import Runtime

    root = tmp_path_factory.mktemp("roles")
    settings = Settings(environ={"LOKAL_MODELS": str(root / "models"), "LOKAL_AUTH": "on",
                                 "LOKAL_HOST": "127.0.0.1:11434"})
    store = KeyStore(keys_path(settings))
    keys = {role: store.create(role, name=role.label).key for role in Role}
    revoked = store.create(Role.ADMIN, name="revoked")
    store.revoke(revoked.record.id)
    restricted = store.create(Role.USER, name="restricted", models=["smollm2*"]).key
    app = create_app(Runtime(settings))
    with TestClient(app, base_url="http://127.0.0.1:11434") as client:
        yield SimpleNamespace(client=client, keys=keys, revoked=revoked.key, restricted=restricted)


def _call(client: TestClient, method: str, path: str, key: str | None, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"json": {}} if method in ("POST", "PUT", "PATCH", "DELETE") else {}
    return client.request(method, concrete(path), headers=headers, **body, **kwargs)


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.label if role else "no-key")
@pytest.mark.parametrize("method,path", LIVE_ROUTES, ids=lambda value: str(value))
def test_role_matrix(secured, method, path, role):
    permission = ROUTE_PERMISSIONS.get((method, path))
    key = secured.keys[role] if role else None
    response = _call(secured.client, method, path, key)
    if permission is Permission.OPEN:
        assert response.status_code not in (401, 403), response.text
    elif role is None:
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    elif permission is None or role < MINIMUM_ROLE[permission]:
        assert response.status_code == 403, response.text
    else:
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text


def test_role_definitions_match_the_issue():
    """The issue's words, checked against the table: viewer lists, user generates, operator pulls, admin deletes."""
    assert ROUTE_PERMISSIONS[("GET", "/api/tags")] is Permission.VIEW
    assert ROUTE_PERMISSIONS[("POST", "/api/chat")] is Permission.INFER
    assert ROUTE_PERMISSIONS[("POST", "/v1/chat/completions")] is Permission.INFER
    assert ROUTE_PERMISSIONS[("POST", "/api/pull")] is Permission.MANAGE
    assert ROUTE_PERMISSIONS[("POST", "/api/blobs/{digest}")] is Permission.MANAGE
    assert ROUTE_PERMISSIONS[("DELETE", "/api/delete")] is Permission.ADMIN
    assert ROUTE_PERMISSIONS[("GET", "/api/health")] is Permission.OPEN


def test_x_api_key_header_is_accepted(secured):
    response = secured.client.get("/api/tags", headers={"x-api-key": secured.keys[Role.VIEWER]})
    assert response.status_code == 200, response.text


def test_wrong_and_revoked_keys_are_401(secured):
    wrong = secured.keys[Role.ADMIN][:-4] + "AAAA"
    for key in (wrong, secured.revoked, "not-a-lokal-key"):
        response = secured.client.get("/api/tags", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401, response.text
        assert "invalid API key" in response.json()["error"]


def test_openai_routes_answer_401_with_openai_error_object(secured):
    response = secured.client.post("/v1/chat/completions", json={})
    assert response.status_code == 401
    assert response.json()["error"]["message"].startswith("an API key is required")


def test_model_allowlist(secured):
    headers = {"Authorization": f"Bearer {secured.restricted}"}
    refused = secured.client.post("/api/generate", json={"model": "gemma3", "prompt": "hi"}, headers=headers)
    assert refused.status_code == 403, refused.text
    assert "gemma3" in refused.json()["error"]
    # An allowed name passes the security edge (and then is simply not in this empty store).
    allowed = secured.client.post("/api/generate", json={"model": "smollm2", "prompt": "hi"}, headers=headers)
    assert allowed.status_code == 404, allowed.text


def test_dns_rebinding_host_is_refused_on_loopback(secured):
    for path in ("/", "/api/tags"):
        response = secured.client.get(path, headers={"Host": "evil.example",
                                                     "Authorization": f"Bearer {secured.keys[Role.ADMIN]}"})
        assert response.status_code == 403, response.text
        assert "evil.example" in response.json()["error"]
    for host in ("localhost:11434", "127.0.0.1", "[::1]:11434"):
        assert secured.client.get("/", headers={"Host": host}).status_code == 200


def test_cors_preflight_needs_no_key(secured):
    response = secured.client.options("/api/chat", headers={"Origin": "http://localhost:3000",
                                                            "Access-Control-Request-Method": "POST"})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "http://localhost:3000"
