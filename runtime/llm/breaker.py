"""A circuit breaker for the LLM endpoint: stop asking a server that is down, for a cool-down period.

Without it every text runs all of its retries against a dead port inside one of the concurrency
slots: 24 texts took 41 s to degrade, so 10,000 would take hours. After `threshold` consecutive
connection failures, timeouts or 5xx answers (counted across texts), the breaker opens: requests fail
at once, without being sent, until `cooldown_s` has passed. Then one request is let through
(half-open); its success closes the breaker, its failure opens it again. Any success closes it.

All methods run on the scorer's event-loop thread; `state` may be read from any thread.
"""
from __future__ import annotations

import time

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
# Defaults: consecutive failures that open the breaker, and seconds it stays open before one trial request.
BREAKER_THRESHOLD = 5
BREAKER_COOLDOWN_S = 30.0


class CircuitBreaker:
    """Counts consecutive failures of the endpoint; `allow` says whether a request may be sent now."""

    def __init__(self, threshold: int, cooldown_s: float, clock=time.monotonic) -> None:
        self.threshold = int(threshold)
        self.cooldown_s = float(cooldown_s)
        self._clock = clock
        self.state = CLOSED
        self.consecutive_failures = 0
        self.times_opened = 0
        self._opened_at = 0.0
        self._trial_in_flight = False

    def is_open(self) -> bool:
        """True while requests are refused (open, cool-down not over, or a half-open trial in flight)."""
        if self.state == CLOSED:
            return False
        if self.state == OPEN:
            return self._clock() - self._opened_at < self.cooldown_s
        return self._trial_in_flight

    def allow(self) -> bool:
        """Whether to send a request now; after the cool-down the first caller gets the half-open trial."""
        if self.state == CLOSED:
            return True
        if self.state == OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            self.state = HALF_OPEN
            self._trial_in_flight = False
        if self.state == HALF_OPEN and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def record_success(self) -> None:
        """The endpoint answered: close the breaker."""
        self.state = CLOSED
        self.consecutive_failures = 0
        self._trial_in_flight = False

    def record_failure(self) -> None:
        """A connection failure, timeout or 5xx: count it; open at the threshold or on a failed trial."""
        self.consecutive_failures += 1
        if self.state == HALF_OPEN or (self.state == CLOSED and self.consecutive_failures >= self.threshold):
            self.state = OPEN
            self._opened_at = self._clock()
            self._trial_in_flight = False
            self.times_opened += 1

    def record_neutral(self) -> None:
        """An answer that says nothing about reachability (a 4xx): ends a half-open trial without a verdict."""
        if self.state == HALF_OPEN:
            self._trial_in_flight = False

    def describe(self) -> str:
        return (f"the LLM endpoint failed {self.consecutive_failures} times in a row (connection failures, "
                f"timeouts or 5xx answers), so requests are paused for {self.cooldown_s:g} s")
