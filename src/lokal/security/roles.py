"""Roles, permissions, and the one table that says which permission every route needs.

Roles are ordered: each one may do everything the roles below it may.

=========  ==================================================================================
viewer     list, show, ps, version, metrics (``view``)
user       + generate, chat, embed, completions, responses, messages, tokenize, rerank (``infer``)
operator   + pull, create, copy, load, unload, blobs (``manage``)
admin      + delete, keys, audit (``admin``)
=========  ==================================================================================

``ROUTE_PERMISSIONS`` maps ``(METHOD, path template)`` — the template exactly as the route declares it,
e.g. ``/api/blobs/{digest}`` — to a permission. A route missing from the table is refused to everyone
(fail closed), and ``tests/test_security_roles.py`` fails for it, so a new route cannot be forgotten:
add its line here when you add the route.
"""

from __future__ import annotations

from enum import Enum, IntEnum

from lokal.errors import BadRequest


class Role(IntEnum):
    VIEWER = 1
    USER = 2
    OPERATOR = 3
    ADMIN = 4

    @classmethod
    def parse(cls, text: str) -> Role:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise BadRequest(f"unknown role {text!r}: use one of {', '.join(ROLE_NAMES)}") from None

    @property
    def label(self) -> str:
        return self.name.lower()


ROLE_NAMES = tuple(role.label for role in Role)


class Permission(str, Enum):
    OPEN = "open"  # no key needed, ever (liveness)
    VIEW = "view"
    INFER = "infer"
    MANAGE = "manage"
    ADMIN = "admin"


# The least role that holds each permission (OPEN needs none).
MINIMUM_ROLE: dict[Permission, Role] = {
    Permission.VIEW: Role.VIEWER,
    Permission.INFER: Role.USER,
    Permission.MANAGE: Role.OPERATOR,
    Permission.ADMIN: Role.ADMIN,
}

OPEN, VIEW, INFER, MANAGE, ADMIN = (Permission.OPEN, Permission.VIEW, Permission.INFER, Permission.MANAGE,
                                    Permission.ADMIN)

ROUTE_PERMISSIONS: dict[tuple[str, str], Permission] = {
    # service: liveness stays open so load balancers and container health checks need no key
    ("GET", "/"): OPEN,
    ("HEAD", "/"): OPEN,
    ("GET", "/api/health"): OPEN,
    ("HEAD", "/api/health"): OPEN,
    ("GET", "/api/version"): VIEW,
    ("HEAD", "/api/version"): VIEW,
    # operations: readiness is a probe like health; metrics are for viewers (Prometheus sends a bearer key)
    ("GET", "/ready"): OPEN,
    ("HEAD", "/ready"): OPEN,
    ("GET", "/metrics"): VIEW,
    ("GET", "/api/metrics"): VIEW,
    # the API's own description
    ("GET", "/openapi.json"): VIEW,
    ("HEAD", "/openapi.json"): VIEW,
    ("GET", "/docs"): VIEW,
    ("HEAD", "/docs"): VIEW,
    ("GET", "/docs/oauth2-redirect"): VIEW,
    ("HEAD", "/docs/oauth2-redirect"): VIEW,
    ("GET", "/redoc"): VIEW,
    ("HEAD", "/redoc"): VIEW,
    # Ollama: inference
    ("POST", "/api/generate"): INFER,
    ("POST", "/api/chat"): INFER,
    ("POST", "/api/embed"): INFER,
    ("POST", "/api/embeddings"): INFER,
    # Ollama: models
    ("GET", "/api/ps"): VIEW,
    ("GET", "/api/tags"): VIEW,
    ("HEAD", "/api/tags"): VIEW,
    ("POST", "/api/show"): VIEW,
    ("POST", "/api/copy"): MANAGE,
    ("POST", "/api/pull"): MANAGE,
    ("POST", "/api/create"): MANAGE,
    ("HEAD", "/api/blobs/{digest}"): MANAGE,
    ("POST", "/api/blobs/{digest}"): MANAGE,
    ("DELETE", "/api/delete"): ADMIN,
    # OpenAI
    ("POST", "/v1/chat/completions"): INFER,
    ("POST", "/v1/completions"): INFER,
    ("POST", "/v1/embeddings"): INFER,
    ("POST", "/v1/chat/completions/input_tokens"): INFER,
    ("POST", "/v1/responses"): INFER,
    ("GET", "/v1/responses/{response_id}"): INFER,  # stored responses hold generated text: users, not viewers
    ("GET", "/v1/responses/{response_id}/input_items"): INFER,
    ("DELETE", "/v1/responses/{response_id}"): INFER,
    ("POST", "/v1/rerank"): INFER,
    # Anthropic
    ("POST", "/v1/messages"): INFER,
    ("POST", "/v1/messages/count_tokens"): INFER,
    # text utilities
    ("POST", "/api/tokenize"): INFER,
    ("POST", "/api/detokenize"): INFER,
    ("POST", "/api/rerank"): INFER,
    ("GET", "/v1/models"): VIEW,
    ("GET", "/v1/models/{model:path}"): VIEW,
    # Foundry Local
    ("GET", "/openai/models"): VIEW,
    ("GET", "/openai/loadedmodels"): VIEW,
    ("GET", "/openai/status"): VIEW,
    ("GET", "/openai/load/{name:path}"): MANAGE,
    ("GET", "/openai/unload/{name:path}"): MANAGE,
    ("GET", "/openai/unloadall"): MANAGE,
    ("POST", "/openai/download"): MANAGE,
    ("GET", "/status"): VIEW,
    ("GET", "/models/loaded"): VIEW,
    ("GET", "/models/load/{name:path}"): MANAGE,
    ("GET", "/models/unload/{name:path}"): MANAGE,
    ("GET", "/api/hardware"): VIEW,
}


def permission_for(method: str, path_template: str) -> Permission | None:
    """The permission a route needs; ``None`` for a route nobody declared (refused to every key)."""
    return ROUTE_PERMISSIONS.get((method.upper(), path_template))


def may(role: Role, permission: Permission) -> bool:
    return permission is Permission.OPEN or role >= MINIMUM_ROLE[permission]


def least_role(permission: Permission) -> Role | None:
    return MINIMUM_ROLE.get(permission)
