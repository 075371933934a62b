"""The daemon: wires sources (MQTT, HTTP) -> pipeline -> sink, and keeps per-device state.

Time-driven work (fallback polls, device list refresh, status and self-telemetry points, the MQTT
watchdog) runs on an APScheduler background scheduler; every job is also a plain method taking the
current time from the injected clock, so tests drive them directly.
"""

from __future__ import annotations

import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from collector.api.client import EcoflowClient
from collector.api.errors import ApiError, DeviceReadDenied
from collector.catalog import Catalog
from collector.config import Settings
from collector.decoding import PayloadError, TopicKind, decode_object
from collector.pipeline import Pipeline
from collector.points import COLLECTOR_MEASUREMENT, Device, Point, status_point
from collector.sink import Sink
from collector.sources.mqtt import MqttCredentials, MqttSource
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

    def reject(self, sn: str, kind: str, reason: str, detail: str, size: int) -> None:
        self.counts[reason] += 1
        now = self._clock_ms()
        key = (sn, reason)
        if now - self._last.get(key, -self._window) >= self._window:
            if len(self._last) > 10_000:
                self._last.clear()
            self._last[key] = now
            log.warning("payload.rejected", sn=sn, topic=kind, reason=reason, detail=detail, bytes=size)


class Collector:
    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        client: EcoflowClient,
        sink: Sink,
        client_id: str,
        clock_ms: Callable[[], int] = wall_clock_ms,
        shard: tuple[int, int] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.client = client
        self.sink = sink
        self.clock_ms = clock_ms
        self.registry = Registry()
        self.pipeline = Pipeline()
        self.rejects = RejectLog(clock_ms)
        self.polls: Counter[str] = Counter()  # reason -> quota/all calls
        self.http_errors: Counter[str] = Counter()
        self.last_delivery_ms = 0  # last time any source delivered data
        self._lock = threading.Lock()
        self._shard = shard
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="poll")
        self._scheduler: BackgroundScheduler | None = None
        c = settings.collector
        self._stale_ms = int(c.stale_after_s * 1000)
        self._offline_ms = int(c.offline_after_s * 1000)
        self._status_ms = int(c.status_interval_s * 1000)
        self.mqtt = MqttSource(
            client_id=client_id,
            credentials=self.mqtt_credentials,
            on_message=self.handle_message,
            clock_ms=clock_ms,
            keepalive_s=settings.mqtt.keepalive_s,
            reconnect_max_s=settings.mqtt.reconnect_max_s,
            on_connected=self._after_connect,
        )

    # --- devices -------------------------------------------------------------------------------

    def owns(self, sn: str) -> bool:
        """Whether this instance collects the device (sharding by a stable hash of the serial)."""
        if self._shard is None:
            return True
        index, count = self._shard
        return shard_of(sn, count) == index

    def add_devices(self, devices: Iterable[Device]) -> list[DeviceState]:
        added = []
        with self._lock:
            for device in devices:
                if not self.owns(device.sn):
                    continue
                new = device.sn not in self.registry.devices
                state = self.registry.add(device)
                if new:
                    added.append(state)
                    log.debug("device.added", sn=device.sn, name=device.name, product=device.slug)
        if added:
            log.info("devices.added", count=len(added), devices=len(self.registry))
            self.mqtt.add_devices(s.device.sn for s in added)
        return added

    def configured_devices(self) -> list[Device]:
        return [Device.resolve(self.catalog, d.sn, d.name, d.product) for d in self.settings.devices]

    def refresh_device_list(self) -> None:
        """Discover devices (when none are configured) and take the list's offline flags."""
        try:
            listed = self.client.device_list()
        except ApiError as exc:
            self.http_errors[type(exc).__name__] += 1
            log.warning("device_list.failed", error=str(exc))
            return
        configured = {d.sn: d for d in self.settings.devices}
        new: list[Device] = []
        for info in listed:
            entry = configured.get(info.sn)
            if configured and entry is None:
                continue  # an explicit device list in the config is the whole list
            name = (entry.name if entry else None) or info.deviceName
            product = (entry.product if entry else None) or info.productName
            device = Device.resolve(self.catalog, info.sn, name, product)
            state = self.registry.get(info.sn)
            if state is None:
                new.append(device)
            else:
                self._set_listed_offline(state, not info.online)
        listed_online = {info.sn: info.online for info in listed}
        for state in self.add_devices(new):
            self._set_listed_offline(state, not listed_online[state.device.sn])
            self._submit_poll(state, "discovered")

    def _set_listed_offline(self, state: DeviceState, offline: bool) -> None:
        state.listed_offline = offline
        if offline and state.set_online(Online.OFFLINE):
            self._write_status(state)

    # --- MQTT ----------------------------------------------------------------------------------

    def mqtt_credentials(self) -> MqttCredentials:
        m = self.settings.mqtt
        if m.host and m.username and m.password:
            tls = m.tls if m.tls is not None else True
            return MqttCredentials(
                m.host, m.port or 8883, m.username, m.password.get_secret_value(), tls, m.ca_file
            )
        cert = self.client.certification()
        return MqttCredentials(
            host=m.host or cert.url,
            port=m.port or cert.port_number,
            username=m.username or cert.certificateAccount,
            password=m.password.get_secret_value()
            if m.password
            else cert.certificatePassword.get_secret_value(),
            tls=m.tls if m.tls is not None else cert.protocol != "mqtt",
            ca_file=m.ca_file,
        )

    def handle_message(self, sn: str, kind: TopicKind, payload: bytes) -> None:
        """Called on paho's thread for every message; never raises."""
        now = self.clock_ms()
        state = self.registry.get(sn)
        if state is None:
            self.rejects.reject(sn, kind.value, "unknown_device", "no such device subscribed", len(payload))
            return
        if len(payload) > self.settings.collector.max_payload_bytes:
            limit = self.settings.collector.max_payload_bytes
            self.rejects.reject(sn, kind.value, "too_large", f"over {limit} bytes", len(payload))
            return
        try:
            with self._lock:
                stamp = state.stamp(now) if kind is TopicKind.QUOTA else now
                decoded, points = self.pipeline.process(state.device, payload, kind, stamp, state.memory)
                if decoded.kind is TopicKind.QUOTA and decoded.values:
                    state.last_mqtt_ms = now
                    changed = state.set_online(Online.ONLINE)
                elif decoded.kind is TopicKind.STATUS:
                    changed = state.set_online(Online.ONLINE if decoded.online else Online.OFFLINE)
                    points = []  # written below by _write_status, with the three-state field
                else:
                    changed = False
        except PayloadError as exc:
            self.rejects.reject(sn, kind.value, "malformed", str(exc), len(payload))
            return
        except Exception as exc:  # a bug must not stop the MQTT thread: count, log, go on
            self.rejects.reject(sn, kind.value, "internal_error", repr(exc), len(payload))
            log.exception("payload.internal_error", sn=sn, topic=kind.value)
            return
        if kind is TopicKind.SET_REPLY:
            log.info("mqtt.set_reply", sn=sn, values=decoded.values)
        if points:
            self.last_delivery_ms = now
            self.sink.submit(points)
        if changed:
            self._write_status(state)

    def _after_connect(self) -> None:
        # every reconnect: seed all devices over HTTP, so what MQTT missed meanwhile is filled in
        # (the first connect follows the start-up seed, which did that already)
        if self.mqtt.connects > 1:
            self._pool.submit(self.seed_all, "connected")

    # --- HTTP polls ----------------------------------------------------------------------------

    def poll(self, state: DeviceState, reason: str) -> bool:
        """quota/all for one device; its values go through the same pipeline as MQTT's."""
        if state.read_denied:
            return False
        now = self.clock_ms()
        state.last_poll_ms = now
        self.polls[reason] += 1
        try:
            data = self.client.quota_all(state.device.sn)
        except DeviceReadDenied as exc:
            state.read_denied = True
            log.warning("poll.read_denied", sn=state.device.sn, error=str(exc))
            return False
        except ApiError as exc:
            self.http_errors[type(exc).__name__] += 1
            log.warning("poll.failed", sn=state.device.sn, reason=reason, error=str(exc))
            return False
        try:
            with self._lock:
                points = self.pipeline.points(
                    state.device, decode_object(data), state.stamp(now), state.memory
                )
        except PayloadError as exc:
            self.rejects.reject(state.device.sn, "quota_all", "malformed", str(exc), 0)
            return False
        if points:
            self.last_delivery_ms = now
            self.sink.submit(points)
        return True

    def _submit_poll(self, state: DeviceState, reason: str) -> None:
        self._pool.submit(self.poll, state, reason)

    def _pollable(self) -> list[DeviceState]:
        return [s for s in list(self.registry.devices.values()) if not s.read_denied and not s.listed_offline]

    def seed_all(self, reason: str) -> None:
        for state in self._pollable():
            self.poll(state, reason)

    def check_fallback(self) -> int:
        """Poll devices whose MQTT data is stale while they are online, or all when MQTT is down."""
        now = self.clock_ms()
        due = []
        for state in self._pollable():
            if state.update_online(now, self._offline_ms):
                self._write_status(state)
            if now - state.last_poll_ms < self._stale_ms:
                continue
            mqtt_stale = now - state.last_mqtt_ms > self._stale_ms
            if not self.mqtt.connected or (state.online is Online.ONLINE and mqtt_stale):
                due.append(state)
        for state in due:
            self._submit_poll(state, "fallback")
        return len(due)

    def poll_all_periodic(self) -> None:
        for state in self._pollable():
            self._submit_poll(state, "periodic")

    # --- status and self-telemetry ------------------------------------------------------------

    def _write_status(self, state: DeviceState) -> None:
        now = self.clock_ms()
        state.last_status_write_ms = now
        point = status_point(state.device, state.online is Online.ONLINE, now)
        point.fields["state"] = float(state.online)
        self.sink.submit([point])

    def write_all_status(self) -> None:
        for state in list(self.registry.devices.values()):
            self._write_status(state)

    def telemetry_point(self) -> Point:
        sink = self.sink.stats()
        fields: dict[str, float] = {
            f"messages_{kind}": float(count) for kind, count in self.mqtt.messages.items()
        }
        fields.update({f"rejected_{reason}": float(n) for reason, n in self.rejects.counts.items()})
        fields.update({f"polls_{reason}": float(n) for reason, n in self.polls.items()})
        fields.update(
            {
                "messages_rejected": float(sum(self.rejects.counts.values())),
                "mqtt_connected": 1.0 if self.mqtt.connected else 0.0,
                "mqtt_connects": float(self.mqtt.connects),
                "http_errors": float(sum(self.http_errors.values())),
                "fallback_polls": float(self.polls["fallback"]),
                "devices": float(len(self.registry)),
                "devices_online": float(self.registry.online_count()),
                "unknown_keys": float(self.pipeline.reporter.unknown_keys),
            }
        )
        fields.update({k: float(v) for k, v in sink.items() if isinstance(v, int | float)})
        tags = (("instance", self.mqtt.client_id),)
        return Point(COLLECTOR_MEASUREMENT, tags, fields, self.clock_ms())

    def write_telemetry(self) -> None:
        self.sink.submit([self.telemetry_point()])

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = self.clock_ms()
        window = max(self._stale_ms * 2, 60_000)
        delivering = self.mqtt.connected or now - self.last_delivery_ms < window
        stuck = self.sink.stuck()
        sink = self.sink.stats()
        return delivering and not stuck, {
            "points_written": sink.get("points_written"),
            "spool_points": sink.get("spool_points"),
            "mqtt_connected": self.mqtt.connected,
            "last_delivery_age_s": (now - self.last_delivery_ms) / 1000 if self.last_delivery_ms else None,
            "writer_stuck": stuck,
            "devices": len(self.registry),
            "devices_online": self.registry.online_count(),
        }

    def check_watchdog(self) -> None:
        self.mqtt.check_watchdog(int(self.settings.mqtt.watchdog_s * 1000), self.registry.online_count())

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        self.add_devices(self.configured_devices())
        self.refresh_device_list()
        self.seed_all("startup")
        self.mqtt.start()
        c = self.settings.collector
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        jobs: list[tuple[Callable[[], Any], float]] = [
            (self.check_fallback, min(max(c.stale_after_s / 4, 1.0), 30.0)),
            (self.poll_all_periodic, c.quota_all_interval_s),
            (self.refresh_device_list, c.device_list_interval_s),
            (self.write_all_status, c.status_interval_s),
            (self.write_telemetry, c.telemetry_interval_s),
            (self.check_watchdog, min(self.settings.mqtt.watchdog_s / 4, 60.0)),
        ]
        for job, seconds in jobs:
            scheduler.add_job(job, "interval", seconds=seconds, id=job.__name__)
        scheduler.start()
        self._scheduler = scheduler
        log.info("collector.started", devices=len(self.registry), client_id=self.mqtt.client_id)

    def stop(self, timeout: float = 8.0) -> None:
        deadline = time.monotonic() + timeout
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        self.mqtt.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.write_telemetry()
        self.sink.close(max(deadline - time.monotonic(), 0.5))
        log.info("collector.stopped")


def shard_of(sn: str, count: int) -> int:
    """A stable shard number for a serial (the same on every machine and Python version)."""
    return zlib.crc32(sn.encode()) % count
