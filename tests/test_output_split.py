"""Splitting generated text into thinking, tool calls and content, fed in every possible chunking (the
stream may cut a marker anywhere), and the built-in tools templates' rendering of a tool round trip."""

from __future__ import annotations

import json

import pytest

from lokal.errors import BadRequest
from lokal.output import OutputSplitter, ThinkSplitter
from lokal.templates import ChatTemplate
from lokal.tool_calls import ToolCallParser, forced_call_schema
from lokal.types import Logprob, Token

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Current weather",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}
CALL = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}


@pytest.fixture(scope="module")
def smollm2_template(smollm2_path) -> str:
    from lokal.store.gguf_info import read_details

    return read_details(smollm2_path).chat_template


def chunkings(text: str):
    """Every split of ``text`` into two pieces, and one character at a time."""
    for cut in range(len(text) + 1):
        yield [text[:cut], text[cut:]]
    yield list(text)


def run_tools(fmt, text_chunks, forced=False):
    parser = ToolCallParser(fmt, forced=forced)
    content = "".join(parser.feed(chunk) for chunk in text_chunks) + parser.finish()
    return content, parser.calls


@pytest.mark.parametrize("chunks", list(chunkings('Let me see. <tool_call>\n{"name": "get_weather", '
                                                  '"arguments": {"city": "Paris"}}\n</tool_call>')))
def test_hermes_call_in_any_chunking(chunks):
    content, calls = run_tools("hermes", chunks)
    assert calls == [CALL]
    assert content == "Let me see. "


def test_hermes_parallel_calls_and_text_that_only_looks_like_a_tag():
    text = ('<tool_call>{"name": "a", "arguments": {}}</tool_call><tool_call>{"name": "b", "arguments": '
            '"{\\"x\\": 1}"}</tool_call> x < y <tool')
    content, calls = run_tools("hermes", list(text))
    assert [c["function"]["name"] for c in calls] == ["a", "b"] and calls[1]["function"]["arguments"] == {"x": 1}
    assert content == " x < y <tool"  # an unfinished tag at the very end is text after all


def test_unparsable_call_is_text_without_markup():
    content, calls = run_tools("hermes", ["<tool_call>not json</tool_call>"])
    assert calls == [] and content == "not json" and "<tool_call>" not in content


@pytest.mark.parametrize("fmt,text", [("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
                                      ("llama3", '<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'),
                                      ("mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]')])
def test_whole_reply_formats(fmt, text):
    for chunks in chunkings(text):
        assert run_tools(fmt, chunks) == ("", [CALL])


def test_llama3_plain_answer_passes_through():
    assert run_tools("llama3", list("Paris is sunny.")) == ("Paris is sunny.", [])


def test_forced_reply_is_one_bare_call():
    assert run_tools("hermes", ['{"name": "get_weather",', ' "arguments": {"city": "Paris"}}'], forced=True) == ("", [CALL])


def test_forced_schema():
    schema = forced_call_schema([WEATHER], "required")
    assert schema["properties"]["name"] == {"const": "get_weather"}
    assert schema["properties"]["arguments"] == WEATHER["function"]["parameters"]
    assert forced_call_schema([WEATHER], "auto") is None and forced_call_schema([WEATHER], "none") is None
    other = {"type": "function", "function": {"name": "other"}}
    assert "anyOf" in forced_call_schema([WEATHER, other], "required")
    assert forced_call_schema([WEATHER, other], "other")["properties"]["name"] == {"const": "other"}
    with pytest.raises(BadRequest, match="not among the tools"):
        forced_call_schema([WEATHER], "missing")


@pytest.mark.parametrize("chunks", list(chunkings("<think>Two and two.</think>\n\nFour.")))
def test_think_split_in_any_chunking(chunks):
    splitter = ThinkSplitter()
    pieces = [splitter.feed(chunk) for chunk in chunks] + [splitter.finish()]
    assert "".join(p[0] for p in pieces) == "Two and two."
    assert "".join(p[1] for p in pieces) == "Four."


def test_think_opened_by_the_prompt_and_never_closed():
    splitter = ThinkSplitter(in_thinking=True)
    pieces = [splitter.feed("still "), splitter.feed("thinking</thi"), splitter.finish()]
    assert "".join(p[0] for p in pieces) == "still thinking</thi" and not "".join(p[1] for p in pieces)


def test_no_think_block_is_all_content():
    splitter = ThinkSplitter()
    assert splitter.feed(" Hello") == ("", " Hello") and splitter.feed("<think>") == ("", "<think>")


def test_output_splitter_combines_thinking_and_calls():
    splitter = OutputSplitter(ThinkSplitter(), ToolCallParser("hermes"))
    tokens = [splitter.feed(Token(text=piece, ids=[])) for piece in
              ["<think>need", " weather</think>", '<tool_call>{"name": "get_weather", ',
               '"arguments": {"city": "Paris"}}</tool_call>']] + [splitter.finish()]
    assert "".join(t.thinking for t in tokens) == "need weather"
    assert "".join(t.text for t in tokens) == ""
    assert [call for t in tokens for call in t.tool_calls or ()] == [CALL]


def test_logprobs_of_held_back_markup_come_out_with_the_next_piece_and_none_are_lost():
    splitter = OutputSplitter(ThinkSplitter())
    pieces = ["<th", "ink>", "hm", "</think>", " Yes", "."]
    logprobs = [Logprob(token=piece, logprob=-float(i), piece=piece.encode()) for i, piece in enumerate(pieces)]
    tokens = [splitter.feed(Token(text=piece, ids=[i], logprobs=[logprob]))
              for i, (piece, logprob) in enumerate(zip(pieces, logprobs))] + [splitter.finish()]
    shown = [t for t in tokens if t.text or t.thinking]
    # "<th" and "ink>" show nothing (they might be, then are, the opening tag): theirs wait for "hm".
    assert [(t.thinking, t.text, [lp.token for lp in t.logprobs], t.ids) for t in shown] == [
        ("hm", "", ["<th", "ink>", "hm"], [0, 1, 2]), ("", "Yes", ["</think>", " Yes"], [3, 4]),
        ("", ".", ["."], [5])]
    plain = OutputSplitter(ThinkSplitter())
    assert plain.feed(Token(text="no logprobs", ids=[1])).logprobs is None


# ---- templates --------------------------------------------------------------------------------------------

ROUND_TRIP = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "", "tool_calls": [CALL]},
              {"role": "tool", "content": "sunny, 21 C", "tool_name": "get_weather"}]


def test_smollm2_gets_the_hermes_tools_template(smollm2_template):
    template = ChatTemplate.from_model(smollm2_template)
    assert template.supports_tools and template.tool_format == "hermes" and not template.mentions_tools
    plain = template.render([{"role": "user", "content": "Hi"}])
    assert plain == ChatTemplate.from_model(smollm2_template, None).render([{"role": "user", "content": "Hi"}])
    assert "<tools>" not in plain and "You are a helpful AI assistant named SmolLM" in plain
    text = template.render(ROUND_TRIP, tools=[WEATHER])
    assert json.dumps(WEATHER) in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in text
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("source,architecture,fmt,call_text", [
    ("{{ '<|start_header_id|>' }}", "llama", "llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}'),
    ("{{ '[INST]' }}", "llama", "mistral", '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]'),
    (None, "gemma3", "hermes", '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'),
])
def test_family_templates(source, architecture, fmt, call_text):
    template = ChatTemplate.from_model(source, architecture=architecture)
    assert template.tool_format == fmt
    text = template.render(ROUND_TRIP, tools=[WEATHER], bos_token="<s>", eos_token="</s>")
    assert call_text in text and "sunny, 21 C" in text and '"get_weather"' in text
    # The model's own call, as the template shows it, parses back into the same call.
    assert run_tools(fmt, [call_text]) == ("", [CALL])


def test_modelfile_template_without_tools_has_none():
    assert not ChatTemplate.from_model(None, "{{ .Prompt }}").supports_tools
    go = ChatTemplate.from_model(None, "{{ if .Tools }}<tool_call>{{ end }}{{ .Prompt }}")
    assert go.supports_tools and go.tool_format == "hermes"


def test_thinking_capability():
    assert ChatTemplate.from_model(None, "{{ .Prompt }}{{ if .Think }}<think>{{ end }}").supports_thinking
    assert ChatTemplate.from_model("{% if enable_thinking %}x{% endif %}").supports_thinking
    assert not ChatTemplate.from_model(None, "{{ .Prompt }}").supports_thinking
