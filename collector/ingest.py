"""The ingest: what every source's data goes through, whatever the source and the account.

decode -> per-device state (memory of incremental reports, three-state online) -> points (the
pipeline) -> energy counters -> the sink. Sources call :meth:`Ingest.mqtt_message` (paho's thread)
and :meth:`Ingest.quota_all` (HTTP poll workers); the daemon's jobs call the rest. Device state
and counters change under one lock.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import structlog

from collector.api.models import QuotaValues
from collector.config import Settings
from collector.decoding import PayloadError, TopicKind, decode_object
from collector.history.energy import EnergyCounters
from collector.pipeline import Pipeline
from collector.points import SUMMARY_MEASUREMENT, Point, status_point
from collector.sink import Sink
from collector.state import DeviceState, Online, Registry

log = structlog.get_logger("collector.daemon")


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class RejectLog:
    """Counts rejected payloads by reason; logs the first of each (sn, reason) per minute."""

    def __init__(self, clock_ms: Callable[[], int], window_ms: int = 60_000) -> None:
        self.counts: Counter[str] = Counter()
        self._last: dict[tuple[str, str], int] = {}
        self._clock_ms = clock_ms
        self._window = window_ms
        self._lock = threading.Lock()

    def reject(self, sn: str, kind: str, reason: str, detail: str, size: int) -> None:
        now = self._clock_ms()
        with self._lock:
            self.counts[reason] += 1
            key = (sn, reason)
            if now - self._last.get(key, -self._window) < self._window:
                return
            if len(self._last) > 10_000:  # forget what the window has passed anyway
                self._last = {k: t for k, t in self._last.items() if now - t < self._window}
            self._last[key] = now
        log.warning("payload.rejected", sn=sn, topic=kind, reason=reason, detail=detail[:300], bytes=size)


class Ingest:
    def __init__(
        self, settings: Settings, sink: Sink, energy: EnergyCounters, clock_ms: Callable[[], int]
    ) -> None:
        self.sink = sink
        self.energy = energy
        self.clock_ms = clock_ms
        self.registry = Registry()
        self.pipeline = Pipeline()
        self.rejects = RejectLog(clock_ms)
        self.lock = threading.RLock()
        self.last_delivery_ms = 0  # last time any source's data became points
        self._max_payload = settings.collector.max_payload_bytes
        self._offline_ms = int(settings.collector.offline_after_s * 1000)

    # --- what sources deliver -------------------------------------------------------------------

    def mqtt_message(self, sn: str, kind: TopicKind, payload: bytes) -> int:
        """One MQTT message (on paho's thread); never raises. Returns the points it became."""
        now = self.clock_ms()
        state = self.registry.get(sn)
        if state is None:
            self.rejects.reject(sn, kind.value, "unknown_device", "no such device subscribed", len(payload))
            return 0
        if len(payload) > self._max_payload:
            self.rejects.reject(sn, kind.value, "too_large", f"over {self._max_payload} bytes", len(payload))
            return 0
        try:
            with self.lock:
                stamp = state.stamp(now) if kind is TopicKind.QUOTA else now
                decoded, points = self.pipeline.process(state.device, payload, kind, stamp, state.memory)
                changed = self._take_mqtt(state, decoded.kind, decoded.online, bool(decoded.values), now)
                if decoded.kind is TopicKind.STATUS:
                    points = []  # write_status writes it, with the three-state field
                else:
                    self._observe_energy(state, points, now)
            if kind is TopicKind.SET_REPLY:
                log.info("mqtt.set_reply", sn=sn, values=decoded.values)
            if points:
                self.last_delivery_ms = now
                self.sink.submit(points)
            if changed:
                self.online_changed(state)
            return len(points)
        except PayloadError as exc:
            self.rejects.reject(sn, kind.value, "malformed", str(exc), len(payload))
        except Exception as exc:  # a bug must not stop the MQTT thread: count, log, go on
            self.rejects.reject(sn, kind.value, "internal_error", repr(exc), len(payload))
            log.exception("payload.internal_error", sn=sn, topic=kind.value)
        return 0

    def quota_all(self, state: DeviceState, data: QuotaValues) -> int | None:
        """A `quota/all` answer (on a poll worker): the points it became, None when rejected."""
        now = self.clock_ms()  # the data's time is when it arrived
        try:
            with self.lock:
                points = self.pipeline.points(
                    state.device, decode_object(data), state.stamp(now), state.memory
                )
                self._observe_energy(state, points, now)
        except PayloadError as exc:
            self.rejects.reject(state.device.sn, "quota_all", "malformed", str(exc), 0)
            return None
        if points:
            self.last_delivery_ms = now
            self.sink.submit(points)
        return len(points)

    @staticmethod
    def _take_mqtt(
        state: DeviceState, kind: TopicKind, online: int | None, has_values: bool, now: int
    ) -> bool:
        """What an MQTT message says about the device's state; True when `online` changed."""
        if kind is TopicKind.QUOTA and has_values:
            state.last_mqtt_ms = state.last_seen_ms = now
        elif kind is TopicKind.STATUS:
            if online:
                state.last_seen_ms = now
            else:
                return state.set_online(Online.OFFLINE)
        else:
            return False
        if state.listed is False:
            state.listed = None  # the device speaks: the list's "offline" is out of date
        return state.set_online(Online.ONLINE)

    def _observe_energy(self, state: DeviceState, points: list[Point], now: int) -> None:
        """Feed the energy counters with the summary of a device's merged state (under the lock)."""
        for point in points:
            if point.measurement == SUMMARY_MEASUREMENT:
                self.energy.observe(state.device, point.fields, now, live=state.expected_online())

    # --- online state ---------------------------------------------------------------------------

    def take_listed(self, state: DeviceState, online: bool) -> None:
        """The device list's online flag."""
        with self.lock:
            state.listed = online
            changed = not online and state.set_online(Online.OFFLINE)
        if changed:
            self.online_changed(state)

    def update_online(self) -> None:
        """Devices silent past `offline_after_s` are assumed offline."""
        now = self.clock_ms()
        for state in self.registry.states():
            with self.lock:
                changed = state.update_online(now, self._offline_ms)
            if changed:
                self.online_changed(state)

    def online_changed(self, state: DeviceState) -> None:
        if state.online is not Online.ONLINE:
            self.energy.offline(state.device.sn, self.clock_ms())
        self.write_status(state)

    def write_status(self, state: DeviceState) -> None:
        self.sink.submit([status_point(state.device, int(state.online), self.clock_ms())])

    def write_all_status(self) -> None:
        for state in self.registry.states():
            self.write_status(state)
