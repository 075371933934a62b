"""Devices the public API refuses (EcoFlow code 1006) and devices configured as the wrong product:
what `check` says about them, and what the daemon does (real broker, real InfluxDB, the local cloud)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from collector.api.client import EcoflowClient, RequestBudget
from collector.catalog import default_catalog
from collector.cli import main
from collector.config import settings_from_values
from collector.daemon import Collector
from collector.decoding import flatten
from collector.diagnose import key_match
from collector.simulator.devices import DeviceSpec
from collector.simulator.server import LocalCloud
from collector.sink.influx import InfluxWriter
from collector.testbed import InfluxServer, MosquittoServer
from tests.test_daemon import make_settings, rows, wait_for
from tests.test_daemon_process import write_config

DEVICES = [
    DeviceSpec("powerstream", 1),
    DeviceSpec("delta_pro", 1),
    DeviceSpec("powerstream", 1, {"read_denied": True}),
]
REFUSAL = (
    "EcoFlow's public API does not serve PowerStream devices (code 1006): this device is never polled "
    "over HTTP; what it publishes over MQTT is still stored"
)


def _devices(cloud: LocalCloud) -> tuple[str, str, str]:
    """(readable PowerStream, Delta Pro, refused PowerStream)."""
    by_kind = {(d.product_slug, d.read_denied): d.sn for d in cloud.devices}
    return by_kind[("powerstream", False)], by_kind[("delta_pro", False)], by_kind[("powerstream", True)]


def _config(cloud: LocalCloud, influx: InfluxServer, db: str, path: Path, **products: str) -> Path:
    """The cloud's account with every device listed; `products` overrides a serial's product."""
    settings: dict[str, Any] = cloud.collector_settings()
    for entry in settings["devices"]:
        entry["product"] = products.get(entry["sn"], entry["product"])
    settings["influxdb"] = {"url": influx.url, "bucket": db, "token": "t"}
    settings["collector"] = {"state_dir": str(path / "state")}
    return write_config(path / "collector.toml", settings)


def test_check_names_refused_devices_and_keys_of_another_product(
    mosquitto_server: MosquittoServer,
    influx_server: InfluxServer,
    influx_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with LocalCloud(DEVICES, mosquitto=mosquitto_server, publish_rate=None, seed=5) as cloud:
        powerstream, delta_pro, refused = _devices(cloud)
        # the PowerStream is configured as a Delta Pro: its keys are the PowerStream's
        config = _config(cloud, influx_server, influx_db, tmp_path, **{powerstream: "delta_pro"})
        status = main(["check", "--config", str(config)])
        out = capsys.readouterr().out
    assert status == 0, out  # warnings: collection works, there is something to fix
    lines = {line.split(":")[0]: line for line in out.splitlines()}
    names = {d.sn: d.device_name for d in cloud.devices}
    refused_line = lines[f"warn device {refused} ({names[refused]})"]
    assert refused_line.endswith(REFUSAL)
    wrong = lines[f"warn device {powerstream} ({names[powerstream]})"]
    assert "the keys do not match the configured product delta_pro" in wrong
    assert "powerstream (PowerStream) would know 100 %" in wrong
    right = lines[f"ok   device {delta_pro} ({names[delta_pro]})"]
    assert right.endswith("keys known to delta_pro") and "100 % of" in right
    assert {line.split()[0] for line in out.splitlines()} == {"ok", "warn"}


def test_key_match_finds_the_product_that_knows_the_keys() -> None:
    catalog = default_catalog()
    with LocalCloud("powerstream=1", publish_rate=None) as cloud:
        client = EcoflowClient.from_settings(settings_from_values(cloud.collector_settings()).ecoflow)
        with client:
            data = client.quota_all(cloud.devices[0].sn)
    as_delta = key_match(catalog, catalog.products["delta_pro"], data)
    assert as_delta.keys == len(flatten(dict(data))) and as_delta.mismatch("delta_pro")
    assert as_delta.best == "powerstream" and as_delta.best_share == 1.0
    as_itself = key_match(catalog, catalog.products["powerstream"], data)
    assert as_itself.share == 1.0 and not as_itself.mismatch("powerstream")
    unknown = key_match(catalog, None, {})
    assert unknown.keys == 0 and not unknown.mismatch("unknown")


def test_daemon_warns_once_per_refused_device_and_stores_keys_of_another_product(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with LocalCloud(DEVICES, mosquitto=mosquitto_server, publish_rate=None, seed=5) as cloud:
        powerstream, _, refused = _devices(cloud)
        settings = make_settings(cloud, influx_server, influx_db, tmp_path)
        for entry in settings.devices:
            if entry.sn == powerstream:
                entry.product = "delta_pro"  # the wrong product in the config
        client = EcoflowClient.from_settings(settings.ecoflow, budget=RequestBudget())
        sink = InfluxWriter.from_settings(settings)
        collector = Collector(settings, default_catalog(), client, sink, client_id="refusals")
        try:
            with capture_logs() as logs:
                collector.start()
                wait_for(lambda: collector.polls["startup"] == 3, what="start-up seeding")
                wait_for(lambda: collector.poller.pending() == 0, what="the seeds done")
                for _ in range(3):  # the periodic poll, the fallback: the refused device is not asked
                    collector.poll_all_periodic()
                    collector.mqtt.connected = False
                    collector.check_fallback()
                    wait_for(lambda: collector.poller.pending() == 0, what="the polls done")
            denied = [e for e in logs if e["event"] == "poll.read_denied"]
            assert len(denied) == 1
            assert denied[0]["sn"] == refused and denied[0]["product"] == "PowerStream"
            assert denied[0]["message"] == REFUSAL
            assert collector.registry.devices[refused].read_denied
            asked = [r for r in cloud.cloud.requests if r.path.endswith("quota/all")]
            assert sum(1 for r in asked if r.code == "1006") == 1  # never retried
            assert collector.telemetry_point().fields["devices_read_denied"] == 1.0
            sink.flush(5)
            # the PowerStream's keys, stored in the measurement of the product it was configured as
            stored = wait_for(lambda: rows(influx_server, influx_db, "delta_pro", powerstream), what="stored")
            assert "20_1.batSoc" in stored[-1] and stored[-1]["20_1.batSoc"] is not None
        finally:
            collector.stop(timeout=5)
            client.close()
