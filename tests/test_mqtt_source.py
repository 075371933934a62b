"""MqttSource against a real Mosquitto (TLS, password, ACL): the buffered socket and its fallback
to paho's own socket, refused subscriptions, and a broker move announced by the certification."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from collector.api.client import EcoflowClient, RequestBudget
from collector.decoding import TopicKind
from collector.simulator.broker import BrokerInfo
from collector.simulator.server import LocalCloud
from collector.sources import mqtt as mqtt_source
from collector.sources.mqtt import MqttCredentials, MqttSource, _Client
from collector.testbed import MosquittoServer, free_port
from collector.testbed.ports import port_accepts
from tests.conftest import MQTT_PASSWORD, MQTT_USER
from tests.test_daemon import wait_for


class Received:
    def __init__(self) -> None:
        self.messages: list[tuple[str, TopicKind, bytes]] = []
        self._lock = threading.Lock()

    def __call__(self, sn: str, kind: TopicKind, payload: bytes) -> None:
        with self._lock:
            self.messages.append((sn, kind, payload))

    def payloads(self, sn: str) -> list[bytes]:
        with self._lock:
            return [p for s, _, p in self.messages if s == sn]


def credentials_for(
    server: MosquittoServer, user: str = MQTT_USER, password: str = MQTT_PASSWORD
) -> MqttCredentials:
    return MqttCredentials(server.host, server.tls_port, user, password, True, server.ca_file)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@pytest.fixture
def sources() -> Iterator[list[MqttSource]]:
    made: list[MqttSource] = []
    yield made
    for source in made:
        source.stop()


def publisher(
    server: MosquittoServer, user: str = MQTT_USER, password: str = MQTT_PASSWORD, *, tls: bool = True
) -> mqtt.Client:
    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{time.time_ns()}")
    client.username_pw_set(user, password)
    if tls:
        client.tls_set(ca_certs=str(server.ca_file))
    client.connect(server.host, server.tls_port if tls else server.port)
    client.loop_start()
    return client


def publish(client: mqtt.Client, topic: str, payloads: list[bytes]) -> None:
    for payload in payloads:
        client.publish(topic, payload, qos=1).wait_for_publish(5)


@pytest.mark.parametrize("paho_version", [None, "2.9.0", "3.0.0"], ids=["installed", "2.9", "3.0"])
def test_buffered_socket_only_on_known_paho_releases_messages_either_way(
    mosquitto_server: MosquittoServer,
    sources: list[MqttSource],
    monkeypatch: pytest.MonkeyPatch,
    paho_version: str | None,
) -> None:
    if paho_version is not None:
        monkeypatch.setattr(mqtt_source, "PAHO_VERSION", paho_version)
    expected = "buffered" if paho_version is None else "paho"
    assert mqtt_source.buffered_socket_supported() is (paho_version is None)
    received = Received()
    with capture_logs() as logs:
        source = MqttSource(
            f"sock-{time.time_ns()}", lambda: credentials_for(mosquitto_server), received, now_ms
        )
        sources.append(source)
        source.add_devices(["SOCK0001"])
        source.start()
        wait_for(lambda: source.connected, what="connected")
        source.rebuild("test: a second connection, a second client socket")
        wait_for(lambda: source.connects == 2 and source.connected, what="reconnected")
    assert source.socket_mode == expected
    assert isinstance(source._client, _Client) is (expected == "buffered")
    fallbacks = [e for e in logs if e["event"] == "mqtt.buffered_socket_off"]
    assert len(fallbacks) == (0 if expected == "buffered" else 1)  # once, not per connection
    if fallbacks:
        assert fallbacks[0]["paho_version"] == paho_version
    sender = publisher(mosquitto_server)
    try:
        payloads = [b'{"params":{"n":%d}}' % i for i in range(200)]
        publish(sender, f"/open/{MQTT_USER}/SOCK0001/quota", payloads)
        wait_for(lambda: len(received.payloads("SOCK0001")) == 200, what="all 200 messages")
        assert received.payloads("SOCK0001") == payloads
    finally:
        sender.disconnect()
        sender.loop_stop()


def test_buffered_socket_can_be_forced_off(
    mosquitto_server: MosquittoServer, sources: list[MqttSource]
) -> None:
    received = Received()
    with capture_logs() as logs:
        source = MqttSource(
            f"off-{time.time_ns()}",
            lambda: credentials_for(mosquitto_server),
            received,
            now_ms,
            buffered_socket=False,
        )
        sources.append(source)
        source.add_devices(["SOCK0002"])
        source.start()
        wait_for(lambda: source.connected, what="connected")
    assert source.socket_mode == "paho" and type(source._client) is mqtt.Client
    assert [e["reason"] for e in logs if e["event"] == "mqtt.buffered_socket_off"] == ["disabled"]
    sender = publisher(mosquitto_server)
    try:
        publish(sender, f"/open/{MQTT_USER}/SOCK0002/status", [b'{"params":{"status":1}}'])
        wait_for(lambda: received.payloads("SOCK0002"), what="the message")
    finally:
        sender.disconnect()
        sender.loop_stop()


# ------------------------------------------------------------------ refused subscriptions
# Mosquitto 2.0's acl_file grants every SUBSCRIBE (it filters at delivery: see
# collector/testbed/mosquitto.py). Its dynamic-security plugin checks subscriptions, and refuses
# one outside the client's roles with 0x80 on MQTT 3.1.1 (what MqttSource speaks; 0x87 on MQTT 5).

DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
DYN_USER, DYN_PASSWORD = "open-dynsec-user", "dynsec-password"
ADMIN_USER, ADMIN_PASSWORD = "dynsec-admin", "admin-password"


def _dynsec_client(user: str, password: str, roles: list[str]) -> dict[str, Any]:
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
    return {
        "username": user,
        "password": base64.b64encode(digest).decode(),
        "salt": base64.b64encode(salt).decode(),
        "iterations": 101,
        "roles": [{"rolename": role} for role in roles],
    }


def _acl(kind: str, topic: str) -> dict[str, Any]:
    return {"acltype": kind, "topic": topic, "priority": 0, "allow": True}


class DynsecBroker:
    """Mosquitto with the dynamic-security plugin on a plain 127.0.0.1 listener: DYN_USER may
    subscribe only to the topics of device OK000001 (and publish anything under /open/)."""

    def __init__(self, workdir: Path) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> DynsecBroker:
        if not DYNSEC_PLUGIN.exists():
            pytest.fail(f"{DYNSEC_PLUGIN} missing (Debian's mosquitto package ships it)")
        config = {
            "defaultACLAccess": {
                "publishClientSend": False,
                "publishClientReceive": True,
                "subscribe": False,
                "unsubscribe": True,
            },
            "clients": [
                _dynsec_client(DYN_USER, DYN_PASSWORD, ["device"]),
                _dynsec_client(ADMIN_USER, ADMIN_PASSWORD, ["admin"]),
            ],
            "groups": [],
            "roles": [
                {
                    "rolename": "device",
                    "acls": [
                        _acl("subscribePattern", f"/open/{DYN_USER}/OK000001/#"),
                        _acl("publishClientSend", "/open/#"),
                    ],
                },
                {
                    "rolename": "admin",
                    "acls": [
                        _acl("publishClientSend", "$CONTROL/dynamic-security/#"),
                        _acl("subscribePattern", "$CONTROL/dynamic-security/#"),
                        _acl("publishClientReceive", "$CONTROL/dynamic-security/#"),
                    ],
                },
            ],
        }
        (self.workdir / "dynsec.json").write_text(json.dumps(config))
        lines = [
            "user root" if os.geteuid() == 0 else "",
            "per_listener_settings false",
            "allow_anonymous false",
            f"plugin {DYNSEC_PLUGIN}",
            f"plugin_opt_config_file {self.workdir / 'dynsec.json'}",
            f"listener {self.port} {self.host}",
            f"log_dest file {self.workdir / 'mosquitto.log'}",
        ]
        (self.workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")
        self.process = subprocess.Popen(
            ["mosquitto", "-c", str(self.workdir / "mosquitto.conf")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: port_accepts(self.host, self.port), timeout=15, what="mosquitto (dynsec)")
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def allow_all_subscriptions(self) -> None:
        """The admin lets every client subscribe to anything (no client is disconnected)."""
        answered = threading.Event()
        admin = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dynsec-admin")
        admin.username_pw_set(ADMIN_USER, ADMIN_PASSWORD)
        admin.on_message = lambda _c, _u, _m: answered.set()
        admin.on_subscribe = lambda c, *_a: c.publish(
            "$CONTROL/dynamic-security/v1",
            json.dumps(
                {
                    "commands": [
                        {"command": "setDefaultACLAccess", "acls": [{"acltype": "subscribe", "allow": True}]}
                    ]
                }
            ),
            qos=1,
        )
        admin.on_connect = lambda c, *_a: c.subscribe("$CONTROL/dynamic-security/#", qos=1)
        admin.connect(self.host, self.port)
        admin.loop_start()
        try:
            assert answered.wait(10), "no answer from the dynamic-security plugin"
        finally:
            admin.disconnect()
            admin.loop_stop()


def test_refused_subscription_is_logged_counted_and_retried_with_capped_backoff(
    tmp_path: Path, sources: list[MqttSource]
) -> None:
    with DynsecBroker(tmp_path) as broker:
        received = Received()
        credentials = MqttCredentials(broker.host, broker.port, DYN_USER, DYN_PASSWORD, False)
        with capture_logs() as logs:
            source = MqttSource(
                f"refused-{time.time_ns()}",
                lambda: credentials,
                received,
                now_ms,
                subscribe_retry_initial_s=0.2,
                subscribe_retry_max_s=0.8,
            )
            sources.append(source)
            source.add_devices(["OK000001", "NO000001"])
            source.start()
            wait_for(lambda: source.subscribe_refusals >= 3 * 4, what="the first refusal and three retries")
            refused = [e for e in logs if e["event"] == "mqtt.subscribe_refused"]
            # one warning per refused topic, not per retry
            assert sorted(e["topic"] for e in refused) == sorted(
                f"/open/{DYN_USER}/NO000001/{kind.value}" for kind in TopicKind
            )
            assert all(e["log_level"] == "warning" and e["reason_code"] == 0x80 for e in refused)
            waits = [e["retry_in_s"] for e in logs if e["event"] == "mqtt.subscribe_still_refused"]
            assert waits[:3] == [0.4, 0.8, 0.8]  # doubled, capped at subscribe_retry_max_s
            assert source.connects == 1  # retried on the same session, no reconnect

            broker.allow_all_subscriptions()
            wait_for(
                lambda: sum(e["event"] == "mqtt.subscribe_granted" for e in logs) == 3,
                timeout=10,
                what="the retry granted",
            )
        refusals = source.subscribe_refusals
        sender = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="dyn-sender")
        sender.username_pw_set(DYN_USER, DYN_PASSWORD)
        sender.connect(broker.host, broker.port)
        sender.loop_start()
        try:
            publish(sender, f"/open/{DYN_USER}/NO000001/quota", [b'{"params":{"a":1}}'])
            publish(sender, f"/open/{DYN_USER}/OK000001/quota", [b'{"params":{"b":2}}'])
            wait_for(lambda: received.payloads("NO000001") and received.payloads("OK000001"), what="both")
        finally:
            sender.disconnect()
            sender.loop_stop()
        time.sleep(1.0)
        assert source.subscribe_refusals == refusals  # no retries once granted


# ------------------------------------------------------------------ a broker move


def test_a_new_broker_in_the_certification_is_used_at_the_next_reconnect(sources: list[MqttSource]) -> None:
    """EcoFlow's `/certification` names another host/port: after the connection to the old broker
    drops, the source asks for credentials again and connects to the new one (no restart)."""
    with (
        MosquittoServer() as first,
        MosquittoServer() as second,
        LocalCloud(
            "powerstream=1",
            broker=BrokerInfo.from_mosquitto(first, tls=False),
            mosquitto=first,
            publish_rate=None,
        ) as cloud,
    ):
        account = cloud.account
        device = cloud.devices[0]
        client = EcoflowClient(cloud.url, account.access_key, account.secret_key, budget=RequestBudget())

        def credentials() -> MqttCredentials:
            cert = client.certification()
            return MqttCredentials(
                cert.url,
                cert.port_number,
                cert.certificateAccount,
                cert.certificatePassword.get_secret_value(),
                cert.protocol != "mqtt",
            )

        received = Received()
        try:
            with capture_logs() as logs:
                source = MqttSource(
                    f"move-{time.time_ns()}",
                    credentials,
                    received,
                    now_ms,
                    reconnect_max_s=2,
                    credentials_recheck_s=0.5,
                )
                sources.append(source)
                source.add_devices([device.sn])
                source.start()
                wait_for(lambda: source.connected, what="connected to the first broker")
                assert cloud.publisher is not None
                cloud.publisher.publish_report(device, full=True)
                wait_for(lambda: received.payloads(device.sn), what="a report via the first broker")

                cloud.move_broker(BrokerInfo.from_mosquitto(second, tls=False), mosquitto=second)
                first.kill()
                wait_for(
                    lambda: source.connected and source._host() == f"{second.host}:{second.port}",
                    what="connected to the second broker",
                )
                before = len(received.payloads(device.sn))
                cloud.publisher.publish_report(device, full=True)
                wait_for(lambda: len(received.payloads(device.sn)) > before, what="a report via the second")
            moved = [e for e in logs if e["event"] == "mqtt.broker_changed"]
            assert [(e["old"], e["new"]) for e in moved] == [
                (f"{first.host}:{first.port}", f"{second.host}:{second.port}")
            ]
            assert source.connects == 2
            assert cloud.cloud.counts["/iot-open/sign/certification"] >= 2
        finally:
            client.close()


@pytest.mark.parametrize("qos", [0, 1])
def test_the_packet_reader_delivers_every_message_whole_and_in_order(
    mosquitto_server: MosquittoServer, sources: list[MqttSource], qos: int
) -> None:
    """_Client cuts packets out of bulk reads itself: large payloads spanning several reads (the
    incomplete tail waits for the next read), bursts of small ones, and at QoS 1 its PUBACKs (the
    broker sends a subscriber at most 20 unacknowledged messages, so 300 arrive only if they go out)."""
    received = Received()
    source = MqttSource(
        f"reader-{qos}-{time.time_ns()}", lambda: credentials_for(mosquitto_server), received, now_ms, qos=qos
    )
    sources.append(source)
    source.add_devices(["READ0001"])
    source.start()
    wait_for(lambda: source.connected, what="connected")
    assert isinstance(source._client, _Client)
    topic = f"/open/{MQTT_USER}/READ0001/quota"
    sender = publisher(mosquitto_server)
    try:

        def subscribed() -> bool:  # publish a probe until the subscription is in place
            publish(sender, topic, [b'{"probe":1}'])
            return bool(received.payloads("READ0001"))

        wait_for(subscribed, what="the subscription")
        sizes = [10, 70_000, 200, 150_000, 3] + [60] * 300
        payloads = [b'{"params":{"n":%d,"pad":"%s"}}' % (i, b"x" * size) for i, size in enumerate(sizes)]
        publish(sender, topic, payloads)

        def reports() -> list[bytes]:
            return [p for p in received.payloads("READ0001") if not p.startswith(b'{"probe"')]

        wait_for(lambda: len(reports()) == len(payloads), what="every message")
        assert reports() == payloads
        assert source.messages["quota"] == len(received.payloads("READ0001"))
    finally:
        sender.disconnect()
        sender.loop_stop()
