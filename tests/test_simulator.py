"""The local cloud against real clients: signed HTTP requests (urllib3) and a real Mosquitto (TLS)."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import paho.mqtt.client as mqtt
import pytest
import urllib3
from paho.mqtt.enums import CallbackAPIVersion

from collector.api.signing import Signer
from collector.catalog import default_catalog
from collector.decoding import TopicKind, decode_bytes
from collector.simulator.accounts import Account
from collector.simulator.broker import BrokerInfo
from collector.simulator.devices import SimDevice
from collector.simulator.publisher import PublisherError
from collector.simulator.server import LocalCloud
from collector.testbed import MosquittoServer

PREFIX = "/iot-open/sign"
JSON_TYPE = "application/json;charset=UTF-8"


class Api:
    """A minimal signed client, built the way EcoFlow documents it (not the project's client)."""

    def __init__(self, url: str, signer: Signer) -> None:
        self.url = url
        self.signer = signer
        self.http = urllib3.PoolManager(retries=False)

    def get(self, path: str, params: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
        params = params or {}
        query = f"?{urlencode(params)}" if params else ""
        headers = kw.pop("headers", None) or self.signer.headers(params)
        response = self.http.request("GET", f"{self.url}{PREFIX}{path}{query}", headers=headers, **kw)
        assert response.status == 200, response.data
        result: dict[str, Any] = json.loads(response.data)
        return result

    def send(
        self, method: str, path: str, body: dict[str, Any], signer: Signer | None = None
    ) -> dict[str, Any]:
        headers = {**(signer or self.signer).headers(body), "Content-Type": JSON_TYPE}
        response = self.http.request(
            method, f"{self.url}{PREFIX}{path}", body=json.dumps(body), headers=headers
        )
        assert response.status == 200, response.data
        result: dict[str, Any] = json.loads(response.data)
        return result


@pytest.fixture()
def cloud(mosquitto_server: MosquittoServer) -> Iterator[LocalCloud]:
    with LocalCloud("powerstream=1,delta_pro=1", mosquitto=mosquitto_server, publish_rate=None, seed=11) as c:
        yield c


@pytest.fixture()
def api(cloud: LocalCloud) -> Api:
    return Api(cloud.url, Signer(cloud.account.access_key, cloud.account.secret_key))


def _sns(cloud: LocalCloud) -> tuple[str, str]:
    ps, dp = cloud.devices
    return ps.sn, dp.sn


def _last(cloud: LocalCloud) -> tuple[str | None, str]:
    record = cloud.cloud.requests[-1]
    return record.code, record.reason


# ----------------------------------------------------------------------------- endpoints


def test_certification_hands_out_the_broker(
    cloud: LocalCloud, api: Api, mosquitto_server: MosquittoServer
) -> None:
    answer = api.get("/certification")
    assert answer["code"] == "0" and answer["message"] == "Success" and answer["tid"] == ""
    assert re.fullmatch(r"[0-9a-f]{32}", answer["eagleEyeTraceId"])
    assert answer["data"] == {
        "certificateAccount": cloud.account.certificate_account,
        "certificatePassword": cloud.account.certificate_password,
        "url": mosquitto_server.host,
        "port": str(mosquitto_server.tls_port),
        "protocol": "mqtts",
    }
    assert mosquitto_server.users[cloud.account.certificate_account] == cloud.account.certificate_password


def test_device_list(cloud: LocalCloud, api: Api) -> None:
    ps, dp = cloud.devices
    dp.list_product_name = False  # real lists often leave productName out
    cloud.set_online(dp.sn, False)
    assert api.get("/device/list")["data"] == [
        {"sn": ps.sn, "deviceName": ps.device_name, "online": 1, "productName": "PowerStream"},
        {"sn": dp.sn, "deviceName": dp.device_name, "online": 0},
    ]


def test_quota_all_and_selected_quotas(cloud: LocalCloud, api: Api) -> None:
    ps_sn, dp_sn = _sns(cloud)
    ps = api.get("/device/quota/all", {"sn": ps_sn})["data"]
    assert isinstance(ps["20_1.batSoc"], int) and isinstance(ps["20_1.updateTime"], str)
    assert ps["20_134.task1"]["taskIndex"] == 0
    dp = api.get("/device/quota/all", {"sn": dp_sn})["data"]
    assert len(dp["bmsMaster.cellVol"]) == 15 and dp["bmsMaster.totalChgCap"] == 4294967295
    body = {
        "sn": dp_sn,
        "params": {"cmdSet": 32, "id": 66, "quotas": ["inv.cfgAcEnabled", "pd.soc", "no.such"]},
    }
    assert api.send("POST", "/device/quota", body)["data"] == {"inv.cfgAcEnabled": 1, "pd.soc": dp["pd.soc"]}


def test_quota_all_special_devices(cloud: LocalCloud, api: Api) -> None:
    ps, dp = cloud.devices
    ps.quota_all_no_data = True
    answer = api.get("/device/quota/all", {"sn": ps.sn})
    assert answer["code"] == "0" and "data" not in answer
    dp.numbers_as_strings = True
    data = api.get("/device/quota/all", {"sn": dp.sn})["data"]
    assert data["pd.soc"] == str(dp.snapshot()["pd.soc"]) and isinstance(data["bmsMaster.cellVol"], list)
    dp.read_denied = True
    for answer in (
        api.get("/device/quota/all", {"sn": dp.sn}),
        api.send("POST", "/device/quota", {"sn": dp.sn, "params": {"quotas": ["pd.soc"]}}),
    ):
        assert (
            answer["code"] == "1006"
            and answer["message"] == "current device is not allowed to get device info"
        )
        assert "data" not in answer


def test_unknown_serial_is_not_the_accounts(cloud: LocalCloud, api: Api) -> None:
    other = cloud.add_account(devices="powerstream=1")
    for sn in ("HW51NOSUCHDEVICE", next(iter(other.devices))):
        answer = api.get("/device/quota/all", {"sn": sn})
        assert (answer["code"], answer["message"]) == ("8512", "no permission to do it")


def test_put_applies_the_setting_and_quota_all_shows_it(cloud: LocalCloud, api: Api) -> None:
    ps_sn, dp_sn = _sns(cloud)
    body = {"sn": ps_sn, "cmdCode": "WN511_SET_PERMANENT_WATTS_PACK", "params": {"permanentWatts": 2130}}
    answer = api.send("PUT", "/device/quota", body)
    assert set(answer) == {"code", "message", "eagleEyeTraceId", "tid"} and answer["code"] == "0"
    assert api.get("/device/quota/all", {"sn": ps_sn})["data"]["20_1.permanentWatts"] == 2130
    # Delta Pro: AC off, X-Boost sent as 255 ("ignored") stays as it was
    body = {"sn": dp_sn, "params": {"cmdSet": 32, "id": 66, "enabled": 0, "xboost": 255}}
    assert api.send("PUT", "/device/quota", body)["code"] == "0"
    data = api.get("/device/quota/all", {"sn": dp_sn})["data"]
    assert data["inv.cfgAcEnabled"] == 0 and data["inv.cfgAcXboost"] == 1


def test_every_catalog_setting_can_be_set_and_read_back(cloud: LocalCloud, api: Api) -> None:
    catalog = default_catalog()
    for device in cloud.devices:
        for setting in catalog.products[device.product_slug].settings.values():
            entry = setting.entry
            sent = round((entry.min + entry.max) / 2 * entry.scale)
            params: dict[str, int | None] = {**entry.fixed, entry.param: sent}
            body: dict[str, Any] = {"sn": device.sn, "params": params}
            if entry.cmd_code is not None:
                body["cmdCode"] = entry.cmd_code
            else:
                params.update(cmdSet=entry.cmd_set, id=entry.cmd_id)
            assert api.send("PUT", "/device/quota", body)["code"] == "0", setting.name
            read = {"sn": device.sn, "params": {"quotas": [entry.read_quotas[0]]}}
            shown = api.send("POST", "/device/quota", read)["data"]
            if setting.name == "delete-task":  # shows in the task object, not as a number
                assert all(not task["timeRange"]["isEnable"] for task in shown.values())
            else:
                assert shown == {entry.read_quotas[0]: sent}, setting.name


@pytest.mark.parametrize(
    ("device", "body", "message"),
    [
        (0, {"cmdCode": "WN511_SET_NOTHING_PACK", "params": {"x": 1}}, "analyse protobuf message failed"),
        (
            0,
            {"cmdCode": "WN511_SET_BAT_UPPER_PACK", "params": {"upperLimit": 50}},
            "analyse protobuf message failed",
        ),
        (1, {"params": {"cmdSet": 32, "id": 77, "enabled": 1}}, "Server error"),
        (1, {"params": {"cmdSet": 32, "id": 51, "minDsgSoc": 90}}, "Server error"),
    ],
)
def test_put_a_device_refuses(
    cloud: LocalCloud, api: Api, device: int, body: dict[str, Any], message: str
) -> None:
    target = cloud.devices[device]
    before = target.snapshot()
    answer = api.send("PUT", "/device/quota", {"sn": target.sn, **body})
    assert (answer["code"], answer["message"]) == ("1000", message)
    after = target.snapshot()
    assert {k: after[k] for k in ("20_1.upperLimit", "ems.minDsgSoc") if k in after} == {
        k: before[k] for k in ("20_1.upperLimit", "ems.minDsgSoc") if k in before
    }


# ----------------------------------------------------------------------------- authentication


def test_wrong_secret_is_a_wrong_signature(cloud: LocalCloud, api: Api) -> None:
    bad = Signer(cloud.account.access_key, "not-the-secret")
    answer = api.get("/device/list", headers=bad.headers({}))
    assert (answer["code"], answer["message"]) == ("8521", "signature is wrong") and "data" not in answer
    assert _last(cloud) == ("8521", "signature mismatch")
    body = {"sn": cloud.devices[0].sn, "params": {"quotas": ["20_1.batSoc"]}}
    assert api.send("POST", "/device/quota", body, signer=bad)["code"] == "8521"


def test_a_signature_covers_the_parameters(cloud: LocalCloud, api: Api) -> None:
    ps_sn, dp_sn = _sns(cloud)
    headers = api.signer.headers({"sn": ps_sn})  # signed for one serial, sent for another
    answer = api.get("/device/quota/all", {"sn": dp_sn}, headers=headers)
    assert answer["code"] == "8521"


def test_unknown_key_and_key_of_another_region(cloud: LocalCloud, api: Api) -> None:
    americas = cloud.add_account(region="americas")
    for signer in (Signer("no-such-access-key", "x"), Signer(americas.access_key, americas.secret_key)):
        answer = api.get("/device/list", headers=signer.headers({}))
        assert (answer["code"], answer["message"]) == ("8513", "accessKey is invalid")
    assert _last(cloud) == ("8513", "access key of region americas")


def test_replayed_request_is_refused(cloud: LocalCloud, api: Api) -> None:
    headers = api.signer.headers({})
    assert api.get("/device/list", headers=headers)["code"] == "0"
    assert api.get("/device/list", headers=headers)["code"] == "8521"
    assert _last(cloud) == ("8521", "nonce reused (replayed request)")
    # the same nonce with a new timestamp is a new request (random 6-digit nonces do repeat)
    again = Signer(api.signer.access_key, api.signer.secret_key, nonce=lambda: headers["nonce"])
    assert api.get("/device/list", headers=again.headers({}))["code"] == "0"


@pytest.mark.parametrize("skew_s", [-301.0, 301.0])
def test_stale_or_future_timestamp_is_refused(cloud: LocalCloud, api: Api, skew_s: float) -> None:
    signer = Signer(
        cloud.account.access_key,
        cloud.account.secret_key,
        clock_ms=lambda: int((time.time() + skew_s) * 1000),
    )
    answer = api.get("/device/list", headers=signer.headers({}))
    assert (answer["code"], answer["message"]) == ("8521", "signature is wrong")
    assert _last(cloud) == ("8521", "timestamp outside the allowed window")


@pytest.mark.parametrize("missing", ["accessKey", "nonce", "timestamp", "sign"])
def test_missing_header(cloud: LocalCloud, api: Api, missing: str) -> None:
    headers = api.signer.headers({})
    del headers[missing]
    assert api.get("/device/list", headers=headers)["code"] == ("8513" if missing == "accessKey" else "8521")


# ----------------------------------------------------------------------------- faults


def test_fault_injection_and_request_counter(cloud: LocalCloud, api: Api) -> None:
    before = cloud.cloud.request_count
    cloud.cloud.faults.fail_next(2)
    for _ in range(2):
        assert api.http.request("GET", f"{cloud.url}{PREFIX}/device/list").status == 500
    assert api.get("/device/list")["code"] == "0"
    cloud.cloud.faults.delay_next(1, seconds=2.0)
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.get("/device/list", timeout=urllib3.Timeout(read=0.3))
    assert api.get("/device/list")["code"] == "0"
    assert cloud.cloud.request_count == before + 5
    assert cloud.cloud.counts[f"{PREFIX}/device/list"] >= 5


def test_kept_alive_connections_are_answered_at_once(cloud: LocalCloud, api: Api) -> None:
    api.get("/device/list")  # opens the pooled connection
    started = time.monotonic()
    for _ in range(20):
        api.get("/device/quota/all", {"sn": cloud.devices[1].sn})
    assert time.monotonic() - started < 0.6  # a delayed-ACK stall would cost ~40 ms per request


def test_unknown_endpoint_and_method(cloud: LocalCloud, api: Api) -> None:
    assert api.http.request("GET", f"{cloud.url}{PREFIX}/nothing").status == 404
    assert api.http.request("GET", f"{cloud.url}{PREFIX}/device/quota").status == 405


# ----------------------------------------------------------------------------- MQTT


class Subscriber:
    """A client logged in as the account's MQTT user over TLS, like the collector."""

    def __init__(self, broker: BrokerInfo, account: Account) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.held: list[tuple[str, bytes]] = []  # taken from the queue, not yet asked for
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{time.monotonic_ns()}")
        self.client.username_pw_set(account.certificate_account, account.certificate_password)
        self.client.tls_set(ca_certs=str(broker.ca_file))
        subscribed = queue.Queue[int]()
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            f"/open/{account.certificate_account}/#", 1
        )
        self.client.on_subscribe = lambda c, u, mid, rcs, p: subscribed.put(mid)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        subscribed.get(timeout=10)

    def take(self, count: int, kind: str, timeout: float = 10.0) -> list[tuple[str, Any]]:
        """The next `count` messages of one topic kind, in order (others stay for later calls)."""
        got: list[tuple[str, Any]] = []
        deadline = time.monotonic() + timeout
        for message in list(self.held):
            if len(got) < count and message[0].endswith(f"/{kind}"):
                self.held.remove(message)
                got.append((message[0], json.loads(message[1])))
        while len(got) < count:
            topic, payload = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            if topic.endswith(f"/{kind}"):
                got.append((topic, json.loads(payload)))
            else:
                self.held.append((topic, payload))
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def subscriber(cloud: LocalCloud) -> Iterator[Subscriber]:
    assert cloud.broker is not None and cloud.broker.tls
    sub = Subscriber(cloud.broker, cloud.account)
    yield sub
    sub.close()


def _body(payload: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = payload["params"] if "params" in payload else payload["param"]
    return body


def test_quota_reports_in_the_real_shapes(cloud: LocalCloud, subscriber: Subscriber) -> None:
    publisher = cloud.publisher
    assert publisher is not None
    publisher.new_shape_share = 0.5
    ps, dp = cloud.devices
    assert publisher.run(count=40) == 40
    reports = subscriber.take(40, "quota")
    catalog = default_catalog()
    shapes = set()
    for index, (topic, payload) in enumerate(reports):
        sn = topic.split("/")[3]
        assert topic == f"/open/{cloud.account.certificate_account}/{sn}/quota"
        if sn == ps.sn:
            assert payload["cmdId"] == 1 and payload["cmdFunc"] == 20
            shape = "params" if "params" in payload else "param"
            assert set(payload) == (
                {"cmdId", "cmdFunc", "addr", "params"} if shape == "params" else {"cmdId", "cmdFunc", "param"}
            )
            shapes.add(shape)
            body = payload[shape]
            assert not any(key.startswith("20_1.") for key in body)  # bare keys, as the device sends
        else:
            assert set(payload) == {"id", "version", "timestamp", "params"} and payload["version"] == "1.0"
            assert abs(payload["timestamp"] - time.time() * 1000) < 60_000
            body = payload["params"]
        if index < 2:  # each device's first report is full
            device = ps if sn == ps.sn else dp
            assert len(body) == len(device.full_report())
        else:
            assert 0 < len(body) <= 6
        product = catalog.products["powerstream" if sn == ps.sn else "delta_pro"]
        decoded = decode_bytes(json.dumps(payload), TopicKind.QUOTA)
        assert all(product.lookup(key) is not None for key in decoded.values)
    assert shapes == {"param", "params"}
    assert publisher.wait_acked() and publisher.acked == publisher.published == 40
    assert [r.topic for r in publisher.records] == [t for t, _ in reports]


def test_full_report_every_k_messages(cloud: LocalCloud, subscriber: Subscriber) -> None:
    publisher = cloud.publisher
    assert publisher is not None
    publisher.full_every = 3
    publisher.run(count=12)  # 6 per device: reports 1 and 4 are full
    sizes: dict[str, list[int]] = {}
    for topic, payload in subscriber.take(12, "quota"):
        sizes.setdefault(topic.split("/")[3], []).append(len(_body(payload)))
    for counts in sizes.values():
        assert counts[0] == counts[3] > 50 and max(counts[1:3] + counts[4:]) <= 6


def test_numbers_as_strings_on_mqtt(cloud: LocalCloud, subscriber: Subscriber) -> None:
    dp = cloud.devices[1]
    dp.numbers_as_strings = True
    assert cloud.publisher is not None
    cloud.publisher.publish_report(dp, full=True)
    ((_, payload),) = subscriber.take(1, "quota")
    assert payload["params"]["pd.soc"] == str(dp.snapshot()["pd.soc"])


def test_status_messages_on_online_changes(cloud: LocalCloud, subscriber: Subscriber) -> None:
    dp = cloud.devices[1]
    cloud.set_online(dp.sn, False)
    cloud.set_online(dp.sn, False)  # no change, no message
    cloud.set_online(dp.sn, True)
    statuses = subscriber.take(2, "status")
    assert [p["params"] for _, p in statuses] == [{"status": 0}, {"status": 1}]
    for topic, payload in statuses:
        assert topic == f"/open/{cloud.account.certificate_account}/{dp.sn}/status"
        assert set(payload) == {"id", "version", "timestamp", "params"} and isinstance(payload["id"], str)
        assert decode_bytes(json.dumps(payload), TopicKind.STATUS).online in (0, 1)


def test_offline_devices_do_not_report(cloud: LocalCloud, subscriber: Subscriber) -> None:
    ps, dp = cloud.devices
    cloud.set_online(ps.sn, False)
    assert cloud.publisher is not None and cloud.publisher.run(count=4) == 4
    assert {topic.split("/")[3] for topic, _ in subscriber.take(4, "quota")} == {dp.sn}


def test_set_is_applied_and_answered(cloud: LocalCloud, subscriber: Subscriber) -> None:
    ps, dp = cloud.devices
    account = cloud.account.certificate_account
    requests: list[tuple[SimDevice, dict[str, Any]]] = [
        (
            ps,
            {
                "id": 123456789,
                "version": "1.0",
                "cmdCode": "WN511_SET_BAT_UPPER_PACK",
                "params": {"upperLimit": 83},
            },
        ),
        (dp, {"id": 987, "version": "1.0", "params": {"cmdSet": 32, "id": 49, "maxChgSoc": 90}}),
        (dp, {"id": 988, "version": "1.0", "params": {"cmdSet": 32, "id": 49, "maxChgSoc": 5}}),
    ]
    for device, request in requests:
        subscriber.client.publish(f"/open/{account}/{device.sn}/set", json.dumps(request), qos=1)
        ((topic, reply),) = subscriber.take(1, "set_reply")
        assert topic == f"/open/{account}/{device.sn}/set_reply"
        if device is ps:
            assert reply == {"data": {"ack": 0}, "id": 123456789}
        else:
            ack = 0 if request["params"]["maxChgSoc"] == 90 else 1
            assert reply == {
                "id": request["id"],
                "version": "1.0",
                "operateType": "TCP",
                "code": "0",
                "data": {"cmdSet": 32, "id": 49, "ack": ack},
            }
    assert ps.snapshot()["20_1.upperLimit"] == 83 and dp.snapshot()["ems.maxChargeSoc"] == 90
    # the device pushed its new state after each accepted setting
    ps_push, dp_push = (_body(p) for _, p in subscriber.take(2, "quota"))
    assert ps_push["upperLimit"] == 83 and dp_push["ems.maxChargeSoc"] == 90


def test_wrong_mqtt_credentials_fail_the_start(mosquitto_server: MosquittoServer) -> None:
    # the accounts are not registered on this broker (no `mosquitto=`): the login is refused. A seed
    # of its own: other tests' clouds (seed 0) registered their accounts on this session broker
    cloud = LocalCloud(
        "powerstream=1", broker=BrokerInfo.from_mosquitto(mosquitto_server), publish_rate=None, seed=4242
    )
    with pytest.raises(PublisherError, match="MQTT login of open-"), cloud:
        pass


def test_background_publishing_at_a_rate(mosquitto_server: MosquittoServer) -> None:
    with LocalCloud("delta_pro=2", mosquitto=mosquitto_server, publish_rate=20.0, seed=5) as cloud:
        sub = Subscriber(cloud.broker, cloud.account)  # type: ignore[arg-type]
        try:
            started = time.monotonic()
            sub.take(10, "quota", timeout=5)
            assert 0.3 < time.monotonic() - started < 3.0  # 10 messages at 20/s
        finally:
            sub.close()


# ----------------------------------------------------------------------------- CLI


def test_simulate_command(mosquitto_server: MosquittoServer) -> None:
    user, password = next(iter(mosquitto_server.users.items()))  # the broker's own test user
    args = [
        sys.executable, "-m", "collector", "--log-format", "json", "simulate",
        "--mqtt-host", mosquitto_server.host, "--mqtt-port", str(mosquitto_server.tls_port),
        "--tls", "--ca-file", str(mosquitto_server.ca_file),
        "--access-key", "sim-access", "--secret-key", "sim-secret",
        "--cert-account", user, "--cert-password", password, "--rate", "5",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stderr is not None
        ready: dict[str, Any] = {}
        deadline = time.monotonic() + 30
        while not ready and time.monotonic() < deadline:
            line = proc.stderr.readline()
            assert line, "simulate exited early"
            event = json.loads(line)
            if event["event"] == "simulate.ready":
                ready = event
        assert "ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY=sim-secret" in ready["collector_env"]
        api = Api(ready["api_url"], Signer("sim-access", "sim-secret"))
        devices = api.get("/device/list")["data"]
        assert [d["productName"] for d in devices] == ["PowerStream", "DELTA Pro"]
        assert api.get("/certification")["data"]["certificateAccount"] == user
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
