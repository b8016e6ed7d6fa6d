"""The slots of one llama context's KV cache, and prefix reuse between requests.

Slot ``i`` is llama.cpp sequence id ``i``, and each sequence has its own KV stream (``kv_unified=false``, as
llama-server runs): a sequence's attention spans only its own cells, so idle caches cost running streams
nothing and stay where they are. llama.cpp computes one micro-batch per run of consecutive sequence ids,
so busy slots are kept one run: while others run, a new request takes a hole between them or a slot next
to them; while nothing runs, any slot (see ``SlotTable.acquire``).

A finished request leaves its KV behind together with the tokens it holds. A new request reuses the cache
that shares the longest prefix with its prompt: in its own slot it is trimmed to that prefix; in another idle
slot, or *parked* in host memory, it is copied into the new request's slot (``llama_state_seq_get_data`` /
``set_data``: for SmolLM2 with its V cache transposed, ~0.6 ms per 100 tokens out and ~0.5 ms back measured
alone, up to ~2.6 ms out while other slots decode, against ~4 ms per token to compute in a batch on the
2-core test machine, llama-server alike). Caches pushed out of a slot that way are parked, within
``park_budget`` bytes, least recently used dropped first. Only the prompt's suffix is then computed.

A cache also keeps the logits its prompt ended with (``PromptLogits``): the same prompt asked again (a retry,
another sample, "regenerate", a benchmark's repeat) samples its first token from them and computes nothing
before it; any other prompt recomputes its last token, whose logits its first sample needs.

Pure bookkeeping: the calls into llama.cpp are the ``KvOps`` the runner provides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Any, Protocol, Sequence, Sized


# Tokens whose KV is copied (out and back) for the price of computing one token's: some hundreds measured (see
# above); far fewer here, so a doubtful case keeps the other conversation's cache rather than recompute.
COPIED_PER_COMPUTED = 32


class KvOps(Protocol):
    def trim(self, slot: int, keep: int) -> int:
        """Drop the slot's KV from position ``keep`` on; return how many positions it kept (fewer than asked
        when the cache cannot keep a partial sequence; 0 clears the slot)."""

    def save_slot(self, slot: int, clear: bool = True) -> Sized:
        """Copy the slot's KV out, then clear the slot (unless not ``clear``). ``len()`` of the result is its
        size in bytes."""

    def restore_slot(self, slot: int, saved: Sized) -> bool:
        """Copy saved KV into an empty slot; False (slot left empty) when the context has no room for it."""


@dataclass(frozen=True)
class PromptLogits:
    """The logits after a cache's first ``length`` tokens: a whole prompt's, from which its first token was
    sampled. ``values`` is the runner's array (opaque here); ``nbytes`` its size."""

    length: int
    values: Any
    nbytes: int

    def fits(self, cached: Sequence[int], prompt: Sequence[int]) -> bool:
        """Whether these are the logits after exactly ``prompt``, with ``cached`` the tokens they belong to."""
        return self.length == len(prompt) and common_prefix_length(cached, prompt) == self.length


@dataclass
class Slot:
    id: int
    tokens: list[int] = field(default_factory=list)  # whose KV the slot holds, positions 0..len-1
    logits: PromptLogits | None = None  # after tokens[:logits.length], when known
    is_busy: bool = False
    last_used: int = 0


@dataclass
class Parked:
    tokens: list[int]  # whose KV ``saved`` holds, positions 0..len-1
    saved: Sized
    last_used: int
    logits: PromptLogits | None = None

    @property
    def nbytes(self) -> int:
        return len(self.saved) + (self.logits.nbytes if self.logits is not None else 0)


@dataclass(frozen=True)
class Lease:
    slot: int
    num_reused: int  # prompt tokens whose KV is already in the slot
    logits: PromptLogits | None = None  # the whole prompt was cached (num_reused == its length): sample from these


class SlotTable:
    def __init__(self, num_slots: int, kv: KvOps, park_budget: int = 0, reuse_prefix: bool = True):
        if num_slots < 1:
            raise ValueError("num_slots must be at least 1")
        self.slots = [Slot(i) for i in range(num_slots)]
        self.parked: list[Parked] = []
        self.park_budget = park_budget if reuse_prefix else 0  # bytes; 0 parks nothing: idle caches are dropped
        self.reuse_prefix = reuse_prefix  # False: a prompt never reuses cached KV, it is computed in full
        self._kv = kv
        self._clock = count(1)

    @property
    def num_free(self) -> int:
        return sum(not slot.is_busy for slot in self.slots)

    @property
    def num_busy(self) -> int:
        return len(self.slots) - self.num_free

    @property
    def num_parked_bytes(self) -> int:
        return sum(entry.nbytes for entry in self.parked)

    def acquire(self, prompt: Sequence[int]) -> Lease | None:
        """A free slot holding the longest cached prefix of ``prompt``, trimmed to it; None when every slot
        is busy.

        Busy slots stay contiguous: llama.cpp (per-sequence KV streams) splits a batch into one micro-batch
        per run of consecutive sequence ids, each a whole pass over the weights. So while other slots run, the
        slot is a hole between them or a neighbour of them, and a prefix cached elsewhere is moved there. While
        nothing runs any slot will do: the prefix is used where it lies, or a parked one restored into an
        empty (else the least recently used) slot, so that switching between conversations copies no KV
        (measured: parking a slot and restoring another took 2.8 ms of a lone request's 5 ms before its first
        decode, and grows with the cache). A prefix is only copied where that costs less than computing
        it (``COPIED_PER_COMPUTED``), and the same prompt asked again drops the old answer its slot holds. A
        parked cache restored for the prefix it shares (a system prompt) stays parked for the conversation it
        holds."""
        free = [slot for slot in self.slots if not slot.is_busy]
        if not free:
            return None
        # The last prompt token is recomputed (its logits are what the first sample is drawn from), unless
        # the chosen slot kept the logits of exactly this prompt (below).
        usable = prompt[:len(prompt) - 1] if self.reuse_prefix else []
        source, source_prefix = free[0], common_prefix_length(free[0].tokens, usable)
        for slot in free[1:]:
            prefix = common_prefix_length(slot.tokens, usable)
            if prefix > source_prefix:
                source, source_prefix = slot, prefix
        entry, entry_prefix = self._best_parked(usable)
        if entry is not None and entry_prefix * COPIED_PER_COMPUTED < len(entry.tokens):
            entry, entry_prefix = None, 0  # restoring all of it costs more than computing the few tokens shared
        candidates = self._contiguous_choices(free)
        empty = next((slot for slot in candidates if not slot.tokens), None)
        is_in_place = source.id in {slot.id for slot in candidates}
        if (source_prefix and (empty is not None or not is_in_place)
                and not _is_worth_copying(source, source_prefix, usable, is_in_place)):
            source_prefix = 0  # computing those few tokens costs less than the copy would
        if source_prefix and source_prefix >= entry_prefix and is_in_place:
            target = source
        else:
            target = empty or min(candidates, key=lambda slot: slot.last_used)
        if not source_prefix:
            source = target
        if entry is not None and entry_prefix > source_prefix:
            self.parked.remove(entry)
            self._park(target)
            restored = self._kv.restore_slot(target.id, entry.saved)
            target.tokens, target.logits = (list(entry.tokens), entry.logits) if restored else ([], None)
            if restored and _continues_past(entry.tokens, entry_prefix, usable):
                # another conversation's: it stays parked for it
                self._add_parked(entry.tokens, entry.saved, entry.logits)
        elif source is not target:
            self._park(target)
            saved = self._kv.save_slot(source.id)
            tokens, logits, source.tokens, source.logits = source.tokens, source.logits, [], None
            target.tokens, target.logits = (tokens, logits) if self._kv.restore_slot(target.id, saved) else ([], None)
        elif _is_rest_worth_keeping(target, source_prefix, usable):
            # Keep all of it parked for whoever continues it rather than cut it, and still reuse its prefix
            # here (a copy is parked; the slot keeps its KV and is trimmed below).
            self._park(target, keep_in_slot=source_prefix > 0)
        logits = target.logits if self.reuse_prefix else None
        if logits is not None and not logits.fits(target.tokens, prompt):
            logits = None
        wanted = logits.length if logits is not None else common_prefix_length(target.tokens, usable)
        keep = self._kv.trim(target.id, wanted)
        target.tokens = list(prompt[:keep])
        target.logits = None  # the request's now; it hands them back on release
        target.is_busy = True
        target.last_used = next(self._clock)
        return Lease(target.id, keep, logits if keep == wanted else None)

    def _contiguous_choices(self, free: list[Slot]) -> list[Slot]:
        """The free slots that keep the busy ones one run of consecutive ids: every free slot while nothing
        runs, else the holes between busy slots, else the slots next to them."""
        busy = [slot.id for slot in self.slots if slot.is_busy]
        if not busy:
            return free
        low, high = min(busy), max(busy)
        holes = [slot for slot in free if low < slot.id < high]
        return holes or [slot for slot in free if slot.id in (low - 1, high + 1)]

    def adopt(self, tokens: Sequence[int], saved: Sized) -> None:
        """Take a cached prefix from elsewhere (the prompt cache on disk) as the most recently used parked one."""
        if tokens and 0 < len(saved) <= self.park_budget:
            self._add_parked(list(tokens), saved)

    def cached_prefixes(self) -> list[tuple[list[int], Sized]]:
        """Every idle cache as (tokens, saved KV): idle slots' KV is saved (and the slots cleared), parked
        ones as they are. For writing the prompt cache to disk when the model unloads."""
        prefixes = [(entry.tokens, entry.saved) for entry in self.parked]
        for slot in self.slots:
            if not slot.is_busy and slot.tokens:
                prefixes.append((slot.tokens, self._kv.save_slot(slot.id)))
                slot.tokens, slot.logits = [], None
        return prefixes

    def forget(self) -> None:
        """Drop every parked cache and what the slots are known to hold: the context is going away."""
        self.parked.clear()
        for slot in self.slots:
            slot.tokens, slot.logits = [], None

    def release(self, slot_id: int, cached: Sequence[int], logits: PromptLogits | None = None) -> None:
        """Give a slot back, remembering ``cached``: the tokens whose KV it now holds, and the ``logits`` its
        prompt ended with (when they are known and that prompt is all in ``cached``)."""
        slot = self.slots[slot_id]
        slot.tokens = list(cached)
        slot.logits = logits if logits is not None and logits.length <= len(cached) else None
        slot.is_busy = False
        slot.last_used = next(self._clock)

    def _best_parked(self, prompt: Sequence[int]) -> tuple[Parked | None, int]:
        best: Parked | None = None
        best_prefix = 0
        for entry in self.parked:
            prefix = common_prefix_length(entry.tokens, prompt)
            if prefix > best_prefix:
                best, best_prefix = entry, prefix
        return best, best_prefix

    def _park(self, slot: Slot, keep_in_slot: bool = False) -> None:
        """Move an idle slot's KV to host memory (or drop it, past the budget); the slot ends up empty, or
        with ``keep_in_slot`` keeps it (a copy is parked)."""
        if not slot.tokens:
            return
        tokens, logits = slot.tokens, slot.logits
        if not keep_in_slot:
            slot.tokens, slot.logits = [], None
        if self.park_budget <= 0:
            if not keep_in_slot:
                self._kv.trim(slot.id, 0)
            return
        saved = self._kv.save_slot(slot.id, clear=not keep_in_slot)
        if len(saved) > self.park_budget:
            return
        # A cache this one extends is worth nothing more: every prompt that would reuse it reuses this.
        self.parked = [entry for entry in self.parked if common_prefix_length(entry.tokens, tokens) < len(entry.tokens)]
        self._add_parked(tokens, saved, logits)

    def _add_parked(self, tokens: list[int], saved: Sized, logits: PromptLogits | None = None) -> None:
        """Park as the most recently used, dropping the least recently used past the budget."""
        self.parked.append(Parked(tokens, saved, next(self._clock), logits))
        while self.num_parked_bytes > self.park_budget:
            self.parked.remove(min(self.parked, key=lambda entry: entry.last_used))


def _is_worth_copying(source: Slot, prefix: int, usable: Sequence[int], is_in_place: bool) -> bool:
    """Whether reusing ``prefix`` tokens cached in ``source`` pays for the copy it takes: none when it is
    used in place and the rest of its cache is not worth keeping; otherwise its whole cache is copied out
    (parked for the conversation it belongs to, or moved next to the running slots)."""
    if is_in_place and not _is_rest_worth_keeping(source, prefix, usable):
        return True
    return prefix * COPIED_PER_COMPUTED >= len(source.tokens)


def _is_rest_worth_keeping(slot: Slot, prefix: int, usable: Sequence[int]) -> bool:
    """Whether the part of ``slot``'s cache past the ``prefix`` this prompt shares (another conversation's,
    e.g. after a common system prompt) is worth parking before the slot is reused: computing it again, should
    that conversation go on, would cost more than copying the whole cache now. Not when the slot holds this
    whole prompt, grown by an old answer: the same prompt asked again (a retry, another sample, a benchmark's
    repeat) does not continue that answer, which is dropped, as llama-server does."""
    rest = len(slot.tokens) - prefix
    return _continues_past(slot.tokens, prefix, usable) and rest * COPIED_PER_COMPUTED >= len(slot.tokens)


def _continues_past(cached: Sequence[int], prefix: int, usable: Sequence[int]) -> bool:
    """Whether ``cached`` holds a conversation past the ``prefix`` this prompt shares with it that is not this
    prompt's own old answer (see ``_is_rest_worth_keeping``)."""
    is_repeat = 0 < prefix == len(usable)
    return len(cached) > prefix and not is_repeat


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    for i in range(limit):
        if a[i] != b[i]:
            return i
    return limit
