"""The config file: the example loads, the environment overrides, errors name file, key and reason."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from collector.config import ConfigError, load_settings, settings_from_values

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "collector.example.toml"


def test_example_config_loads() -> None:
    settings = load_settings(EXAMPLE)
    assert settings.ecoflow.api_url == "https://api-e.ecoflow.com"
    assert [d.product for d in settings.devices] == ["powerstream", "delta_pro"]
    assert settings.influxdb.batch_size == 5000


def test_environment_overrides_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY", "from-env")
    monkeypatch.setenv("ECOFLOW_COLLECTOR_INFLUXDB__BUCKET", "other")
    monkeypatch.setenv("ECOFLOW_COLLECTOR_DEVICES", '[{"sn": "HW51AAAA", "name": "x"}]')
    settings = load_settings(EXAMPLE)
    assert settings.ecoflow.secret_key is not None
    assert settings.ecoflow.secret_key.get_secret_value() == "from-env"
    assert settings.influxdb.bucket == "other"
    assert [d.sn for d in settings.devices] == ["HW51AAAA"]


def test_no_file_means_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLOW_COLLECTOR_COLLECTOR__STATE_DIR", "/tmp/x")
    assert str(load_settings(None).collector.state_dir) == "/tmp/x"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[influxdb]\nbatch_size = "many"', "influxdb.batch_size: Input should be a valid integer"),
        ("[influxdb]\nbuckett = 'x'", "influxdb.buckett: Extra inputs are not permitted"),
        ("[ecoflow]\napi_url = 'ftp://x'", "ecoflow.api_url: String should match pattern"),
        ("[[devices]]\nsn = 'A B'", "devices.0.sn: String should match pattern"),
        ("[[devices]]\nsn = 'HW51A'\n[[devices]]\nsn = 'HW51A'", "serial HW51A is listed twice"),
        ("[collector\n", "not valid TOML"),
        ("[mqtt]\nca_file = '/nonexistent/ca.pem'", "mqtt.ca_file: Value error, no such file"),
    ],
)
def test_invalid_files_name_file_key_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml does not exist"):
        load_settings(tmp_path / "nope.toml")


def test_secrets_never_appear_in_errors_or_reprs(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[ecoflow]\nsecret_key = "s3cr3t-value"\naccess_key = ["not", "a", "string"]\n')
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "s3cr3t-value" not in str(info.value)
    path.write_text('[ecoflow]\nsecret_key = "s3cr3t-value"\n[influxdb]\ntoken = "t0ken-value"\n')
    settings = load_settings(path)
    assert "s3cr3t-value" not in repr(settings) and "t0ken-value" not in repr(settings)


def test_environment_json_that_does_not_parse_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLOW_COLLECTOR_DEVICES", '[{"sn": "HW51A", oops')
    with pytest.raises(ConfigError, match="ECOFLOW_COLLECTOR_DEVICES is not valid JSON"):
        load_settings(None)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[collector]\nstale_after_s = 700", "stale_after_s (700) must be below offline_after_s (600)"),
        ("[mqtt]\nwatchdog_s = 900", "mqtt.watchdog_s (900) must be below collector.offline_after_s (600)"),
        ("[mqtt]\nreconnect_max_s = 0.5", "mqtt.reconnect_max_s: Input should be greater than or equal to 1"),
    ],
)
def test_timing_settings_that_cannot_work_are_refused(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(expected)):
        load_settings(path)


def test_environment_nesting_case_and_json_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`__` nests, names are case-insensitive, a section's JSON table and its keyed variables merge
    (the keyed ones win), and all of it over the file's values, key by key."""
    path = tmp_path / "c.toml"
    path.write_text('[mqtt]\nhost = "file-host"\nkeepalive_s = 30\n[influxdb]\nbucket = "file"\n')
    monkeypatch.setenv("ECOFLOW_COLLECTOR_MQTT", '{"username": "json-user", "port": 1}')
    monkeypatch.setenv("ECOFLOW_COLLECTOR_MQTT__PORT", "8883")
    monkeypatch.setenv("ecoflow_collector_Influxdb__Bucket", "env")
    monkeypatch.setenv("ECOFLOW_COLLECTOR_SHARD_COUNT", "3")  # a variable of no setting: ignored
    settings = load_settings(path)
    assert (settings.mqtt.host, settings.mqtt.keepalive_s) == ("file-host", 30)
    assert (settings.mqtt.username, settings.mqtt.port) == ("json-user", 8883)
    assert settings.influxdb.bucket == "env"


def test_an_environment_key_no_section_has_is_refused_with_the_overrides_named(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ECOFLOW_COLLECTOR_MQTT__PORTT", "1883")
    with pytest.raises(ConfigError) as info:
        load_settings(None)
    assert "mqtt.portt: Extra inputs are not permitted" in str(info.value)
    assert "environment overrides in effect: ECOFLOW_COLLECTOR_MQTT__PORTT" in str(info.value)


def test_an_accounts_json_that_does_not_parse_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__HOME__DEVICES", '[{"sn": ')
    with pytest.raises(ConfigError, match="ECOFLOW_COLLECTOR_ACCOUNTS__HOME__DEVICES is not valid JSON"):
        load_settings(None)


def test_settings_from_values_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLOW_COLLECTOR_INFLUXDB__BUCKET", "production")
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__HOME__SECRET_KEY", "s")
    settings = settings_from_values({"influxdb": {"bucket": "demo"}})
    assert settings.influxdb.bucket == "demo" and settings.accounts == []


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('[ecoflow]\napi_url = "https://api-e.ecoflow.com\\n"', "ecoflow.api_url"),
        ('[[devices]]\nsn = "HW51AAAA\\n"', "devices.0.sn"),
        ('[[accounts]]\nname = "home\\n"', "accounts.0.name"),
        ('[collector]\nshard = "auto\\n"', "collector.shard"),
    ],
)
def test_patterns_refuse_a_final_newline(tmp_path: Path, text: str, key: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{key}: String should match pattern")):
        load_settings(path)
