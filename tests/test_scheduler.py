"""Scheduler and slot table without a model: budgets, FIFO admission, chunked prefill, prefix reuse."""

from __future__ import annotations

import pytest

from lokal.engine.detok import Detokenizer
from lokal.engine.kv import PromptLogits, SlotTable, common_prefix_length
from lokal.engine.scheduler import Scheduler, StepPlan
from lokal.engine.request import Request
from lokal.types import SamplingOptions


class FakeKv:
    """Stands in for the runner's KV operations: tracks how many positions each slot holds, keeps what a
    trim asks to keep (or nothing, ``can_keep_partial=False``), saves 10 bytes per position."""

    def __init__(self, can_keep_partial: bool = True, has_room: bool = True):
        self.can_keep_partial = can_keep_partial
        self.has_room = has_room
        self.held: dict[int, int] = {}  # slot -> positions in the context
        self.calls: list[tuple] = []

    def trim(self, slot: int, keep: int) -> int:
        self.calls.append(("trim", slot, keep))
        if not self.can_keep_partial:
            keep = 0
        self.held[slot] = min(self.held.get(slot, 0), keep)
        return keep

    def save_slot(self, slot: int, clear: bool = True) -> bytes:
        self.calls.append(("save", slot) if clear else ("copy", slot))
        saved = bytes(10 * self.held.get(slot, 0))
        if clear:
            self.held[slot] = 0
        return saved

    def restore_slot(self, slot: int, saved: bytes) -> bool:
        self.calls.append(("restore", slot, len(saved)))
        self.held[slot] = len(saved) // 10 if self.has_room else 0
        return self.has_room

    def compute(self, slot: int, tokens: int) -> None:
        """What a decode does: the slot now holds ``tokens`` positions."""
        self.held[slot] = tokens

    @property
    def trims(self) -> list[tuple[int, int]]:
        return [call[1:] for call in self.calls if call[0] == "trim"]


def make_seq(tokens: list[int]) -> Request:
    return Request(tokens=list(tokens), sampling=SamplingOptions(), sink=None, sampler=None,
                    detok=Detokenizer(lambda token: b""))


def make_scheduler(num_slots: int = 2, num_batch: int = 8) -> Scheduler:
    return Scheduler(SlotTable(num_slots, FakeKv()), num_batch)


def run_plan(scheduler: Scheduler, plan: StepPlan, next_token: int = 7) -> None:
    """What the engine does after a decode: the scheduler advances its counters; requests at their end get
    a token."""
    sampled = [chunk for chunk in plan.chunks if chunk.needs_sample]
    scheduler.update(plan)
    for chunk in sampled:
        chunk.request.tokens.append(next_token)


def test_a_lone_short_prompt_is_prefilled_in_one_step_then_decoded_one_token_at_a_time():
    scheduler = make_scheduler()
    seq = make_seq([1, 2, 3])
    scheduler.add(seq)
    plan = scheduler.plan()
    assert [(c.start, c.end, c.needs_sample, c.is_prefill) for c in plan.chunks] == [(0, 3, True, True)]
    run_plan(scheduler, plan)
    plan = scheduler.plan()
    assert [(c.start, c.end, c.needs_sample, c.is_prefill) for c in plan.chunks] == [(3, 4, True, False)]


def test_the_token_budget_is_respected_and_a_long_prompt_is_chunked():
    scheduler = make_scheduler(num_batch=8)
    seq = make_seq(list(range(1, 21)))  # 20 tokens: 8 + 8 + 4
    scheduler.add(seq)
    spans = []
    for _ in range(3):
        plan = scheduler.plan()
        assert plan.num_tokens <= 8
        spans += [(c.start, c.end, c.needs_sample) for c in plan.chunks]
        run_plan(scheduler, plan)
    assert spans == [(0, 8, False), (8, 16, False), (16, 20, True)]


def test_chunked_prefill_interleaves_with_decoding_streams():
    scheduler = make_scheduler(num_slots=3, num_batch=6)
    first, second = make_seq([1, 2]), make_seq([3, 4])
    scheduler.add(first)
    scheduler.add(second)
    run_plan(scheduler, scheduler.plan())  # both prompts fit: both now generating
    long_prompt = make_seq(list(range(100, 120)))
    scheduler.add(long_prompt)
    steps_while_prefilling = 0
    while long_prompt.is_prefilling:
        plan = scheduler.plan()
        assert plan.num_tokens <= 6
        by_seq = {id(c.request): c for c in plan.chunks}
        # every step still advances each running stream by exactly one token
        assert by_seq[id(first)].num_tokens == 1 and by_seq[id(second)].num_tokens == 1
        assert by_seq[id(long_prompt)].num_tokens <= 4
        assert plan.chunks[-1].request is long_prompt  # decodes first, prefill fills the rest of the budget
        run_plan(scheduler, plan)
        steps_while_prefilling += 1
    assert steps_while_prefilling == 5  # 20 prompt tokens, 4 per step next to two decodes


def test_admission_is_fifo_and_waits_for_a_free_slot():
    scheduler = make_scheduler(num_slots=2, num_batch=64)
    seqs = [make_seq([10 + i, 1]) for i in range(4)]
    for seq in seqs:
        scheduler.add(seq)
    plan = scheduler.plan()
    assert [c.request for c in plan.chunks] == seqs[:2]
    assert list(scheduler.waiting) == seqs[2:]
    run_plan(scheduler, plan)
    scheduler.finish(seqs[1])  # a slot frees: the oldest waiting request gets it, not a later one
    plan = scheduler.plan()
    assert seqs[2].slot is not None and seqs[3].slot is None
    assert [c.request for c in plan.chunks] == [seqs[0], seqs[2]]


def test_a_cancelled_waiting_request_leaves_the_queue():
    scheduler = make_scheduler(num_slots=1)
    running, waiting = make_seq([1, 2]), make_seq([3, 4])
    scheduler.add(running)
    scheduler.add(waiting)
    scheduler.plan()
    scheduler.finish(waiting)
    assert not scheduler.waiting
    scheduler.finish(running)
    assert not scheduler.has_work and scheduler.slots.num_free == 1


def test_a_budget_of_one_token_per_slot_never_starves_a_prompt():
    scheduler = make_scheduler(num_slots=3, num_batch=3)
    streams = [make_seq([1]), make_seq([2])]
    for seq in streams:
        scheduler.add(seq)
    run_plan(scheduler, scheduler.plan())
    late = make_seq([5, 6, 7])
    scheduler.add(late)
    for _ in range(3):  # two decodes and one prompt token per step
        plan = scheduler.plan()
        assert plan.num_tokens == 3 and plan.chunks[-1].request is late
        run_plan(scheduler, plan)
    assert not late.is_prefilling and late.num_tokens == 4


def use(slots: SlotTable, kv: FakeKv, prompt: list[int], cached: list[int]) -> int:
    """One request: take a slot for ``prompt``, compute until the slot holds ``cached``, give it back."""
    lease = slots.acquire(prompt)
    kv.compute(lease.slot, len(cached))
    slots.release(lease.slot, cached)
    return lease.slot


def test_the_longest_prefix_is_moved_into_the_lowest_free_slot():
    kv = FakeKv()
    slots = SlotTable(3, kv, park_budget=10_000)
    for _ in range(3):
        slots.acquire([0])
    kv.compute(2, 6)
    slots.release(2, [1, 2, 3, 4, 5, 6])
    kv.compute(1, 2)
    slots.release(1, [7, 8])
    kv.calls.clear()
    lease = slots.acquire([1, 2, 3, 4, 9, 9])  # slot 1 is the lowest free one: slot 2's cache moves there
    assert (lease.slot, lease.num_reused) == (1, 4)
    assert kv.calls == [("save", 1), ("save", 2), ("restore", 1, 60), ("trim", 1, 4)]
    assert [entry.tokens for entry in slots.parked] == [[7, 8]]  # slot 1's own cache was kept aside
    assert slots.slots[1].tokens == [1, 2, 3, 4] and slots.slots[2].tokens == []
    again = slots.acquire([7, 8, 9])  # the parked cache comes back into the next lowest free slot
    assert (again.slot, again.num_reused) == (2, 2) and not slots.parked


def test_an_idle_cache_stays_in_its_slot_while_nothing_runs():
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    cached = list(range(1, 101))
    slot = use(slots, kv, [1], cached)
    # A lone chat's next turn, its last two cached tokens written otherwise (e.g. the answer's end as the
    # template renders it): computing those two again is cheaper than copying 100 out, so no copy, a trim.
    lease = slots.acquire(cached[:98] + [7, 8])
    assert (lease.slot, lease.num_reused) == (slot, 98)
    assert [call[0] for call in kv.calls] == ["trim", "trim"] and not slots.parked


def test_two_chats_sharing_a_system_prompt_keep_both_caches_while_they_take_turns():
    """Found by two alternating ollama-client chats: the second shared 26 of the first's 46 cached tokens
    (the default system prompt), took its slot in place and cut the first's conversation, which then
    computed its whole prompt again at its next turn."""
    kv = FakeKv()
    slots = SlotTable(4, kv, park_budget=100_000)
    system = list(range(1, 27))
    first = system + [100] * 20
    use(slots, kv, first[:30], first)
    second = system + [200] * 8
    lease = slots.acquire(second)
    assert lease.num_reused == 26 and [entry.tokens for entry in slots.parked] == [first]
    kv.compute(lease.slot, len(second))
    slots.release(lease.slot, second)
    again = slots.acquire(first + [101])
    assert again.num_reused == len(first) and again.slot != lease.slot


def test_idle_caches_stay_in_place_while_other_slots_run():
    kv = FakeKv()
    slots = SlotTable(3, kv, park_budget=10_000)
    slots.acquire([0])  # slot 0 busy
    use(slots, kv, [1], [1, 2, 3])  # slot 1
    assert kv.held[1] == 3 and slots.slots[1].tokens == [1, 2, 3] and not slots.parked
    assert not any(call[0] == "save" for call in kv.calls)


def test_another_conversations_cache_is_parked_rather_than_cut():
    kv = FakeKv()
    slots = SlotTable(1, kv, park_budget=10_000)
    use(slots, kv, [1], [1, 2, 3, 4, 5, 6])
    lease = slots.acquire([9, 9])
    assert (lease.slot, lease.num_reused) == (0, 0)
    assert [entry.tokens for entry in slots.parked] == [[1, 2, 3, 4, 5, 6]]


def test_while_nothing_runs_a_new_conversation_takes_an_empty_slot_and_copies_nothing():
    kv = FakeKv()
    slots = SlotTable(3, kv, park_budget=10_000)
    first = use(slots, kv, [1], [1, 2, 3, 4, 5, 6])
    second = use(slots, kv, [9], [9, 8, 7])
    assert (first, second) == (0, 1) and not slots.parked
    lease = slots.acquire([1, 2, 3, 4, 5, 6, 7])  # the first conversation goes on where its cache lies
    assert (lease.slot, lease.num_reused) == (0, 6)
    assert not any(call[0] in ("save", "copy", "restore") for call in kv.calls)


def test_while_nothing_runs_the_least_recently_used_cache_makes_room():
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    use(slots, kv, [1], [1, 2, 3])  # slot 0
    use(slots, kv, [5], [5, 6])  # slot 1
    use(slots, kv, [1, 2, 3, 4], [1, 2, 3, 4])  # slot 0 again: now slot 1 is the least recently used
    lease = slots.acquire([9])
    assert lease.slot == 1 and [entry.tokens for entry in slots.parked] == [[5, 6]]
    assert slots.slots[0].tokens == [1, 2, 3, 4]


def test_while_nothing_runs_a_parked_cache_comes_back_into_an_empty_slot():
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    slots.adopt([4, 5, 6], bytes(30))  # e.g. read back from disk
    use(slots, kv, [1], [1, 2, 3])  # slot 0
    kv.calls.clear()
    lease = slots.acquire([4, 5, 6, 7])
    assert (lease.slot, lease.num_reused) == (1, 3)
    assert kv.calls == [("restore", 1, 30), ("trim", 1, 3)] and slots.slots[0].tokens == [1, 2, 3]


def test_the_same_prompt_again_reuses_its_cache_and_drops_the_old_answer():
    """The same prompt again, its slot holding it and a longer answer than the prompt: its prefix is reused
    in place (found by running the benchmark's levels: every prompt of a concurrency level came back to its
    own slot and was recomputed), and the old answer is dropped rather than copied out: a retry, another
    sample or a benchmark's repeat does not continue it (llama-server drops it too)."""
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    prompt = [1, 2, 3]
    use(slots, kv, prompt, prompt + [4, 5, 6, 7, 8, 9])  # the answer is longer than the prompt
    kv.calls.clear()
    lease = slots.acquire(prompt)
    assert (lease.slot, lease.num_reused) == (0, 2)  # all but the last prompt token, as always
    assert kv.calls == [("trim", 0, 2)] and kv.held[0] == 2 and not slots.parked


def test_a_conversation_sharing_a_long_prefix_keeps_the_other_one_parked():
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    other = [1, 2, 3, 4] + [7] * 36  # 40 tokens, 4 of them shared (a system prompt)
    use(slots, kv, other[:5], other)
    kv.calls.clear()
    lease = slots.acquire([1, 2, 3, 4, 9, 9])  # 4 × 32 ≥ 40: worth the copy
    assert (lease.slot, lease.num_reused) == (0, 4)
    assert kv.calls == [("copy", 0), ("trim", 0, 4)] and [entry.tokens for entry in slots.parked] == [other]


def test_a_conversation_sharing_a_token_or_two_takes_an_empty_slot_instead():
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    other = [1] + [7] * 39  # 40 tokens sharing only the first with the next prompt
    use(slots, kv, other[:5], other)
    kv.calls.clear()
    lease = slots.acquire([1, 9, 9])  # copying 40 tokens' KV to reuse 1 costs more than computing it
    assert (lease.slot, lease.num_reused) == (1, 0)
    assert kv.calls == [("trim", 1, 0)] and slots.slots[0].tokens == other and not slots.parked


def test_a_parked_cache_sharing_a_token_or_two_is_left_parked_not_restored():
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    other = [1] + [7] * 39
    slots.adopt(other, bytes(400))  # e.g. read back from disk
    lease = slots.acquire([1, 9, 9])  # restoring 40 tokens' KV to reuse 1 costs more than computing it
    assert (lease.slot, lease.num_reused) == (0, 0)
    assert not any(call[0] == "restore" for call in kv.calls)
    assert [entry.tokens for entry in slots.parked] == [other]


def test_a_parked_cache_restored_for_its_shared_prefix_stays_parked_for_its_own_conversation():
    """Restoring copies the parked KV: the prompt sharing its system prompt reuses that prefix, and the
    conversation it holds can still continue from the parked copy instead of being cut to the prefix."""
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    other = [1, 2, 3, 4] + [7] * 36
    slots.adopt(other, bytes(400))
    lease = slots.acquire([1, 2, 3, 4, 9, 9])  # 4 × 32 ≥ 40: worth the restore
    assert (lease.slot, lease.num_reused) == (0, 4)
    assert [entry.tokens for entry in slots.parked] == [other]
    kv.compute(lease.slot, 6)
    slots.release(lease.slot, [1, 2, 3, 4, 9, 9])
    again = slots.acquire(other + [8])
    assert (again.slot, again.num_reused) == (1, len(other)) and slots.slots[0].tokens == [1, 2, 3, 4, 9, 9]


def test_the_same_prompt_again_restores_its_parked_cache_and_drops_the_old_answer():
    kv = FakeKv()
    slots = SlotTable(1, kv, park_budget=10_000)
    prompt = [1, 2, 3]
    slots.adopt(prompt + [4, 5, 6, 7, 8, 9], bytes(90))
    lease = slots.acquire(prompt)
    assert lease.num_reused == 2 and not slots.parked


def test_parked_caches_stay_within_the_budget_least_recently_used_dropped_first():
    kv = FakeKv()
    slots = SlotTable(1, kv, park_budget=100)  # 10 positions
    for cached in ([1] * 4, [2] * 4, [3] * 4, [4] * 4):
        use(slots, kv, cached[:1], cached)  # each unrelated prompt parks the previous cache
    assert [entry.tokens for entry in slots.parked] == [[2] * 4, [3] * 4] and slots.num_parked_bytes == 80
    use(slots, kv, [5], [5] * 11)
    slots.acquire([6])  # larger than the whole budget: not kept
    assert [entry.tokens for entry in slots.parked] == [[3] * 4, [4] * 4]


def test_a_parked_cache_that_a_newer_one_extends_is_dropped():
    kv = FakeKv()
    slots = SlotTable(1, kv, park_budget=10_000)
    slots.adopt([1, 2, 3], bytes(30))  # e.g. read back from disk
    lease = slots.acquire([7])
    kv.compute(lease.slot, 5)
    slots.release(lease.slot, [1, 2, 3, 4, 5])
    slots.acquire([8])
    assert [entry.tokens for entry in slots.parked] == [[1, 2, 3, 4, 5]]


def test_a_restore_without_room_computes_the_whole_prompt():
    kv = FakeKv(has_room=False)
    slots = SlotTable(1, kv, park_budget=10_000)
    use(slots, kv, [1], [1, 2, 3])
    use(slots, kv, [9], [9])  # parks [1, 2, 3]
    lease = slots.acquire([1, 2, 3, 4])
    assert lease.num_reused == 0 and slots.slots[lease.slot].tokens == []
    assert [entry.tokens for entry in slots.parked] == [[9]]


def test_without_a_budget_idle_caches_are_dropped_rather_than_parked():
    kv = FakeKv()
    slots = SlotTable(1, kv)
    first = use(slots, kv, [1], [1, 2, 3])
    slots.acquire([5])
    assert kv.held[first] == 0 and not slots.parked and ("trim", first, 0) in kv.calls
    assert not any(call[0] == "save" for call in kv.calls)


def test_the_last_prompt_token_is_recomputed_when_its_logits_are_not_kept():
    slots = SlotTable(1, FakeKv())
    slots.acquire([0])
    slots.release(0, [5, 6, 7, 8])
    lease = slots.acquire([5, 6, 7, 8])  # identical prompt: reuse all but the last token
    assert lease.num_reused == 3 and lease.logits is None
    slots.release(0, [5, 6])
    assert slots.acquire([5, 6]).num_reused == 1


def logits_after(prompt: list[int], nbytes: int = 100) -> PromptLogits:
    return PromptLogits(len(prompt), f"logits after {prompt}", nbytes)


def test_the_same_prompt_again_takes_the_logits_it_ended_with_and_reuses_all_of_it():
    kv = FakeKv()
    slots = SlotTable(2, kv, park_budget=10_000)
    prompt = [1, 2, 3]
    lease = slots.acquire(prompt)
    kv.compute(lease.slot, 5)
    slots.release(lease.slot, prompt + [4, 5], logits_after(prompt))
    kv.calls.clear()
    lease = slots.acquire(prompt)
    assert (lease.slot, lease.num_reused, lease.logits) == (0, 3, logits_after(prompt))
    assert kv.calls == [("trim", 0, 3)] and slots.slots[0].logits is None  # the request holds them now


@pytest.mark.parametrize("prompt", [[1, 2], [1, 2, 3, 4], [1, 2, 9]])
def test_any_other_prompt_recomputes_its_last_token(prompt):
    kv = FakeKv()
    slots = SlotTable(1, kv)
    lease = slots.acquire([1, 2, 3])
    kv.compute(lease.slot, 5)
    slots.release(lease.slot, [1, 2, 3, 4, 5], logits_after([1, 2, 3]))
    lease = slots.acquire(prompt)
    assert lease.logits is None and lease.num_reused == min(len(prompt) - 1, 2 if prompt[-1] == 9 else 3)


def test_logits_travel_with_a_parked_cache_and_count_in_the_budget():
    kv = FakeKv()
    slots = SlotTable(1, kv, park_budget=10_000)
    story = [1, 2, 3, 4]
    lease = slots.acquire(story)
    kv.compute(lease.slot, 6)
    slots.release(lease.slot, story + [5, 6], logits_after(story, nbytes=1000))
    use(slots, kv, [9, 9], [9, 9, 9])  # parks the story: 60 bytes of KV and its logits
    assert slots.num_parked_bytes == 60 + 1000
    lease = slots.acquire(story)
    assert (lease.num_reused, lease.logits) == (4, logits_after(story, nbytes=1000))


def test_a_cache_that_cannot_keep_the_prompt_alone_loses_its_logits():
    kv = FakeKv(can_keep_partial=False)
    slots = SlotTable(1, kv)
    lease = slots.acquire([1, 2, 3])
    kv.compute(lease.slot, 5)
    slots.release(lease.slot, [1, 2, 3, 4, 5], logits_after([1, 2, 3]))
    lease = slots.acquire([1, 2, 3])
    assert (lease.num_reused, lease.logits) == (0, None)


def test_a_whole_cached_prompt_plans_a_chunk_of_no_tokens_that_samples():
    scheduler = make_scheduler()
    prompt = [1, 2, 3]
    scheduler.slots.release(scheduler.slots.acquire([0]).slot, prompt + [4], logits_after(prompt))
    request = make_seq(prompt)
    scheduler.add(request)
    plan = scheduler.plan()
    assert [(c.start, c.end, c.num_tokens, c.needs_sample, c.is_prefill, c.cached_logits) for c in plan.chunks] == [
        (3, 3, 0, True, True, "logits after [1, 2, 3]")]
    run_plan(scheduler, plan)
    assert [(c.start, c.end, c.cached_logits) for c in scheduler.plan().chunks] == [(3, 4, None)]
    scheduler.finish(request)
    assert scheduler.slots.slots[0].logits == logits_after(prompt)  # handed back for the next repeat


def test_requests_arriving_together_take_consecutive_slots():
    slots = SlotTable(3, FakeKv())
    assert [slots.acquire([0]).slot for _ in range(3)] == [0, 1, 2]
    slots.release(2, [40])
    slots.release(0, [41])
    # Next to the busy slot 1 either way (one micro-batch per step); the least recently used cache goes first.
    assert slots.acquire([1, 2, 3]).slot == 2
    assert slots.acquire([1, 2, 3]).slot == 0


def test_while_a_slot_runs_new_requests_fill_holes_then_take_its_neighbours():
    kv = FakeKv()
    slots = SlotTable(8, kv, park_budget=10_000)
    for slot in range(8):  # every slot holds a conversation of its own
        slots.acquire([0])
    for slot in range(8):
        slots.release(slot, [100 + slot, 1, 2])
    running = slots.acquire([105, 1, 2, 3])
    assert running.slot == 5  # nothing ran: its conversation's own slot
    kv.calls.clear()
    beside = slots.acquire([103, 1, 2, 3])  # cached in slot 3, not next to slot 5: moved next to it
    assert beside.slot in (4, 6) and beside.num_reused == 3
    assert [call[0] for call in kv.calls] == ["save", "save", "restore", "trim"]
    slots.release(running.slot, [105, 1, 2, 3, 4])  # slot 5 ends: the busy slot is alone again
    other = slots.acquire([9])
    assert abs(other.slot - beside.slot) == 1
    slots.release(beside.slot, [7])
    slots.acquire([1])
    slots.acquire([2])
    busy = sorted(slot.id for slot in slots.slots if slot.is_busy)
    assert busy == list(range(busy[0], busy[0] + len(busy)))  # one run of consecutive ids


def test_a_cache_that_cannot_keep_a_partial_prefix_is_reused_from_zero():
    slots = SlotTable(1, FakeKv(can_keep_partial=False))  # e.g. a sliding-window cache that lost early positions
    slots.acquire([0])
    slots.release(0, [1, 2, 3, 4])
    lease = slots.acquire([1, 2, 3, 4, 5])
    assert lease.num_reused == 0 and slots.slots[0].tokens == []


def test_busy_slots_are_never_handed_out():
    slots = SlotTable(2, FakeKv())
    assert slots.acquire([1]) is not None and slots.acquire([1]) is not None
    assert slots.acquire([1]) is None
    assert slots.num_busy == 2 and slots.num_free == 0


@pytest.mark.parametrize("a, b, expected", [([], [1], 0), ([1, 2], [1, 2], 2), ([1, 2, 3], [1, 2], 2),
                                            ([1, 5], [1, 2], 1), ([3], [4], 0)])
def test_common_prefix_length(a, b, expected):
    assert common_prefix_length(a, b) == expected


def test_configuration_errors_are_clear():
    with pytest.raises(ValueError, match="num_slots"):
        SlotTable(0, FakeKv())
    with pytest.raises(ValueError, match="num_batch must be at least the number of slots"):
        Scheduler(SlotTable(4, FakeKv()), 3)
