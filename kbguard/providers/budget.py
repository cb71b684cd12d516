"""Request planning: batches within an endpoint's limits, and a client-side tokens-per-minute budget."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence


def plan_batches(counts: Sequence[int], max_texts: int, max_tokens: int) -> list[tuple[int, int]]:
    """Consecutive ``(start, stop)`` spans of at most ``max_texts`` texts and ``max_tokens``
    tokens each (a single text over ``max_tokens`` gets a span of its own)."""
    spans: list[tuple[int, int]] = []
    start, tokens = 0, 0
    for i, n in enumerate(counts):
        if i > start and (i - start >= max_texts or tokens + n > max_tokens):
            spans.append((start, i))
            start, tokens = i, 0
        tokens += n
    if start < len(counts):
        spans.append((start, len(counts)))
    return spans


class TokenBudget:
    """At most ``tokens_per_minute`` tokens sent in any sliding window of ``window_s`` seconds.

    ``acquire(n)`` blocks until ``n`` more tokens fit. A request larger than the whole budget is
    let through alone once the window is empty, so it is slowed, never stuck.
    """

    def __init__(self, tokens_per_minute: int, window_s: float = 60.0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.limit = tokens_per_minute
        self.window_s = window_s
        self._clock = clock
        self._sleep = sleep
        self._sent: deque[tuple[float, int]] = deque()
        self._used = 0
        self._lock = threading.Lock()
        self.waited_s = 0.0

    def acquire(self, tokens: int) -> None:
        while True:
            with self._lock:
                now = self._clock()
                while self._sent and now - self._sent[0][0] >= self.window_s:
                    self._used -= self._sent.popleft()[1]
                if self._used + tokens <= self.limit or not self._sent:
                    self._sent.append((now, tokens))
                    self._used += tokens
                    return
                wait = self._sent[0][0] + self.window_s - now
            self.waited_s += wait
            self._sleep(wait)
