"""HTTP source: `quota/all` polls on a few worker threads, at most one pending per device.

Polls are asked for from several places (start-up and reconnect seeding, the staleness fallback,
the slow periodic poll, discovery); a device already waiting for its poll is not queued again, so
a long outage of MQTT or of the cloud never piles up work. A stop takes no new polls and waits a
bounded time for the calls in flight, so that the API client is closed after its last request
(a worker that started a request after the close would leave a socket for the garbage collector).
Workers are daemon threads: one whose call outlasts the bound is left behind, and logged.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("collector.http")


class QuotaPoller:
    def __init__(self, poll: Callable[[str, str], None], workers: int = 4) -> None:
        """`poll(sn, reason)` does one device's quota/all and hands the answer on; it runs on a
        worker thread, and an exception it raises is logged, never fatal."""
        self._poll = poll
        self._queue: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._pending: set[str] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, name=f"poll-{i}", daemon=True) for i in range(workers)
        ]
        self._started = False
        self._stopped = threading.Event()

    def start(self) -> None:
        if not self._started:
            self._started = True
            for thread in self._threads:
                thread.start()

    def request(self, sn: str, reason: str) -> bool:
        """Queue a poll of the device; False when one is pending already (or after stop)."""
        with self._lock:
            if sn in self._pending or self._stopped.is_set():
                return False
            self._pending.add(sn)
        self._queue.put((sn, reason))
        return True

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def stop(self, timeout: float = 2.0) -> int:
        """Take no more polls; wait up to ``timeout`` seconds for the workers (the calls in flight).
        Returns how many workers are still busy after that (left behind: they are daemon threads)."""
        self._stopped.set()
        for _ in self._threads:
            self._queue.put(None)
        if not self._started:
            return 0
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        busy = sum(thread.is_alive() for thread in self._threads)
        if busy:
            log.warning("poll.workers_left_running", workers=busy, waited_s=timeout)
        return busy

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._stopped.is_set():
                return
            sn, reason = item
            try:
                self._poll(sn, reason)
            except Exception:  # a bug in one poll must not end the worker
                log.exception("poll.internal_error", sn=sn, reason=reason)
            finally:
                with self._lock:
                    self._pending.discard(sn)
