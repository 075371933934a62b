"""One EcoFlow account's sources: its API client (with its own retry budget and circuit breaker),
its MQTT session (with its own persisted client id), its HTTP polls and its device list.

Accounts share the ingest (device state, energy counters, the sink) and nothing else, so one
account's bad key, blacklisted client id or unreachable region never stalls another's.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog

from collector.api.client import EcoflowClient
from collector.api.errors import ApiError
from collector.catalog import Catalog
from collector.config import AccountSettings, ConfigError, Settings
from collector.decoding import TopicKind
from collector.ingest import Ingest
from collector.points import Device
from collector.sources.credentials import credentials_provider
from collector.sources.http import HttpSource
from collector.sources.mqtt import MqttSource
from collector.state import DeviceState, Online

log = structlog.get_logger("collector.daemon")

# a serial that can be a topic level (no MQTT wildcards or separators) and a tag value
_SAFE_SERIAL = re.compile(r"^[A-Za-z0-9_*-]{4,40}$")


def open_client(account: AccountSettings, **kwargs: Any) -> EcoflowClient:
    """The account's API client; ConfigError names the account's keys (and their environment
    variables) when any is missing. Give each account its own ``budget`` (a RequestBudget)."""
    if account.from_ecoflow:
        return EcoflowClient.from_settings(account.ecoflow, **kwargs)
    e = account.ecoflow
    missing = [
        name
        for name in ("access_key", "secret_key")
        if not getattr(e, name) or not getattr(e, name).get_secret_value()
    ]
    if missing:
        envs = " and ".join(account.env_name(name) for name in missing)
        raise ConfigError(
            f"account {account.name}: no EcoFlow {' and '.join(missing)}: set {' and '.join(missing)} in its "
            f"[[accounts]] entry or the environment variable{'s' if len(missing) > 1 else ''} {envs}"
        )
    return EcoflowClient.from_settings(e, **kwargs)


class AccountSources:
    def __init__(
        self,
        account: AccountSettings,
        settings: Settings,
        catalog: Catalog,
        client: EcoflowClient,
        client_id: str,
        ingest: Ingest,
        clock_ms: Callable[[], int],
        owns: Callable[[str], bool],
        tagged: bool,
    ) -> None:
        """``owns(sn)``: this instance's shard takes the device; ``tagged``: several accounts are
        configured, so the account's points carry the `account` tag and its events name it."""
        self.name = account.name
        self.account = account
        self.catalog = catalog
        self.client = client
        self.ingest = ingest
        self.clock_ms = clock_ms
        self._owns = owns
        self._tag = account.name if tagged else None
        self._log = structlog.get_logger("collector.daemon", account=account.name) if tagged else log
        self.serials: set[str] = set()  # the account's devices (in the shared registry)
        self._lock = threading.Lock()
        self.list_read = False  # the device list was read at least once
        self.list_failures = 0
        self.last_mqtt_delivery_ms = 0
        self._watchdog_ms = int(settings.mqtt.watchdog_s * 1000)
        self._stale_ms = int(settings.collector.stale_after_s * 1000)
        self.mqtt = MqttSource(
            client_id=client_id,
            credentials=credentials_provider(account.mqtt, client.certification),
            on_message=self.on_message,
            clock_ms=clock_ms,
            keepalive_s=account.mqtt.keepalive_s,
            reconnect_max_s=account.mqtt.reconnect_max_s,
            on_connected=self._after_connect,
            account=self._tag,
        )
        self.http = HttpSource(
            client,
            devices=self.states,
            lookup=self.lookup,
            deliver=ingest.quota_all,
            mqtt_connected=lambda: self.mqtt.connected,
            clock_ms=clock_ms,
            stale_after_s=settings.collector.stale_after_s,
            account=self._tag,
        )

    # --- devices -------------------------------------------------------------------------------

    def states(self) -> list[DeviceState]:
        registry = self.ingest.registry
        with self._lock:
            serials = list(self.serials)
        return [state for sn in serials if (state := registry.get(sn)) is not None]

    def lookup(self, sn: str) -> DeviceState | None:
        return self.ingest.registry.get(sn) if sn in self.serials else None

    def device(self, sn: str, name: str | None, product: str | None) -> Device:
        return Device.resolve(self.catalog, sn, name, product, account=self._tag)

    def configured_devices(self) -> list[Device]:
        return [self.device(d.sn, d.name, d.product) for d in self.account.devices]

    def add_devices(self, devices: Iterable[Device]) -> list[DeviceState]:
        """Register devices (or take their new name/product); returns the new ones, subscribed.
        A serial another account has registered already stays with that account (logged)."""
        added = []
        registry = self.ingest.registry
        with self.ingest.lock:
            for device in devices:
                if not self._owns(device.sn):
                    continue
                if device.sn in registry.devices and device.sn not in self.serials:
                    self._log.warning("device.other_account", sn=device.sn)
                    continue
                new = device.sn not in registry.devices
                state = registry.add(device)
                if new:
                    with self._lock:
                        self.serials.add(device.sn)
                    added.append(state)
                    self._log.debug("device.added", sn=device.sn, name=device.name, product=device.slug)
        if added:
            self._log.info("devices.added", count=len(added), devices=len(self.serials))
            self.mqtt.add_devices(s.device.sn for s in added)
        return added

    def refresh_device_list(self, poll_new: bool = True) -> bool:
        """Discover devices, take names and products the config does not give, and the list's
        online flags. False when the list could not be read."""
        try:
            listed = self.client.device_list()
        except ApiError as exc:
            self.http.note_error(exc)
            self.list_failures += 1
            # one warning when it starts failing; the retries and refreshes after it at debug
            (self._log.warning if self.list_failures == 1 else self._log.debug)(
                "device_list.failed", error=str(exc), failures=self.list_failures
            )
            return False
        self.http.note_success()
        if self.list_failures:
            self._log.info("device_list.recovered", failures=self.list_failures)
        self.list_read = True
        self.list_failures = 0
        configured = {d.sn: d for d in self.account.devices}
        devices: list[Device] = []
        for info in listed:
            entry = configured.get(info.sn)
            if not self.account.wants(info.sn):
                continue  # an explicit device list in the config is the whole list; include/exclude
            if not _SAFE_SERIAL.match(info.sn):
                self._log.warning("device_list.unusable_serial", sn=info.sn[:60])
                continue
            name = (entry.name if entry else None) or info.deviceName
            product = (entry.product if entry else None) or info.productName
            devices.append(self.device(info.sn, name, product))
        new = {state.device.sn for state in self.add_devices(devices)}
        for info in listed:
            state = self.lookup(info.sn)
            if state is not None:
                self.ingest.take_listed(state, bool(info.online))
                if poll_new and info.sn in new:
                    self.http.request(state, "discovered")
        return True

    # --- MQTT ----------------------------------------------------------------------------------

    def on_message(self, sn: str, kind: TopicKind, payload: bytes) -> None:
        """paho's thread, every message of this account's session; never raises."""
        if self.ingest.mqtt_message(sn, kind, payload):
            self.last_mqtt_delivery_ms = self.ingest.last_delivery_ms  # set by the ingest just now

    def _after_connect(self) -> None:
        # every reconnect: seed the account's devices over HTTP, so what MQTT missed meanwhile is
        # filled in (the first connect follows the start-up seed, which does that already)
        if self.mqtt.connects > 1:
            self.http.seed_all("connected")

    def expected_online(self) -> int:
        return sum(1 for state in self.states() if state.expected_online())

    def mqtt_delivering(self, now: int) -> bool:
        """Connected, and not silent for a watchdog period while devices should be talking."""
        if not self.mqtt.connected:
            return False
        quiet_since = max(self.mqtt.last_message_ms, self.mqtt.connected_at_ms)
        return now - quiet_since <= self._watchdog_ms or self.expected_online() == 0

    def check_watchdog(self) -> bool:
        """Rebuild the MQTT session when it is connected but silent although devices should talk."""
        now = self.clock_ms()
        if not self.mqtt.connected or self.mqtt_delivering(now):
            return False
        quiet_s = (now - max(self.mqtt.last_message_ms, self.mqtt.connected_at_ms)) // 1000
        self.mqtt.rebuild(
            f"no message for {quiet_s} s while {self.expected_online()} devices should be online"
        )
        return True

    # --- health --------------------------------------------------------------------------------

    @property
    def last_delivery_ms(self) -> int:
        return max(self.last_mqtt_delivery_ms, self.http.last_delivery_ms)

    def health(self, now: int) -> tuple[bool, dict[str, Any]]:
        """Delivering: MQTT delivers, or the HTTP fallback delivered recently. The detail says why not."""
        mqtt_ok = self.mqtt_delivering(now)
        last = self.last_delivery_ms
        fallback_ok = now - last < max(self._stale_ms * 2, 60_000)
        states = self.states()
        healthy = mqtt_ok or fallback_ok
        problem = None
        if not healthy:
            reasons = [p for p in (self.mqtt.problem(), self.http.problem()) if p]
            if self.mqtt.connected and not mqtt_ok:
                reasons.insert(0, "MQTT connected but silent while devices should be online")
            problem = "; ".join(reasons) or "no data from MQTT or HTTP"
        return healthy, {
            "healthy": healthy,
            "problem": problem,
            "mqtt_connected": self.mqtt.connected,
            "mqtt_delivering": mqtt_ok,
            "mqtt_problem": self.mqtt.problem(),
            "http_problem": self.http.problem(),
            "last_delivery_age_s": (now - last) / 1000 if last else None,
            "devices": len(states),
            "devices_online": sum(1 for s in states if s.online is Online.ONLINE),
            "devices_read_denied": len(self.http.refused),
            "client_id": self.mqtt.client_id,
        }

    # --- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Returns at once; a failing cloud, key or broker is logged and retried, never raised."""
        self.add_devices(self.configured_devices())
        self.refresh_device_list(poll_new=False)
        self.http.start()
        self.http.seed_all("startup")
        self.mqtt.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Its polls (the calls in flight get up to `timeout`), then its MQTT session."""
        deadline = time.monotonic() + timeout
        self.http.stop(timeout=timeout)
        self.mqtt.stop(timeout=max(deadline - time.monotonic(), 0.1))
