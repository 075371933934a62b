"""The daemon end to end, in-process: local EcoFlow cloud -> real Mosquitto (TLS + password) ->
collector -> real InfluxDB. Time-driven decisions are also driven directly with an injected clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.account import open_client
from collector.api.client import EcoflowClient, RequestBudget
from collector.catalog import default_catalog
from collector.config import Settings, settings_from_values
from collector.daemon import Collector, wall_clock_ms
from collector.decoding import decode_bytes
from collector.normalize import normalize_values
from collector.simulator.publisher import Publisher
from collector.simulator.server import LocalCloud
from collector.sink.influx import InfluxWriter
from collector.state import Online
from collector.testbed import InfluxServer, MosquittoServer


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def make_settings(
    cloud: LocalCloud, influx: InfluxServer, db: str, state_dir: Path, **collector: Any
) -> Settings:
    data = cloud.collector_settings()
    data["influxdb"] = {
        "url": influx.url,
        "bucket": db,
        "token": "t",
        "batch_size": 200,
        "flush_interval_s": 0.2,
    }
    data["collector"] = {"state_dir": str(state_dir), **collector}
    data["mqtt"] = {**data.get("mqtt", {}), "reconnect_max_s": 2}
    return settings_from_values(data)  # the developer's environment must not change a test


@contextmanager
def running(settings: Settings, clock_ms: Callable[[], int] | None = None) -> Iterator[Collector]:
    """A started collector for every account of `settings` (each its own client and MQTT id)."""
    accounts = settings.account_settings()
    clients = {a.name: open_client(a, budget=RequestBudget()) for a in accounts}
    sink = InfluxWriter.from_settings(settings)
    collector = Collector(
        settings,
        default_catalog(),
        clients,
        sink,
        client_id={a.name: f"test-{a.name}-{time.time_ns()}" for a in accounts},
        clock_ms=clock_ms or wall_clock_ms,
    )
    collector.start()
    try:
        yield collector
    finally:
        collector.stop(timeout=5)
        for client in clients.values():
            client.close()


def publisher_of(cloud: LocalCloud) -> Publisher:
    """The cloud's MQTT publisher (there is one when the cloud was given a broker)."""
    assert cloud.publisher is not None, "this LocalCloud was started without a broker"
    return cloud.publisher


def account_client(broker: MosquittoServer, user: str, password: str, name: str) -> mqtt.Client:
    """An MQTT client logged in (TLS) as an EcoFlow account's certificateAccount user, not yet connected."""
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{name}-{time.time_ns()}"
    )
    client.username_pw_set(user, password)
    client.tls_set(ca_certs=str(broker.ca_file))
    return client


class Capture:
    """Subscribes as the account's user and keeps every payload per topic, to compare with storage."""

    def __init__(self, broker: MosquittoServer, user: str, password: str) -> None:
        self.messages: dict[str, list[bytes]] = {}
        self._client = account_client(broker, user, password, "capture")
        self._client.on_message = lambda _c, _u, m: self.messages.setdefault(m.topic, []).append(
            bytes(m.payload)
        )
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_a: subscribed.set()
        self._client.on_connect = lambda c, *_a: c.subscribe(f"/open/{user}/#", qos=1)
        self._client.connect(broker.host, broker.tls_port)
        self._client.loop_start()
        assert subscribed.wait(10)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@pytest.fixture
def cloud(mosquitto_server: MosquittoServer) -> Iterator[LocalCloud]:
    with LocalCloud("powerstream=1,delta_pro=1", mosquitto=mosquitto_server, publish_rate=None) as local:
        yield local


def rows(influx: InfluxServer, db: str, measurement: str, sn: str) -> list[dict[str, Any]]:
    return influx.rows(db, f"SELECT * FROM \"{measurement}\" WHERE sn = '{sn}'", epoch="ms")


def rows_beyond(influx: InfluxServer, db: str, measurement: str, sn: str, count: int) -> list[dict[str, Any]]:
    """All rows of a device once there are more than `count`, else none."""
    found = rows(influx, db, measurement, sn)
    return found if len(found) > count else []


def test_quota_reports_of_both_products_arrive_with_the_right_values(
    cloud: LocalCloud,
    mosquitto_server: MosquittoServer,
    influx_server: InfluxServer,
    influx_db: str,
    tmp_path: Path,
) -> None:
    account = cloud.account
    capture = Capture(mosquitto_server, account.certificate_account, account.certificate_password)
    settings = make_settings(cloud, influx_server, influx_db, tmp_path)
    catalog = default_catalog()
    try:
        with running(settings) as collector:
            wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
            wait_for(lambda: collector.polls["startup"] == 2, what="start-up seeding")
            for device in cloud.devices:
                # an HTTP seed landed at start-up: dashboards are complete at once
                where = (influx_server, influx_db, device.product_slug, device.sn)
                wait_for(partial(rows, *where), what="seed")
                before = len(rows(*where))
                publisher_of(cloud).publish_report(device, full=True)
                stored = wait_for(
                    partial(rows_beyond, *where, before), what=f"the MQTT report of {device.sn}"
                )
                topic = f"/open/{account.certificate_account}/{device.sn}/quota"
                payload = wait_for(partial(capture.messages.get, topic), what="captured payload")[-1]
                expected = normalize_values(
                    catalog.products[device.product_slug], decode_bytes(payload).values
                )
                last = stored[-1]
                assert len(expected) > 40
                for key, value in expected.items():
                    assert last[key] == pytest.approx(value, rel=1e-12, abs=0), key
                summary = rows(influx_server, influx_db, "ecoflow_summary", device.sn)
                assert summary and {"soc_percent", "battery_w"} <= {
                    k for k, v in summary[-1].items() if v is not None
                }
            assert collector.mqtt.messages["quota"] == 2
    finally:
        capture.close()


def test_status_changes_arrive(
    cloud: LocalCloud, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    settings = make_settings(cloud, influx_server, influx_db, tmp_path)
    device = cloud.devices[0]
    with running(settings) as collector:
        wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
        cloud.set_online(device.sn, False)
        wait_for(lambda: collector.registry.devices[device.sn].online is Online.OFFLINE, what="offline")
        cloud.set_online(device.sn, True)
        wait_for(lambda: collector.registry.devices[device.sn].online is Online.ONLINE, what="online again")
        collector.sink.flush(5)  # type: ignore[attr-defined]
    states = [r["state"] for r in rows(influx_server, influx_db, "ecoflow_status", device.sn)]
    online = [r["online"] for r in rows(influx_server, influx_db, "ecoflow_status", device.sn)]
    assert 0.0 in states and states[-1] in (1.0, 2.0)
    assert online[states.index(0.0)] == 0.0 and 1.0 in online


def test_hostile_payloads_are_counted_and_the_daemon_goes_on(
    cloud: LocalCloud,
    mosquitto_server: MosquittoServer,
    influx_server: InfluxServer,
    influx_db: str,
    tmp_path: Path,
) -> None:
    settings = make_settings(cloud, influx_server, influx_db, tmp_path, max_payload_bytes=65536)
    account = cloud.account
    device = cloud.devices[0]
    topic = f"/open/{account.certificate_account}/{device.sn}/quota"
    hostile = [
        b"{not json",
        b'{"params": {"pd.soc": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]}, "version": "1.0"}',
        b'{"a": "' + b"x" * 1_000_000 + b'"}',
        b"[1, 2, 3]",
        b'{"cmdId": "x", "cmdFunc": {}, "param": 5}',
        b"\xff\xfe\x00garbage",
        orjson.dumps({"deep": {"a" * 300: 1}}),
    ]
    sender = account_client(
        mosquitto_server, account.certificate_account, account.certificate_password, "hostile"
    )
    sender.connect(mosquitto_server.host, mosquitto_server.tls_port)
    sender.loop_start()
    try:
        with running(settings) as collector:
            wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
            for payload in hostile:
                sender.publish(topic, payload, qos=1).wait_for_publish(5)
            wait_for(lambda: sum(collector.rejects.counts.values()) == len(hostile), what="all rejections")
            assert collector.rejects.counts["too_large"] == 1
            assert collector.rejects.counts["malformed"] == len(hostile) - 1
            before = len(rows(influx_server, influx_db, device.product_slug, device.sn))
            publisher_of(cloud).publish_report(device, full=True)
            wait_for(
                lambda: len(rows(influx_server, influx_db, device.product_slug, device.sn)) > before,
                what="a good report after the hostile ones",
            )
            collector.write_telemetry()
            collector.sink.flush(5)  # type: ignore[attr-defined]
        telemetry = influx_server.rows(influx_db, "SELECT * FROM ecoflow_collector", epoch="ms")
        assert telemetry[-1]["messages_rejected"] == len(hostile)
        assert telemetry[-1]["mqtt_subscribe_refusals"] == 0  # the broker granted both topics
    finally:
        sender.disconnect()
        sender.loop_stop()


def test_fallback_polls_follow_staleness_with_an_injected_clock(
    cloud: LocalCloud, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    now = [1_800_000_000_000]
    settings = make_settings(
        cloud,
        influx_server,
        influx_db,
        tmp_path,
        stale_after_s=120,
        offline_after_s=600,
        quota_all_interval_s=3600,
    )
    client = EcoflowClient.from_settings(settings.ecoflow, budget=RequestBudget())
    sink = InfluxWriter.from_settings(settings)
    collector = Collector(
        settings, default_catalog(), client, sink, client_id="clocked", clock_ms=lambda: now[0]
    )
    try:
        collector.add_devices(collector.configured_devices())
        collector.poller.start()
        state = collector.registry.devices[cloud.devices[0].sn]
        other = collector.registry.devices[cloud.devices[1].sn]
        collector.mqtt.connected = True  # as if the broker were up: only staleness matters
        assert collector.check_fallback() == 0  # not known online: MQTT may simply not have spoken yet
        assert collector.poll(state, "test")
        assert state.online is Online.ASSUMED_OFFLINE  # an HTTP answer alone never marks a device online
        # fresh MQTT data: online, nothing due
        for s in (state, other):
            s.set_online(Online.ONLINE)
            s.last_mqtt_ms = s.last_seen_ms = s.last_poll_ms = now[0]
        assert collector.check_fallback() == 0
        now[0] += 121_000  # MQTT stale past stale_after_s while online: fallback for both
        assert collector.check_fallback() == 2
        wait_for(lambda: collector.polls["fallback"] == 2)
        assert collector.check_fallback() == 0  # just polled: not again before stale_after_s
        now[0] += 500_000  # silent past offline_after_s: assumed offline, no more fallback polls
        assert collector.check_fallback() == 0
        assert state.online is Online.ASSUMED_OFFLINE
        collector.mqtt.connected = False  # MQTT down: every pollable device is polled
        assert collector.check_fallback() == 2
        wait_for(lambda: collector.polls["fallback"] == 4)
        state.listed = False  # the device list says offline: not polled
        now[0] += 121_000
        assert collector.check_fallback() == 1
        # the device list says online: MQTT silence makes it due although MQTT never spoke
        collector.mqtt.connected = True
        wait_for(lambda: collector.poller.pending() == 0)
        state.listed = other.listed = True
        now[0] += 121_000
        assert collector.check_fallback() == 2
    finally:
        collector.stop(timeout=5)
        client.close()


def test_broker_outage_switches_to_http_fallback_and_back(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with (
        MosquittoServer() as broker,
        LocalCloud("powerstream=1,delta_pro=1", mosquitto=broker, publish_rate=5) as cloud,
    ):
        settings = make_settings(cloud, influx_server, influx_db, tmp_path / "state", stale_after_s=1.0)
        with running(settings) as collector:
            wait_for(lambda: collector.mqtt.messages["quota"] >= 4, what="MQTT reports")
            broker.kill()
            killed_at = time.monotonic()
            wait_for(lambda: not collector.mqtt.connected, what="disconnect")
            polls = collector.polls["fallback"]
            wait_for(lambda: collector.polls["fallback"] >= polls + 2, timeout=15, what="fallback polls")
            assert time.monotonic() - killed_at < 1.0 + 2 * 10  # within staleness plus the check interval
            broker.restart()  # the simulator's publisher reconnects by itself, like a real device
            received = collector.mqtt.messages["quota"]
            wait_for(lambda: collector.mqtt.connected, timeout=20, what="MQTT reconnect")
            wait_for(
                lambda: collector.mqtt.messages["quota"] > received + 2, timeout=20, what="MQTT data again"
            )
            assert collector.polls["connected"] >= 2  # re-seeded over HTTP after the reconnect
