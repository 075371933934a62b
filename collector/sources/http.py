"""HTTP source: `quota/all` polls on a few worker threads, at most one pending per device.

:class:`HttpSource` (a :class:`~collector.sources.Source`) decides which devices of its account
are polled and when: all of them at start-up and after every MQTT reconnect (what MQTT missed
meanwhile), a device whose MQTT data is stale while it should be online, every device while MQTT
is down, all of them slowly on a schedule, and a device the device list has just added. Each
answer goes to the ingest on the poll worker's thread. A device the public API refuses (EcoFlow
code 1006) is reported once, by product, and never asked again.

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
from collections import Counter
from collections.abc import Callable, Mapping

import structlog

from collector.api.client import EcoflowClient
from collector.api.errors import ApiError, DeviceReadDenied, RetryBudgetExhausted
from collector.api.models import QuotaValues
from collector.state import DeviceState

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


# quota/all data -> the number of points it became; None when the data was rejected (malformed)
QuotaHandler = Callable[[DeviceState, QuotaValues], int | None]


def product_name(state: DeviceState) -> str:
    """The device's product as people call it (the catalog's name, else the measurement slug)."""
    product = state.device.product
    return product.name if product is not None else state.device.slug


def refusal_message(product: str) -> str:
    return (
        f"EcoFlow's public API does not serve {product} devices (code 1006): this device is never "
        "polled over HTTP; what it publishes over MQTT is still stored"
    )


class HttpSource:
    """`quota/all` polls of one account's devices (see the module docstring)."""

    name = "http"

    def __init__(
        self,
        client: EcoflowClient,
        devices: Callable[[], list[DeviceState]],
        lookup: Callable[[str], DeviceState | None],
        deliver: QuotaHandler,
        mqtt_connected: Callable[[], bool],
        clock_ms: Callable[[], int],
        stale_after_s: float,
        workers: int = 4,
        account: str | None = None,
    ) -> None:
        """``devices()``: the account's devices now; ``lookup(sn)``: one of them (None if gone);
        ``deliver(state, data)``: hands an answer to the ingest; ``mqtt_connected()``: whether the
        account's MQTT session is up (while it is not, every device is polled when stale)."""
        self.client = client
        self._log = structlog.get_logger("collector.http", account=account) if account else log
        self._devices = devices
        self._lookup = lookup
        self._deliver = deliver
        self._mqtt_connected = mqtt_connected
        self._clock_ms = clock_ms
        self._stale_ms = int(stale_after_s * 1000)
        self._lock = threading.Lock()
        self.poller = QuotaPoller(self.poll_device, workers)
        self.polls: Counter[str] = Counter()  # reason -> quota/all calls
        self.errors: Counter[str] = Counter()  # ApiError class name -> failed calls (device list too)
        self.refused: dict[str, str] = {}  # sn -> product name: devices the public API refuses (1006)
        self.last_delivery_ms = 0  # last answer that became points
        self._failures: dict[str, int] = {}  # sn -> failed polls since its last success
        self._problem: str | None = None

    # --- the Source contract ------------------------------------------------------------------

    def start(self) -> None:
        self.poller.start()

    def stop(self, timeout: float = 2.0) -> None:
        self.poller.stop(timeout)

    def counters(self) -> Mapping[str, int]:
        """`polls_<reason>`, `errors`, `refused` (devices answering 1006)."""
        with self._lock:
            return {
                **{f"polls_{reason}": n for reason, n in self.polls.items()},
                "errors": sum(self.errors.values()),
                "refused": len(self.refused),
            }

    def problem(self) -> str | None:
        """The last failure of a call, until a call succeeds again."""
        return self._problem

    # --- polls --------------------------------------------------------------------------------

    def note_error(self, exc: ApiError) -> None:
        """A failed call of the account's client outside the polls (the device list)."""
        with self._lock:
            self.errors[type(exc).__name__] += 1
        self._problem = str(exc)

    def note_success(self) -> None:
        self._problem = None

    def poll_device(self, sn: str, reason: str) -> None:
        state = self._lookup(sn)
        if state is not None:
            self.poll(state, reason)

    def poll(self, state: DeviceState, reason: str) -> bool:
        """quota/all for one device, handed to the ingest; False when nothing usable came."""
        if state.read_denied:
            return False
        sn = state.device.sn
        with self._lock:
            state.last_poll_ms = self._clock_ms()
            self.polls[reason] += 1
        try:
            data = self.client.quota_all(sn)
        except DeviceReadDenied:
            self._refuse(state)
            return False
        except ApiError as exc:
            with self._lock:
                self.errors[type(exc).__name__] += 1
                failures = self._failures.get(sn, 0) + 1
                self._failures[sn] = failures
            self._problem = str(exc)
            # one warning when a device's polls start failing (`poll.recovered` when they work again);
            # an open circuit fails every device in turn: the client has said so once already
            quiet = failures > 1 or isinstance(exc, RetryBudgetExhausted)
            (self._log.debug if quiet else self._log.warning)(
                "poll.failed", sn=sn, reason=reason, error=str(exc)
            )
            return False
        self._problem = None
        with self._lock:
            failed_polls = self._failures.pop(sn, 0)
        if failed_polls:
            self._log.info("poll.recovered", sn=sn, failed_polls=failed_polls)
        if not data:
            return True  # a success with no data (the cloud has nothing for this device)
        stored = self._deliver(state, data)
        if stored is None:
            return False
        if stored:
            self.last_delivery_ms = self._clock_ms()
        return True

    def _refuse(self, state: DeviceState) -> None:
        """1006: once per device, a warning naming the product; never asked again."""
        state.read_denied = True
        product = product_name(state)
        with self._lock:
            if state.device.sn in self.refused:
                return
            self.refused[state.device.sn] = product
        self._log.warning(
            "poll.read_denied", sn=state.device.sn, product=product, message=refusal_message(product)
        )

    def request(self, state: DeviceState, reason: str) -> bool:
        """Queue a poll of one device (False: one is pending already)."""
        return self.poller.request(state.device.sn, reason)

    def pollable(self) -> list[DeviceState]:
        return [s for s in self._devices() if not s.read_denied and s.listed is not False]

    def seed_all(self, reason: str) -> int:
        """Queue a poll of every pollable device (those already waiting for one are skipped)."""
        return sum(self.request(state, reason) for state in self.pollable())

    def check_fallback(self) -> int:
        """Queue polls of devices whose MQTT data is stale while they should be online, or of
        every device while MQTT is down (none polled within `stale_after_s`). Returns how many."""
        now = self._clock_ms()
        connected = self._mqtt_connected()
        due = 0
        for state in self.pollable():
            if now - state.last_poll_ms < self._stale_ms:
                continue
            mqtt_stale = now - state.last_mqtt_ms > self._stale_ms
            if (not connected or (state.expected_online() and mqtt_stale)) and self.request(
                state, "fallback"
            ):
                due += 1
        return due
