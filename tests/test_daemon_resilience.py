"""What keeps the daemon running unattended: the MQTT watchdog, credential refresh after "Not
authorized", discovery of new devices without a restart, the device list's offline flags, and
secrets kept out of the logs. Real broker, real InfluxDB, the local EcoFlow cloud."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.api.client import EcoflowClient, RequestBudget
from collector.catalog import default_catalog
from collector.daemon import Collector
from collector.logs import REDACTED, redact
from collector.simulator.server import LocalCloud
from collector.sink.influx import InfluxWriter
from collector.state import Online
from collector.testbed import InfluxServer, MosquittoServer
from tests.test_daemon import make_settings, publisher_of, rows, running, wait_for


@pytest.fixture
def broker() -> Iterator[MosquittoServer]:
    with MosquittoServer() as server:
        yield server


def test_watchdog_rebuilds_a_silent_session_while_devices_are_online(
    broker: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    now = [1_800_000_000_000]
    with LocalCloud("powerstream=1", mosquitto=broker, publish_rate=None) as cloud:
        settings = make_settings(cloud, influx_server, influx_db, tmp_path)
        with running(settings, clock_ms=lambda: now[0]) as collector:
            wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
            assert not collector.check_watchdog()  # just connected: silence is expected
            state = collector.registry.devices[cloud.devices[0].sn]
            state.listed = None  # nobody should be talking: silence is fine however long
            now[0] += int(settings.mqtt.watchdog_s * 1000) * 3
            assert not collector.check_watchdog()
            state.set_online(Online.ONLINE)
            state.last_seen_ms = now[0]
            collector.mqtt.last_message_ms = now[0]
            now[0] += int(settings.mqtt.watchdog_s * 1000) - 1000
            assert not collector.check_watchdog()  # not silent long enough yet
            assert collector.mqtt.connects == 1
            now[0] += 2000
            assert collector.check_watchdog()
            wait_for(lambda: collector.mqtt.connects == 2 and collector.mqtt.connected, what="a new session")
            time.sleep(2)
            assert collector.mqtt.connects == 2  # one new session, not a storm of them
            publisher_of(cloud).publish_report(cloud.devices[0], full=True)
            wait_for(lambda: collector.mqtt.messages["quota"] == 1, what="data on the new session")


def test_not_authorized_fetches_fresh_credentials_and_reconnects(
    broker: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with LocalCloud("powerstream=1", mosquitto=broker, publish_rate=None, seed=77) as cloud:
        account = cloud.account
        settings = make_settings(cloud, influx_server, influx_db, tmp_path)
        with running(settings) as collector:
            wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
            # EcoFlow rotates the MQTT password: the broker and the certification endpoint change
            account.certificate_password = "rotated-" + account.certificate_password[8:]
            broker.add_user(account.certificate_account, account.certificate_password)
            with capture_logs() as logs:
                collector.mqtt.rebuild("test: force a new login")
                wait_for(lambda: collector.mqtt.auth_failures >= 1, what="the refusal")
                wait_for(
                    lambda: collector.mqtt.connected, timeout=30, what="reconnect with fresh credentials"
                )
            events = [e["event"] for e in logs]
            assert "mqtt.connect_refused" in events and "mqtt.credentials_refreshed" in events
            assert all(account.certificate_password not in str(e) for e in logs)
            publisher_of(cloud).disconnect()  # the simulated devices log in again with the new password
            publisher_of(cloud).connect()
            publisher_of(cloud).publish_report(cloud.devices[0], full=True)
            wait_for(lambda: collector.mqtt.messages["quota"] >= 1, what="data after the refresh")


def test_new_devices_are_discovered_and_subscribed_without_a_restart(
    broker: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with LocalCloud("powerstream=1", mosquitto=broker, publish_rate=None) as cloud:
        settings = make_settings(cloud, influx_server, influx_db, tmp_path)
        settings.devices.clear()  # no [[devices]]: the account's device list is the list
        with running(settings) as collector:
            wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
            assert list(collector.registry.devices) == [cloud.devices[0].sn]
            (new,) = cloud.bind_device("delta_pro=1")
            collector.refresh_device_list()
            state = wait_for(lambda: collector.registry.get(new.sn), what="the new device")
            assert state.device.slug == "delta_pro"  # productName from the device list
            assert state.device.name == new.device_name
            wait_for(lambda: rows(influx_server, influx_db, "delta_pro", new.sn), what="its HTTP seed")
            seeded = len(rows(influx_server, influx_db, "delta_pro", new.sn))
            publisher_of(cloud).publish_report(new, full=True)
            wait_for(
                lambda: len(rows(influx_server, influx_db, "delta_pro", new.sn)) > seeded,
                what="its MQTT report (subscribed without a restart)",
            )


def test_device_list_offline_flag_marks_offline_and_stops_polling(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with LocalCloud("powerstream=2", publish_rate=None) as cloud:  # HTTP only
        settings = make_settings(cloud, influx_server, influx_db, tmp_path)
        client = EcoflowClient.from_settings(settings.ecoflow, budget=RequestBudget())
        sink = InfluxWriter.from_settings(settings)
        collector = Collector(settings, default_catalog(), client, sink, client_id="list")
        try:
            collector.add_devices(collector.configured_devices())
            collector.poller.start()
            off, on = cloud.devices
            off.online = False
            collector.refresh_device_list()
            assert collector.registry.devices[off.sn].online is Online.OFFLINE
            assert collector.registry.devices[on.sn].online is Online.ASSUMED_OFFLINE
            assert collector.check_fallback() == 1  # MQTT is down here: only the listed-online one
            sink.flush(5)
            status = rows(influx_server, influx_db, "ecoflow_status", off.sn)
            assert status and status[-1]["online"] == 0.0 and status[-1]["state"] == 0.0
            off.online = True
            collector.refresh_device_list()
            assert collector.check_fallback() == 1  # the other one was just polled
        finally:
            collector.stop(timeout=5)
            client.close()


def test_secrets_are_redacted_from_log_events() -> None:
    event = {
        "event": "x",
        "secret_key": "s",
        "password": "p",
        "token": "t",
        "access_key": "a",
        "Authorization": "Token t",
        "sn": "HW51",
        "reason": "",
        "signal": "SIGTERM",
        "mqtt_password": "p",
    }
    assert redact(None, "info", event) == {
        "event": "x",
        "secret_key": REDACTED,
        "password": REDACTED,
        "token": REDACTED,
        "access_key": REDACTED,
        "Authorization": REDACTED,
        "sn": "HW51",
        "reason": "",
        "signal": "SIGTERM",
        "mqtt_password": REDACTED,
    }


def test_cloud_down_at_start_the_daemon_keeps_trying_and_connects_later(
    broker: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with LocalCloud("powerstream=1", mosquitto=broker, publish_rate=None) as cloud:
        settings = make_settings(cloud, influx_server, influx_db, tmp_path)
        client = EcoflowClient.from_settings(settings.ecoflow, budget=RequestBudget(cooldown_s=1.0))
        sink = InfluxWriter.from_settings(settings)
        collector = Collector(settings, default_catalog(), client, sink, client_id="down-at-start")
        cloud.cloud.faults.fail_next(10_000, status=503)
        try:
            with capture_logs() as logs:
                collector.start()  # returns: nothing at start may stop the daemon
                assert not collector.mqtt.connected
                assert "mqtt.credentials_failed" in [e["event"] for e in logs]
                cloud.cloud.faults.clear()
                wait_for(lambda: collector.mqtt.connected, timeout=30, what="MQTT once the cloud is back")
        finally:
            collector.stop(timeout=5)
            client.close()
