"""Exponential back-off for retries (dials, redials, re-offers), with no clock of its own.

`Backoff(first_s, max_s)` starts ready. After each failed try, `failed(now)` returns the delay before
the next one (first_s, then doubling up to max_s) and sets `next_at`; `ready(now)` says whether
that time has come; `reset()` after a success starts over. `give_up_s` (optional) bounds the whole
run: `exhausted(now)` is true once that long has passed since the first failure. The caller owns
the clock and passes `now` in, so tests step through a schedule without sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(slots=True)
class Backoff:
    first_s: float
    max_s: float
    factor: float = 2.0
    give_up_s: float = math.inf
    failures: int = 0
    next_at: float = 0.0
    _first_failure_at: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not (0 < self.first_s <= self.max_s) or self.factor < 1 or self.give_up_s <= 0:
            raise ValueError(f"bad back-off: first {self.first_s} s, max {self.max_s} s, x{self.factor}")

    def delay_s(self, failures: int) -> float:
        """The wait after the `failures`-th failure in a row (1-based)."""
        if failures <= 0:
            return 0.0
        return min(self.max_s, self.first_s * self.factor ** min(failures - 1, 64))

    def failed(self, now: float) -> float:
        """A try failed at `now`: the delay before the next one (and `next_at` is set)."""
        if self._first_failure_at is None:
            self._first_failure_at = now
        self.failures += 1
        delay = self.delay_s(self.failures)
        self.next_at = now + delay
        return delay

    def ready(self, now: float) -> bool:
        return now >= self.next_at

    def exhausted(self, now: float) -> bool:
        """True once `give_up_s` has passed since the first failure in a row."""
        return self._first_failure_at is not None and now - self._first_failure_at >= self.give_up_s

    def reset(self) -> None:
        self.failures, self.next_at, self._first_failure_at = 0, 0.0, None
