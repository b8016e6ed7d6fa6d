"""Modelfile parsing and rendering: Ollama's syntax, errors that name the line, parse(render(m)) == m."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lokal.modelfile import (MAX_MODELFILE_BYTES, MESSAGE_ROLES, PARAMETER_TYPES, Modelfile, ModelfileError, parse,
                             render)

# The seed's enterprise-assistant Modelfile, verbatim but for FROM (a model that exists here).
ENTERPRISE = '''FROM smollm2

PARAMETER temperature 0.7
PARAMETER top_p 0.9
PARAMETER context_length 4096
PARAMETER num_gpu 1
PARAMETER num_thread 8

SYSTEM """
You are an enterprise assistant for Contoso Corporation.
Always maintain a professional tone and prioritize security best practices.
Never share confidential information without proper authentication.
"""

# Custom model knowledge (optional)
FILE ./contoso_guidelines.txt
FILE ./security_protocols.pdf
'''

SEED_TEMPLATE = '''SYSTEM """
You are a specialized enterprise assistant focused on technical documentation and code analysis.
Provide concise, accurate responses with practical examples.
"""

TEMPLATE """{{ .System }}
User: {{ .Prompt }}
Assistant: """
'''


def test_the_seed_enterprise_modelfile() -> None:
    parsed = parse(ENTERPRISE)
    assert parsed.from_ == "smollm2"
    assert parsed.parameter_dict() == {"temperature": 0.7, "top_p": 0.9, "num_ctx": 4096, "num_gpu": 1,
                                       "num_thread": 8}
    assert parsed.system.startswith("\nYou are an enterprise assistant for Contoso Corporation.\n")
    assert parsed.files == ("./contoso_guidelines.txt", "./security_protocols.pdf")


def test_the_seed_template_fragment() -> None:
    parsed = parse("FROM smollm2\n" + SEED_TEMPLATE)
    assert parsed.template == "{{ .System }}\nUser: {{ .Prompt }}\nAssistant: "
    assert "technical documentation" in parsed.system


def test_syntax_case_quotes_and_repeats() -> None:
    parsed = parse('from ./model.gguf\n'
                   '  # an indented comment\n'
                   'Parameter STOP "<|im_end|>"\n'
                   'PARAMETER stop </s>\n'
                   'parameter Use_Mmap false\n'
                   'MESSAGE user "  spaced  "\n'
                   'message Assistant """two\nlines"""\n'
                   'LICENSE MIT\nLICENSE """Apache\n2.0"""\n'
                   'ADAPTER ./lora.gguf\nREQUIRES 0.5.0\ndraft smollm2:135m\n')
    assert parsed == Modelfile(
        from_="./model.gguf", parameters=(("stop", "<|im_end|>"), ("stop", "</s>"), ("use_mmap", False)),
        messages=(("user", "  spaced  "), ("assistant", "two\nlines")), licenses=("MIT", "Apache\n2.0"),
        adapters=("./lora.gguf",), requires="0.5.0", draft="smollm2:135m")
    assert parsed.parameter_dict() == {"stop": ["<|im_end|>", "</s>"], "use_mmap": False}


@pytest.mark.parametrize("text, line, fragment", [
    ("FROM a\nBOGUS x\n", 2, "unknown instruction 'BOGUS'"),
    ("FROM a\n\nPARAMETER tempreture 1\n", 3, "unknown parameter 'tempreture'"),
    ("FROM a\nPARAMETER top_k many\n", 2, "top_k must be an integer"),
    ("FROM a\nPARAMETER temperature warm\n", 2, "temperature must be a number"),
    ("FROM a\nPARAMETER use_mmap perhaps\n", 2, "use_mmap must be true or false"),
    ("FROM a\nPARAMETER seed\n", 2, "needs a value"),
    ("FROM a\nMESSAGE robot hi\n", 2, "MESSAGE role must be one of"),
    ('FROM a\nSYSTEM """never closed\n', 2, "unterminated"),
    ('FROM a\nSYSTEM "x" y\n', 2, "unexpected text after the closing quote"),
    ("FROM a\nFROM b\n", 2, "a second FROM"),
    ("FROM\n", 1, "FROM needs a value"),
    ("FROM a\nDRAFT b\nDRAFT c\n", 3, "a second DRAFT"),
    ("FROM a\nDRAFT\n", 2, "DRAFT needs a value"),
])
def test_errors_name_the_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(ModelfileError) as caught:
        parse(text)
    assert f"line {line}:" in caught.value.message
    assert fragment in caught.value.message


def test_from_is_required_and_size_is_limited() -> None:
    with pytest.raises(ModelfileError, match="no FROM line"):
        parse("SYSTEM hi\n")
    with pytest.raises(ModelfileError, match="1 MiB"):
        parse(b"FROM a\nSYSTEM " + b"x" * MAX_MODELFILE_BYTES)


# ---- parse(render(m)) == m ----------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
# What a Modelfile can hold: a triple-quoted text has no """ and does not end with a quote.
_block_text = _text.filter(lambda t: '"""' not in t and not t.endswith('"'))
_path = _block_text.filter(lambda t: t.strip() != "")


def _parameter(name: str) -> st.SearchStrategy:
    kind = PARAMETER_TYPES[name]
    values = {int: st.integers(-2**40, 2**40), float: st.floats(allow_nan=False, allow_infinity=False),
              bool: st.booleans(), str: _block_text}[kind]
    return st.tuples(st.just(name), values)


_modelfiles = st.builds(
    Modelfile,
    from_=_path,
    parameters=st.lists(st.sampled_from(sorted(PARAMETER_TYPES)).flatmap(_parameter), max_size=6).map(tuple),
    template=st.none() | _block_text,
    system=st.none() | _block_text,
    adapters=st.lists(_path, max_size=2).map(tuple),
    licenses=st.lists(_block_text, max_size=2).map(tuple),
    messages=st.lists(st.tuples(st.sampled_from(MESSAGE_ROLES), _block_text), max_size=3).map(tuple),
    requires=st.none() | _path,
    files=st.lists(_path, max_size=2).map(tuple),
    draft=st.none() | _path,
)


@settings(max_examples=300, deadline=None)
@given(_modelfiles)
def test_parse_of_render_is_identity(modelfile: Modelfile) -> None:
    assert parse(render(modelfile)) == modelfile


def test_render_refuses_what_cannot_be_written() -> None:
    with pytest.raises(ModelfileError):
        render(Modelfile(from_="a", system='ends with a quote"'))
