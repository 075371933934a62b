"""Clocks that drive the simulated devices: wall time, a hand-stepped clock, a sped-up clock.

A clock is any zero-argument callable returning seconds since the epoch (float). Devices read
it to know how far to integrate their physics, so tests step a day in milliseconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

Clock = Callable[[], float]


def wall_clock() -> float:
    return time.time()


class ManualClock:
    """Time that moves only when told to (tests): `clock.advance(3600)` is an hour later."""

    def __init__(self, start: float) -> None:
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            return self._now

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock does not run backwards")
        with self._lock:
            self._now += seconds
            return self._now

    def set(self, when: float) -> None:
        with self._lock:
            if when < self._now:
                raise ValueError("a clock does not run backwards")
            self._now = float(when)


class ScaledClock:
    """Wall time sped up `speed` times from `start` (demos: a simulated day in minutes)."""

    def __init__(self, speed: float, start: float | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.speed = speed
        self._origin_wall = time.monotonic()
        self._origin = wall_clock() if start is None else float(start)

    def __call__(self) -> float:
        return self._origin + (time.monotonic() - self._origin_wall) * self.speed
