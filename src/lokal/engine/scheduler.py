"""Which tokens each engine step computes. Pure Python: it decides from counters and returns data.

Every step: one token for each request that is generating, then prefill chunks of admitted requests, in
admission order, within the ``num_batch`` token budget. A long prompt therefore never holds running
streams back for more than one chunk. After the step, ``update(plan)`` records what it computed. Waiting
requests are admitted first-come first-served when a slot is free; the slot table picks the slot (prefix
reuse) and says how much of the prompt is already computed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lokal.engine.kv import SlotTable
from lokal.engine.request import Chunk, Request


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
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []  # in admission order
        self.num_reused_tokens = 0  # prompt tokens prefix reuse saved, all requests together (metrics)

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def plan(self) -> StepPlan:
        self._admit()
        budget = self.num_batch
        chunks: list[Chunk] = []
        for request in self.running:  # generating requests first: one token each
            if not request.is_prefilling and budget > 0:
                chunks.append(Chunk(request, request.num_computed, request.num_computed + 1))
                budget -= 1
        for request in self.running:  # then prompts, oldest first, as much as the budget allows
            if request.is_prefilling and budget > 0:
                size = min(request.num_uncomputed, budget)
                chunks.append(Chunk(request, request.num_computed, request.num_computed + size))
                budget -= size
        return StepPlan(chunks)

    def update(self, plan: StepPlan) -> None:
        """Record that a step computed ``plan``: each chunk's tokens now have their KV in the slot."""
        for chunk in plan.chunks:
            chunk.request.num_computed = chunk.end

    def finish(self, request: Request) -> None:
        """Take a request out (done, cancelled or failed); its slot keeps the KV it computed."""
        if request.slot is None:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
            return
        self.running.remove(request)
        self.slots.release(request.slot, request.tokens[:request.num_computed])
        request.slot = None

    def _admit(self) -> None:
        while self.waiting:
            lease = self.slots.acquire(self.waiting[0].tokens)
            if lease is None:
                return
            request = self.waiting.popleft()
            request.slot = lease.slot
            request.num_computed = request.num_reused = lease.num_reused
            self.num_reused_tokens += lease.num_reused
            self.running.append(request)
