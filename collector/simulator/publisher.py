"""The devices' side of MQTT: quota reports, status changes and answers to `/set`, per account.

One paho client per account logs in as the account's MQTT user (`certificateAccount`), the way
EcoFlow's broker carries every device of an account under `/open/{certificateAccount}/{sn}/...`.
Reports go out with QoS 1 in the shapes real devices use:

- PowerStream: `{"cmdId":1,"cmdFunc":20,"param":{bare 20_1 keys}}`, and (a configurable share)
  the newer `{"cmdId":1,"cmdFunc":20,"addr":"iot","params":{..}}`; nothing else is added;
- Delta Pro, STREAM, Smart Meter: `{"id":..,"version":"1.0","timestamp":ms,"params":{..}}` (numbers,
  or numbers as strings for a device configured so);
- Smart Plug: `{"cmdId":1,"cmdFunc":2,"param"|"params":{bare 2_1 keys}}`, as the PowerStream;
- DELTA Pro 3: `{"cmdId":2,"cmdFunc":2,"addr":..,"version":"1.0","params":{flat keys}}`;
- DELTA 2 family: one `{"id":..,"version":"1.0","timestamp":ms,"moduleType":N,"typeCode":"pdStatus",
  "params":{bare keys}}` message per module (`pd.`, `bms_bmsStatus.`, ...) the report touches;
- `/status`: `{"id":"..","version":"1.0","timestamp":ms,"params":{"status":0|1}}`;
- `/set_reply` to a `/set`: `{"data":{"ack":0},"id":N}` (PowerStream) or the Delta Pro document's
  `{"id":N,"version":"1.0","operateType":"TCP","code":"0","data":{"cmdSet":..,"id":..,"ack":0}}`;
  ack 1 when the device refuses the command.

Every publish is logged in memory (topic, wall-clock time in ns, keys) so benchmarks can match
what a collector stored against what was sent, and measure latency and loss.
"""

from __future__ import annotations

import random
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import orjson
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion

from collector.catalog import Catalog, default_catalog
from collector.simulator.accounts import Account, AccountBook
from collector.simulator.broker import BrokerInfo
from collector.simulator.clock import Clock, wall_clock
from collector.simulator.commands import CommandError, resolve
from collector.simulator.devices import SimDevice, wire_values
from collector.sources.mqtt import release_sockets

log = structlog.get_logger("collector.simulator.publisher")

QOS: Final = 1
_MAX_UNACKED: Final = 1000  # bounds the time a report waits in paho's queue (the log's time is its hand-over)


class PublisherError(Exception):
    """The publisher could not connect (wrong credentials, broker down, TLS failure)."""


@dataclass(frozen=True, slots=True)
class PublishRecord:
    topic: str
    sn: str
    kind: str  # "quota", "status" or "set_reply"
    time_ns: int  # wall clock when handed to the MQTT client
    keys: tuple[str, ...]  # quota keys in the catalog key space ("20_1.batSoc"), or ("status",)


class _Session:
    """One account's MQTT connection."""

    def __init__(self, account: Account, client: mqtt.Client) -> None:
        self.account = account
        self.client = client
        self.connected = threading.Event()
        self.refused: str | None = None


class Publisher:
    """Publishes the devices of every account in `accounts` to `broker`, and answers `/set`.

    :meth:`connect` first; then :meth:`run` (blocking, bounded by count or duration) or
    :meth:`start` (background). A full report goes out as a device's first report and every
    `full_every` reports after; the others carry up to `incremental_keys` changed keys.
    `max_inflight` is paho's in-flight window: a small one measured fastest here (paho then
    sends from its network thread as acknowledgements arrive).
    """

    def __init__(
        self,
        accounts: AccountBook,
        broker: BrokerInfo,
        *,
        catalog: Catalog | None = None,
        clock: Clock = wall_clock,
        full_every: int = 20,
        incremental_keys: int = 6,
        new_shape_share: float = 0.3,
        max_inflight: int = 20,
        seed: int = 0,
        log_limit: int = 1_000_000,
        keepalive_s: int = 60,
    ) -> None:
        if full_every < 1:
            raise ValueError("full_every must be at least 1")
        self.accounts = accounts
        self.broker = broker
        self.catalog = catalog or default_catalog()
        self.clock = clock  # the devices' clock: Delta Pro and status timestamps
        self.full_every = full_every
        self.incremental_keys = incremental_keys
        self.new_shape_share = new_shape_share  # PowerStream reports in the addr/params shape
        self.max_inflight = max_inflight
        self.keepalive_s = keepalive_s
        self.records: deque[PublishRecord] = deque(maxlen=log_limit)
        self.published = 0
        self.acked = 0
        self.set_requests = 0
        self._rng = random.Random(seed)
        self._sessions: dict[str, _Session] = {}  # by certificate account
        self._counts: dict[str, int] = {}  # messages per device, for the full-report rhythm
        self._lock = threading.Lock()
        self._acks = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ connections
    def connect(self, timeout: float = 10.0) -> None:
        """Log every account's MQTT user in and subscribe to its devices' `/set` topics."""
        self._stop.clear()
        for account in self.accounts:
            if account.certificate_account not in self._sessions:
                self._sessions[account.certificate_account] = self._open(account)
        deadline = time.monotonic() + timeout
        for session in self._sessions.values():
            if not session.connected.wait(max(0.0, deadline - time.monotonic())) or session.refused:
                self.disconnect()
                reason = session.refused or f"no CONNACK within {timeout:g} s"
                raise PublisherError(f"MQTT login of {session.account.certificate_account} failed: {reason}")
        log.info(
            "publisher.connected",
            accounts=len(self._sessions),
            broker=f"{self.broker.host}:{self.broker.port}",
        )

    def _open(self, account: Account) -> _Session:
        client_id = f"sim-{account.certificate_account[5:17]}-{secrets.token_hex(4)}"
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311)
        session = _Session(account, client)
        client.username_pw_set(account.certificate_account, account.certificate_password)
        if self.broker.tls:
            client.tls_set(ca_certs=str(self.broker.ca_file) if self.broker.ca_file else None)
        client.max_inflight_messages_set(self.max_inflight)
        client.on_connect = lambda c, u, flags, reason, props: self._on_connect(session, reason)
        client.on_disconnect = lambda c, u, flags, reason, props: self._on_disconnect(session, reason)
        client.on_publish = self._on_publish
        client.on_message = lambda c, u, message: self._on_message(session, message)
        try:
            client.connect(self.broker.host, self.broker.port, keepalive=self.keepalive_s)
        except OSError as exc:
            raise PublisherError(
                f"cannot reach the broker {self.broker.host}:{self.broker.port}: {exc}"
            ) from exc
        client.loop_start()
        return session

    def _on_connect(self, session: _Session, reason: Any) -> None:
        if reason.is_failure:
            session.refused = str(reason)
            session.connected.set()
            session.client.disconnect()
            return
        session.client.subscribe(f"/open/{session.account.certificate_account}/+/set", qos=QOS)
        session.connected.set()

    def _on_disconnect(self, session: _Session, reason: Any) -> None:
        if reason.is_failure and not self._stop.is_set():
            log.warning(
                "publisher.disconnected", account=session.account.certificate_account, reason=str(reason)
            )

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self._acks:
            self.acked += 1
            self._acks.notify_all()

    def disconnect(self) -> None:
        self.stop()
        for session in self._sessions.values():
            session.client.disconnect()
            session.client.loop_stop()
            release_sockets(session.client)
        self._sessions.clear()

    # ------------------------------------------------------------------ publishing
    def _send(
        self,
        device: SimDevice,
        kind: str,
        payload: dict[str, Any],
        keys: tuple[str, ...],
        *,
        wait: bool = True,
    ) -> None:
        """Publish with QoS 1; `wait` holds back while too many messages are unacknowledged
        (never on paho's network thread, which is the one that processes the acknowledgements)."""
        account = self.accounts.owner(device.sn)
        session = self._sessions.get(account.certificate_account) if account else None
        if session is None:
            raise PublisherError(f"device {device.sn} has no connected account")
        topic = f"/open/{session.account.certificate_account}/{device.sn}/{kind}"
        data = orjson.dumps(payload)
        with self._acks:
            while wait and self.published - self.acked >= _MAX_UNACKED and not self._stop.is_set():
                self._acks.wait(0.5)
            self.published += 1
            self.records.append(PublishRecord(topic, device.sn, kind, time.time_ns(), keys))
        session.client.publish(topic, data, qos=QOS)

    def publish_report(self, device: SimDevice, *, full: bool | None = None, wait: bool = True) -> None:
        """One quota report of `device`: full every `full_every` messages, else incremental."""
        with self._lock:
            count = self._counts.get(device.sn, 0)
            self._counts[device.sn] = count + 1
        if full is None:
            full = count % self.full_every == 0
        values = device.full_report() if full else device.incremental_report(self.incremental_keys)
        for payload, keys in report_payloads(device, values, self._rng, self.clock, self.new_shape_share):
            self._send(device, "quota", payload, keys, wait=wait)

    def publish_status(self, device: SimDevice) -> None:
        """The `/status` message for the device's current online flag."""
        payload = {
            "id": str(self._rng.randrange(100_000_000, 1_000_000_000)),
            "version": "1.0",
            "timestamp": int(self.clock() * 1000),
            "params": {"status": int(device.online)},
        }
        self._send(device, "status", payload, ("status",))

    def _devices(self) -> list[SimDevice]:
        return [device for session in self._sessions.values() for device in session.account.devices.values()]

    def run(
        self,
        *,
        count: int | None = None,
        duration: float | None = None,
        rate: float = 0.0,
    ) -> int:
        """Publish reports round-robin over all online devices; returns the number published.

        `rate` is messages per second over all devices (0 = as fast as the broker acknowledges);
        the run ends after `count` messages, after `duration` seconds, or on :meth:`stop`.
        """
        devices = self._devices()
        if not devices:
            return 0
        started = time.monotonic()
        deadline = started + duration if duration is not None else None
        sent = 0
        for device in _cycle(devices):
            if self._stop.is_set() or (count is not None and sent >= count):
                break
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                break
            if not device.online:
                if not any(d.online for d in devices):
                    self._stop.wait(0.05)  # nobody to publish for; do not spin
                continue
            if rate > 0:
                ahead = started + sent / rate - now
                if ahead > 0 and self._stop.wait(ahead):
                    break
            self.publish_report(device)
            sent += 1
        return sent

    def start(self, *, rate: float, count: int | None = None, duration: float | None = None) -> None:
        """:meth:`run` on a background thread (until :meth:`stop` unless bounded)."""
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError("the publisher is already running")
        self._stop.clear()
        self._thread = threading.Thread(
            target=self.run,
            kwargs={"count": count, "duration": duration, "rate": rate},
            name="sim-publisher",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        """End :meth:`run` (takes no lock: safe in a signal handler; waiters wake within 0.5 s)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)
            self._thread = None

    def wait_acked(self, timeout: float = 10.0) -> bool:
        """Wait until the broker has acknowledged every message published so far."""
        deadline = time.monotonic() + timeout
        with self._acks:
            while self.acked < self.published:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acks.wait(left)
        return True

    # ------------------------------------------------------------------ /set
    def _on_message(self, session: _Session, message: mqtt.MQTTMessage) -> None:
        parts = message.topic.split("/")
        device = session.account.devices.get(parts[3]) if len(parts) == 5 and parts[4] == "set" else None
        if device is None or not device.online:
            return  # nobody there to answer, as with a real device that is off
        try:
            request = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            log.warning("publisher.set_not_json", sn=device.sn)
            return
        if not isinstance(request, dict) or "id" not in request:
            log.warning("publisher.set_without_id", sn=device.sn)
            return
        with self._lock:
            self.set_requests += 1
        params = request.get("params")
        try:
            changes = resolve(self.catalog.products[device.product_slug], request.get("cmdCode"), params)
        except CommandError as exc:
            log.info("publisher.set_refused", sn=device.sn, reason=str(exc))
            changes, ack = [], 1
        else:
            ack = 0
        for change in changes:
            device.set_quota(change.key, change.value)
        self._send(device, "set_reply", self._reply(device, request, ack), ("ack",), wait=False)
        if changes:
            self.publish_report(device, full=False, wait=False)  # devices push their new state at once

    @staticmethod
    def _reply(device: SimDevice, request: dict[str, Any], ack: int) -> dict[str, Any]:
        if device.report_cmd is not None:
            return {"data": {"ack": ack}, "id": request["id"]}
        params = request.get("params")
        if not isinstance(params, dict):
            params = {}
        return {
            "id": request["id"],
            "version": "1.0",
            "operateType": "TCP",
            "code": "0",
            "data": {"cmdSet": params.get("cmdSet"), "id": params.get("id"), "ack": ack},
        }


def report_payloads(
    device: SimDevice,
    values: dict[str, Any],
    rng: random.Random,
    clock: Clock = wall_clock,
    new_shape_share: float = 0.3,
) -> list[tuple[dict[str, Any], tuple[str, ...]]]:
    """The MQTT messages (payload, catalog keys it carries) a device sends for `values` (catalog key
    space), in its product's envelope: one, or one per module for the DELTA 2 family. The values
    are each envelope's last member (load generators rely on that)."""
    if not device.report_modules:
        return [(report_payload(device, values, rng, clock, new_shape_share), tuple(values))]
    modules: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        prefix, _, bare = key.partition(".")
        modules.setdefault(prefix, {})[bare] = value
    messages = []
    for prefix, body in modules.items():
        type_code, module_type = device.report_modules[prefix]
        payload = {
            "id": rng.randrange(100_000_000, 1_000_000_000),
            "version": "1.0",
            "timestamp": int(clock() * 1000),
            "moduleType": module_type,
            "typeCode": type_code,
            "params": wire_values(device, body),
        }
        messages.append((payload, tuple(f"{prefix}.{key}" for key in body)))
    return messages


def report_payload(
    device: SimDevice,
    values: dict[str, Any],
    rng: random.Random,
    clock: Clock = wall_clock,
    new_shape_share: float = 0.3,
) -> dict[str, Any]:
    """The one MQTT quota report a device sends for `values` (catalog key space) in its product's
    envelope; not for the DELTA 2 family (:func:`report_payloads`). The values' keys are the
    envelope's last member (load generators rely on that)."""
    if device.report_modules:
        raise ValueError(f"{device.product_slug} reports one message per module: use report_payloads")
    if device.report_cmd is None:
        return {
            "id": rng.randrange(100_000_000, 1_000_000_000),
            "version": "1.0",
            "timestamp": int(clock() * 1000),
            "params": wire_values(device, values),
        }
    func, cmd = device.report_cmd
    if device.report_prefixed:
        strip = len(f"{func}_{cmd}.")
        values = {key[strip:]: value for key, value in values.items()}
    body = wire_values(device, values)
    if device.report_addr is not None:
        return {"cmdId": cmd, "cmdFunc": func, "addr": device.report_addr, "version": "1.0", "params": body}
    if rng.random() < new_shape_share:
        return {"cmdId": cmd, "cmdFunc": func, "addr": "iot", "params": body}
    return {"cmdId": cmd, "cmdFunc": func, "param": body}


def _cycle(devices: list[SimDevice]) -> Iterator[SimDevice]:
    while True:
        yield from devices
