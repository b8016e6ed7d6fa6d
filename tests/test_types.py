"""Ollama's options: names, defaults, validation, sampling vs load split."""

from __future__ import annotations

import pytest

from lokal.errors import BadRequest
from lokal.types import LoadOptions, SamplingOptions, split_options


def test_defaults_match_ollama():
    sampling, load = split_options(None)
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.repeat_last_n,
            sampling.repeat_penalty, sampling.num_predict) == (0.8, 40, 0.9, 64, 1.0, -1)
    assert load.num_batch == 512 and load.num_ctx is None


def test_options_split_into_sampling_and_load():
    sampling, load = split_options({"temperature": 0, "num_ctx": 2048, "stop": ["\n"], "seed": 7,
                                    "num_thread": 2, "context_length": 1024})
    assert sampling.temperature == 0.0 and sampling.stop == ["\n"] and sampling.seed == 7
    assert load.num_thread == 2 and load.num_ctx == 1024  # the seed's `context_length` spelling


def test_request_options_override_model_parameters():
    base_sampling = SamplingOptions(temperature=0.7, stop=["<|end|>"])
    base_load = LoadOptions(num_ctx=4096)
    sampling, load = split_options({"temperature": 0.1}, base_sampling, base_load)
    assert sampling.temperature == 0.1 and sampling.stop == ["<|end|>"] and load.num_ctx == 4096
    assert base_sampling.temperature == 0.7  # bases are not mutated


@pytest.mark.parametrize("options,message", [
    ({"temperature": "hot"}, "temperature"),
    ({"top_k": 1.5}, "top_k"),
    ({"stop": [1, 2]}, "list of strings"),
    ({"temprature": 0.1}, "unknown option 'temprature'"),
    ({"top_p": 2}, "top_p"),
    ({"num_ctx": 1}, "num_ctx"),
    ({"use_mmap": "maybe"}, "use_mmap"),
])
def test_bad_options_are_clear_400s(options, message):
    with pytest.raises(BadRequest, match=message):
        split_options(options)


def test_options_must_be_an_object():
    with pytest.raises(BadRequest, match="object"):
        split_options(["temperature", 0])  # type: ignore[arg-type]


def test_options_ollama_accepts_but_llamacpp_does_not_use_are_ignored():
    sampling, _ = split_options({"mirostat": 0, "penalize_newline": True})
    assert sampling == SamplingOptions()
