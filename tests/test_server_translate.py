"""The API translations, without a server: wire types → the one internal request, error texts, the SDK's
parsing of answers. Each case is a request an official client really sends (or a mistake people make)."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from lokal import types as internal
from lokal.client import _END, _parse_line, base_url, error_from
from lokal.errors import BadRequest, Cancelled, LokalError, ModelNotFound, ServerBusy
from lokal.server import ollama_api, openai_api
from lokal.server import ollama_types as ollama_wire
from lokal.server import openai_types as openai_wire
from lokal.server.app import validation_message
from lokal.server.streaming import Answer


def ollama_generate(**fields) -> internal.GenerateRequest:
    return ollama_api.to_generate_request(ollama_wire.GenerateRequest.model_validate({"model": "smollm2", **fields}))


def ollama_chat(**fields) -> internal.GenerateRequest:
    return ollama_api.to_chat_request(ollama_wire.ChatRequest.model_validate({"model": "smollm2", **fields}))


def openai_chat(**fields) -> internal.GenerateRequest:
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], **fields}
    return openai_api.to_chat_request(openai_wire.ChatCompletionRequest.model_validate(body))


# ---- Ollama -------------------------------------------------------------------------------------------------


def test_generate_fields_reach_the_internal_request():
    request = ollama_generate(prompt="Why?", system="Be brief.", template="{{ .Prompt }}", suffix="end",
                              raw=True, context=[1, 2, 3], format="json", options={"temperature": 0},
                              keep_alive="5m")
    assert (request.prompt, request.system, request.template, request.suffix) == ("Why?", "Be brief.",
                                                                                   "{{ .Prompt }}", "end")
    assert request.raw is True and request.context == [1, 2, 3] and request.format == "json"
    assert request.options == {"temperature": 0}
    assert request.keep_alive == 300.0


@pytest.mark.parametrize("keep_alive, seconds", [("1h30m", 5400.0), (90, 90.0), (-1, -1.0), (0, 0.0), ("0", 0.0)])
def test_keep_alive_accepts_durations_numbers_forever_and_zero(keep_alive, seconds):
    assert ollama_generate(prompt="x", keep_alive=keep_alive).keep_alive == seconds


def test_keep_alive_that_is_not_a_duration_is_a_clear_400():
    with pytest.raises(BadRequest, match="invalid keep_alive"):
        ollama_generate(prompt="x", keep_alive="soon")


def test_empty_prompt_means_load_and_empty_format_means_none():
    request = ollama_generate(prompt="", format="")
    assert request.prompt is None and request.messages is None and request.format is None


def test_json_schema_format_passes_through():
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}, "required": ["age"]}
    assert ollama_generate(prompt="x", format=schema).format == schema


def test_images_are_decoded_and_bad_base64_is_a_400():
    png = b"\x89PNG\r\n\x1a\nrest"
    request = ollama_generate(prompt="What is this?", images=[base64.b64encode(png).decode()])
    assert request.images == [png]
    with pytest.raises(BadRequest, match="image 0 is not valid base64"):
        ollama_generate(prompt="x", images=["not base64!"])


def test_chat_messages_tools_and_tool_results():
    tool = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    request = ollama_chat(messages=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "1+2?"},
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "add", "arguments": {"a": 1}}}]},
        {"role": "tool", "content": "3", "tool_name": "add"},
    ], tools=[tool])
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert request.messages[2].tool_calls == [{"function": {"name": "add", "arguments": {"a": 1}}}]
    assert request.messages[3].tool_name == "add"
    assert request.tools == [tool] and request.prompt is None


def test_the_official_clients_empty_tool_list_means_no_tools_and_no_messages_means_load():
    request = ollama_chat(messages=[], tools=[])
    assert request.tools is None and request.messages is None


def test_unknown_role_unknown_field_and_missing_model_are_refused_with_readable_messages():
    with pytest.raises(ValidationError) as role:
        ollama_wire.ChatRequest.model_validate({"model": "m", "messages": [{"role": "robot", "content": "x"}]})
    assert "messages.0.role" in validation_message(role.value.errors())
    with pytest.raises(ValidationError) as typo:
        ollama_wire.GenerateRequest.model_validate({"model": "m", "promt": "x"})
    assert validation_message(typo.value.errors()) == "unknown field 'promt'"
    with pytest.raises(ValidationError) as missing:
        ollama_wire.GenerateRequest.model_validate({"prompt": "x"})
    assert validation_message(missing.value.errors()) == "model is required"
    with pytest.raises(ValidationError) as wrong_type:
        ollama_wire.GenerateRequest.model_validate({"model": "m", "stream": "yes please"})
    assert validation_message(wrong_type.value.errors()).startswith("invalid stream:")


def test_deprecated_name_field_is_accepted_for_model():
    assert ollama_wire.PullRequest.model_validate({"name": "smollm2"}).model == "smollm2"
    create = ollama_wire.CreateRequest.model_validate({"model": "mine", "from": "smollm2"})
    assert create.from_ == "smollm2"


def test_think_values():
    assert ollama_generate(prompt="x", think=True).think is True
    assert ollama_chat(messages=[], think="high").think == "high"
    assert ollama_generate(prompt="x", think=False).prompt == "x"
    with pytest.raises(BadRequest, match="think must be"):
        ollama_generate(prompt="x", think="very")


def test_logprobs_fields_become_the_number_of_alternatives_or_none():
    user = [{"role": "user", "content": "x"}]
    assert ollama_chat(messages=user).logprobs is None
    assert ollama_chat(messages=user, logprobs=True).logprobs == 0
    assert ollama_generate(prompt="x", logprobs=True, top_logprobs=20).logprobs == 20
    assert ollama_generate(prompt="x", top_logprobs=3).logprobs is None  # Ollama ignores it without logprobs
    assert openai_chat(logprobs=True, top_logprobs=2).logprobs == 2
    assert openai_chat(logprobs=False).logprobs is None
    completion = openai_wire.CompletionRequest.model_validate({"model": "m", "prompt": "x", "logprobs": 0})
    assert openai_api.to_completion_request(completion).logprobs == 0
    for wire_type, fields in ((ollama_wire.ChatRequest, {"messages": user, "logprobs": True, "top_logprobs": 21}),
                              (openai_wire.ChatCompletionRequest, {"messages": user, "logprobs": True,
                                                                   "top_logprobs": -1}),
                              (openai_wire.CompletionRequest, {"prompt": "x", "logprobs": 6})):
        with pytest.raises(ValidationError):
            wire_type.model_validate({"model": "m", **fields})


def test_final_object_leaves_out_zero_metrics_like_ollama():
    done = internal.Done(reason="stop", prompt_eval_count=5, eval_count=3, eval_duration=10, context=[1, 2])
    body = ollama_api.GenerateRenderer("smollm2").final(done, Answer("Hello"))
    assert body["response"] == "Hello" and body["done"] is True and body["done_reason"] == "stop"
    assert body["context"] == [1, 2] and body["prompt_eval_count"] == 5 and "load_duration" not in body
    line = json.loads(ollama_api.ChatRenderer("smollm2").token(internal.Token(text="Hi", ids=[1])))
    assert line["message"] == {"role": "assistant", "content": "Hi"} and line["done"] is False
    # A prompt answered from the cache computes nothing; the count is still there, 0, for clients that add it up.
    repeat = internal.Done(reason="stop", prompt_count=4, prompt_eval_count=0, prompt_eval_duration=9, eval_count=3)
    assert ollama_api.GenerateRenderer("smollm2").final(repeat, Answer("Hi"))["prompt_eval_count"] == 0


# ---- OpenAI -------------------------------------------------------------------------------------------------


def test_openai_sampling_fields_become_ollama_options_over_the_options_extension():
    request = openai_chat(temperature=0, top_p=0.5, max_tokens=7, seed=3, stop="\n", frequency_penalty=0.1,
                          presence_penalty=0.2, options={"num_ctx": 1024, "temperature": 0.9})
    assert request.options == {"num_ctx": 1024, "temperature": 0, "top_p": 0.5, "num_predict": 7, "seed": 3,
                               "frequency_penalty": 0.1, "presence_penalty": 0.2, "stop": ["\n"]}


def test_max_completion_tokens_wins_and_unset_fields_stay_unset():
    request = openai_chat(max_tokens=7, max_completion_tokens=9)
    assert request.options == {"num_predict": 9}
    assert openai_chat().options == {}


@pytest.mark.parametrize("response_format, expected", [
    ({"type": "text"}, None),
    ({"type": "json_object"}, "json"),
    ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": True}},
     {"type": "object"}),
])
def test_response_format_becomes_format(response_format, expected):
    assert openai_chat(response_format=response_format).format == expected


def test_content_parts_developer_role_and_tool_results():
    png = b"\x89PNG\r\n"
    data_url = "data:image/png;base64," + base64.b64encode(png).decode()
    request = openai_chat(messages=[
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "this?"},
                                     {"type": "image_url", "image_url": {"url": data_url}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": "{\"x\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ])
    system, user, assistant, tool = request.messages
    assert system.role == "system" and user.content == "What is\nthis?" and user.images == [png]
    assert assistant.tool_calls == [{"function": {"name": "look", "arguments": {"x": 1}}}]
    assert tool.tool_name == "look" and tool.content == "a cat"


@pytest.mark.parametrize("fields, message", [
    ({"n": 2}, "n > 1"),
    ({"top_logprobs": 2}, "top_logprobs needs logprobs"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}]}]},
     "data: URL"),
    ({"response_format": {"type": "xml"}}, "response_format"),
])
def test_what_openai_clients_may_ask_that_lokal_cannot_do_is_a_clear_400(fields, message):
    with pytest.raises(BadRequest, match=message):
        openai_chat(**fields)


def test_openai_request_needs_messages_and_refuses_unknown_fields():
    with pytest.raises(ValidationError):
        openai_wire.ChatCompletionRequest.model_validate({"model": "m", "messages": []})
    with pytest.raises(ValidationError) as typo:
        openai_wire.ChatCompletionRequest.model_validate({"model": "m", "messages": [{"role": "user", "content": "x"}],
                                                          "temprature": 0})
    assert validation_message(typo.value.errors()) == "unknown field 'temprature'"


def test_legacy_completion_is_raw_unless_it_fills_in_the_middle():
    plain = openai_api.to_completion_request(openai_wire.CompletionRequest(model="m", prompt=["Once"]))
    assert plain.prompt == "Once" and plain.raw is True
    middle = openai_api.to_completion_request(openai_wire.CompletionRequest(model="m", prompt="def f(", suffix=")"))
    assert middle.raw is False and middle.suffix == ")"
    with pytest.raises(BadRequest, match="one request per prompt"):
        openai_api.to_completion_request(openai_wire.CompletionRequest(model="m", prompt=["a", "b"]))


def test_sse_stream_ends_with_done_and_carries_usage_when_asked():
    renderer = openai_api.CompletionRenderer("smollm2", chat=True, include_usage=True)
    first = renderer.token(internal.Token(text="Hi", ids=[1]))
    last = renderer.done(internal.Done(reason="length", prompt_count=4, prompt_eval_count=4, eval_count=1))
    parts = [part for part in (first + last).split(b"\n\n") if part and part != b"data: [DONE]"]
    events = [json.loads(part[len(b"data: "):]) for part in parts]
    assert (first + last).endswith(b"data: [DONE]\n\n")
    assert events[0]["choices"][0]["delta"]["content"] == "Hi"
    assert events[1]["choices"][0]["finish_reason"] == "length"
    assert events[2]["choices"] == [] and events[2]["usage"] == {"prompt_tokens": 4, "completion_tokens": 1,
                                                                 "total_tokens": 5}
    assert len({event["id"] for event in events}) == 1


def test_openai_error_object_shape():
    body = openai_wire.error_body(404, 'model "x" not found', code="model_not_found")
    assert body == {"error": {"message": 'model "x" not found', "type": "not_found_error", "param": None,
                              "code": "model_not_found"}}


# ---- the SDK's reading of answers ---------------------------------------------------------------------------


def test_sdk_maps_statuses_to_typed_errors():
    assert isinstance(error_from(404, '{"error": "model \\"x\\" not found"}'), ModelNotFound)
    assert isinstance(error_from(503, '{"error": "busy"}'), ServerBusy)
    assert isinstance(error_from(499, '{"error": "gone"}'), Cancelled)
    bad = error_from(413, '{"error": {"message": "too large", "type": "invalid_request_error"}}')
    assert isinstance(bad, BadRequest) and bad.status == 413 and bad.message == "too large"
    assert error_from(500, "plain text").message == "plain text"


def test_sdk_reads_ndjson_and_sse_lines_and_raises_in_band_errors():
    assert _parse_line("ndjson", '{"response": "a", "done": false}') == {"response": "a", "done": False}
    assert _parse_line("sse", ": keep-alive") is None
    assert _parse_line("sse", "data: [DONE]") is _END
    with pytest.raises(LokalError, match="model unloaded"):
        _parse_line("ndjson", '{"error": "model unloaded"}')
    with pytest.raises(LokalError, match="boom"):
        _parse_line("sse", 'data: {"error": {"message": "boom", "type": "api_error"}}')


@pytest.mark.parametrize("host, url", [("127.0.0.1:11435", "http://127.0.0.1:11435"),
                                       ("http://localhost", "http://localhost:11434"),
                                       ("[::1]:9000", "http://[::1]:9000")])
def test_sdk_host_forms(host, url):
    assert base_url(host) == url


def test_null_fields_and_options_mean_unset():
    request = ollama_chat(messages=[{"role": "user", "content": "x", "images": None}], stream=None, format=None,
                          options={"num_gpu": None, "temperature": None, "stop": None})
    assert request.format is None and request.messages[0].images is None
    sampling, load = internal.split_options(request.options, internal.SamplingOptions(stop=["END"]))
    assert load.num_gpu == -1 and sampling.temperature == 0.8 and sampling.stop == ["END"]
    assert ollama_wire.ChatRequest.model_validate({"model": "m", "stream": None}).stream is True
    assert openai_chat(temperature=None, stop=None).options == {}
