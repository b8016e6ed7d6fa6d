"""Running one request on an in-process Engine to its end, shared by the engine tests."""

from __future__ import annotations

from lokal.engine.engine import Engine
from lokal.engine.stream import SyncSink
from lokal.types import Done, SamplingOptions, Token


def run_to_end(engine: Engine, tokens: list[int], sampling: SamplingOptions) -> tuple[list[int], Done]:
    """The generated token ids and the final Done event of one request."""
    sink = SyncSink()
    engine.submit(tokens, sampling, sink=sink)
    ids, done = [], None
    for event in sink:
        if isinstance(event, Token):
            ids += event.ids
        else:
            done = event
    assert isinstance(done, Done)
    return ids, done
