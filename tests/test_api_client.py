"""The Open API client against the local EcoFlow cloud (a real HTTP server that checks signatures).

Sleeps and the budget's clock are injected, so retries and cool-downs take no wall time; every
count of requests is the count the cloud itself saw.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import structlog

from collector.api.client import (
    DEFAULT_BUDGET,
    QUOTA_ALL_PATH,
    QUOTA_PATH,
    EcoflowClient,
    RequestBudget,
    RetryPolicy,
)
from collector.api.commands import build_set_request
from collector.api.errors import (
    AccessKeyRejected,
    ApiCodeError,
    DeviceReadDenied,
    PermissionDenied,
    ResponseError,
    RetryBudgetExhausted,
    SettingValueError,
    SignatureRejected,
    TransportError,
    region_hint,
)
from collector.api.models import Certification, DeviceInfo, Envelope
from collector.api.signing import sign
from collector.catalog import default_catalog
from collector.config import REGIONS, ConfigError, EcoflowSection
from collector.logs import configure
from collector.simulator.devices import DeviceSpec
from collector.simulator.server import LocalCloud
from collector.testbed import MosquittoServer, free_port

DEVICES = [
    DeviceSpec("powerstream", 1),
    DeviceSpec("delta_pro", 1),
    DeviceSpec("powerstream", 1, {"read_denied": True}),
    DeviceSpec("delta_pro", 1, {"quota_all_no_data": True, "list_product_name": False}),
]


class FakeTime:
    """The budget's monotonic clock and the client's sleep, moving together and instantly."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(DEVICES, publish_rate=None, seed=7) as local:
        yield local


@pytest.fixture(autouse=True)
def _no_leftover_faults(cloud: LocalCloud) -> Iterator[None]:
    yield
    cloud.cloud.faults.clear()


@pytest.fixture()
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture()
def budget(fake_time: FakeTime) -> RequestBudget:
    return RequestBudget(clock=fake_time)


@pytest.fixture()
def client(cloud: LocalCloud, budget: RequestBudget, fake_time: FakeTime) -> Iterator[EcoflowClient]:
    account = cloud.account
    with EcoflowClient(
        cloud.url, account.access_key, account.secret_key, budget=budget, sleep=fake_time.sleep
    ) as api:
        yield api


def _device(cloud: LocalCloud, product: str, **flags: bool) -> str:
    for device in cloud.account.devices.values():
        if device.product_slug == product and all(getattr(device, k) == v for k, v in flags.items()):
            return device.sn
    raise LookupError(product)


def _plain(cloud: LocalCloud, product: str) -> str:
    return _device(cloud, product, read_denied=False, quota_all_no_data=False)


# --- every endpoint round-trips ----------------------------------------------------------------


def test_device_list(cloud: LocalCloud, client: EcoflowClient) -> None:
    devices = {info.sn: info for info in client.device_list()}
    assert set(devices) == set(cloud.account.devices)
    for sn, sim in cloud.account.devices.items():
        assert devices[sn].deviceName == sim.device_name
        assert devices[sn].online == 1 and devices[sn].is_online
        assert devices[sn].productName == (sim.product_name if sim.list_product_name else None)


def test_quota_all_powerstream_and_delta_pro(cloud: LocalCloud, client: EcoflowClient) -> None:
    powerstream = client.quota_all(_plain(cloud, "powerstream"))
    delta_pro = client.quota_all(_plain(cloud, "delta_pro"))
    assert isinstance(powerstream["20_1.batSoc"], int | float)
    assert "20_1.pv1InputWatts" in powerstream
    assert 0 <= delta_pro["pd.soc"] <= 100
    assert "bmsMaster.vol" in delta_pro


def test_quota_all_without_data_is_an_empty_dict(cloud: LocalCloud, client: EcoflowClient) -> None:
    assert client.quota_all(_device(cloud, "delta_pro", quota_all_no_data=True)) == {}


def test_quota_get_named_keys(cloud: LocalCloud, client: EcoflowClient) -> None:
    sn = _plain(cloud, "delta_pro")
    values = client.quota_get(sn, ["pd.soc", "inv.cfgAcEnabled"], {"cmdSet": 32, "id": 66})
    assert set(values) == {"pd.soc", "inv.cfgAcEnabled"}
    assert client.quota_get(sn, ["no.such.key"]) == {}


@pytest.mark.parametrize(
    ("product", "setting", "value", "key", "sent"),
    [
        ("powerstream", "permanent-watts", "123.4", "20_1.permanentWatts", 1234),
        ("powerstream", "supply-priority", "power-storage", "20_1.supplyPriority", 1),
        ("delta_pro", "ac-enabled", "off", "inv.cfgAcEnabled", 0),
        ("delta_pro", "car-input-current", "6", "mppt.cfgDcChgCurrent", 6000),
        ("delta_pro", "max-charge-soc", "85", "ems.maxChargeSoc", 85),
    ],
)
def test_quota_set_then_read_back(
    cloud: LocalCloud, client: EcoflowClient, product: str, setting: str, value: str, key: str, sent: int
) -> None:
    sn = _plain(cloud, product)
    request = build_set_request(default_catalog().products[product], sn, setting, value)
    client.quota_set(sn, request.body)
    read = request.read_back
    assert read.quotas[0] == key
    assert client.quota_get(sn, read.quotas, read.extra_params)[key] == sent
    assert client.quota_all(sn)[key] == sent


def test_certification(mosquitto_server: MosquittoServer) -> None:
    with LocalCloud("powerstream=1", mosquitto=mosquitto_server, publish_rate=None, seed=3) as local:
        account = local.account
        with EcoflowClient(local.url, account.access_key, account.secret_key, budget=RequestBudget()) as api:
            cert = api.certification()
    assert cert.certificateAccount == account.certificate_account
    assert cert.certificatePassword.get_secret_value() == account.certificate_password
    assert account.certificate_password not in repr(cert)
    assert (cert.url, cert.port, cert.port_number) == (
        mosquitto_server.host,
        str(mosquitto_server.tls_port),
        mosquitto_server.tls_port,
    )
    assert cert.protocol == "mqtts"


# --- API errors and what they say ----------------------------------------------------------------


def test_wrong_secret_is_8521_with_advice(cloud: LocalCloud, budget: RequestBudget) -> None:
    with (
        EcoflowClient(cloud.url, cloud.account.access_key, "not-the-secret", budget=budget) as api,
        pytest.raises(SignatureRejected) as caught,
    ):
        api.device_list()
    assert caught.value.code == "8521"
    assert "signature rejected: check the secret key and this machine's clock" in str(caught.value)
    assert "signature is wrong" in str(caught.value)
    assert caught.value.trace_id
    assert not budget.is_open  # an answer, however negative, is not an outage


def test_key_of_another_region_is_8513_naming_the_regions(cloud: LocalCloud, budget: RequestBudget) -> None:
    other = cloud.add_account(region="americas")
    with (
        EcoflowClient(cloud.url, other.access_key, other.secret_key, budget=budget) as api,
        pytest.raises(AccessKeyRejected) as caught,
    ):
        api.device_list()
    message = str(caught.value)
    assert caught.value.code == "8513"
    assert "access key invalid, or it belongs to another region" in message
    for url in REGIONS.values():
        assert url in message


def test_region_hint_offers_the_other_regions() -> None:
    hint = region_hint("https://api-e.ecoflow.com/")
    suggested = hint.split("try api_url = ")[1].split(" (now")[0]
    assert suggested == "https://api-a.ecoflow.com or https://api.ecoflow.com"
    assert hint.endswith("(now https://api-e.ecoflow.com)")


def test_a_skewed_clock_is_refused_with_the_clock_advice(cloud: LocalCloud, budget: RequestBudget) -> None:
    def an_hour_ago() -> int:
        return time.time_ns() // 1_000_000 - 3_600_000

    account = cloud.account
    with (
        EcoflowClient(
            cloud.url, account.access_key, account.secret_key, budget=budget, clock_ms=an_hour_ago
        ) as api,
        pytest.raises(SignatureRejected, match="this machine's clock"),
    ):
        api.device_list()
    assert cloud.cloud.requests[-1].reason == "timestamp outside the allowed window"


def test_wrong_base_path_is_not_retried(
    cloud: LocalCloud, budget: RequestBudget, fake_time: FakeTime
) -> None:
    account = cloud.account
    before = cloud.cloud.request_count
    with (
        EcoflowClient(f"{cloud.url}/v2", account.access_key, account.secret_key, budget=budget) as api,
        pytest.raises(TransportError, match=r"HTTP 404 \(is api_url .*/v2 right\?\)"),
    ):
        api.device_list()
    assert cloud.cloud.request_count == before + 1
    assert fake_time.sleeps == []


def test_foreign_serial_is_8512(client: EcoflowClient) -> None:
    with pytest.raises(PermissionDenied, match="no permission"):
        client.quota_all("HW51NOTMINE00000")


def test_read_denied_device_is_asked_once(cloud: LocalCloud, client: EcoflowClient) -> None:
    sn = _device(cloud, "powerstream", read_denied=True)
    before = cloud.cloud.request_count
    with pytest.raises(DeviceReadDenied) as first:
        client.quota_all(sn)
    assert cloud.cloud.request_count == before + 1
    assert "does not allow reads (permanent for this device; it will not be asked again)" in str(first.value)
    assert sn in str(first.value)
    for _ in range(3):
        with pytest.raises(DeviceReadDenied):
            client.quota_all(sn)
        with pytest.raises(DeviceReadDenied):
            client.quota_get(sn, ["20_1.batSoc"])
    assert cloud.cloud.request_count == before + 1
    # other devices are still read
    assert client.quota_all(_plain(cloud, "powerstream"))


def test_refused_set_command_is_not_retried(cloud: LocalCloud, client: EcoflowClient) -> None:
    sn = _plain(cloud, "powerstream")
    before = cloud.cloud.request_count
    with pytest.raises(ApiCodeError) as caught:
        client.quota_set(sn, {"sn": sn, "cmdCode": "WN511_NO_SUCH_PACK", "params": {"x": 1}})
    assert caught.value.code == "1000"
    assert cloud.cloud.request_count == before + 1


def test_out_of_range_setting_is_refused_before_any_request(cloud: LocalCloud) -> None:
    before = cloud.cloud.request_count
    powerstream = default_catalog().products["powerstream"]
    with pytest.raises(SettingValueError) as caught:
        build_set_request(powerstream, _plain(cloud, "powerstream"), "permanent-watts", "601")
    assert str(caught.value) == "permanent-watts: 601 W is out of range; allowed: 0-600 W"
    assert cloud.cloud.request_count == before


def test_answer_that_is_not_json_is_a_response_error(cloud: LocalCloud, client: EcoflowClient) -> None:
    cloud.cloud.faults.fail_next(1, status=200)
    with pytest.raises(ResponseError, match="HTTP 200, not a JSON envelope"):
        client.device_list()


# --- retries, the budget and the circuit ----------------------------------------------------------


def test_injected_5xx_are_retried_then_succeed(
    cloud: LocalCloud, client: EcoflowClient, fake_time: FakeTime
) -> None:
    cloud.cloud.faults.fail_next(1, status=503)
    cloud.cloud.faults.fail_next(1, status=500)
    cloud.cloud.faults.fail_next(1, status=429)
    before = cloud.cloud.request_count
    assert len(client.device_list()) == len(cloud.account.devices)
    assert cloud.cloud.request_count == before + 4
    # full jitter: each wait lies in [0, base * 2**n]
    assert len(fake_time.sleeps) == 3
    for retry, slept in enumerate(fake_time.sleeps):
        assert 0 <= slept <= client.retry.base_delay_s * 2**retry


def test_retries_are_signed_anew(cloud: LocalCloud, client: EcoflowClient) -> None:
    # the cloud refuses a replayed nonce+timestamp: a retry that resent the same headers would fail
    cloud.cloud.faults.fail_next(2, status=502)
    sn = _plain(cloud, "delta_pro")
    assert client.quota_get(sn, ["pd.soc"]) and cloud.cloud.requests[-1].code == "0"


def test_a_call_gives_up_after_its_attempts(cloud: LocalCloud, client: EcoflowClient) -> None:
    cloud.cloud.faults.fail_next(10, status=500)
    before = cloud.cloud.request_count
    with pytest.raises(TransportError, match=r"HTTP 500 .*gave up after 4 attempts"):
        client.device_list()
    assert cloud.cloud.request_count == before + client.retry.max_attempts


def test_long_outage_fails_fast_without_a_retry_storm(
    cloud: LocalCloud, client: EcoflowClient, budget: RequestBudget, fake_time: FakeTime
) -> None:
    cloud.cloud.faults.fail_next(100_000, status=503)
    sn = _plain(cloud, "powerstream")
    before = cloud.cloud.request_count
    errors: list[TransportError] = []
    for _ in range(200):
        with pytest.raises(TransportError) as caught:
            client.quota_all(sn)
        errors.append(caught.value)
    sent = cloud.cloud.request_count - before
    # two calls of four attempts open the circuit; the other 198 calls send nothing
    assert sent == budget.failures_to_open == 8
    assert budget.is_open
    assert sum(isinstance(e, RetryBudgetExhausted) for e in errors) == 198
    assert "failing fast after 8 failed requests in a row" in str(errors[-1])
    assert "HTTP 503" in str(errors[-1])

    # after the cool-down exactly one probe goes out; it fails, and the circuit opens again
    fake_time.now += budget.cooldown_s
    for _ in range(5):
        with pytest.raises(TransportError):
            client.quota_all(sn)
    assert cloud.cloud.request_count - before == 9

    # the cloud is back: the next probe closes the circuit and calls work again
    cloud.cloud.faults.clear()
    fake_time.now += budget.cooldown_s
    assert client.quota_all(sn)
    assert not budget.is_open
    assert client.device_list()


def test_outage_with_many_threads_stays_bounded(cloud: LocalCloud, budget: RequestBudget) -> None:
    account = cloud.account
    # the budget's clock stands still: no cool-down passes, so no probe muddies the count
    client = EcoflowClient(
        cloud.url, account.access_key, account.secret_key, budget=budget, sleep=lambda s: None
    )
    cloud.cloud.faults.fail_next(100_000, status=500)
    before = cloud.cloud.request_count
    threads = 16

    def caller() -> int:
        failures = 0
        for _ in range(25):
            try:
                client.device_list()
            except TransportError:
                failures += 1
        return failures

    with client, ThreadPoolExecutor(threads) as pool:
        failures = sum(pool.map(lambda _: caller(), range(threads)))
    assert failures == threads * 25
    # 400 calls: the circuit opens after 8 failures; each other thread has at most one attempt under way
    assert cloud.cloud.request_count - before <= budget.failures_to_open + threads - 1


def test_the_budget_is_shared_by_every_client(cloud: LocalCloud, budget: RequestBudget) -> None:
    account = cloud.account
    first = EcoflowClient(
        cloud.url, account.access_key, account.secret_key, budget=budget, sleep=lambda s: None
    )
    second = EcoflowClient(
        cloud.url, account.access_key, account.secret_key, budget=budget, sleep=lambda s: None
    )
    cloud.cloud.faults.fail_next(100, status=500)
    with first, second:
        for _ in range(2):
            with pytest.raises(TransportError):
                first.device_list()
        before = cloud.cloud.request_count
        with pytest.raises(RetryBudgetExhausted):
            second.device_list()
        assert cloud.cloud.request_count == before
    # and without an explicit budget, every client gets the process-wide one
    with EcoflowClient(cloud.url, account.access_key, account.secret_key) as api:
        assert api.budget is DEFAULT_BUDGET


def test_retry_token_bucket_caps_retries_per_minute(cloud: LocalCloud, fake_time: FakeTime) -> None:
    budget = RequestBudget(retries_per_minute=3, failures_to_open=1000, clock=fake_time)
    account = cloud.account
    cloud.cloud.faults.fail_next(1000, status=503)
    before = cloud.cloud.request_count
    with EcoflowClient(
        cloud.url, account.access_key, account.secret_key, budget=budget, sleep=fake_time.sleep
    ) as api:
        with pytest.raises(TransportError, match="gave up after 4 attempts"):
            api.device_list()  # 1 + 3 retries: the bucket is empty now
        for _ in range(5):
            with pytest.raises(RetryBudgetExhausted, match="3 retries per minute"):
                api.device_list()  # one attempt each, no retry
        assert cloud.cloud.request_count - before == 4 + 5
        fake_time.now += 60  # a minute refills the bucket
        cloud.cloud.faults.clear()
        cloud.cloud.faults.fail_next(3, status=503)
        assert api.device_list()
    assert cloud.cloud.request_count - before == 4 + 5 + 4


def test_timeouts_are_retried(cloud: LocalCloud, budget: RequestBudget, fake_time: FakeTime) -> None:
    account = cloud.account
    cloud.cloud.faults.delay_next(1, seconds=5.0)
    with EcoflowClient(
        cloud.url, account.access_key, account.secret_key, 0.3, budget=budget, sleep=fake_time.sleep
    ) as api:
        assert api.device_list()
    assert len(fake_time.sleeps) == 1


def test_connection_refused_is_retried_then_a_transport_error(
    budget: RequestBudget, fake_time: FakeTime
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        EcoflowClient(url, "ak", "sk", 1.0, budget=budget, sleep=fake_time.sleep) as api,
        pytest.raises(TransportError, match="gave up after 4 attempts") as caught,
    ):
        api.device_list()
    assert "NewConnectionError" in str(caught.value) or "Connection refused" in str(caught.value)
    assert len(fake_time.sleeps) == 3


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    policy = RetryPolicy()
    assert policy.delay(0, 1.0) == policy.base_delay_s
    assert policy.delay(10, 1.0) == policy.max_delay_s
    assert policy.delay(3, 0.0) == 0.0


# --- the wire format ------------------------------------------------------------------------------


def test_post_body_is_compact_json_signed_as_sent(cloud: LocalCloud, client: EcoflowClient) -> None:
    body = {"sn": "DCAB1", "params": {"cmdSet": 32, "id": 66, "quotas": ["inv.cfgAcEnabled"]}}
    request = client.prepare("POST", QUOTA_PATH, body=body)
    assert request.body == b'{"sn":"DCAB1","params":{"cmdSet":32,"id":66,"quotas":["inv.cfgAcEnabled"]}}'
    assert request.headers["Content-Type"] == "application/json;charset=UTF-8"
    headers = request.headers
    assert headers["sign"] == sign(
        json.loads(request.body),
        headers["accessKey"],
        cloud.account.secret_key,
        headers["nonce"],
        headers["timestamp"],
    )


def test_get_signs_its_query(cloud: LocalCloud, client: EcoflowClient) -> None:
    request = client.prepare("GET", QUOTA_ALL_PATH, query={"sn": "HW51X"})
    assert request.url.endswith("/iot-open/sign/device/quota/all?sn=HW51X")
    assert request.body is None and "Content-Type" not in request.headers
    headers = request.headers
    assert headers["sign"] == sign(
        {"sn": "HW51X"},
        headers["accessKey"],
        cloud.account.secret_key,
        headers["nonce"],
        headers["timestamp"],
    )


def test_logs_name_path_code_and_duration_but_no_secret(
    cloud: LocalCloud, client: EcoflowClient, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("debug", "json")
    try:
        client.device_list()
        with pytest.raises(DeviceReadDenied):
            client.quota_all(_device(cloud, "powerstream", read_denied=True))
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"api.request"' in line]
    assert {line["path"] for line in lines} >= {"/iot-open/sign/device/list"}
    assert all("duration_ms" in line and "code" in line for line in lines)
    output = json.dumps(lines)
    assert cloud.account.secret_key not in output


def test_missing_keys_name_the_settings_and_environment() -> None:
    with pytest.raises(ConfigError) as caught:
        EcoflowClient.from_settings(EcoflowSection())
    message = str(caught.value)
    for text in (
        "access_key",
        "secret_key",
        "ECOFLOW_COLLECTOR_ECOFLOW__ACCESS_KEY",
        "ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY",
    ):
        assert text in message


# --- models -----------------------------------------------------------------------------------------


def test_envelope_code_is_text_and_trace_id_falls_back_to_tid() -> None:
    envelope = Envelope.model_validate({"code": 8521, "message": "signature is wrong", "tid": "90fe"})
    assert envelope.code == "8521" and not envelope.ok
    assert envelope.trace_id == "90fe"
    assert Envelope.model_validate({"code": "0", "message": "Success"}).data is None


def test_device_info_keeps_unknown_keys_and_reads_booleans() -> None:
    info = DeviceInfo.model_validate({"sn": "HW51X", "online": True, "firmware": "1.0"})
    assert info.online == 1 and info.productName is None and info.deviceName is None
    assert info.model_extra == {"firmware": "1.0"}


def test_certification_port_is_text_with_a_number_property() -> None:
    cert = Certification.model_validate(
        {
            "certificateAccount": "open-x",
            "certificatePassword": "pw",
            "url": "h",
            "port": "8883",
            "protocol": "mqtts",
        }
    )
    assert cert.port == "8883" and cert.port_number == 8883
    with pytest.raises(ValueError, match="not a TCP port"):
        Certification.model_validate({**cert.model_dump(), "certificatePassword": "pw", "port": "http"})
