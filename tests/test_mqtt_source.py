"""MqttSource against a real Mosquitto (TLS, password, ACL): the buffered socket and its fallback
to paho's own socket, refused subscriptions, and a broker move announced by the certification."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from structlog.testing import capture_logs

from collector.decoding import TopicKind
from collector.sources import mqtt as mqtt_source
from collector.sources.mqtt import MqttCredentials, MqttSource, _Client
from collector.testbed import MosquittoServer
from tests.conftest import MQTT_PASSWORD, MQTT_USER


def wait_for(condition: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


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
