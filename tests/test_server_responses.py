"""The stateful Responses API through the official ``openai`` client against a live ``lokal serve``;
answers compared with llama-cpp-python's own greedy completion of the same prompt."""

from __future__ import annotations

import json

import openai
import pytest
from server_fixture import MODEL, NUM_PREDICT, live_server, model_store, reference  # noqa: F401

DEFAULT_SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
WEATHER = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=live_server.url + "/v1", api_key="lokal", timeout=300, max_retries=0)


def chatml(*turns: tuple[str, str]) -> str:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns) + "<|im_start|>assistant\n"


def test_create_matches_the_reference_and_is_stored(client, reference, live_server):
    response = client.responses.create(model=MODEL, input="Count from 1 to 10.", instructions="Be terse.",
                                       max_output_tokens=NUM_PREDICT, temperature=0)
    expected = reference.complete(chatml(("system", "Be terse."), ("user", "Count from 1 to 10.")))
    assert response.output_text == expected
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == NUM_PREDICT
    assert client.responses.retrieve(response.id).output_text == expected
    items = client.responses.input_items.list(response.id)
    assert items.data[0].content[0].text == "Count from 1 to 10."
    assert list((live_server.models / "responses").glob(f"{response.id}.json"))


def test_previous_response_id_continues_the_conversation(client, reference):
    first = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=NUM_PREDICT, temperature=0)
    second = client.responses.create(model=MODEL, input="Again.", previous_response_id=first.id,
                                     max_output_tokens=NUM_PREDICT, temperature=0)
    prompt = DEFAULT_SYSTEM + chatml(("user", "Say hello.")).removesuffix("<|im_start|>assistant\n")
    prompt += chatml(("assistant", first.output_text), ("user", "Again."))
    # The whole earlier conversation is the prompt: exactly the reference's tokens of it. (The answer text is
    # not compared: the reused KV was computed token by token, and SmolLM2 has near-ties that such
    # rounding differences flip at temperature 0.)
    assert second.usage.input_tokens == len(reference.llama.tokenize(prompt.encode(), add_bos=False, special=True))
    assert second.output_text and second.previous_response_id == first.id
    # The second prompt starts with the first's tokens: the engine reuses them (cached_tokens > 0).
    assert second.usage.input_tokens_details.cached_tokens > 0


def test_stream_events(client, reference):
    events = list(client.responses.create(model=MODEL, input="Count from 1 to 10.", max_output_tokens=NUM_PREDICT,
                                          temperature=0, stream=True))
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.incomplete"
    for kind in ("response.output_item.added", "response.content_part.added", "response.output_text.delta",
                 "response.output_text.done", "response.output_item.done"):
        assert kind in kinds
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    assert text == reference.complete(DEFAULT_SYSTEM + chatml(("user", "Count from 1 to 10.")))
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_function_call_and_output(client):
    call_response = client.responses.create(model=MODEL, input="Weather in Paris?", tools=[WEATHER],
                                            tool_choice="required", max_output_tokens=60, temperature=0)
    (call,) = [item for item in call_response.output if item.type == "function_call"]
    assert call.name == "get_weather" and isinstance(json.loads(call.arguments)["city"], str)
    answer = client.responses.create(model=MODEL, previous_response_id=call_response.id, tools=[WEATHER],
                                     tool_choice="none", max_output_tokens=NUM_PREDICT, temperature=0,
                                     input=[{"type": "function_call_output", "call_id": call.call_id,
                                             "output": "sunny"}])
    assert answer.output_text


def test_json_schema_format(client):
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    response = client.responses.create(model=MODEL, input="Name a city in France as JSON.", max_output_tokens=40,
                                       temperature=0, text={"format": {"type": "json_schema", "name": "city",
                                                                       "schema": schema}})
    assert isinstance(json.loads(response.output_text)["city"], str)


def test_store_false_and_delete(client):
    unstored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, temperature=0, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    stored = client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, temperature=0)
    client.responses.delete(stored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(stored.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_missing", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="Hi", tools=[{"type": "web_search"}], max_output_tokens=2)
