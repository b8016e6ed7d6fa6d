"""Per-key rate limits over a sliding minute: requests per minute and tokens (in + out) per minute.

A request is admitted when the key made fewer than its request limit in the last 60 seconds and used fewer
tokens than its token limit; otherwise the caller is told how many seconds until the oldest counted use
leaves the window (the 429's Retry-After). Tokens are counted when a request finishes, so one large
request may overshoot a token limit once; the next request then waits.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

WINDOW_SECONDS = 60.0


@dataclass
class _Usage:
    requests: deque[float] = field(default_factory=deque)
    tokens: deque[tuple[float, int]] = field(default_factory=deque)
    num_tokens: int = 0

    def forget_before(self, cutoff: float) -> None:
        while self.requests and self.requests[0] <= cutoff:
            self.requests.popleft()
        while self.tokens and self.tokens[0][0] <= cutoff:
            self.num_tokens -= self.tokens.popleft()[1]


class RateLimiter:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._usage: dict[str, _Usage] = {}
        self._mutex = threading.Lock()

    def admit(self, key_id: str, requests_per_minute: int | None, tokens_per_minute: int | None) -> int | None:
        """Count one request for ``key_id`` and return ``None``, or return the seconds to wait (not counted).
        A limit of ``None`` or 0 means none."""
        now = self._clock()
        with self._mutex:
            usage = self._usage.setdefault(key_id, _Usage())
            usage.forget_before(now - WINDOW_SECONDS)
            waits = []
            if requests_per_minute and len(usage.requests) >= requests_per_minute:
                waits.append(usage.requests[len(usage.requests) - requests_per_minute] + WINDOW_SECONDS - now)
            if tokens_per_minute and usage.num_tokens >= tokens_per_minute:
                waits.append(self._token_wait(usage, tokens_per_minute, now))
            if waits:
                return max(1, math.ceil(max(waits)))
            usage.requests.append(now)
            return None

    @staticmethod
    def _token_wait(usage: _Usage, tokens_per_minute: int, now: float) -> float:
        """Seconds until enough counted tokens leave the window to go below the limit."""
        remaining = usage.num_tokens
        for moment, count in usage.tokens:
            remaining -= count
            if remaining < tokens_per_minute:
                return moment + WINDOW_SECONDS - now
        return WINDOW_SECONDS

    def add_tokens(self, key_id: str, num_tokens: int) -> None:
        if num_tokens <= 0:
            return
        with self._mutex:
            usage = self._usage.setdefault(key_id, _Usage())
            usage.tokens.append((self._clock(), num_tokens))
            usage.num_tokens += num_tokens
