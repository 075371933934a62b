"""The daemon: wires sources (MQTT, HTTP) -> pipeline -> sink, and keeps per-device state.

Threads: paho's network thread calls `handle_message`; `QuotaPoller` workers call `poll_device`;
APScheduler runs the time-driven jobs (fallback check, periodic polls, device list, status and
self-telemetry points, the MQTT watchdog); the sink has its own writer thread. Device state and
counters change under one lock. Every job is a plain method taking the time from the injected
clock, so tests drive them directly.
"""

from __future__ import annotations

import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from collector.api.client import EcoflowClient
from collector.api.errors import ApiError, DeviceReadDenied, RetryBudgetExhausted
from collector.catalog import Catalog
from collector.config import Settings
from collector.decoding import PayloadError, TopicKind, decode_object
from collector.history.energy import EnergyCounters, Restorer
from collector.pipeline import Pipeline
from collector.points import COLLECTOR_MEASUREMENT, SUMMARY_MEASUREMENT, Device, Point, status_point
from collector.sink import Sink
from collector.sources.http import QuotaPoller
from collector.sources.mqtt import MqttCredentials, MqttSource
from collector.state import DeviceState, Online, Registry

log = structlog.get_logger("collector.daemon")

# a serial that can be a topic level (no MQTT wildcards or separators) and a tag value
_SAFE_SERIAL = re.compile(r"^[A-Za-z0-9_*-]{4,40}$")
_LIST_RETRY_S = (10, 30, 60, 120, 300)  # device list retries while it has never been read


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
        energy_restore: Restorer | None = None,
        rollup_job: Callable[[], Any] | None = None,
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
        self._lock = threading.RLock()
        self._shard = shard
        self._rollup_job = rollup_job  # the hourly rollups ([history]); None where there is no InfluxDB
        self._scheduler: BackgroundScheduler | None = None
        self._list_read = False  # the device list was read at least once
        self._list_failures = 0
        self._poll_failures: dict[str, int] = {}  # sn -> failed polls since its last success
        self._summary_last: dict[str, int] = {}  # the totals at the last `collector.summary`
        self._summary_at_ms = clock_ms()
        c = settings.collector
        self._stale_ms = int(c.stale_after_s * 1000)
        self._offline_ms = int(c.offline_after_s * 1000)
        self._watchdog_ms = int(settings.mqtt.watchdog_s * 1000)
        self.energy = EnergyCounters(
            c.state_dir / "energy.json", max_gap_s=settings.energy.max_gap_s, restore=energy_restore
        )
        self.poller = QuotaPoller(self.poll_device)
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
        """Register devices (or take their new name/product); returns the new ones, subscribed."""
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

    def refresh_device_list(self, poll_new: bool = True) -> None:
        """Discover devices (when none are configured), take names and products the config does
        not give, and the list's online flags."""
        try:
            listed = self.client.device_list()
        except ApiError as exc:
            with self._lock:
                self.http_errors[type(exc).__name__] += 1
                self._list_failures += 1
            # one warning when it starts failing; the retries and refreshes after it at debug
            (log.warning if self._list_failures == 1 else log.debug)(
                "device_list.failed", error=str(exc), failures=self._list_failures
            )
            self._retry_device_list()
            return
        if self._list_failures:
            log.info("device_list.recovered", failures=self._list_failures)
        self._list_read = True
        self._list_failures = 0
        configured = {d.sn: d for d in self.settings.devices}
        devices: list[Device] = []
        for info in listed:
            entry = configured.get(info.sn)
            if configured and entry is None:
                continue  # an explicit device list in the config is the whole list
            if not _SAFE_SERIAL.match(info.sn):
                log.warning("device_list.unusable_serial", sn=info.sn[:60])
                continue
            name = (entry.name if entry else None) or info.deviceName
            product = (entry.product if entry else None) or info.productName
            devices.append(Device.resolve(self.catalog, info.sn, name, product))
        new = {state.device.sn for state in self.add_devices(devices)}
        for info in listed:
            state = self.registry.get(info.sn)
            if state is not None:
                self._take_listed(state, bool(info.online))
                if poll_new and info.sn in new:
                    self._request_poll(state, "discovered")

    def _retry_device_list(self) -> None:
        """While the list has never been read and no devices are configured, there is nothing to
        collect: try again soon (with a backoff) rather than at the next slow refresh."""
        if self._list_read or self.settings.devices or self._scheduler is None:
            return
        delay = _LIST_RETRY_S[min(self._list_failures, len(_LIST_RETRY_S)) - 1]
        self._scheduler.add_job(
            self.refresh_device_list,
            "date",
            run_date=_after(delay),
            id="device_list_retry",
            replace_existing=True,
        )

    def _take_listed(self, state: DeviceState, online: bool) -> None:
        with self._lock:
            state.listed = online
            changed = not online and state.set_online(Online.OFFLINE)
        if changed:
            self._online_changed(state)

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
        limit = self.settings.collector.max_payload_bytes
        if len(payload) > limit:
            self.rejects.reject(sn, kind.value, "too_large", f"over {limit} bytes", len(payload))
            return
        try:
            with self._lock:
                stamp = state.stamp(now) if kind is TopicKind.QUOTA else now
                decoded, points = self.pipeline.process(state.device, payload, kind, stamp, state.memory)
                changed = self._take_mqtt(state, decoded.kind, decoded.online, bool(decoded.values), now)
                if decoded.kind is TopicKind.STATUS:
                    points = []  # _write_status writes it, with the three-state field
                else:
                    self._observe_energy(state, points, now)
            if kind is TopicKind.SET_REPLY:
                log.info("mqtt.set_reply", sn=sn, values=decoded.values)
            if points:
                self.last_delivery_ms = now
                self.sink.submit(points)
            if changed:
                self._online_changed(state)
        except PayloadError as exc:
            self.rejects.reject(sn, kind.value, "malformed", str(exc), len(payload))
        except Exception as exc:  # a bug must not stop the MQTT thread: count, log, go on
            self.rejects.reject(sn, kind.value, "internal_error", repr(exc), len(payload))
            log.exception("payload.internal_error", sn=sn, topic=kind.value)

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

    def _online_changed(self, state: DeviceState) -> None:
        if state.online is not Online.ONLINE:
            self.energy.offline(state.device.sn, self.clock_ms())
        self._write_status(state)

    def _after_connect(self) -> None:
        # every reconnect: seed all devices over HTTP, so what MQTT missed meanwhile is filled in
        # (the first connect follows the start-up seed, which does that already)
        if self.mqtt.connects > 1:
            self.seed_all("connected")

    # --- HTTP polls ----------------------------------------------------------------------------

    def poll_device(self, sn: str, reason: str) -> None:
        state = self.registry.get(sn)
        if state is not None:
            self.poll(state, reason)

    def poll(self, state: DeviceState, reason: str) -> bool:
        """quota/all for one device; its values go through the same pipeline as MQTT's."""
        if state.read_denied:
            return False
        with self._lock:
            state.last_poll_ms = self.clock_ms()
            self.polls[reason] += 1
        try:
            data = self.client.quota_all(state.device.sn)
        except DeviceReadDenied as exc:
            state.read_denied = True
            log.warning("poll.read_denied", sn=state.device.sn, error=str(exc))
            return False
        except ApiError as exc:
            with self._lock:
                self.http_errors[type(exc).__name__] += 1
                failures = self._poll_failures.get(state.device.sn, 0) + 1
                self._poll_failures[state.device.sn] = failures
            # one warning when a device's polls start failing (`poll.recovered` when they work again);
            # an open circuit fails every device in turn: the client has said so once already
            quiet = failures > 1 or isinstance(exc, RetryBudgetExhausted)
            (log.debug if quiet else log.warning)(
                "poll.failed", sn=state.device.sn, reason=reason, error=str(exc)
            )
            return False
        with self._lock:
            failed_polls = self._poll_failures.pop(state.device.sn, 0)
        if failed_polls:
            log.info("poll.recovered", sn=state.device.sn, failed_polls=failed_polls)
        if not data:
            return True  # a success with no data (the cloud has nothing for this device)
        now = self.clock_ms()  # the data's time is when it arrived
        try:
            with self._lock:
                points = self.pipeline.points(
                    state.device, decode_object(data), state.stamp(now), state.memory
                )
                self._observe_energy(state, points, now)
        except PayloadError as exc:
            self.rejects.reject(state.device.sn, "quota_all", "malformed", str(exc), 0)
            return False
        if points:
            self.last_delivery_ms = now
            self.sink.submit(points)
        return True

    def _request_poll(self, state: DeviceState, reason: str) -> bool:
        return self.poller.request(state.device.sn, reason)

    def _pollable(self) -> list[DeviceState]:
        return [s for s in self.registry.states() if not s.read_denied and s.listed is not False]

    def seed_all(self, reason: str) -> int:
        """Queue a poll of every pollable device (those already waiting for one are skipped)."""
        return sum(self._request_poll(state, reason) for state in self._pollable())

    def check_fallback(self) -> int:
        """Update online states; poll devices whose MQTT data is stale while they should be
        online, or every device while MQTT is down. Returns the number of polls queued."""
        now = self.clock_ms()
        for state in self.registry.states():
            with self._lock:
                changed = state.update_online(now, self._offline_ms)
            if changed:
                self._online_changed(state)
        due = 0
        for state in self._pollable():
            if now - state.last_poll_ms < self._stale_ms:
                continue
            mqtt_stale = now - state.last_mqtt_ms > self._stale_ms
            if (not self.mqtt.connected or (state.expected_online() and mqtt_stale)) and self._request_poll(
                state, "fallback"
            ):
                due += 1
        return due

    def poll_all_periodic(self) -> int:
        return self.seed_all("periodic")

    # --- status and self-telemetry ------------------------------------------------------------

    def _write_status(self, state: DeviceState) -> None:
        self.sink.submit([status_point(state.device, int(state.online), self.clock_ms())])

    def write_all_status(self) -> None:
        for state in self.registry.states():
            self._write_status(state)

    def telemetry_point(self) -> Point:
        sink = self.sink.stats()
        reporter = self.pipeline.reporter
        with self._lock:
            fields: dict[str, float] = {
                f"messages_{kind}": float(n) for kind, n in self.mqtt.messages.items()
            }
            fields.update({f"rejected_{reason}": float(n) for reason, n in self.rejects.counts.items()})
            fields.update({f"polls_{reason}": float(n) for reason, n in self.polls.items()})
            fields.update(
                {
                    "messages_rejected": float(sum(self.rejects.counts.values())),
                    "http_errors": float(sum(self.http_errors.values())),
                    "fallback_polls": float(self.polls["fallback"]),
                }
            )
        fields.update(
            {
                "mqtt_connected": 1.0 if self.mqtt.connected else 0.0,
                "mqtt_connects": float(self.mqtt.connects),
                "mqtt_auth_failures": float(self.mqtt.auth_failures),
                "mqtt_subscribe_refusals": float(self.mqtt.subscribe_refusals),
                "polls_pending": float(self.poller.pending()),
                "devices": float(len(self.registry)),
                "devices_online": float(self.registry.online_count()),
                "unknown_keys": float(reporter.unknown_keys),
                "non_numeric_values": float(reporter.non_numeric_values),
                "sentinels_skipped": float(reporter.sentinels_skipped),
                "energy_devices": float(len(self.energy)),
                "energy_clock_jumps": float(self.energy.clock_jumps),
                "energy_rejected": float(sum(self.energy.rejected.values())),
            }
        )
        for key, value in sink.items():
            if isinstance(value, dict):  # e.g. write_errors by class: one field each, and the total
                fields.update({f"{key}_{k}": float(v) for k, v in value.items()})
                fields[key] = float(sum(value.values()))
            elif isinstance(value, int | float) and not isinstance(value, bool):
                fields[key] = float(value)
        return Point(COLLECTOR_MEASUREMENT, (("instance", self.mqtt.client_id),), fields, self.clock_ms())

    def write_telemetry(self) -> None:
        self.sink.submit([self.telemetry_point()])

    def write_energy(self) -> int:
        """Persist the energy counters, then hand their points to the sink (in that order: InfluxDB
        never holds a counter value the state file has not). Returns the number of points."""
        points = self.energy.points()
        self.energy.save()
        if points:
            self.sink.submit(points)
        return len(points)

    def log_summary(self) -> dict[str, Any]:
        """One `collector.summary` line at info: what came in and went out since the last summary
        (and in total), devices online/known, the spool. Returns the fields it logged."""
        sink = self.sink.stats()
        now = self.clock_ms()
        with self._lock:
            messages = {f"messages_{kind}": n for kind, n in self.mqtt.messages.items()}
            totals = {
                **messages,
                "messages": sum(messages.values()),
                "points_written": int(sink.get("points_written", 0)),
                "rejected": sum(self.rejects.counts.values()),
                "polls": sum(self.polls.values()),
            }
            last, self._summary_last = self._summary_last, totals
            since_ms, self._summary_at_ms = self._summary_at_ms, now
        fields: dict[str, Any] = {"period_s": round((now - since_ms) / 1000)}
        fields.update({key: total - last.get(key, 0) for key, total in totals.items()})
        fields.update(
            {f"{key}_total": totals[key] for key in ("messages", "points_written", "rejected", "polls")}
        )
        fields.update(
            mqtt_connected=self.mqtt.connected,
            devices_online=self.registry.online_count(),
            devices=len(self.registry),
            spool_points=int(sink.get("spool_points", 0)),
            spool_bytes=int(sink.get("spool_bytes", 0)),
        )
        log.info("collector.summary", **fields)
        return fields

    def mqtt_delivering(self, now: int) -> bool:
        """Connected, and not silent for a watchdog period while devices should be talking."""
        if not self.mqtt.connected:
            return False
        quiet_since = max(self.mqtt.last_message_ms, self.mqtt.connected_at_ms)
        return now - quiet_since <= self._watchdog_ms or self.registry.expected_online_count() == 0

    def health(self) -> tuple[bool, dict[str, Any]]:
        now = self.clock_ms()
        mqtt_ok = self.mqtt_delivering(now)
        fallback_ok = now - self.last_delivery_ms < max(self._stale_ms * 2, 60_000)
        stuck = self.sink.stuck()
        sink = self.sink.stats()
        return (mqtt_ok or fallback_ok) and not stuck, {
            "mqtt_connected": self.mqtt.connected,
            "mqtt_delivering": mqtt_ok,
            "last_delivery_age_s": (now - self.last_delivery_ms) / 1000 if self.last_delivery_ms else None,
            "writer_stuck": stuck,
            "points_written": sink.get("points_written"),
            "spool_points": sink.get("spool_points"),
            "devices": len(self.registry),
            "devices_online": self.registry.online_count(),
        }

    def check_watchdog(self) -> bool:
        """Rebuild the MQTT session when it is connected but silent although devices should talk."""
        now = self.clock_ms()
        if not self.mqtt.connected or self.mqtt_delivering(now):
            return False
        quiet_s = (now - max(self.mqtt.last_message_ms, self.mqtt.connected_at_ms)) // 1000
        expected = self.registry.expected_online_count()
        self.mqtt.rebuild(f"no message for {quiet_s} s while {expected} devices should be online")
        return True

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Returns at once; nothing that fails here (cloud, broker, InfluxDB down) stops the daemon."""
        c = self.settings.collector
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._scheduler = scheduler
        self.add_devices(self.configured_devices())
        self.refresh_device_list(poll_new=False)
        self.poller.start()
        self.seed_all("startup")
        self.mqtt.start()
        jobs: list[tuple[Callable[[], Any], float]] = [
            (self.check_fallback, min(max(c.stale_after_s / 4, 1.0), 30.0)),
            (self.poll_all_periodic, c.quota_all_interval_s),
            (self.refresh_device_list, c.device_list_interval_s),
            (self.write_all_status, c.status_interval_s),
            (self.write_telemetry, c.telemetry_interval_s),
            (self.write_energy, self.settings.energy.interval_s),
            (self.check_watchdog, min(self.settings.mqtt.watchdog_s / 4, 60.0)),
            (self.log_summary, c.summary_interval_s),
        ]
        for job, seconds in jobs:
            scheduler.add_job(job, "interval", seconds=seconds, id=job.__name__)
        if self._rollup_job is not None:  # first a minute after the start, to catch up soon
            scheduler.add_job(
                self._rollup_job,
                "interval",
                seconds=self.settings.history.interval_s,
                next_run_time=_after(60),
                id="rollups",
            )
        scheduler.start()
        shard = f"{self._shard[0] + 1}/{self._shard[1]}" if self._shard else None
        log.info("collector.started", devices=len(self.registry), client_id=self.mqtt.client_id, shard=shard)

    def stop(self, timeout: float = 8.0) -> None:
        """Stop taking data and write (or spool) what was accepted, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self.poller.stop()
        self.mqtt.stop(timeout=min(2.0, timeout / 4))
        self.write_energy()
        self.write_telemetry()
        self.sink.close(max(deadline - time.monotonic(), 0.5))
        log.info("collector.stopped")


def _after(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def shard_of(sn: str, count: int) -> int:
    """A stable shard number for a serial (the same on every machine and Python version)."""
    return zlib.crc32(sn.encode()) % count
