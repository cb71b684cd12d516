"""A circuit breaker per provider: stop calling one that keeps failing, try it again later.

    closed --(failure_threshold consecutive failed requests)--> open
    open   --(cooldown_s elapsed, next allow())--------> half-open: one trial call goes through
    half-open --success--> closed        half-open --failure--> open (the cooldown starts again)

While open, ``allow()`` answers at once, so a chain skips a dead provider in microseconds instead
of paying its timeouts and retries on every batch. Failures count requests, not calls: a call
that failed after its two retries is three failed requests, and so is a call that ran out of its
``timeout_s`` (it spent every attempt it had), which with the default threshold opens the
breaker at once (a hanging provider costs its timeout once, not per batch).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"


class CircuitBreaker:
    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic):
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if cooldown_s < 0:
            raise ValueError("cooldown_s must not be negative")
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trial_out = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
                return HALF_OPEN
            return self._state

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        with self._lock:
            if self._state != OPEN:
                return 0.0
            return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one trial call at a time does."""
        with self._lock:
            if self._state == CLOSED:
                return True
            if self._state == OPEN:
                if self._clock() - self._opened_at < self.cooldown_s:
                    return False
                self._state = HALF_OPEN
                self._trial_out = False
            if self._trial_out:
                return False
            self._trial_out = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._state = CLOSED
            self._failures = 0
            self._trial_out = False

    def record_failure(self, attempts: int = 1) -> None:
        """A failed call; ``attempts`` failed requests when it was retried."""
        with self._lock:
            self._failures += max(1, attempts)
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._state = OPEN
                self._opened_at = self._clock()
            self._trial_out = False

    def release(self) -> None:
        """A call that was allowed ended without saying anything about the provider's health."""
        with self._lock:
            self._trial_out = False

    def __repr__(self) -> str:
        return (f"CircuitBreaker(state={self.state!r}, failures={self.consecutive_failures}, "
                f"threshold={self.failure_threshold}, cooldown_s={self.cooldown_s})")
