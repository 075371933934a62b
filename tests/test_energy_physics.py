"""End to end: a simulated day through the real broker and InfluxDB gives back the simulator's energy.

The local cloud's devices integrate the power flows they report (`SimDevice.energy_totals`, units
and summary terms from the catalog); the collector only sees their reports over MQTT (incremental:
a few changed keys each, a full report every 20th) and integrates what it receives. Time is a
manual clock shared by both, stepped 30 s per report and device, so a day takes seconds.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from collector.catalog import default_catalog
from collector.decoding import decode_object
from collector.history.energy import COUNTERS
from collector.normalize import normalize_values, summarize
from collector.simulator.clock import ManualClock
from collector.simulator.devices import PowerStream
from collector.simulator.server import LocalCloud
from collector.testbed import InfluxServer, MosquittoServer
from tests.test_daemon import make_settings, running

DAY_START = datetime(2026, 6, 1, tzinfo=UTC).timestamp()
STEP_S = 30.0


def test_meter_integrates_the_reported_values_through_the_catalog() -> None:
    """The meter's truth, checked against the collector's own normalize+summarize of snapshots."""
    clock = ManualClock(DAY_START + 9 * 3600)
    device = PowerStream("HW51TEST00000001", "Balcony", clock=clock, seed=7)
    product = default_catalog().get("powerstream")
    before = device.energy_totals()
    expected = dict.fromkeys(COUNTERS, 0.0)
    for _ in range(240):  # two hours of 30 s steps around the morning
        summary = summarize(product, normalize_values(product, decode_object(device.snapshot()).values))
        battery = summary["battery_w"]
        for name, power in zip(
            COUNTERS,
            (
                summary["pv_input_w"],
                summary["input_w"],
                summary["output_w"],
                max(battery, 0),
                max(-battery, 0),
            ),
            strict=True,
        ):
            expected[name] += power * STEP_S / 3600
        clock.advance(STEP_S)
    after = device.energy_totals()
    for name in COUNTERS:
        assert after[name] - before[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9)
    assert expected["pv_input_wh"] > 100  # the sun was up: the check is not 0 == 0


def _wait(condition: object, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.0005)


def test_a_simulated_day_comes_back_out_of_the_counters(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    clock = ManualClock(DAY_START)
    with LocalCloud(
        "powerstream=1,delta_pro=1", mosquitto=mosquitto_server, clock=clock, publish_rate=None
    ) as cloud:
        settings = make_settings(cloud, influx_server, influx_db, tmp_path / "state")
        start = {device.sn: device.energy_totals() for device in cloud.devices}
        with running(settings, clock_ms=lambda: int(clock() * 1000)) as collector:
            _wait(lambda: collector.mqtt.connected and collector.polls["startup"] == 2, "MQTT and seeding")
            publisher = cloud.publisher
            assert publisher is not None
            # the subscription may still be on its way: report at the start time until one arrives
            deadline = time.monotonic() + 20
            while not collector.mqtt.messages["quota"]:
                assert time.monotonic() < deadline, "no report reached the collector"
                publisher.publish_report(cloud.devices[0], full=True)
                time.sleep(0.05)
            time.sleep(0.2)
            sent = collector.mqtt.messages["quota"]
            for _ in range(int(86_400 / STEP_S)):
                clock.advance(STEP_S)
                for device in cloud.devices:
                    publisher.publish_report(device)
                    sent += 1
                    # the collector stamps what it receives with the shared clock: let it take
                    # this report before time moves on
                    _wait(lambda n=sent: collector.mqtt.messages["quota"] >= n, "a report to arrive")
            end = {device.sn: device.energy_totals() for device in cloud.devices}
    counters = collector.energy.snapshot()
    for device in cloud.devices:
        truth = {name: end[device.sn][name] - start[device.sn][name] for name in COUNTERS}
        got = counters[device.sn]
        assert got["covered_s"] == 86_400.0 and got["gap_s"] == 0.0
        for name in COUNTERS:
            assert got[name] == pytest.approx(truth[name], rel=0.02, abs=5.0), (device.product_slug, name)
        assert truth["pv_input_wh"] > 1000  # a day of sun on either device
    stored = influx_server.rows(
        influx_db, 'SELECT * FROM "ecoflow_energy" GROUP BY "sn" ORDER BY time DESC LIMIT 1'
    )
    assert {row["sn"]: row["pv_input_wh"] for row in stored} == {
        sn: values["pv_input_wh"] for sn, values in counters.items()
    }
