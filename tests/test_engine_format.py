"""Constrained output: format "json" and JSON schemas always parse and validate, greedy and sampled."""

from __future__ import annotations

import json

import pytest

from lokal.engine import Engine, EngineConfig, SyncSink, grammar_for
from lokal.errors import BadRequest
from lokal.types import Done, SamplingOptions, Token

PERSON_PROMPT = ("<|im_start|>user\nDescribe a fictional person as JSON with name, age and hobbies.<|im_end|>\n"
                 "<|im_start|>assistant\n")
# Free-form JSON has no length bound, so ask for something short: a small model rambles otherwise.
FRANCE_PROMPT = ("<|im_start|>user\nGive the name and capital of France as a JSON object.<|im_end|>\n"
                 "<|im_start|>assistant\n")
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer"},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 24}, "maxItems": 3},
        "mood": {"enum": ["happy", "sad", "calm"]},
    },
    "required": ["name", "age", "hobbies", "mood"],
    "additionalProperties": False,
}
SAMPLINGS = [SamplingOptions(temperature=0, num_predict=400)] + [
    SamplingOptions(temperature=1.0, seed=seed, num_predict=400) for seed in (1, 2, 3)]


def validate(value, schema: dict, path: str = "$") -> None:
    """The subset of JSON Schema the tests use; raises AssertionError naming the first violation."""
    types = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}
    kind = schema.get("type")
    if kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), f"{path}: not an integer"
    elif kind == "number":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{path}: not a number"
    elif kind is not None:
        assert isinstance(value, types[kind]), f"{path}: not a {kind}"
    if "enum" in schema:
        assert value in schema["enum"], f"{path}: {value!r} not in enum"
    if isinstance(value, str) and "maxLength" in schema:
        assert len(value) <= schema["maxLength"], f"{path}: too long"
    if isinstance(value, list):
        assert len(value) <= schema.get("maxItems", len(value)), f"{path}: too many items"
        for i, item in enumerate(value):
            validate(item, schema.get("items", {}), f"{path}[{i}]")
    if isinstance(value, dict):
        properties = schema.get("properties", {})
        for name in schema.get("required", []):
            assert name in value, f"{path}: missing {name}"
        if schema.get("additionalProperties") is False:
            assert set(value) <= set(properties), f"{path}: unexpected {set(value) - set(properties)}"
        for name, item in value.items():
            if name in properties:
                validate(item, properties[name], f"{path}.{name}")


def test_the_validator_rejects_what_it_should():
    good = {"name": "Ann", "age": 3, "hobbies": ["x"], "mood": "calm"}
    validate(good, PERSON)
    for bad in ({**good, "age": "3"}, {**good, "mood": "angry"}, {**good, "extra": 1},
                {k: v for k, v in good.items() if k != "name"}, {**good, "hobbies": ["a", "b", "c", "d"]}):
        with pytest.raises(AssertionError):
            validate(bad, PERSON)


@pytest.fixture(scope="module")
def engine(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=1024, num_parallel=4)) as engine:
        yield engine


def run_all(engine: Engine, prompt: str, grammar: str) -> list[tuple[str, Done]]:
    """Every sampling setting at once (they batch together), each to its end."""
    sinks = []
    for sampling in SAMPLINGS:
        sink = SyncSink()
        engine.submit(engine.tokenize(prompt), sampling, grammar=grammar, sink=sink)
        sinks.append(sink)
    results = []
    for sink in sinks:
        events = list(sink)
        results.append(("".join(e.text for e in events if isinstance(e, Token)), events[-1]))
    return results


def test_format_json_always_parses(engine):
    for text, done in run_all(engine, FRANCE_PROMPT, grammar_for("json")):
        assert done.reason == "stop", text
        assert isinstance(json.loads(text), dict)


def test_a_json_schema_is_always_followed(engine):
    for text, done in run_all(engine, PERSON_PROMPT, grammar_for(PERSON)):
        assert done.reason == "stop", text
        validate(json.loads(text), PERSON)
    assert engine.num_live_samplers == 0


def test_no_format_means_no_grammar():
    assert grammar_for(None) is None and grammar_for("") is None


@pytest.mark.parametrize("format", ["xml", 42, {"type": "no-such-type"}, {"properties": {"a": {"$ref": "#/nope"}}}])
def test_unsupported_formats_are_bad_requests(format):
    with pytest.raises(BadRequest, match="format"):
        grammar_for(format)
