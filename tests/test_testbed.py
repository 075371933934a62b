"""Real-server tests of collector.testbed: InfluxDB 1.6.7 + nginx proxy, Mosquitto with TLS/ACL."""

from __future__ import annotations

import json
import queue
import socket
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS, WriteOptions
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode

from collector.testbed import (
    InfluxQueryError,
    InfluxServer,
    MosquittoServer,
    TestbedError,
    free_port,
    free_ports,
)
from collector.testbed._process import group_members, is_pid_alive

T0_NS = 1_700_000_000_000_000_000
TOKEN = "testbed-token-1"
NS, US, MS, S = WritePrecision.NS, WritePrecision.US, WritePrecision.MS, WritePrecision.S
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _http(
    method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _NO_PROXY.open(req, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def _times(server: InfluxServer, db: str, measurement: str = "m") -> dict[str, int]:
    """sn tag -> time (ns) of all rows of ``measurement``."""
    rows = server.rows(db, f'SELECT "f", "sn" FROM "{measurement}"', epoch="ns")
    return {str(row["sn"]): int(row["time"]) for row in rows}


# ---------------------------------------------------------------------- InfluxDB through the proxy


def test_v2_write_precisions_land_at_the_same_instant(influx_server: InfluxServer, influx_db: str) -> None:
    with InfluxDBClient(url=influx_server.url, token="anything", org="x") as client:
        write_api = client.write_api(write_options=SYNCHRONOUS)
        write_api.write(bucket=influx_db, record="m,sn=A f=1.5 1700000000000", write_precision=MS)
        write_api.write(bucket=influx_db, record="m,sn=B f=2.5 1700000000000000", write_precision=US)
        write_api.write(bucket=influx_db, record=f"m,sn=C f=3.5 {T0_NS}", write_precision=NS)
        write_api.write(bucket=influx_db, record="m,sn=D f=4.5 1700000000", write_precision=S)

    assert _times(influx_server, influx_db) == {"A": T0_NS, "B": T0_NS, "C": T0_NS, "D": T0_NS}
    # InfluxQL read-back works through the proxy URL too.
    via_proxy = influx_server.query(
        influx_db, 'SELECT "f" FROM "m" WHERE "sn" = \'A\'', epoch="ms", via_proxy=True
    )
    assert via_proxy["results"][0]["series"][0]["values"] == [[1_700_000_000_000, 1.5]]


def test_unknown_precision_is_refused_not_stored_as_ns(influx_server: InfluxServer, influx_db: str) -> None:
    status, body = _http(
        "POST", f"{influx_server.url}/api/v2/write?org=x&bucket={influx_db}&precision=xs", b"m,sn=X f=1 1"
    )
    assert status == 400
    assert json.loads(body)["code"] == "invalid"
    # No precision at all means nanoseconds, as in InfluxDB 2.x.
    status, _ = _http(
        "POST", f"{influx_server.url}/api/v2/write?org=x&bucket={influx_db}", f"m,sn=N f=1 {T0_NS}".encode()
    )
    assert status == 204
    assert _times(influx_server, influx_db) == {"N": T0_NS}


def test_gzip_batching_write_lands(influx_server: InfluxServer, influx_db: str) -> None:
    n = 500
    records = [f"m,sn=S{i % 5} f={i}i,v={i * 0.5} {1_700_000_000_000 + i}" for i in range(n)]
    with InfluxDBClient(url=influx_server.url, token="anything", org="x", enable_gzip=True) as client:
        with client.write_api(write_options=WriteOptions(batch_size=100, flush_interval=200)) as write_api:
            write_api.write(bucket=influx_db, record=records, write_precision=MS)
        # A synchronous gzip write too.
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=influx_db, record="g,sn=Z f=1 1700000000000", write_precision=MS
        )

    count = influx_server.query(influx_db, 'SELECT count("v") FROM "m"')
    assert count["results"][0]["series"][0]["values"][0][1] == n
    last = influx_server.rows(influx_db, 'SELECT last("f") FROM "m"', epoch="ms")
    assert last[0]["time"] == 1_700_000_000_000 + n - 1
    assert _times(influx_server, influx_db, "g") == {"Z": T0_NS}
    # The proxy really got gzip bodies and influxd accepted them (the access log records both).
    log_lines = [
        line
        for line in influx_server.nginx_access_log.read_text().splitlines()
        if f"bucket={influx_db}" in line
    ]
    assert log_lines, "no /api/v2/write request in the proxy's access log"
    assert all(" 204 up=204 ce=gzip " in line for line in log_lines), log_lines


def test_write_to_missing_database_is_404(influx_server: InfluxServer) -> None:
    missing = f"missing_{uuid.uuid4().hex[:8]}"
    with (
        InfluxDBClient(url=influx_server.url, token="anything", org="x") as client,
        pytest.raises(ApiException) as info,
    ):
        client.write_api(write_options=SYNCHRONOUS).write(bucket=missing, record="m f=1")
    assert info.value.status == 404


def test_ping_health_ready_version(influx_server: InfluxServer) -> None:
    with InfluxDBClient(url=influx_server.url, token="anything", org="x") as client:
        assert client.ping() is True
        assert client.version().startswith("1.6.7")
        with pytest.warns(DeprecationWarning):
            health = client.health()
        assert health.status == "pass"
        assert health.name == "influxdb"
        assert client.ready().status == "ready"
    status, body = _http("GET", f"{influx_server.url}/health")
    assert status == 200
    expected = {"status": "pass", "name": "influxdb", "message": "ready for queries and writes"}
    assert json.loads(body) == expected
    assert influx_server.ping() and influx_server.ping(via_proxy=False)


def test_query_errors_raise(influx_server: InfluxServer, influx_db: str) -> None:
    with pytest.raises(InfluxQueryError):
        influx_server.query(influx_db, "SELEKT nonsense")
    assert influx_db in influx_server.databases()


@pytest.fixture(scope="module")
def token_server() -> Iterator[InfluxServer]:
    """A private InfluxServer with a token check (its kill/restart must not disturb other tests)."""
    with InfluxServer(token=TOKEN) as server:
        server.create_database("tok")
        yield server


def test_token_check(token_server: InfluxServer) -> None:
    with (
        InfluxDBClient(url=token_server.url, token="wrong", org="x") as client,
        pytest.raises(ApiException) as info,
    ):
        client.write_api(write_options=SYNCHRONOUS).write(bucket="tok", record="m,sn=W f=1 1")
    assert info.value.status == 401
    assert json.loads(info.value.body) == {"code": "unauthorized", "message": "unauthorized access"}

    status, _ = _http("POST", f"{token_server.url}/api/v2/write?org=x&bucket=tok", b"m,sn=W f=1 1")
    assert status == 401

    with InfluxDBClient(url=token_server.url, token=TOKEN, org="x") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket="tok", record="t,sn=OK f=1 1700000000000", write_precision=MS
        )
    assert _times(token_server, "tok", "t") == {"OK": T0_NS}
    # Reads and /ping are not token-checked (InfluxDB 1.6.7 has no auth here).
    assert token_server.ping()


def test_kill_then_restart_keeps_data(token_server: InfluxServer) -> None:
    with InfluxDBClient(url=token_server.url, token=TOKEN, org="x") as client:
        write_api = client.write_api(write_options=SYNCHRONOUS)
        write_api.write(bucket="tok", record="k,sn=BEFORE f=1 1700000000000", write_precision=MS)

        old_pid = token_server.influxd_pid
        assert old_pid is not None
        influxd_port, proxy_port = token_server.influxd_port, token_server.port
        token_server.kill()
        assert not is_pid_alive(old_pid)
        assert token_server.proxy_running() and not token_server.influxd_running()

        # The proxy stays up: clients see a 502 from it, like a dead server behind a load balancer.
        with pytest.raises(ApiException) as info:
            write_api.write(bucket="tok", record="k,sn=LOST f=1 1700000000000", write_precision=MS)
        assert info.value.status == 502
        assert client.ping() is False
        status, body = _http("GET", f"{token_server.url}/health")
        assert status == 503
        assert json.loads(body)["status"] == "fail"

        token_server.restart()
        assert (token_server.influxd_port, token_server.port) == (influxd_port, proxy_port)
        assert token_server.influxd_pid not in (None, old_pid)
        assert client.ping() is True
        write_api.write(bucket="tok", record="k,sn=AFTER f=1 1700000000001", write_precision=MS)

    assert _times(token_server, "tok", "k") == {"BEFORE": T0_NS, "AFTER": T0_NS + 1_000_000}


def test_stop_leaves_no_processes_and_restart_of_stopped_server(tmp_path: Path) -> None:
    workdir = tmp_path / "influx"
    server = InfluxServer(workdir=workdir)
    with server:
        server.create_database("keep")
        server.write_lines("keep", "m,sn=A f=1 1700000000", precision="s")
        pids = [pid for pid in (server.influxd_pid, server.nginx_pid) if pid is not None]
        assert len(pids) == 2
        # Each server is its own process group (nginx runs as one process, no workers).
        groups = {pid: group_members(pid) for pid in pids}
        assert groups == {pid: [pid] for pid in pids}
    for pid in pids:
        assert not is_pid_alive(pid)
        assert group_members(pid) == []
    assert not server.is_running()
    # A given workdir is kept: starting again finds the data.
    assert (workdir / "influxd.log").exists()
    with server:
        assert _times(server, "keep") == {"A": T0_NS}


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    fake = tmp_path / "influxd"
    fake.write_text("#!/bin/sh\necho 'fake influxd: cannot start' >&2\nexit 3\n")
    fake.chmod(0o755)
    server = InfluxServer(influxd_bin=fake)
    with pytest.raises(TestbedError, match="fake influxd: cannot start"):
        server.start()
    assert not server.is_running()


def test_token_must_be_config_safe() -> None:
    with pytest.raises(ValueError):
        InfluxServer(token="bad token;")


def test_free_port_is_bindable_and_distinct() -> None:
    ports = [free_port(), *free_ports(5)]
    assert len(set(ports)) == len(ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


# ---------------------------------------------------------------------- Mosquitto


class MqttPeer:
    """A paho-mqtt 2.x client (callback API v2) that records what happens, for tests."""

    def __init__(
        self,
        server: MosquittoServer,
        user: str,
        password: str,
        *,
        tls: bool = True,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv311,
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-{uuid.uuid4().hex[:10]}",
            protocol=protocol,
        )
        self.client.username_pw_set(user, password)
        if tls:
            self.client.tls_set(ca_certs=str(server.ca_file))
        self.host = "localhost" if tls else server.host
        self.port = server.tls_port if tls else server.port
        self.connected = threading.Event()
        self.connect_result: ReasonCode | None = None
        self.subacks: queue.Queue[list[ReasonCode]] = queue.Queue()
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self.connect_result = rc
        self.connected.set()

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, rcs: list[ReasonCode], props: Any
    ) -> None:
        self.subacks.put(rcs)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.messages.put(msg)

    def connect(self) -> ReasonCode:
        self.client.connect(self.host, self.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "no CONNACK"
        assert self.connect_result is not None
        return self.connect_result

    def subscribe(self, topic: str, qos: int = 1) -> list[ReasonCode]:
        result, _ = self.client.subscribe(topic, qos)
        assert result == mqtt.MQTT_ERR_SUCCESS
        return self.subacks.get(timeout=10)

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(timeout=10)
        assert info.is_published()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def peers() -> Iterator[list[MqttPeer]]:
    made: list[MqttPeer] = []
    yield made
    for peer in made:
        peer.close()


def _user(server: MosquittoServer) -> tuple[str, str]:
    return next(iter(server.users.items()))


def test_mqtt_tls_password_qos1_pubsub(mosquitto_server: MosquittoServer, peers: list[MqttPeer]) -> None:
    user, password = _user(mosquitto_server)
    topic = f"/open/{user}/SN0001/quota"
    sub = MqttPeer(mosquitto_server, user, password)
    pub = MqttPeer(mosquitto_server, user, password, protocol=MQTTProtocolVersion.MQTTv5)
    peers.extend([sub, pub])
    assert not sub.connect().is_failure
    assert not pub.connect().is_failure
    granted = sub.subscribe(topic, qos=1)
    assert [rc.value for rc in granted] == [1]
    pub.publish(topic, b'{"params":{"soc":87}}', qos=1)
    msg = sub.messages.get(timeout=10)
    assert (msg.topic, msg.payload, msg.qos) == (topic, b'{"params":{"soc":87}}', 1)


def test_mqtt_plain_listener_needs_password_too(
    mosquitto_server: MosquittoServer, peers: list[MqttPeer]
) -> None:
    user, password = _user(mosquitto_server)
    ok = MqttPeer(mosquitto_server, user, password, tls=False)
    peers.append(ok)
    assert not ok.connect().is_failure


@pytest.mark.parametrize("tls", [True, False])
@pytest.mark.parametrize("protocol", [MQTTProtocolVersion.MQTTv311, MQTTProtocolVersion.MQTTv5])
def test_mqtt_wrong_password_is_refused(
    mosquitto_server: MosquittoServer, peers: list[MqttPeer], tls: bool, protocol: MQTTProtocolVersion
) -> None:
    user, _ = _user(mosquitto_server)
    bad = MqttPeer(mosquitto_server, user, "wrong-password", tls=tls, protocol=protocol)
    peers.append(bad)
    rc = bad.connect()
    assert rc.is_failure
    # MQTT 3.1.1: CONNACK 5 "Not authorized"; MQTT 5: 0x86 "Bad user name or password".
    assert str(rc) in ("Not authorized", "Bad user name or password")


def test_mqtt_acl_denies_other_users_topics(mosquitto_server: MosquittoServer, peers: list[MqttPeer]) -> None:
    user_a, password_a = _user(mosquitto_server)
    user_b, password_b = f"open-other-{uuid.uuid4().hex[:6]}", "other-password"
    mosquitto_server.add_user(user_b, password_b)  # rewrites the password file + SIGHUP
    a = MqttPeer(mosquitto_server, user_a, password_a)
    b = MqttPeer(mosquitto_server, user_b, password_b, tls=False)
    peers.extend([a, b])
    assert not a.connect().is_failure
    assert not b.connect().is_failure  # the new user works without a restart

    # A subscribes to B's topic: Mosquitto 2.0 grants the SUBACK but delivers nothing (older or
    # other brokers answer 0x80/0x87): accept either, but no message may arrive.
    other = a.subscribe(f"/open/{user_b}/SN0002/quota")
    assert len(other) == 1
    own = a.subscribe(f"/open/{user_a}/SN0001/quota")
    assert [rc.value for rc in own] == [1]
    b.publish(f"/open/{user_b}/SN0002/quota", b"secret", qos=1)  # B's own topic: allowed
    a.publish(f"/open/{user_a}/SN0001/quota", b"sentinel", qos=1)
    first = a.messages.get(timeout=10)
    assert first.payload == b"sentinel", "a message on another user's topic was delivered"

    # And B cannot publish into A's topics.
    b.publish(f"/open/{user_a}/SN0001/quota", b"forged", qos=1)
    a.publish(f"/open/{user_a}/SN0001/quota", b"sentinel-2", qos=1)
    assert a.messages.get(timeout=10).payload == b"sentinel-2"


def test_mqtt_kill_restart_same_ports() -> None:
    with MosquittoServer(users={"open-k": "pw-k"}, acl=False) as server:
        port, tls_port, ca = server.port, server.tls_port, server.ca_file.read_bytes()
        old_pid = server.pid
        assert old_pid is not None
        peer = MqttPeer(server, "open-k", "pw-k")
        assert not peer.connect().is_failure
        peer.close()
        server.kill()
        assert not is_pid_alive(old_pid) and not server.is_running()
        server.restart()
        assert (server.port, server.tls_port, server.ca_file.read_bytes()) == (port, tls_port, ca)
        peer = MqttPeer(server, "open-k", "pw-k")
        assert not peer.connect().is_failure
        # acl=False: any topic is allowed.
        assert [rc.value for rc in peer.subscribe("anything/#")] == [1]
        peer.close()
        workdir = server.workdir
    assert not is_pid_alive(old_pid)
    assert server.pid is None
    assert not workdir.exists()
