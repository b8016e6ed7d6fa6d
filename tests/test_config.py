"""Settings: declared once, LOKAL_* over OLLAMA_* over defaults, flags over all, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from lokal.config import SETTINGS, Settings, parse_duration, parse_host
from lokal.errors import ConfigError


def test_defaults_are_ollamas():
    settings = Settings(environ={})
    assert settings.host == ("127.0.0.1", 11434)
    assert settings.models == Path("~/.lokal/models").expanduser()
    assert settings.keep_alive == 300.0
    assert settings.max_queue == 512
    assert settings.num_parallel == 4
    assert settings.context_length is None
    assert settings.flash_attention is None  # auto: see lokal.engine.cpu_build
    assert settings.kv_cache_type == "f16"
    assert settings.prompt_cache == 512
    assert settings.source("LOKAL_HOST") == "default"


def test_ollama_aliases_are_accepted_and_lokal_wins():
    settings = Settings(environ={"OLLAMA_HOST": "0.0.0.0:8080", "OLLAMA_NUM_PARALLEL": "2",
                                 "LOKAL_NUM_PARALLEL": "8", "OLLAMA_MODELS": "/tmp/ollama-models"})
    assert settings.host == ("0.0.0.0", 8080)
    assert settings.source("LOKAL_HOST") == "OLLAMA_HOST"
    assert settings.num_parallel == 8
    assert settings.source("LOKAL_NUM_PARALLEL") == "LOKAL_NUM_PARALLEL"
    assert settings.models == Path("/tmp/ollama-models")
    assert settings.base_url == "http://127.0.0.1:8080"


def test_flags_override_environment():
    settings = Settings(environ={"LOKAL_KEEP_ALIVE": "10m"}, overrides={"keep_alive": "-1"})
    assert settings.keep_alive == -1.0
    assert settings.source("LOKAL_KEEP_ALIVE") == "flag"


def test_every_setting_has_a_description_and_parses_its_default():
    settings = Settings(environ={})
    rows = settings.rows()
    assert [row[0] for row in rows] == [s.name for s in SETTINGS]
    assert all(row[3] for row in rows)


@pytest.mark.parametrize("raw,seconds", [("5m", 300), ("1h30m", 5400), ("90s", 90), ("300", 300),
                                         ("-1", -1), ("0", 0), ("250ms", 0.25), (42, 42)])
def test_durations(raw, seconds):
    assert parse_duration(raw) == seconds


@pytest.mark.parametrize("raw", ["five minutes", "5x", "m5", ""])
def test_bad_durations_say_what_is_wrong(raw):
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(raw)


@pytest.mark.parametrize("raw,expected", [("http://localhost:1234", ("localhost", 1234)),
                                          ("0.0.0.0", ("0.0.0.0", 11434)), ("[::1]:9000", ("::1", 9000)),
                                          (":8000", ("127.0.0.1", 8000))])
def test_hosts(raw, expected):
    assert parse_host(raw) == expected


def test_invalid_values_name_the_variable():
    with pytest.raises(ConfigError, match="OLLAMA_NUM_PARALLEL"):
        Settings(environ={"OLLAMA_NUM_PARALLEL": "many"})
    with pytest.raises(ConfigError, match="LOKAL_KEEP_ALIVE"):
        Settings(environ={"LOKAL_KEEP_ALIVE": "soon"})
    with pytest.raises(ConfigError, match="at least 1"):
        Settings(environ={"LOKAL_NUM_PARALLEL": "0"})
    with pytest.raises(ConfigError, match="OLLAMA_KV_CACHE_TYPE: expected one of f16, q8_0, q4_0"):
        Settings(environ={"OLLAMA_KV_CACHE_TYPE": "fp8"})
    with pytest.raises(ConfigError, match="LOKAL_PROMPT_CACHE must be 0 or more"):
        Settings(environ={"LOKAL_PROMPT_CACHE": "-1"})


def test_kv_cache_type_takes_ollamas_variable_in_any_case():
    assert Settings(environ={"OLLAMA_KV_CACHE_TYPE": "F16"}).kv_cache_type == "f16"


def test_flash_attention_is_auto_unless_set():
    assert Settings(environ={"LOKAL_FLASH_ATTENTION": "auto"}).flash_attention is None
    assert Settings(environ={"OLLAMA_FLASH_ATTENTION": "1"}).flash_attention is True
    assert Settings(environ={"LOKAL_FLASH_ATTENTION": "false"}).flash_attention is False
    with pytest.raises(ConfigError):
        Settings(environ={"LOKAL_FLASH_ATTENTION": "sometimes"}).flash_attention
