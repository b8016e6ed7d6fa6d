"""Which tokens each engine step computes. Pure Python: it decides from counters and returns data.

Every step: one token for each request that is generating, then prefill chunks of admitted requests, in
admission order, within the ``num_batch`` token budget. A long prompt therefore never holds running streams
back for more than one chunk. A second prompt shares a step with the first only where that gets its first
token out sooner (``StepCost``, learned from the steps run: on a CPU hardly ever, on a GPU usually). A
request whose whole prompt was cached with the logits it ended with gets a chunk of no tokens: its first
token is sampled from those logits. After the step, ``update(plan)`` records what it computed. Waiting
requests are admitted first-come first-served when a slot is free; the slot table picks the slot (prefix
reuse) and says how much of the prompt is already computed.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from lokal.engine.kv import SlotTable
from lokal.engine.request import Chunk, Request
from lokal.engine.step_cost import StepCost


@dataclass
class StepPlan:
    chunks: list[Chunk]

    @property
    def num_tokens(self) -> int:
        return sum(chunk.num_tokens for chunk in self.chunks)


class Scheduler:
    def __init__(self, slots: SlotTable, num_batch: int, num_ctx: int = 1 << 30, num_draft: int = 0,
                 draft_max_streams: int = 1):
        """``num_draft``: most guessed tokens a generating request may add to a step (speculative decoding),
        while at most ``draft_max_streams`` requests are generating: past that the batch already keeps the
        cores busy and guesses would only add work. The guesses come from the request's ``drafter``; a DRAFT
        model's run here, on the engine thread, so planning such a step is not free."""
        if num_batch < len(slots.slots):
            # Generating streams go first; with fewer tokens than slots, prompts could wait forever.
            raise ValueError("num_batch must be at least the number of slots")
        self.slots = slots
        self.num_batch = num_batch
        self.num_ctx = num_ctx  # positions per sequence
        self.num_draft = num_draft
        self.draft_max_streams = draft_max_streams
        self.cost = StepCost()  # the engine tells it how long each step took
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
        generating = [request for request in self.running if not request.is_prefilling]
        may_draft = self.num_draft > 0 and len(generating) <= self.draft_max_streams
        for request in generating:  # generating requests first: one token each
            if request.is_first_sample_cached:  # nothing to compute: its first token comes from cached logits
                assert request.prompt_logits is not None
                chunks.append(Chunk(request, request.num_computed, request.num_computed,
                                    cached_logits=request.prompt_logits.values))
                continue
            if budget > 0:
                chunk = Chunk(request, request.num_computed, request.num_computed + 1)
                budget -= 1
                if may_draft and request.drafter is not None and not request.needs_exact_step:
                    chunk.draft = request.drafter.draft(request.tokens, self._draft_room(request, budget))
                    budget -= len(chunk.draft)
                request.needs_exact_step = False
                chunks.append(chunk)
        has_prompt = False
        for request in self.running:  # then prompts, oldest first, as much as the budget allows
            if request.is_prefilling and budget > 0:
                size = min(request.num_uncomputed, budget)
                if has_prompt and not self.cost.is_worth_sharing(size):
                    break  # its first token comes sooner in a step of its own (step_cost.py)
                chunks.append(Chunk(request, request.num_computed, request.num_computed + size))
                budget -= size
                has_prompt = True
        return StepPlan(chunks)

    def update(self, plan: StepPlan) -> None:
        """Record that a step computed ``plan``: each chunk's tokens, and the guesses the model accepted,
        now have their KV in the slot."""
        for chunk in plan.chunks:
            chunk.request.num_computed = chunk.end + chunk.num_accepted

    def _draft_room(self, request: Request, budget: int) -> int:
        """How many guesses fit: the budget, the sequence's context, and the tokens it may still generate
        (guessing past its last one would be wasted work)."""
        room = min(self.num_draft, budget, self.num_ctx - request.num_computed - 2)
        num_predict = request.sampling.num_predict
        if num_predict > 0:
            room = min(room, num_predict - request.num_generated - 1)
        return max(room, 0)

    def finish(self, request: Request) -> None:
        """Take a request out (done, cancelled or failed); its slot keeps the KV it computed."""
        if request.slot is None:
            try:
                self.waiting.remove(request)
            except ValueError:
                pass
            return
        self.running.remove(request)
        self.slots.release(request.slot, request.tokens[:request.num_computed], request.prompt_logits)
        request.slot = None

    def _admit(self) -> None:
        while self.waiting:
            lease = self.slots.acquire(self.waiting[0].tokens)
            if lease is None:
                return
            request = self.waiting.popleft()
            request.slot = lease.slot
            request.num_computed = request.num_reused = lease.num_reused
            request.prompt_logits = lease.logits
            self.num_reused_tokens += lease.num_reused
            self.running.append(request)
