"""Incremental detokenizing: UTF-8 never split, stop strings held back and cut, on fake and real pieces."""

from __future__ import annotations

import pytest

from lokal.engine import Engine, EngineConfig
from lokal.engine.detok import Detokenizer

MIXED = "Grüße 👋🏽 from 東京 — 日本語のテキスト and 🎉🚀 done."


def pieces_from(chunks: list[bytes]):
    """A fake vocabulary where token i is ``chunks[i]``."""
    return lambda token: chunks[token]


def run(detok: Detokenizer, num_tokens: int) -> list[str]:
    return [detok.add(token) for token in range(num_tokens)]


def test_a_character_split_over_tokens_comes_out_whole_once_complete():
    emoji = "👋".encode()  # 4 bytes
    chunks = [b"hi ", emoji[:1], emoji[1:3], emoji[3:], b"!"]
    detok = Detokenizer(pieces_from(chunks))
    assert run(detok, len(chunks)) == ["hi ", "", "", "👋", "!"]


def test_an_unfinished_character_at_the_end_becomes_a_replacement_character():
    detok = Detokenizer(pieces_from([b"ok", "東".encode()[:2]]))
    assert run(detok, 2) == ["ok", ""]
    assert detok.flush() == "\ufffd"


def test_a_stop_string_spanning_tokens_is_cut_with_everything_after_it():
    chunks = [b"Hello", b" wor", b"ld", b"! More", b" text"]
    detok = Detokenizer(pieces_from(chunks), stop=["world!"])
    out = run(detok, len(chunks))
    assert out == ["Hello", " ", "", "", ""]  # "wor" and "world" could still be the stop: held back
    assert detok.is_stopped and detok.flush() == ""
    assert detok.matched_stop == "world!"


def test_text_that_only_looked_like_a_stop_is_released_once_it_cannot_be_one():
    chunks = [b"the wor", b"m turns"]
    detok = Detokenizer(pieces_from(chunks), stop=["world"])
    assert run(detok, 2) == ["the ", "worm turns"]
    assert not detok.is_stopped and detok.matched_stop is None


def test_held_text_is_released_at_the_end():
    detok = Detokenizer(pieces_from([b"answer: STO"]), stop=["STOP"])
    assert run(detok, 1) == ["answer: "]
    assert detok.flush() == "STO"


def test_the_earliest_of_several_stop_strings_wins():
    detok = Detokenizer(pieces_from([b"a<end>b</s>c"]), stop=["</s>", "<end>"])
    assert run(detok, 1) == ["a"]
    assert detok.matched_stop == "<end>"


def test_a_stop_inside_a_multibyte_character_sequence():
    star = "⭐".encode()
    chunks = [b"x", star[:2], star[2:], b"y"]
    detok = Detokenizer(pieces_from(chunks), stop=["⭐"])
    assert "".join(run(detok, len(chunks))) == "x"
    assert detok.is_stopped


def test_leading_space_is_stripped_only_when_asked_and_only_once():
    chunks = [b" Hello", b" world"]
    assert "".join(run(Detokenizer(pieces_from(chunks), strip_leading_space=True), 2)) == "Hello world"
    assert "".join(run(Detokenizer(pieces_from(chunks)), 2)) == " Hello world"


def test_empty_stop_strings_are_ignored():
    detok = Detokenizer(pieces_from([b"abc"]), stop=[""])
    assert run(detok, 1) == ["abc"]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    with Engine(smollm2_path, EngineConfig(num_ctx=256, num_parallel=1)) as engine:
        yield engine


def test_real_tokenizer_emoji_and_cjk_are_never_split(engine):
    ids = engine.tokenize(MIXED, add_special=False, parse_special=False)
    pieces = [engine.token_piece(token) for token in ids]

    def is_valid(piece: bytes) -> bool:
        try:
            piece.decode("utf-8")
            return True
        except UnicodeDecodeError:
            return False

    assert not all(is_valid(piece) for piece in pieces), "the sample must split characters over tokens"
    detok = Detokenizer(engine.token_piece)
    emitted = [detok.add(token) for token in ids] + [detok.flush()]
    assert all("\ufffd" not in chunk for chunk in emitted)
    assert "".join(emitted) == engine.detokenize(ids) == MIXED


def test_real_tokenizer_stop_string_on_a_character_split_over_tokens(engine):
    ids = engine.tokenize(MIXED, add_special=False, parse_special=False)
    detok = Detokenizer(engine.token_piece, stop=["東京"])
    emitted = "".join(detok.add(token) for token in ids)
    assert detok.is_stopped and emitted == MIXED[:MIXED.index("東京")]
