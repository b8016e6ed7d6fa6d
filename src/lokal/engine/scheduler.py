"""Which tokens each engine step computes. Pure Python: it decides from counters and returns data.

Every step: one token for each sequence that is generating, then prefill chunks of admitted sequences, in
admission order, within the ``num_batch`` token budget. A long prompt therefore never holds running
streams back for more than one chunk. Waiting requests are admitted first-come first-served when a slot is
free; the slot table picks the slot (prefix reuse) and says how much of the prompt is already computed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lokal.engine.kv import SlotTable
from lokal.engine.sequence import Sequence


@dataclass(slots=True)
class Chunk:
    """Tokens ``seq.tokens[start:end]`` at positions ``start..end-1`` of the sequence's slot."""

    seq: Sequence
    start: int
    end: int

    @property
    def num_tokens(self) -> int:
        return self.end - self.start

    @property
    def needs_sample(self) -> bool:
        """It reaches the sequence's last known token, whose logits give the next token."""
        return self.end == len(self.seq.tokens)

    @property
    def is_prefill(self) -> bool:
        return self.start < self.seq.num_prompt_tokens


@dataclass
class StepPlan:
    chunks: list[Chunk]

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.chunks)


class Scheduler:
    def __init__(self, slots: SlotTable, num_batch: int):
        if num_batch < len(slots.slots):
            # Generating streams go first; with fewer tokens than slots, prompts could wait forever.
            raise ValueError("num_batch must be at least the number of slots")
        self.slots = slots
        self.num_batch = num_batch
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []  # in admission order
        self.num_reused_tokens = 0  # prompt tokens prefix reuse saved, all requests together (metrics)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def plan(self) -> StepPlan:
        self._admit()
        budget = self.num_batch
        chunks: list[Chunk] = []
        for seq in self.running:  # generating sequences first: one token each
            if not seq.is_prefilling and budget > 0:
                chunks.append(Chunk(seq, seq.num_computed, seq.num_computed + 1))
                budget -= 1
        for seq in self.running:  # then prompts, oldest first, as much as the budget allows
            if seq.is_prefilling and budget > 0:
                size = min(seq.num_uncomputed, budget)
                chunks.append(Chunk(seq, seq.num_computed, seq.num_computed + size))
                budget -= size
        return StepPlan(chunks)

    def finish(self, seq: Sequence) -> None:
        """Take a sequence out (done, cancelled or failed); its slot keeps the KV it computed."""
        if seq.slot is None:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
            return
        self.running.remove(seq)
        self.slots.release(seq.slot, seq.tokens[:seq.num_computed])
        seq.slot = None

    def _admit(self) -> None:
        while self.waiting:
            lease = self.slots.acquire(self.waiting[0].tokens)
            if lease is None:
                return
            seq = self.waiting.popleft()
            seq.slot = lease.slot
            seq.num_computed = seq.num_reused = lease.num_reused
            self.num_reused_tokens += lease.num_reused
            self.running.append(seq)
