"""The daemon: wires sources (MQTT, HTTP) -> ingest -> sink, and runs the schedules.

Threads: paho's network thread delivers MQTT messages, the HTTP source's poll workers deliver
`quota/all` answers, both to the ingest (:mod:`collector.ingest`); APScheduler runs the time-driven
jobs (fallback check, periodic polls, device list, status and self-telemetry points, the MQTT
watchdog); the sink has its own writer thread. Every job is a plain method taking the time from the
injected clock, so tests drive them directly.
"""

from __future__ import annotations

import re
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from collector.api.client import EcoflowClient
from collector.api.errors import ApiError
from collector.catalog import Catalog
from collector.config import Settings
from collector.decoding import TopicKind
from collector.history.energy import EnergyCounters, Restorer
from collector.ingest import Ingest, RejectLog, wall_clock_ms
from collector.points import COLLECTOR_MEASUREMENT, Device, Point
from collector.sink import Sink
from collector.sources.credentials import mqtt_credentials
from collector.sources.http import HttpSource
from collector.sources.mqtt import MqttCredentials, MqttSource
from collector.state import DeviceState

__all__ = ["Collector", "RejectLog", "shard_of", "wall_clock_ms"]

log = structlog.get_logger("collector.daemon")

# a serial that can be a topic level (no MQTT wildcards or separators) and a tag value
_SAFE_SERIAL = re.compile(r"^[A-Za-z0-9_*-]{4,40}$")
_LIST_RETRY_S = (10, 30, 60, 120, 300)  # device list retries while it has never been read


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
        self._shard = shard
        self._rollup_job = rollup_job  # the hourly rollups ([history]); None where there is no InfluxDB
        self._scheduler: BackgroundScheduler | None = None
        self._list_read = False  # the device list was read at least once
        self._list_failures = 0
        self._summary_last: dict[str, int] = {}  # the totals at the last `collector.summary`
        self._summary_at_ms = clock_ms()
        c = settings.collector
        self._stale_ms = int(c.stale_after_s * 1000)
        self._watchdog_ms = int(settings.mqtt.watchdog_s * 1000)
        self.energy = EnergyCounters(
            c.state_dir / "energy.json", max_gap_s=settings.energy.max_gap_s, restore=energy_restore
        )
        self.ingest = Ingest(settings, sink, self.energy, clock_ms)
        self.registry = self.ingest.registry
        self.pipeline = self.ingest.pipeline
        self.rejects = self.ingest.rejects
        self.mqtt = MqttSource(
            client_id=client_id,
            credentials=self.mqtt_credentials,
            on_message=self.handle_message,
            clock_ms=clock_ms,
            keepalive_s=settings.mqtt.keepalive_s,
            reconnect_max_s=settings.mqtt.reconnect_max_s,
            on_connected=self._after_connect,
        )
        self.http = HttpSource(
            client,
            devices=self.registry.states,
            lookup=self.registry.get,
            deliver=self.ingest.quota_all,
            mqtt_connected=lambda: self.mqtt.connected,
            clock_ms=clock_ms,
            stale_after_s=c.stale_after_s,
        )
        self.poller = self.http.poller
        self.polls = self.http.polls  # reason -> quota/all calls
        self.http_errors = self.http.errors

    @property
    def last_delivery_ms(self) -> int:
        return self.ingest.last_delivery_ms

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
        with self.ingest.lock:
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
            self.http.note_error(exc)
            self._list_failures += 1
            # one warning when it starts failing; the retries and refreshes after it at debug
            (log.warning if self._list_failures == 1 else log.debug)(
                "device_list.failed", error=str(exc), failures=self._list_failures
            )
            self._retry_device_list()
            return
        self.http.note_success()
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
                self.ingest.take_listed(state, bool(info.online))
                if poll_new and info.sn in new:
                    self.http.request(state, "discovered")

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

    # --- sources -------------------------------------------------------------------------------

    def mqtt_credentials(self) -> MqttCredentials:
        return mqtt_credentials(self.settings.mqtt, self.client.certification)

    def handle_message(self, sn: str, kind: TopicKind, payload: bytes) -> None:
        """Called on paho's thread for every message; never raises."""
        self.ingest.mqtt_message(sn, kind, payload)

    def _after_connect(self) -> None:
        # every reconnect: seed all devices over HTTP, so what MQTT missed meanwhile is filled in
        # (the first connect follows the start-up seed, which does that already)
        if self.mqtt.connects > 1:
            self.seed_all("connected")

    def poll_device(self, sn: str, reason: str) -> None:
        self.http.poll_device(sn, reason)

    def poll(self, state: DeviceState, reason: str) -> bool:
        """quota/all for one device; its values go through the same pipeline as MQTT's."""
        return self.http.poll(state, reason)

    def seed_all(self, reason: str) -> int:
        """Queue a poll of every pollable device (those already waiting for one are skipped)."""
        return self.http.seed_all(reason)

    def check_fallback(self) -> int:
        """Update online states; poll devices whose MQTT data is stale while they should be
        online, or every device while MQTT is down. Returns the number of polls queued."""
        self.ingest.update_online()
        return self.http.check_fallback()

    def poll_all_periodic(self) -> int:
        return self.seed_all("periodic")

    # --- status and self-telemetry ------------------------------------------------------------

    def write_all_status(self) -> None:
        self.ingest.write_all_status()

    def telemetry_point(self) -> Point:
        sink = self.sink.stats()
        reporter = self.pipeline.reporter
        polls = Counter(self.polls)
        fields: dict[str, float] = {f"messages_{kind}": float(n) for kind, n in self.mqtt.messages.items()}
        fields.update({f"rejected_{reason}": float(n) for reason, n in self.rejects.counts.items()})
        fields.update({f"polls_{reason}": float(n) for reason, n in polls.items()})
        fields.update(
            {
                "messages_rejected": float(sum(self.rejects.counts.values())),
                "http_errors": float(sum(self.http_errors.values())),
                "fallback_polls": float(polls["fallback"]),
                "mqtt_connected": 1.0 if self.mqtt.connected else 0.0,
                "mqtt_connects": float(self.mqtt.connects),
                "mqtt_auth_failures": float(self.mqtt.auth_failures),
                "mqtt_subscribe_refusals": float(self.mqtt.subscribe_refusals),
                "polls_pending": float(self.poller.pending()),
                "devices": float(len(self.registry)),
                "devices_online": float(self.registry.online_count()),
                "devices_read_denied": float(len(self.http.refused)),
                "unknown_keys": float(reporter.unknown_keys),
                "non_numeric_values": float(reporter.non_numeric_values),
                "sentinels_skipped": float(reporter.sentinels_skipped),
                "energy_devices": float(len(self.energy)),
                "energy_clock_jumps": float(self.energy.clock_jumps),
                "energy_rejected": float(sum(self.energy.rejected.values())),
            }
        )
        fields.update(sink.fields())
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
        messages = {f"messages_{kind}": n for kind, n in self.mqtt.messages.items()}
        totals = {
            **messages,
            "messages": sum(messages.values()),
            "points_written": sink.points_written,
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
            spool_points=sink.spool_points,
            spool_bytes=sink.spool_bytes,
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
            "points_written": sink.points_written,
            "spool_points": sink.spool_points,
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
        self.http.start()
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
        self.http.stop(timeout=2.0)
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
