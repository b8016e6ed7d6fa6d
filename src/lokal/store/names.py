"""Model names: one value type, one place that decides the defaults.

Grammar::

    [host/][namespace/]model[:tag][@sha256:<64 hex>]

- ``host`` defaults to ``registry.ollama.ai``, ``namespace`` to ``library``, ``tag`` to ``latest``.
- One part is ``model``; two parts are ``namespace/model``; three are ``host/namespace/model``.
- The tag is cut at the last ``:`` of the last part, so a host may carry a port
  (``localhost:5000/team/model:v1``).
- ``hf.co/<owner>/<repo>[:<quant>]`` (or ``huggingface.co/...``) names a Hugging Face GGUF repository:
  host ``hf.co``, namespace the owner, model the repo, tag the quantization (``latest`` = the default one).
- The digest may be written ``sha256:<hex>`` or ``sha256-<hex>``; it is kept as ``sha256:<hex>``.

Limits (Ollama's): host 1–350 characters, namespace, model and tag 1–80. Namespace and model use letters,
digits, ``_ . -`` and start with a letter or digit; a tag uses the same characters and may also start with
``_``; a host may also contain ``:`` (port). No part may contain ``..``.

Names match case-insensitively, as in Ollama: ``SmolLM2`` and ``smollm2`` are the same model. Equality and
hashing use the lower-cased parts; the original spelling is kept for display.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lokal.errors import InvalidModelName

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
HUGGINGFACE_HOST = "hf.co"
_HUGGINGFACE_ALIASES = {"hf.co", "huggingface.co", "www.huggingface.co"}

MAX_HOST_LENGTH = 350
MAX_PART_LENGTH = 80

_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-:]*")
_DIGEST = re.compile(r"sha256[:\-]([0-9a-f]{64})", re.IGNORECASE)

_RULES = {
    "host": (_HOST, MAX_HOST_LENGTH, "letters, digits, '_', '.', '-' and ':' (port), starting with a letter or digit"),
    "namespace": (_NAME_PART, MAX_PART_LENGTH, "letters, digits, '_', '.' and '-', starting with a letter or digit"),
    "model": (_NAME_PART, MAX_PART_LENGTH, "letters, digits, '_', '.' and '-', starting with a letter or digit"),
    "tag": (_TAG, MAX_PART_LENGTH, "letters, digits, '_', '.' and '-', starting with a letter, digit or '_'"),
}


def _check_part(text: str, kind: str, value: str) -> None:
    pattern, max_length, allowed = _RULES[kind]
    if not value:
        raise InvalidModelName(f"invalid model name {text!r}: the {kind} is empty")
    if len(value) > max_length:
        raise InvalidModelName(
            f"invalid model name {text!r}: the {kind} is too long ({len(value)} > {max_length} characters)")
    if not pattern.fullmatch(value):
        raise InvalidModelName(f"invalid model name {text!r}: the {kind} {value!r} may contain only {allowed}")
    if ".." in value:
        raise InvalidModelName(f"invalid model name {text!r}: the {kind} {value!r} may not contain '..'")


def _normalize_digest(text: str, digest: str) -> str:
    match = _DIGEST.fullmatch(digest)
    if not match:
        raise InvalidModelName(
            f"invalid model name {text!r}: the digest {digest!r} must be sha256:<64 hex digits>")
    return "sha256:" + match.group(1).lower()


@dataclass(frozen=True, eq=False)
class ModelName:
    """A validated model name; build one with ``ModelName.parse`` (the constructor validates too)."""

    host: str
    namespace: str
    model: str
    tag: str
    digest: str | None = None

    def __post_init__(self) -> None:
        text = self._full_text()
        for kind in ("host", "namespace", "model", "tag"):
            _check_part(text, kind, getattr(self, kind))
        if self.host.lower() in _HUGGINGFACE_ALIASES and self.host != HUGGINGFACE_HOST:
            object.__setattr__(self, "host", HUGGINGFACE_HOST)
        if self.digest is not None:
            object.__setattr__(self, "digest", _normalize_digest(text, self.digest))

    @classmethod
    def parse(cls, text: str) -> ModelName:
        if not isinstance(text, str):
            raise InvalidModelName(f"a model name must be a string, got {type(text).__name__}")
        if not text:
            raise InvalidModelName("invalid model name: the name is empty")
        rest, at, digest = text.partition("@")
        if at and "@" in digest:
            raise InvalidModelName(f"invalid model name {text!r}: more than one '@'")
        parts = rest.split("/")
        if len(parts) > 3:
            raise InvalidModelName(
                f"invalid model name {text!r}: too many '/' parts (expected [host/][namespace/]model[:tag])")
        last = parts[-1]
        model, colon, tag = last.rpartition(":") if ":" in last else (last, "", "")
        if colon and not tag:
            raise InvalidModelName(f"invalid model name {text!r}: the tag is empty")
        host, namespace = DEFAULT_HOST, DEFAULT_NAMESPACE
        if len(parts) == 3:
            host, namespace = parts[0], parts[1]
        elif len(parts) == 2:
            namespace = parts[0]
        if at and not digest:
            raise InvalidModelName(f"invalid model name {text!r}: the digest after '@' is empty")
        tag = tag or DEFAULT_TAG
        # Validate against the text the user typed, so messages quote it rather than the filled-in form.
        for kind, value in (("host", host), ("namespace", namespace), ("model", model), ("tag", tag)):
            _check_part(text, kind, value)
        return cls(host, namespace, model, tag, _normalize_digest(text, digest) if at else None)

    def _full_text(self) -> str:
        text = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        return text + f"@{self.digest}" if self.digest else text

    def __str__(self) -> str:
        return self._full_text()

    def __repr__(self) -> str:
        return f"ModelName({self._full_text()!r})"

    @property
    def _key(self) -> tuple[str, str, str, str, str | None]:
        return (self.host.lower(), self.namespace.lower(), self.model.lower(), self.tag.lower(), self.digest)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ModelName):
            return NotImplemented
        return self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    @property
    def display(self) -> str:
        """The short form ``ollama list`` prints: defaults left out where that stays unambiguous."""
        if self.host.lower() != DEFAULT_HOST:
            text = f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        elif self.namespace.lower() != DEFAULT_NAMESPACE:
            text = f"{self.namespace}/{self.model}:{self.tag}"
        else:
            text = f"{self.model}:{self.tag}"
        return text + f"@{self.digest}" if self.digest else text

    @property
    def manifest_parts(self) -> tuple[str, str, str, str]:
        """Directory parts of the manifest under ``manifests/``: host, namespace, model, tag."""
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def is_huggingface(self) -> bool:
        return self.host.lower() == HUGGINGFACE_HOST

    @property
    def has_default_tag(self) -> bool:
        return self.tag.lower() == DEFAULT_TAG

    def with_tag(self, tag: str) -> ModelName:
        """The same model under another tag (a digest belongs to one tag, so it is dropped)."""
        return ModelName(self.host, self.namespace, self.model, tag)

    def without_digest(self) -> ModelName:
        return ModelName(self.host, self.namespace, self.model, self.tag)

