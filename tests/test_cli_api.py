"""`devices`, `quota`, `get`, `set`, `settings` against the local EcoFlow cloud."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from collector.api.signing import sign
from collector.catalog import default_catalog
from collector.cli import main
from collector.config import ENV_PREFIX, REGIONS
from collector.simulator.devices import DeviceSpec
from collector.simulator.server import LocalCloud

DEVICES = [
    DeviceSpec("powerstream", 1),
    DeviceSpec("delta_pro", 1),
    DeviceSpec("powerstream", 1, {"read_denied": True}),
    DeviceSpec("delta_pro", 1, {"list_product_name": False}),
]


@pytest.fixture(scope="module")
def cloud() -> Iterator[LocalCloud]:
    with LocalCloud(DEVICES, publish_rate=None, seed=11) as local:
        yield local


@pytest.fixture(autouse=True)
def _no_config_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _unconfigure_logging() -> Iterator[None]:
    # main() points structlog at the sys.stderr of the moment: capsys's, closed after the test
    yield
    structlog.reset_defaults()


def _toml(settings: dict[str, Any]) -> str:
    """Just enough TOML for a collector config: tables of scalars and the [[devices]] list."""
    lines: list[str] = []
    for section, values in settings.items():
        if section != "devices":
            lines += [f"[{section}]", *(f"{key} = {json.dumps(value)}" for key, value in values.items())]
    for device in settings.get("devices", []):
        lines += ["[[devices]]", *(f"{key} = {json.dumps(value)}" for key, value in device.items())]
    return "\n".join(lines) + "\n"


def _write(tmp_path: Path, settings: dict[str, Any], name: str = "collector.toml") -> Path:
    path = tmp_path / name
    path.write_text(_toml(settings), encoding="utf-8")
    return path


@pytest.fixture()
def config(cloud: LocalCloud, tmp_path: Path) -> Path:
    """The cloud's first account, with every device's product in [[devices]]."""
    settings = cloud.collector_settings()
    settings.pop("mqtt", None)
    return _write(tmp_path, settings)


@pytest.fixture()
def bare_config(cloud: LocalCloud, tmp_path: Path) -> Path:
    """Keys only: products come from the device list, else from the serial prefix."""
    return _write(tmp_path, {"ecoflow": cloud.collector_settings()["ecoflow"]}, "bare.toml")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def _sn(cloud: LocalCloud, product: str, **flags: bool) -> str:
    defaults = {"read_denied": False, "list_product_name": True}
    wanted = {**defaults, **flags}
    for device in cloud.account.devices.values():
        if device.product_slug == product and all(getattr(device, k) == v for k, v in wanted.items()):
            return device.sn
    raise LookupError(product)


def _puts(cloud: LocalCloud) -> int:
    return sum(1 for record in cloud.cloud.requests if record.method == "PUT")


# --- devices ---------------------------------------------------------------------------------------


def test_devices_table(cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, "devices", "--config", str(config))
    assert status == 0, err
    lines = [re.split(r"\s{2,}", line) for line in out.splitlines()]  # names hold single spaces
    assert lines[0] == ["sn", "name", "product", "online", "http reads"]
    rows = {line[0]: line for line in lines[1 : 1 + len(cloud.account.devices)]}
    assert set(rows) == set(cloud.account.devices)
    for sn, device in cloud.account.devices.items():
        reads = "refused (1006)" if device.read_denied else "yes"
        assert rows[sn][1:] == [device.device_name, device.product_slug, "yes", reads]
    # one line per refused device, naming its product and what the refusal means
    denied = _sn(cloud, "powerstream", read_denied=True)
    notes = out.splitlines()[1 + len(cloud.account.devices) :]
    assert notes == [
        f"{denied}: EcoFlow's public API does not serve PowerStream devices (code 1006): "
        "this device is never polled over HTTP; what it publishes over MQTT is still stored"
    ]


def test_devices_json_resolves_products_without_config(
    cloud: LocalCloud, bare_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = run(capsys, "devices", "--json", "--config", str(bare_config))
    assert status == 0
    records = {record["sn"]: record for record in json.loads(out)}
    unnamed = _sn(cloud, "delta_pro", list_product_name=False)
    assert records[unnamed]["product_name"] is None
    assert records[unnamed]["product"] == "delta_pro"  # from its DCAB serial prefix
    assert records[_sn(cloud, "powerstream")]["product"] == "powerstream"  # from productName
    assert all(record["online"] is True for record in records.values())
    denied = _sn(cloud, "powerstream", read_denied=True)
    assert {sn for sn, record in records.items() if record["read_denied"]} == {denied}
    assert records[denied]["reads"] == "refused"


# --- quota and get -------------------------------------------------------------------------------------


def test_quota_normalizes_with_units_sentinels_and_labels(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sn = _sn(cloud, "powerstream")
    status, out, err = run(capsys, "quota", sn, "--json", "--config", str(config))
    assert status == 0, err
    document = json.loads(out)
    assert (document["sn"], document["product"]) == (sn, "powerstream")
    records = {record["key"]: record for record in document["quotas"]}
    product = default_catalog().products["powerstream"]

    volt = records["20_1.batInputVolt"]  # sent in 0.1 V, shown in V
    assert volt["unit"] == "V"
    assert volt["value"] == pytest.approx(volt["raw"] / 10)

    sentinels = [r for r in records.values() if r["value"] is None]
    assert sentinels, "the simulated PowerStream reports 'not set' values"
    for record in sentinels:
        spec = product.lookup(record["key"])
        assert spec is not None and record["raw"] in spec.sentinels

    priority = records["20_1.supplyPriority"]
    assert priority["meaning"] == product.fields["20_1.supplyPriority"].values[str(priority["raw"])]
    texts = [
        r for r in records.values() if (s := product.lookup(r["key"])) is not None and s.text == "ascii2"
    ]
    assert texts and all(len(r["meaning"]) == 2 for r in texts)

    status, table, _ = run(capsys, "quota", sn, "--config", str(config))
    assert status == 0
    rows = {line.split()[0]: line.split() for line in table.splitlines()[1:]}
    assert rows[sentinels[0]["key"]][1] == "n/a"
    assert rows["20_1.batInputVolt"][1:3] == [f"{volt['value']:g}", "V"]


def test_get_reads_named_keys(cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    sn = _sn(cloud, "delta_pro")
    status, out, err = run(capsys, "get", sn, "pd.soc", "inv.cfgAcXboost", "--config", str(config))
    assert status == 0, err
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert set(rows) == {"pd.soc", "inv.cfgAcXboost"}
    assert rows["pd.soc"][2] == "%"
    assert rows["inv.cfgAcXboost"][-1] in ("on", "off", "n/a")


def test_read_denied_device_exits_1_with_one_line(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, err = run(
        capsys, "quota", _sn(cloud, "powerstream", read_denied=True), "--config", str(config)
    )
    assert (status, out) == (1, "")
    assert err.count("\n") == 1
    assert "does not allow reads (permanent for this device; it will not be asked again)" in err


# --- set -----------------------------------------------------------------------------------------------


def test_set_changes_what_quota_shows(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sn = _sn(cloud, "powerstream")
    status, out, err = run(capsys, "set", sn, "permanent-watts", "234.5", "--config", str(config))
    assert status == 0, err
    sent = "WN511_SET_PERMANENT_WATTS_PACK permanentWatts=2345"
    assert out.splitlines()[0] == f"{sn}: permanent-watts = 234.5 W (sent {sent}); read back:"
    assert out.splitlines()[2].split() == ["20_1.permanentWatts", "234.5", "W"]
    status, out, _ = run(capsys, "quota", sn, "--json", "--config", str(config))
    values = {record["key"]: record["value"] for record in json.loads(out)["quotas"]}
    assert values["20_1.permanentWatts"] == 234.5


def test_set_delta_pro_word_value(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sn = _sn(cloud, "delta_pro")
    for word in ("off", "on"):
        status, out, err = run(capsys, "set", sn, "ac-enabled", word, "--config", str(config))
        assert status == 0, err
        assert f"ac-enabled = {word} (sent cmdSet 32 id 66 enabled=" in out
        rows = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
        assert rows["inv.cfgAcEnabled"][-1] == word
        status, out, _ = run(capsys, "get", sn, "inv.cfgAcEnabled", "--config", str(config))
        assert out.splitlines()[1].split()[-1] == word


def test_out_of_range_is_refused_before_any_request(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sn = _sn(cloud, "powerstream")
    before = cloud.cloud.request_count
    status, out, err = run(capsys, "set", sn, "permanent-watts", "900", "--config", str(config))
    assert (status, out) == (2, "")
    assert err == "ecoflow-collector set: permanent-watts: 900 W is out of range; allowed: 0-600 W\n"
    status, _, err = run(capsys, "set", sn, "battery-upper-limit", "60", "--config", str(config))
    assert status == 2 and "allowed: 70-100 %" in err
    status, _, err = run(capsys, "set", sn, "supply-priority", "maybe", "--config", str(config))
    assert status == 2 and "allowed: power-supply (0), power-storage (1)" in err
    assert cloud.cloud.request_count == before


def test_out_of_range_sends_no_set_when_the_product_comes_from_the_device_list(
    cloud: LocalCloud, bare_config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    puts = _puts(cloud)
    status, _, err = run(
        capsys, "set", _sn(cloud, "delta_pro"), "max-charge-soc", "20", "--config", str(bare_config)
    )
    assert status == 2 and "max-charge-soc: 20 % is out of range; allowed: 50-100 %" in err
    assert _puts(cloud) == puts


def test_unknown_setting_lists_the_known_ones(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(capsys, "set", _sn(cloud, "powerstream"), "turbo", "1", "--config", str(config))
    assert status == 2
    assert "powerstream has no setting 'turbo'; it has: battery-lower-limit" in err


def test_dry_run_prints_the_signed_request_without_the_secret(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sn = _sn(cloud, "delta_pro")
    before = cloud.cloud.request_count
    status, out, err = run(capsys, "set", sn, "x-boost", "on", "--dry-run", "--config", str(config))
    assert status == 0, err
    assert cloud.cloud.request_count == before  # the product came from the config: nothing was sent
    request = json.loads(out)
    assert request["method"] == "PUT"
    assert request["url"] == f"{cloud.url}/iot-open/sign/device/quota"
    assert request["body"] == {"sn": sn, "params": {"cmdSet": 32, "id": 66, "xboost": 1}}
    headers = request["headers"]
    assert headers["Content-Type"] == "application/json;charset=UTF-8"
    secret = cloud.account.secret_key
    assert headers["sign"] == sign(
        request["body"], headers["accessKey"], secret, headers["nonce"], headers["timestamp"]
    )
    assert secret not in out and secret not in err


def test_set_on_a_device_that_denies_reads_reports_the_failed_read_back(
    cloud: LocalCloud, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sn = _sn(cloud, "powerstream", read_denied=True)
    puts = _puts(cloud)
    status, out, err = run(capsys, "set", sn, "brightness", "512", "--config", str(config))
    assert status == 1
    assert _puts(cloud) == puts + 1
    assert out == f"{sn}: brightness = 512 (sent WN511_SET_BRIGHTNESS_PACK brightness=512); read back:\n"
    assert err.startswith("ecoflow-collector set: the device accepted the setting; reading it back failed: ")
    assert "does not allow reads" in err


# --- settings -------------------------------------------------------------------------------------------


def test_settings_table_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run(capsys, "settings", "--product", "powerstream")
    assert status == 0
    row = next(line for line in out.splitlines() if line.startswith("powerstream  permanent-watts"))
    assert "0-600 W" in row and "WN511_SET_PERMANENT_WATTS_PACK" in row
    status, out, _ = run(capsys, "settings", "--product", "DELTA Pro", "--json")
    records = {record["setting"]: record for record in json.loads(out)}
    assert records["car-input-current"]["allowed"] == "4-8 A"
    assert records["car-input-current"]["scale"] == 1000
    assert records["lcd-brightness"]["allowed"] == "0-100 %, or auto (128)"
    status, _, err = run(capsys, "settings", "--product", "toaster")
    assert status == 2 and "unknown product 'toaster'" in err


# --- configuration and API errors --------------------------------------------------------------------


def test_missing_keys_name_config_keys_and_environment_variables(
    cloud: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, {"ecoflow": {"api_url": cloud.url}})
    status, _, err = run(capsys, "devices", "--config", str(path))
    assert status == 2
    for text in (
        "access_key",
        "secret_key",
        "ECOFLOW_COLLECTOR_ECOFLOW__ACCESS_KEY",
        "ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY",
    ):
        assert text in err


def test_keys_from_the_environment(
    cloud: LocalCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, {"ecoflow": {"api_url": cloud.url}})
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ECOFLOW__ACCESS_KEY", cloud.account.access_key)
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY", cloud.account.secret_key)
    status, out, err = run(capsys, "devices", "--no-probe", "--config", str(path))
    assert status == 0, err
    assert len(out.splitlines()) == 1 + len(cloud.account.devices)


def test_wrong_secret_exits_1_with_the_8521_advice(
    cloud: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ecoflow = {**cloud.collector_settings()["ecoflow"], "secret_key": "wrong-secret"}
    status, out, err = run(capsys, "devices", "--config", str(_write(tmp_path, {"ecoflow": ecoflow})))
    assert (status, out) == (1, "")
    assert err.startswith(
        "ecoflow-collector devices: signature rejected: check the secret key and this machine's clock"
    )
    assert err.count("\n") == 1 and "wrong-secret" not in err


def test_key_of_another_region_exits_1_naming_the_regions(
    cloud: LocalCloud, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = cloud.add_account(region="americas")
    ecoflow = {"api_url": cloud.url, "access_key": other.access_key, "secret_key": other.secret_key}
    status, _, err = run(capsys, "devices", "--config", str(_write(tmp_path, {"ecoflow": ecoflow})))
    assert status == 1
    assert "access key invalid, or it belongs to another region: try api_url = " in err
    assert all(url in err for url in REGIONS.values())


def test_console_script_in_a_subprocess(cloud: LocalCloud, config: Path) -> None:
    script = shutil.which("ecoflow-collector")
    if script is None:
        pytest.fail("the ecoflow-collector console script is not installed: pip install -e .", pytrace=False)
    env = {name: value for name, value in os.environ.items() if not name.upper().startswith(ENV_PREFIX)}
    done = subprocess.run(
        [script, "devices", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert {record["sn"] for record in json.loads(done.stdout)} == set(cloud.account.devices)
    refused = subprocess.run(
        [script, "set", _sn(cloud, "powerstream"), "permanent-watts", "-5", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert refused.returncode == 2
    assert "permanent-watts: -5 W is out of range; allowed: 0-600 W" in refused.stderr
