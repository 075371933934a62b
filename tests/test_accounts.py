"""Several EcoFlow accounts in one process (`[[accounts]]`): the config and its environment
variables, one persisted MQTT client id per account, the `account` tag, sharding across accounts,
and one account's key revoked while the others keep delivering (real Mosquitto, real InfluxDB,
the local EcoFlow cloud with three accounts)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from bench._harness import CollectorProcess, health
from collector.account import open_client
from collector.api.client import RequestBudget
from collector.catalog import default_catalog
from collector.cli import main
from collector.config import ConfigError, Settings, load_settings, settings_from_values
from collector.daemon import Collector, shard_of, wall_clock_ms
from collector.health import HealthServer
from collector.history.energy import EnergyCounters
from collector.points import Device
from collector.simulator.accounts import Account
from collector.simulator.server import LocalCloud
from collector.sink import Sink
from collector.sink.influx import InfluxWriter
from collector.sink.linefile import LineFileSink
from collector.statedir import StateDir
from collector.testbed import InfluxServer, MosquittoServer
from collector.testbed.ports import free_port
from tests.test_daemon import publisher_of, wait_for
from tests.test_daemon_process import write_config

NAMES = ("home", "cabin", "office")


def accounts_settings(
    cloud: LocalCloud, state_dir: Path, influx: dict[str, Any] | None = None
) -> dict[str, Any]:
    """`[[accounts]]` for every account of the cloud, named after NAMES, each listing its devices."""
    single = cloud.collector_settings()
    accounts = []
    for name, account in zip(NAMES, cloud.accounts, strict=False):
        accounts.append(
            {
                "name": name,
                "api_url": cloud.url,
                "access_key": account.access_key,
                "secret_key": account.secret_key,
                "devices": [
                    {"sn": d.sn, "name": d.device_name, "product": d.product_slug}
                    for d in account.devices.values()
                ],
            }
        )
    data: dict[str, Any] = {
        "accounts": accounts,
        "mqtt": {**single.get("mqtt", {}), "reconnect_max_s": 2},
        "collector": {"state_dir": str(state_dir)},
    }
    if influx is not None:
        data["influxdb"] = influx
    return data


def account_of(cloud: LocalCloud, name: str) -> Account:
    return list(cloud.accounts)[NAMES.index(name)]


# --- configuration ------------------------------------------------------------------------------------


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "collector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_accounts_take_their_secrets_from_the_environment_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _toml(
        tmp_path,
        """
[ecoflow]
api_url = "https://api-a.ecoflow.com"
[mqtt]
keepalive_s = 30
[[accounts]]
name = "home"
access_key = "home-access"
include = ["HW51*"]
[accounts.mqtt]
username = "home-user"
[[accounts]]
name = "cabin"
api_url = "https://api-e.ecoflow.com"
access_key = "cabin-access"
exclude = ["DCABZ*"]
[[accounts.devices]]
sn = "HW51ZZZ0001"
name = "Cabin inverter"
""",
    )
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__HOME__SECRET_KEY", "home-secret")
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__HOME__MQTT__PASSWORD", "home-mqtt-password")
    monkeypatch.setenv("ecoflow_collector_accounts__Cabin__secret_key", "cabin-secret")  # any case
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__GARAGE__ACCESS_KEY", "garage-access")  # env only
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__GARAGE__SECRET_KEY", "garage-secret")
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__GARAGE__DEVICES", json.dumps([{"sn": "R331ZZZ0001"}]))
    monkeypatch.setenv("ECOFLOW_COLLECTOR_MQTT__WATCHDOG_S", "120")  # the other sections as before
    accounts = {a.name: a for a in load_settings(path).account_settings()}
    assert list(accounts) == ["home", "cabin", "garage"]
    home, cabin, garage = accounts["home"], accounts["cabin"], accounts["garage"]
    assert home.ecoflow.secret_key is not None and home.ecoflow.secret_key.get_secret_value() == "home-secret"
    assert home.ecoflow.api_url == "https://api-a.ecoflow.com"  # [ecoflow] api_url is the default
    assert home.mqtt.username == "home-user" and home.mqtt.password is not None
    assert home.mqtt.password.get_secret_value() == "home-mqtt-password"
    assert (home.mqtt.keepalive_s, home.mqtt.watchdog_s) == (30, 120)  # [mqtt] under every account
    assert (
        cabin.ecoflow.secret_key is not None and cabin.ecoflow.secret_key.get_secret_value() == "cabin-secret"
    )
    assert cabin.ecoflow.api_url == "https://api-e.ecoflow.com"
    assert [d.sn for d in garage.devices] == ["R331ZZZ0001"]
    assert garage.ecoflow.access_key is not None
    # device filters: the list, include, exclude
    assert home.wants("HW51AAA") and not home.wants("DCABZAAA")
    assert cabin.wants("HW51ZZZ0001") and not cabin.wants("HW51ZZZ0002")
    assert not any(a.from_ecoflow for a in accounts.values())
    assert "home-secret" not in repr(home) and "cabin-secret" not in repr(load_settings(path))


def test_the_one_account_form_is_the_account_named_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY", "s")
    settings = Settings(ecoflow={"access_key": "a"}, devices=[{"sn": "HW51AAAA"}])
    (account,) = settings.account_settings()
    assert (account.name, account.from_ecoflow, [d.sn for d in account.devices]) == (
        "default",
        True,
        ["HW51AAAA"],
    )
    assert account.ecoflow.secret_key is not None and account.ecoflow.secret_key.get_secret_value() == "s"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[ecoflow]\naccess_key = "a"\n[[accounts]]\nname = "x"\n',
            "[ecoflow] access_key/secret_key and [[accounts]]",
        ),
        ('[[accounts]]\nname = "x"\n[[accounts]]\nname = "X"\n', "the name 'x' is used twice"),
        (
            '[[devices]]\nsn = "HW51AAAA"\n[[accounts]]\nname = "x"\n',
            "list each account's devices in its entry",
        ),
        (
            '[mqtt]\nclient_id = "one"\n[[accounts]]\nname = "x"\n',
            "each account's MQTT session needs its own id",
        ),
        ('[[accounts]]\nname = "has space"\n', "accounts.0.name"),
        (
            '[[accounts]]\nname = "a"\n[[accounts.devices]]\nsn = "HW51AAAA"\n'
            '[[accounts]]\nname = "b"\n[[accounts.devices]]\nsn = "HW51AAAA"\n',
            "device HW51AAAA is listed in the accounts a and b",
        ),
    ],
)
def test_account_config_errors_say_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(_toml(tmp_path, text))
    assert message in str(raised.value)


def test_a_missing_key_names_the_accounts_environment_variable(tmp_path: Path) -> None:
    settings = load_settings(_toml(tmp_path, '[[accounts]]\nname = "cabin"\naccess_key = "secret-access"\n'))
    with pytest.raises(ConfigError) as raised:
        open_client(settings.account_settings()[0])
    text = str(raised.value)
    assert "account cabin: no EcoFlow secret_key" in text
    assert "ECOFLOW_COLLECTOR_ACCOUNTS__CABIN__SECRET_KEY" in text and "secret-access" not in text


def test_each_account_keeps_its_own_client_id_and_the_single_account_file_is_kept(tmp_path: Path) -> None:
    (tmp_path / "mqtt_client_id").write_text("ecoflow-collector-0123456789abcdef\n")  # an existing install
    first = StateDir(tmp_path)
    ids = {name: first.client_id(None, name) for name in ("default", "home", "cabin")}
    assert first.client_id(None) == ids["default"] == "ecoflow-collector-0123456789abcdef"
    assert len(set(ids.values())) == 3
    assert (tmp_path / "mqtt_client_id.home").read_text().strip() == ids["home"]
    again = StateDir(tmp_path)  # a restart: the same ids, no new one burnt
    assert {name: again.client_id(None, name) for name in ids} == ids
    assert again.client_id(None, "HOME") == ids["home"]  # names are case-insensitive
    assert again.client_id("configured", "home") == "configured"


def test_points_carry_the_account_tag_only_with_several_accounts(tmp_path: Path) -> None:
    catalog = default_catalog()
    alone = Device.resolve(catalog, "HW51AAAA1111", "Inverter", "powerstream")
    tagged = Device.resolve(catalog, "HW51AAAA1111", "Inverter", "powerstream", account="cabin")
    assert alone.tags() == (("name", "Inverter"), ("sn", "HW51AAAA1111"))
    assert tagged.tags() == (("account", "cabin"), ("name", "Inverter"), ("sn", "HW51AAAA1111"))
    assert tagged.series == "powerstream,account=cabin,name=Inverter,sn=HW51AAAA1111"
    # an energy file of a one-account install (no account) loads, and an account survives a save
    path = tmp_path / "energy.json"
    saved = {"sn": {"name": "n", "product": "powerstream", "last_ms": 1, "pv_input_wh": 5.0}}
    path.write_text(json.dumps({"version": 1, "devices": saved}))
    counters = EnergyCounters(path, max_gap_s=300)
    assert counters.snapshot()["sn"]["pv_input_wh"] == 5.0
    counters.observe(tagged, {"pv_input_w": 100.0}, 1_000, live=True)
    counters.observe(tagged, {"pv_input_w": 100.0}, 2_000, live=True)
    points = counters.points()  # the zero point where its counters start, and the counters
    assert points and all(dict(point.tags)["account"] == "cabin" for point in points)
    counters.save()
    assert json.loads(path.read_text())["devices"]["HW51AAAA1111"]["account"] == "cabin"
    assert "account" not in json.loads(path.read_text())["devices"]["sn"]


# --- the daemon with three accounts ------------------------------------------------------------------


@pytest.fixture
def three(mosquitto_server: MosquittoServer) -> Iterator[LocalCloud]:
    with LocalCloud(
        "powerstream=1,delta_pro=1", accounts=3, mosquitto=mosquitto_server, publish_rate=None, seed=31
    ) as cloud:
        yield cloud


def _collector(
    settings: Settings, clock_ms: Callable[[], int] = wall_clock_ms, sink: Sink | None = None, **kwargs: Any
) -> Collector:
    accounts = settings.account_settings()
    clients = {a.name: open_client(a, budget=RequestBudget(cooldown_s=1.0)) for a in accounts}
    state = StateDir(settings.collector.state_dir)
    ids = {a.name: state.client_id(a.mqtt.client_id, a.name) for a in accounts}
    sink = sink or InfluxWriter.from_settings(settings)
    return Collector(settings, default_catalog(), clients, sink, client_id=ids, clock_ms=clock_ms, **kwargs)


def _close(collector: Collector) -> None:
    collector.stop(timeout=5)
    for account in collector.accounts:
        account.client.close()


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _stored(influx: InfluxServer, db: str, measurement: str) -> dict[str, list[dict[str, Any]]]:
    by_sn: dict[str, list[dict[str, Any]]] = {}
    for row in influx.rows(db, f'SELECT * FROM "{measurement}"', epoch="ms"):
        by_sn.setdefault(row["sn"], []).append(row)
    return by_sn


def test_three_accounts_one_revoked_while_the_others_keep_delivering(
    three: LocalCloud,
    mosquitto_server: MosquittoServer,
    influx_server: InfluxServer,
    influx_db: str,
    tmp_path: Path,
) -> None:
    influx = {"url": influx_server.url, "bucket": influx_db, "token": "t", "flush_interval_s": 0.2}
    settings = settings_from_values(accounts_settings(three, tmp_path / "state", influx))
    offset = [0]
    collector = _collector(settings, clock_ms=lambda: wall_clock_ms() + offset[0])
    health = HealthServer(0, collector.health)
    health.start()
    owner = {sn: NAMES[i] for i, account in enumerate(three.accounts) for sn in account.devices}
    try:
        collector.start()
        wait_for(lambda: all(a.mqtt.connected for a in collector.accounts), what="three MQTT sessions")
        assert len({a.mqtt.client_id for a in collector.accounts}) == 3  # one session and id per account
        wait_for(lambda: collector.polls["startup"] == 6, what="every account's start-up seed")
        for device in three.devices:
            publisher_of(three).publish_report(device, full=True)
        wait_for(lambda: sum(a.mqtt.messages["quota"] for a in collector.accounts) == 6, what="6 reports")
        collector.sink.flush(5)  # type: ignore[attr-defined]
        # every device of every account is stored with its account's tag (seed and report)
        for device in three.devices:
            rows = _stored(influx_server, influx_db, device.product_slug)[device.sn]
            assert len(rows) >= 2 and {r["account"] for r in rows} == {owner[device.sn]}
        summary = _stored(influx_server, influx_db, "ecoflow_summary")
        assert {sn: {r["account"] for r in rows} for sn, rows in summary.items()} == {
            sn: {name} for sn, name in owner.items()
        }
        status, body = _healthz(health.port)
        assert status == 200 and body["accounts_failing"] == []
        assert set(body["accounts"]) == set(NAMES) and all(a["healthy"] for a in body["accounts"].values())

        # the cabin account's key is revoked, and EcoFlow drops its MQTT login too
        cabin = account_of(three, "cabin")
        revoked_secret = cabin.secret_key
        cabin.secret_key = "revoked-" + cabin.secret_key
        cabin.certificate_password = "revoked-" + cabin.certificate_password
        mosquitto_server.add_user(cabin.certificate_account, cabin.certificate_password)
        with capture_logs() as logs:
            collector.account("cabin").mqtt.rebuild("test: the account's login was revoked")
            wait_for(lambda: collector.account("cabin").mqtt.auth_failures >= 1, what="the refused login")
            wait_for(
                lambda: "signature rejected" in (collector.account("cabin").mqtt.problem() or ""),
                timeout=30,
                what="the certification refused",
            )
            collector.refresh_device_list()
        offset[0] += 10 * 60_000  # ten minutes on: only accounts that deliver now are healthy
        before = {sn: len(rows) for sn, rows in _stored(influx_server, influx_db, "ecoflow_summary").items()}
        others = [d for d in three.devices if owner[d.sn] != "cabin"]
        for device in others:
            publisher_of(three).publish_report(device, full=True)
        wait_for(
            lambda: sum(a.mqtt.messages["quota"] for a in collector.accounts if a.name != "cabin") == 8,
            what="the other accounts' reports",
        )
        collector.sink.flush(5)  # type: ignore[attr-defined]
        after = {sn: len(rows) for sn, rows in _stored(influx_server, influx_db, "ecoflow_summary").items()}
        assert all(after[d.sn] > before[d.sn] for d in others)
        status, body = _healthz(health.port)
        assert status == 503 and body["accounts_failing"] == ["cabin"]
        failing = body["accounts"]["cabin"]
        assert not failing["healthy"] and not failing["mqtt_connected"]
        assert "signature rejected" in failing["problem"] and "signature rejected" in failing["http_problem"]
        assert all(body["accounts"][name]["healthy"] for name in ("home", "office"))
        # the logs name the account that fails, once per state change, and never a secret
        cabin_events = [e for e in logs if e.get("account") == "cabin"]
        events = [e["event"] for e in cabin_events]
        assert "mqtt.connect_refused" in events and "device_list.failed" in events
        assert not [e for e in logs if e.get("account") in ("home", "office") and e["log_level"] != "debug"]
        text = str(logs)
        assert revoked_secret not in text and cabin.certificate_password not in text
        point = collector.telemetry_point()
        assert (
            point.fields["accounts"],
            point.fields["accounts_delivering"],
            point.fields["mqtt_connected"],
        ) == (
            3.0,
            2.0,
            0.0,
        )
    finally:
        health.stop()
        _close(collector)


def test_sharding_spans_every_accounts_devices(tmp_path: Path) -> None:
    with LocalCloud("powerstream=3,delta_pro=3", accounts=3, publish_rate=None, seed=8) as cloud:  # HTTP only
        settings = settings_from_values(accounts_settings(cloud, tmp_path / "state"))
        all_serials = {d.sn for d in cloud.devices}
        taken: set[str] = set()
        for index in range(2):
            sink = LineFileSink(tmp_path / f"points-{index}.lp")
            collector = _collector(settings, sink=sink, shard=(index, 2))
            try:
                for account in collector.accounts:
                    account.add_devices(account.configured_devices())
                mine = set(collector.registry.devices)
                assert mine == {sn for sn in all_serials if shard_of(sn, 2) == index}
                assert len([a for a in collector.accounts if a.serials]) >= 2  # a share of several accounts
                taken |= mine
            finally:
                _close(collector)
        assert taken == all_serials


def test_devices_and_check_report_per_account(
    three: LocalCloud,
    influx_server: InfluxServer,
    influx_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    influx_server.create_database("ecoflow")
    data = accounts_settings(three, tmp_path / "state", {"url": influx_server.url, "token": "t"})
    for entry in data["accounts"]:  # secrets only in the environment, as from a Kubernetes Secret
        monkeypatch.setenv(
            f"ECOFLOW_COLLECTOR_ACCOUNTS__{entry['name'].upper()}__SECRET_KEY", entry.pop("secret_key")
        )
        entry.pop("devices")
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__OFFICE__INCLUDE", '["HW51*"]')  # only its PowerStream
    config = write_config(tmp_path / "collector.toml", data)
    assert main(["devices", "--config", str(config), "--no-probe"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["account", "sn", "name", "product", "online", "http", "reads"]
    owner = {sn: NAMES[i] for i, account in enumerate(three.accounts) for sn in account.devices}
    listed = {line.split()[1]: line.split()[0] for line in lines[1:]}
    assert listed == owner  # `devices` shows the accounts' device lists (filters are the daemon's)
    status = main(["check", "--config", str(config)])
    out = capsys.readouterr().out
    assert status == 0, out
    for name in NAMES:
        assert f"ok   ecoflow api [{name}]: " in out and f"ok   mqtt [{name}]: " in out
    checked = [line.split()[2] for line in out.splitlines() if line.split()[1] == "device"]
    office = account_of(three, "office")
    assert sorted(checked) == sorted(sn for sn in owner if owner[sn] != "office" or sn.startswith("HW51"))
    assert all(sn in owner for sn in checked) and any(sn in office.devices for sn in checked)
    # a bad key fails its own account's lines only
    monkeypatch.setenv("ECOFLOW_COLLECTOR_ACCOUNTS__CABIN__SECRET_KEY", "not-the-cabin-secret-42")
    assert main(["check", "--config", str(config)]) == 1
    out = capsys.readouterr().out
    assert "FAIL ecoflow api [cabin]: " in out and "signature rejected" in out
    assert "ok   ecoflow api [home]: " in out and "ok   ecoflow api [office]: " in out
    assert "not-the-cabin-secret-42" not in out


def test_run_with_two_accounts_keeps_each_client_id_across_restarts(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with LocalCloud(
        "powerstream=1", accounts=2, mosquitto=mosquitto_server, publish_rate=None, seed=4
    ) as cloud:
        data = accounts_settings(cloud, tmp_path / "state", {"url": influx_server.url, "bucket": influx_db})
        for entry in data["accounts"]:
            entry.pop("devices")  # each account's device list is its list
        port = free_port()
        data["collector"]["healthz_port"] = port
        data["logging"] = {"format": "json"}
        config = write_config(tmp_path / "collector.toml", data)
        started: list[dict[str, Any]] = []
        for run in range(2):
            process = CollectorProcess(config, tmp_path / f"run-{run}.log")
            process.start()
            try:
                detail = wait_for(
                    lambda: (h := health(port))[0] == 200 and h[1]["mqtt_connected"] and h[1],
                    timeout=30,
                    what="both accounts delivering",
                )
                assert set(detail["accounts"]) == {"home", "cabin"} and detail["devices"] == 2
                assert all(a["healthy"] and a["devices"] == 1 for a in detail["accounts"].values())
                assert process.terminate(15) == 0
                started += [e for e in process.events() if e.get("event") == "collector.started"]
            finally:
                process.kill()
        ids = {
            name: (tmp_path / "state" / f"mqtt_client_id.{name}").read_text().strip()
            for name in ("home", "cabin")
        }
        assert started[0]["accounts"] == started[1]["accounts"] == ids  # the same ids after a restart
        assert not (tmp_path / "state" / "mqtt_client_id").exists()  # no id of a "default" account
