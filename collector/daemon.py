"""The daemon: wires each account's sources (MQTT, HTTP: :mod:`collector.account`) -> one ingest
-> one sink, and runs the schedules.

Threads: paho's network thread delivers MQTT messages, the HTTP source's poll workers deliver
`quota/all` answers, both to the ingest (:mod:`collector.ingest`); APScheduler runs the time-driven
jobs (fallback check, periodic polls, device list, status and self-telemetry points, the MQTT
watchdog); the sink has its own writer thread. Every job is a plain method taking the time from the
injected clock, so tests drive them directly.
"""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import structlog
from apscheduler.schedulers.background import BackgroundScheduler

from collector.account import AccountSources
from collector.api.client import EcoflowClient
from collector.catalog import Catalog
from collector.config import AccountSettings, Settings
from collector.decoding import TopicKind
from collector.history.energy import EnergyCounters, Restorer
from collector.ingest import Ingest, RejectLog, wall_clock_ms
from collector.points import COLLECTOR_MEASUREMENT, Device, Point
from collector.sink import Sink
from collector.sources.credentials import mqtt_credentials
from collector.sources.mqtt import MqttCredentials
from collector.state import DeviceState

__all__ = ["Collector", "RejectLog", "shard_of", "wall_clock_ms"]

log = structlog.get_logger("collector.daemon")

_LIST_RETRY_S = (10, 30, 60, 120, 300)  # device list retries while it has never been read


class Collector:
    """Every configured account's sources -> one ingest -> one sink, and the schedules.

    ``client`` and ``client_id`` are those of the one account (the one-account form, or one
    `[[accounts]]` entry), or mappings by account name (several accounts). Attributes of the one
    account (``client``, ``mqtt``, ``http``, ``poller``) are those of the first account."""

    def __init__(
        self,
        settings: Settings,
        catalog: Catalog,
        client: EcoflowClient | Mapping[str, EcoflowClient],
        sink: Sink,
        client_id: str | Mapping[str, str],
        clock_ms: Callable[[], int] = wall_clock_ms,
        shard: tuple[int, int] | None = None,
        energy_restore: Restorer | None = None,
        rollup_job: Callable[[], Any] | None = None,
    ) -> None:
        self.settings = settings
        self.catalog = catalog
        self.sink = sink
        self.clock_ms = clock_ms
        self._shard = shard
        self._rollup_job = rollup_job  # the hourly rollups ([history]); None where there is no InfluxDB
        self._scheduler: BackgroundScheduler | None = None
        self._summary_last: dict[str, int] = {}  # the totals at the last `collector.summary`
        self._summary_at_ms = clock_ms()
        c = settings.collector
        self.energy = EnergyCounters(
            c.state_dir / "energy.json", max_gap_s=settings.energy.max_gap_s, restore=energy_restore
        )
        self.ingest = Ingest(settings, sink, self.energy, clock_ms)
        self.registry = self.ingest.registry
        self.pipeline = self.ingest.pipeline
        self.rejects = self.ingest.rejects
        configured = settings.account_settings()
        clients = _by_account(client, configured, "client")
        client_ids = _by_account(client_id, configured, "client_id")
        self.accounts = [
            AccountSources(
                account,
                settings,
                catalog,
                clients[account.name],
                client_ids[account.name],
                self.ingest,
                clock_ms,
                owns=self.owns,
                tagged=len(configured) > 1,
            )
            for account in configured
        ]
        first = self.accounts[0]
        self.client = first.client
        self.mqtt = first.mqtt
        self.http = first.http
        self.poller = first.http.poller

    def account(self, name: str) -> AccountSources:
        return next(a for a in self.accounts if a.name == name)

    @property
    def polls(self) -> Counter[str]:
        """quota/all calls by reason, all accounts."""
        return sum((Counter(a.http.polls) for a in self.accounts), Counter())

    @property
    def http_errors(self) -> Counter[str]:
        return sum((Counter(a.http.errors) for a in self.accounts), Counter())

    @property
    def last_delivery_ms(self) -> int:
        return self.ingest.last_delivery_ms

    # --- devices -------------------------------------------------------------------------------

    def owns(self, sn: str) -> bool:
        """Whether this instance collects the device (sharding by a stable hash of the serial,
        across the devices of every account)."""
        if self._shard is None:
            return True
        index, count = self._shard
        return shard_of(sn, count) == index

    def add_devices(self, devices: Iterable[Device]) -> list[DeviceState]:
        """Register devices of the first account; returns the new ones, subscribed."""
        return self.accounts[0].add_devices(devices)

    def configured_devices(self) -> list[Device]:
        return [device for account in self.accounts for device in account.configured_devices()]

    def refresh_device_list(self, poll_new: bool = True) -> None:
        """Every account's device list (see :meth:`AccountSources.refresh_device_list`)."""
        for account in self.accounts:
            if not account.refresh_device_list(poll_new):
                self._retry_device_list(account)

    def _retry_device_list(self, account: AccountSources) -> None:
        """While an account's list has never been read and it lists no devices, there is nothing
        to collect from it: try again soon (with a backoff) rather than at the next slow refresh."""
        if account.list_read or account.account.devices or self._scheduler is None:
            return
        delay = _LIST_RETRY_S[min(account.list_failures, len(_LIST_RETRY_S)) - 1]

        def retry() -> None:
            if not account.refresh_device_list():
                self._retry_device_list(account)

        self._scheduler.add_job(
            retry,
            "date",
            run_date=_after(delay),
            id=f"device_list_retry_{account.name}",
            replace_existing=True,
        )

    # --- sources -------------------------------------------------------------------------------

    def mqtt_credentials(self) -> MqttCredentials:
        """The first account's MQTT login (config overrides + the certification answer)."""
        return mqtt_credentials(self.accounts[0].account.mqtt, self.client.certification)

    def handle_message(self, sn: str, kind: TopicKind, payload: bytes) -> None:
        """An MQTT message of the first account (paho's thread); never raises."""
        self.accounts[0].on_message(sn, kind, payload)

    def _owner(self, sn: str) -> AccountSources | None:
        return next((a for a in self.accounts if sn in a.serials), None)

    def poll_device(self, sn: str, reason: str) -> None:
        owner = self._owner(sn)
        if owner is not None:
            owner.http.poll_device(sn, reason)

    def poll(self, state: DeviceState, reason: str) -> bool:
        """quota/all for one device (through its account); its values go through the ingest."""
        owner = self._owner(state.device.sn)
        return owner.http.poll(state, reason) if owner is not None else False

    def seed_all(self, reason: str) -> int:
        """Queue a poll of every pollable device (those already waiting for one are skipped)."""
        return sum(account.http.seed_all(reason) for account in self.accounts)

    def check_fallback(self) -> int:
        """Update online states; poll devices whose MQTT data is stale while they should be
        online, or every device of an account whose MQTT is down. Returns the polls queued."""
        self.ingest.update_online()
        return sum(account.http.check_fallback() for account in self.accounts)

    def poll_all_periodic(self) -> int:
        return self.seed_all("periodic")

    def check_watchdog(self) -> bool:
        """Rebuild each MQTT session that is connected but silent although devices should talk."""
        return sum(account.check_watchdog() for account in self.accounts) > 0

    def mqtt_delivering(self, now: int) -> bool:
        return all(account.mqtt_delivering(now) for account in self.accounts)

    # --- status and self-telemetry ------------------------------------------------------------

    def write_all_status(self) -> None:
        self.ingest.write_all_status()

    def telemetry_point(self) -> Point:
        """`ecoflow_collector`: the process's counters (all accounts summed; `mqtt_connected` is 1
        only while every account's session is up), tagged with the first account's client id."""
        sink = self.sink.stats()
        reporter = self.pipeline.reporter
        polls = self.polls
        mqtts = [a.mqtt for a in self.accounts]
        now = self.clock_ms()
        messages: Counter[str] = Counter()
        for mqtt in mqtts:
            messages.update(mqtt.messages)
        fields: dict[str, float] = {f"messages_{kind}": float(n) for kind, n in messages.items()}
        fields.update({f"rejected_{reason}": float(n) for reason, n in self.rejects.counts.items()})
        fields.update({f"polls_{reason}": float(n) for reason, n in polls.items()})
        fields.update(
            {
                "messages_rejected": float(sum(self.rejects.counts.values())),
                "http_errors": float(sum(self.http_errors.values())),
                "fallback_polls": float(polls["fallback"]),
                "mqtt_connected": 1.0 if all(m.connected for m in mqtts) else 0.0,
                "mqtt_connects": float(sum(m.connects for m in mqtts)),
                "mqtt_auth_failures": float(sum(m.auth_failures for m in mqtts)),
                "mqtt_subscribe_refusals": float(sum(m.subscribe_refusals for m in mqtts)),
                "polls_pending": float(sum(a.http.poller.pending() for a in self.accounts)),
                "devices": float(len(self.registry)),
                "devices_online": float(self.registry.online_count()),
                "devices_read_denied": float(sum(len(a.http.refused) for a in self.accounts)),
                "accounts": float(len(self.accounts)),
                "accounts_delivering": float(sum(a.health(now)[0] for a in self.accounts)),
                "unknown_keys": float(reporter.unknown_keys),
                "non_numeric_values": float(reporter.non_numeric_values),
                "sentinels_skipped": float(reporter.sentinels_skipped),
                "energy_devices": float(len(self.energy)),
                "energy_clock_jumps": float(self.energy.clock_jumps),
                "energy_rejected": float(sum(self.energy.rejected.values())),
            }
        )
        fields.update(sink.fields())
        return Point(COLLECTOR_MEASUREMENT, (("instance", self.mqtt.client_id),), fields, now)

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
        counted: Counter[str] = Counter()
        for account in self.accounts:
            counted.update(account.mqtt.messages)
        messages = {f"messages_{kind}": n for kind, n in counted.items()}
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
            mqtt_connected=all(a.mqtt.connected for a in self.accounts),
            devices_online=self.registry.online_count(),
            devices=len(self.registry),
            spool_points=sink.spool_points,
            spool_bytes=sink.spool_bytes,
        )
        if len(self.accounts) > 1:
            fields["accounts_failing"] = sorted(a.name for a in self.accounts if not a.health(now)[0])
        log.info("collector.summary", **fields)
        return fields

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy while every account delivers (its MQTT, or its HTTP fallback recently) and the
        writer is not stuck; `accounts` says which account fails and why."""
        now = self.clock_ms()
        accounts = {account.name: account.health(now) for account in self.accounts}
        stuck = self.sink.stuck()
        sink = self.sink.stats()
        healthy = all(ok for ok, _ in accounts.values()) and not stuck
        return healthy, {
            "mqtt_connected": all(detail["mqtt_connected"] for _, detail in accounts.values()),
            "mqtt_delivering": all(detail["mqtt_delivering"] for _, detail in accounts.values()),
            "last_delivery_age_s": (now - self.last_delivery_ms) / 1000 if self.last_delivery_ms else None,
            "writer_stuck": stuck,
            "points_written": sink.points_written,
            "spool_points": sink.spool_points,
            "devices": len(self.registry),
            "devices_online": self.registry.online_count(),
            "accounts_failing": sorted(name for name, (ok, _) in accounts.items() if not ok),
            "accounts": {name: detail for name, (_, detail) in accounts.items()},
        }

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Returns at once; nothing that fails here (cloud, broker, InfluxDB down, an account's
        key refused) stops the daemon."""
        c = self.settings.collector
        scheduler = BackgroundScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._scheduler = scheduler
        for account in self.accounts:
            account.start()
            if not account.list_read:
                self._retry_device_list(account)
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
        extra: dict[str, Any] = {}
        if len(self.accounts) > 1:
            extra["accounts"] = {a.name: a.mqtt.client_id for a in self.accounts}
        log.info(
            "collector.started",
            devices=len(self.registry),
            client_id=self.mqtt.client_id,
            shard=shard,
            **extra,
        )

    def stop(self, timeout: float = 8.0) -> None:
        """Stop taking data and write (or spool) what was accepted, within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        sources_by = time.monotonic() + min(2.0 + min(2.0, timeout / 4), timeout / 2)
        for account in self.accounts:  # one shared bound: many accounts do not add up
            account.stop(timeout=max(sources_by - time.monotonic(), 0.1))
        self.write_energy()
        self.write_telemetry()
        self.sink.close(max(deadline - time.monotonic(), 0.5))
        log.info("collector.stopped")


_T = TypeVar("_T")


def _by_account(given: _T | Mapping[str, _T], accounts: list[AccountSettings], what: str) -> dict[str, _T]:
    """One value per account: a mapping by name, or the value of the only account."""
    names = [account.name for account in accounts]
    if isinstance(given, Mapping):
        missing = [name for name in names if name not in given]
        if missing:
            raise ValueError(f"Collector: no {what} for the account {missing[0]}")
        return {name: given[name] for name in names}
    if len(names) != 1:
        raise ValueError(f"Collector: {len(names)} accounts configured, so {what} must be a mapping by name")
    return {names[0]: given}


def _after(seconds: float) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=seconds)


def shard_of(sn: str, count: int) -> int:
    """A stable shard number for a serial (the same on every machine and Python version)."""
    return zlib.crc32(sn.encode()) % count
