"""The slots of one llama context's KV cache, and prefix reuse between requests.

Slot ``i`` is llama.cpp sequence id ``i``. A finished request leaves its KV behind together with the tokens
it holds. A new request takes the free slot whose cached tokens share the longest prefix with its prompt
(ties: the least recently used), the rest of the cache is trimmed, and only the suffix is computed.

Idle caches must not stay in the context while other requests run: the cache is unified, so every
sequence's attention spans every cell in use, and seven idle slots caching 160 tokens each slowed a lone
stream by 12 %. So whenever a slot is busy, the idle slots' KV is *parked*: copied out to host memory
(``llama_state_seq_get_data``) and cleared. A prompt that continues a parked cache gets it copied back into a
free slot (under 1 ms per 100 tokens for SmolLM2, against ~3 ms per token to recompute). Parked caches are
bounded by ``park_budget`` bytes, least recently used dropped first. With nothing running, an idle slot keeps
its KV in place, so a lone chat's next turn costs no copy.

Pure bookkeeping: the calls into llama.cpp are the ``KvOps`` the runner provides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Protocol, Sequence, Sized


class KvOps(Protocol):
    def trim(self, slot: int, keep: int) -> int:
        """Drop the slot's KV from position ``keep`` on; return how many positions it kept (fewer than asked
        when the cache cannot keep a partial sequence; 0 clears the slot)."""

    def save_slot(self, slot: int) -> Sized:
        """Copy the slot's KV out, then clear the slot. ``len()`` of the result is its size in bytes."""

    def restore_slot(self, slot: int, saved: Sized) -> bool:
        """Copy saved KV into an empty slot; False (slot left empty) when the context has no room for it."""


@dataclass
class Slot:
    id: int
    tokens: list[int] = field(default_factory=list)  # whose KV the slot holds, positions 0..len-1
    is_busy: bool = False
    last_used: int = 0


@dataclass
class Parked:
    tokens: list[int]  # whose KV ``saved`` holds, positions 0..len-1
    saved: Sized
    last_used: int


@dataclass(frozen=True)
class Lease:
    slot: int
    num_reused: int  # prompt tokens whose KV is already in the slot


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
        return sum(len(entry.saved) for entry in self.parked)

    def acquire(self, prompt: Sequence[int]) -> Lease | None:
        """Best free slot for ``prompt``, trimmed to the reusable prefix; None when every slot is busy."""
        free = [slot for slot in self.slots if not slot.is_busy]
        if not free:
            return None
        # Always recompute the last prompt token: its logits are what the first sample is drawn from.
        usable = prompt[:len(prompt) - 1] if self.reuse_prefix else []
        best, best_prefix = free[0], -1
        for slot in free:
            prefix = common_prefix_length(slot.tokens, usable)
            if prefix > best_prefix or (prefix == best_prefix and slot.last_used < best.last_used):
                best, best_prefix = slot, prefix
        entry, entry_prefix = self._best_parked(usable)
        is_restoring = entry is not None and entry_prefix > best_prefix
        if is_restoring:
            self.parked.remove(entry)
            best = min(free, key=lambda slot: (bool(slot.tokens), slot.last_used))  # an empty one if any
        # The other idle caches leave the context first, so a restored cache lands in the same cells a
        # computed one would (same cells, same float summation order in attention: same tokens out).
        for slot in free:
            if slot is not best or is_restoring:
                self._park(slot)
        if is_restoring:
            best_prefix = entry_prefix if self._kv.restore_slot(best.id, entry.saved) else 0
            best.tokens = entry.tokens if best_prefix else []
        keep = self._kv.trim(best.id, best_prefix)
        best.tokens = list(prompt[:keep])
        best.is_busy = True
        best.last_used = next(self._clock)
        return Lease(best.id, keep)

    def release(self, slot_id: int, cached: Sequence[int]) -> None:
        """Give a slot back, remembering ``cached``: the tokens whose KV it now holds."""
        slot = self.slots[slot_id]
        slot.tokens = list(cached)
        slot.is_busy = False
        slot.last_used = next(self._clock)
        if self.num_busy:
            self._park(slot)  # the running requests would attend over its cells

    def _best_parked(self, prompt: Sequence[int]) -> tuple[Parked | None, int]:
        best: Parked | None = None
        best_prefix = 0
        for entry in self.parked:
            prefix = common_prefix_length(entry.tokens, prompt)
            if prefix > best_prefix:
                best, best_prefix = entry, prefix
        return best, best_prefix

    def _park(self, slot: Slot) -> None:
        """Move an idle slot's KV to host memory (or drop it, past the budget); the slot ends up empty."""
        if not slot.tokens:
            return
        tokens, slot.tokens = slot.tokens, []
        if self.park_budget <= 0:
            self._kv.trim(slot.id, 0)
            return
        saved = self._kv.save_slot(slot.id)
        if len(saved) > self.park_budget:
            return
        # A cache this one extends is worth nothing more: every prompt that would reuse it reuses this.
        self.parked = [entry for entry in self.parked if common_prefix_length(entry.tokens, tokens) < len(entry.tokens)]
        self.parked.append(Parked(tokens, saved, next(self._clock)))
        while self.num_parked_bytes > self.park_budget:
            self.parked.remove(min(self.parked, key=lambda entry: entry.last_used))


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    for i in range(limit):
        if a[i] != b[i]:
            return i
    return limit
