from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lokal.errors import InvalidModelName
from lokal.store.names import ModelName

_NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _part(first: str, rest: str, max_size: int) -> st.SearchStrategy[str]:
    return st.builds(lambda a, b: a + b, st.sampled_from(first),
                     st.text(alphabet=rest, max_size=max_size - 1)).filter(lambda s: ".." not in s)


names_parts = _part(_NAME_CHARS, _NAME_CHARS + "_.-", 80)
tags = _part(_NAME_CHARS + "_", _NAME_CHARS + "_.-", 80)
hosts = st.one_of(
    st.just("registry.ollama.ai"),
    st.sampled_from(["hf.co", "HF.co", "huggingface.co", "localhost:5000", "Example.COM"]),
    st.builds(lambda h, port: h + port, _part(_NAME_CHARS, _NAME_CHARS + "_.-", 60),
              st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))),
)
namespaces = st.one_of(st.just("library"), st.just("Library"), names_parts)
digests = st.one_of(st.none(), st.binary(min_size=1, max_size=16).map(
    lambda b: "sha256:" + hashlib.sha256(b).hexdigest()))
model_names = st.builds(ModelName, hosts, namespaces, names_parts, tags, digests)


@given(model_names)
def test_full_form_round_trips_with_spelling(name: ModelName) -> None:
    parsed = ModelName.parse(str(name))
    assert parsed == name
    assert hash(parsed) == hash(name)
    assert parsed.manifest_parts == name.manifest_parts  # original spelling kept, not just equal
    assert parsed.digest == name.digest


@given(model_names)
def test_display_form_round_trips(name: ModelName) -> None:
    assert ModelName.parse(name.display) == name


@given(model_names)
def test_equality_ignores_case(name: ModelName) -> None:
    shouted = ModelName.parse(str(name).upper())
    assert shouted == name
    assert hash(shouted) == hash(name)
    assert len({shouted, name}) == 1


def test_defaults_and_forms() -> None:
    name = ModelName.parse("smollm2")
    assert (name.host, name.namespace, name.model, name.tag, name.digest) == \
        ("registry.ollama.ai", "library", "smollm2", "latest", None)
    assert str(name) == "registry.ollama.ai/library/smollm2:latest"
    assert name.display == "smollm2:latest"
    assert ModelName.parse("jmorgan/phi:mini").display == "jmorgan/phi:mini"
    assert ModelName.parse("example.com/library/phi:mini").display == "example.com/library/phi:mini"
    port = ModelName.parse("localhost:5000/team/model:v1")
    assert port.manifest_parts == ("localhost:5000", "team", "model", "v1")


def test_huggingface_names() -> None:
    name = ModelName.parse("hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M")
    assert name.is_huggingface
    assert name.manifest_parts == ("hf.co", "bartowski", "SmolLM2-135M-Instruct-GGUF", "Q4_K_M")
    assert name.display == "hf.co/bartowski/SmolLM2-135M-Instruct-GGUF:Q4_K_M"
    long_form = ModelName.parse("huggingface.co/bartowski/SmolLM2-135M-Instruct-GGUF")
    assert long_form.host == "hf.co" and long_form.tag == "latest" and long_form.is_huggingface
    assert long_form.with_tag("Q8_0") == ModelName.parse("hf.co/bartowski/smollm2-135m-instruct-gguf:q8_0")
    assert not ModelName.parse("smollm2").is_huggingface


def test_digest_forms_and_with_tag() -> None:
    hexdigest = hashlib.sha256(b"x").hexdigest()
    colon = ModelName.parse(f"smollm2:135m@sha256:{hexdigest.upper()}")
    dash = ModelName.parse(f"smollm2:135m@sha256-{hexdigest}")
    assert colon == dash
    assert colon.digest == f"sha256:{hexdigest}"
    assert colon != ModelName.parse("smollm2:135m")
    retagged = colon.with_tag("latest")
    assert retagged.digest is None and retagged.tag == "latest"
    assert colon.without_digest() == ModelName.parse("smollm2:135m")


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "empty"),
    (":7b", "model is empty"),
    ("smollm2:", "tag is empty"),
    ("/smollm2", "namespace is empty"),
    ("/library/smollm2", "host is empty"),
    ("a/b/c/d", "too many '/' parts"),
    ("a" * 81, "model is too long (81 > 80"),
    ("smollm2:" + "t" * 81, "tag is too long (81 > 80"),
    ("n" * 81 + "/smollm2", "namespace is too long"),
    ("h" * 351 + "/library/smollm2", "host is too long (351 > 350"),
    ("smol lm2", "may contain only"),
    ("-smollm2", "starting with a letter or digit"),
    (".hidden", "starting with a letter or digit"),
    ("smollm2:-x", "starting with a letter, digit or '_'"),
    ("smollm2:7b!", "may contain only"),
    ("team:x/smollm2", "namespace"),
    ("a..b", "may not contain '..'"),
    ("smollm2@sha256:1234", "digest"),
    ("smollm2@", "digest after '@' is empty"),
    ("smollm2@md5:" + "0" * 32, "must be sha256:<64 hex digits>"),
    ("smollm2@sha256:" + "g" * 64, "must be sha256:<64 hex digits>"),
    ("a@b@c", "more than one '@'"),
    ("https://hf.co/owner/repo", "too many '/' parts"),
])
def test_invalid_names_say_what_is_wrong(text: str, fragment: str) -> None:
    with pytest.raises(InvalidModelName) as caught:
        ModelName.parse(text)
    assert fragment in caught.value.message
    if text:
        assert repr(text) in caught.value.message  # quotes what the user typed
    assert caught.value.status == 400


def test_constructor_validates_and_non_strings_are_refused() -> None:
    with pytest.raises(InvalidModelName, match="model"):
        ModelName("registry.ollama.ai", "library", "bad name", "latest")
    with pytest.raises(InvalidModelName, match="must be a string"):
        ModelName.parse(None)  # type: ignore[arg-type]
