"""Anthropic's Messages API through the official ``anthropic`` client against a live ``lokal serve``;
answers compared with llama-cpp-python's own greedy completion of the same prompt."""

from __future__ import annotations

import anthropic
import httpx
import pytest
from server_fixture import MODEL, NUM_PREDICT, live_server, model_store, reference  # noqa: F401

WEATHER = {"name": "get_weather", "description": "Get the current weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SYSTEM = "You are terse."
# anthropic 2.x no longer sends temperature itself; the Messages API field is still honoured by lokal.
GREEDY = {"temperature": 0}
PROMPT = ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nCount from 1 to 10.<|im_end|>\n"
          "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def client(live_server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=live_server.url, api_key="lokal", timeout=300, max_retries=0)


def test_message_matches_the_reference(client, reference):
    message = client.messages.create(model=MODEL, max_tokens=NUM_PREDICT, extra_body=GREEDY,
                                     system=[{"type": "text", "text": SYSTEM}],
                                     messages=[{"role": "user", "content": "Count from 1 to 10."}])
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == reference.complete(PROMPT)
    assert message.stop_reason == "max_tokens" and message.usage.output_tokens == NUM_PREDICT
    assert message.usage.input_tokens == len(reference.llama.tokenize(PROMPT.encode(), add_bos=False, special=True))


def test_stream_events(client, reference):
    with client.messages.stream(model=MODEL, max_tokens=NUM_PREDICT, extra_body=GREEDY, system=SYSTEM,
                                messages=[{"role": "user", "content": [{"type": "text",
                                                                        "text": "Count from 1 to 10."}]}]) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    assert final.content[0].text == reference.complete(PROMPT)
    assert final.stop_reason == "max_tokens"


def test_a_stop_sequence_that_ends_the_answer_is_named(client, reference):
    expected = reference.complete(PROMPT)
    assert "3" in expected, expected  # the greedy count reaches 3 within NUM_PREDICT tokens
    request = {"model": MODEL, "max_tokens": NUM_PREDICT, "extra_body": GREEDY, "system": SYSTEM,
               "messages": [{"role": "user", "content": "Count from 1 to 10."}]}
    message = client.messages.create(**request, stop_sequences=["never said", "3"])
    assert message.stop_reason == "stop_sequence" and message.stop_sequence == "3"
    assert message.content[0].text == expected[:expected.index("3")]
    with client.messages.stream(**request, stop_sequences=["3"]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == "3"
    assert final.content[0].text == expected[:expected.index("3")]
    unmatched = client.messages.create(**request, stop_sequences=["never said"])
    assert unmatched.stop_reason == "max_tokens" and unmatched.stop_sequence is None


def test_tool_use_round_trip(client):
    message = client.messages.create(model=MODEL, max_tokens=60, extra_body=GREEDY, tools=[WEATHER],
                                     tool_choice={"type": "tool", "name": "get_weather"},
                                     messages=[{"role": "user", "content": "Weather in Paris?"}])
    assert message.stop_reason == "tool_use"
    (use,) = [block for block in message.content if block.type == "tool_use"]
    assert use.name == "get_weather" and isinstance(use.input["city"], str) and use.id.startswith("toolu_")
    answer = client.messages.create(model=MODEL, max_tokens=NUM_PREDICT, extra_body=GREEDY, tools=[WEATHER],
                                    tool_choice={"type": "none"}, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": [block.model_dump() for block in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "sunny"}]}])
    assert answer.content[0].type == "text" and answer.stop_reason in ("end_turn", "max_tokens")


def test_streamed_tool_use(client):
    with client.messages.stream(model=MODEL, max_tokens=60, extra_body=GREEDY, tools=[WEATHER],
                                tool_choice={"type": "any"},
                                messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use" and final.content[-1].type == "tool_use"
    assert isinstance(final.content[-1].input["city"], str)


def test_count_tokens(client, reference):
    count = client.messages.count_tokens(model=MODEL, system=SYSTEM,
                                         messages=[{"role": "user", "content": "Count from 1 to 10."}])
    assert count.input_tokens == len(reference.llama.tokenize(PROMPT.encode(), add_bos=False, special=True))


def test_errors_are_anthropic_shaped(client, live_server):
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(model="nope", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=MODEL, max_tokens=4, thinking={"type": "enabled", "budget_tokens": 1024},
                               messages=[{"role": "user", "content": "hi"}])
    assert "thinking" in str(info.value)
    response = httpx.post(live_server.url + "/v1/messages", json={"model": MODEL, "messages": []},
                          headers={"Authorization": "Bearer x"}, timeout=30)
    assert response.status_code == 400
    assert response.json()["type"] == "error" and response.json()["error"]["type"] == "invalid_request_error"
