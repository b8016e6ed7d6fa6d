"""The slots of one llama context's KV cache, and prefix reuse between requests.

Slot ``i`` is llama.cpp sequence id ``i``. A finished request leaves its KV in its slot together with the
tokens it holds. A new request takes the free slot whose cached tokens share the longest prefix with its
prompt (ties: the least recently used), the rest of the cache is trimmed, and only the suffix is computed.
Pure bookkeeping: the one call into llama.cpp (trimming) is a function the runner provides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import count
from typing import Callable, Sequence

# trim(slot, keep) drops the slot's KV from position ``keep`` on and returns how many positions it kept
# (fewer than asked when the cache cannot keep a partial sequence; 0 clears the slot).
Trim = Callable[[int, int], int]


@dataclass
class Slot:
    id: int
    tokens: list[int] = field(default_factory=list)  # whose KV the slot holds, positions 0..len-1
    is_busy: bool = False
    last_used: int = 0


@dataclass(frozen=True)
class Lease:
    slot: int
    num_reused: int  # prompt tokens whose KV is already in the slot


class SlotTable:
    def __init__(self, num_slots: int, trim: Trim):
        if num_slots < 1:
            raise ValueError("num_slots must be at least 1")
        self.slots = [Slot(i) for i in range(num_slots)]
        self._trim = trim
        self._clock = count(1)

    @property
    def num_free(self) -> int:
        return sum(not slot.is_busy for slot in self.slots)

    @property
    def num_busy(self) -> int:
        return len(self.slots) - self.num_free

    def acquire(self, prompt: Sequence[int]) -> Lease | None:
        """Best free slot for ``prompt``, trimmed to the reusable prefix; None when every slot is busy."""
        best: Slot | None = None
        best_prefix = -1
        for slot in self.slots:
            if slot.is_busy:
                continue
            prefix = common_prefix_length(slot.tokens, prompt)
            if prefix > best_prefix or (prefix == best_prefix and slot.last_used < best.last_used):
                best, best_prefix = slot, prefix
        if best is None:
            return None
        # Always recompute the last prompt token: its logits are what the first sample is drawn from.
        keep = min(best_prefix, len(prompt) - 1)
        keep = self._trim(best.id, keep)
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


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    limit = min(len(a), len(b))
    for i in range(limit):
        if a[i] != b[i]:
            return i
    return limit
