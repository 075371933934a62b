"""Energy counters: the integration math on hand-made sequences, with exact expected Wh.

Times are milliseconds of receive time. A Delta Pro's summary is `input_w` = `pd.wattsInSum`,
`output_w` = `pd.wattsOutSum`, `pv_input_w` = `mppt.inWatts`, `battery_w` = in - out.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from structlog.testing import capture_logs

from collector.catalog import default_catalog
from collector.config import settings_from_values
from collector.daemon import Collector
from collector.decoding import TopicKind
from collector.history.energy import (
    COUNTERS,
    EnergyCounters,
    influx_restorer,
    restore_rows,
    summary_limits,
)
from collector.history.influxql import InfluxQL
from collector.points import Device
from collector.sink.linefile import LineFileSink
from collector.testbed import InfluxServer

DP = Device.resolve(default_catalog(), "DCABZ0000000001", "Garage", "delta_pro")
PS = Device.resolve(default_catalog(), "HW51000000000001", "Balcony", "powerstream")
S = 1000  # ms per second


def dp_summary(pv: float, load: float) -> dict[str, float]:
    """A Delta Pro on solar only: input = PV, output = the load, battery = the difference."""
    return {"soc_percent": 50.0, "input_w": pv, "output_w": load, "pv_input_w": pv, "battery_w": pv - load}


def counters(energy: EnergyCounters, sn: str = DP.sn) -> dict[str, float]:
    return energy.snapshot()[sn]


@pytest.fixture()
def energy(tmp_path: Path) -> EnergyCounters:
    return EnergyCounters(tmp_path / "energy.json", max_gap_s=300)


def test_step_function_left_riemann(energy: EnergyCounters) -> None:
    energy.observe(DP, dp_summary(pv=360, load=72), 0, live=True)
    energy.observe(DP, dp_summary(pv=720, load=72), 60 * S, live=True)  # 60 s at 360 W PV
    energy.observe(DP, dp_summary(pv=0, load=144), 120 * S, live=True)  # 60 s at 720 W PV
    energy.observe(DP, dp_summary(pv=0, load=144), 150 * S, live=True)  # 30 s discharging 144 W
    assert counters(energy) == {
        "pv_input_wh": 6.0 + 12.0,  # 360 W x 60 s + 720 W x 60 s
        "input_wh": 18.0,
        "output_wh": 72 * 120 / 3600 + 144 * 30 / 3600,  # 2.4 + 1.2
        "battery_charge_wh": 288 * 60 / 3600 + 648 * 60 / 3600,  # 4.8 + 10.8
        "battery_discharge_wh": 1.2,
        "covered_s": 150.0,
        "gap_s": 0.0,
    }


def test_interval_longer_than_max_gap_is_a_gap(energy: EnergyCounters) -> None:
    energy.observe(DP, dp_summary(pv=1440, load=0), 0, live=True)
    energy.observe(DP, dp_summary(pv=720, load=0), 300 * S, live=True)  # exactly max_gap: 120 Wh
    energy.observe(DP, dp_summary(pv=1800, load=0), 601 * S, live=True)  # 301 s: a gap
    energy.observe(DP, dp_summary(pv=0, load=0), 611 * S, live=True)  # 10 s at 1800 W: 5 Wh
    c = counters(energy)
    assert c["pv_input_wh"] == 120.0 + 5.0
    assert c["covered_s"] == 310.0
    assert c["gap_s"] == 301.0


def test_offline_stops_integration_and_the_time_offline_is_a_gap(energy: EnergyCounters) -> None:
    energy.observe(DP, dp_summary(pv=360, load=0), 0, live=True)
    energy.offline(DP.sn, 30 * S)  # 30 s at 360 W = 3 Wh, then nothing holds
    energy.observe(DP, dp_summary(pv=720, load=0), 100 * S, live=True)  # 70 s offline: gap
    energy.observe(DP, dp_summary(pv=720, load=0), 110 * S, live=True)  # 10 s at 720 W = 2 Wh
    c = counters(energy)
    assert (c["pv_input_wh"], c["covered_s"], c["gap_s"]) == (5.0, 40.0, 70.0)


def test_data_while_not_known_online_starts_nothing(energy: EnergyCounters) -> None:
    # an HTTP answer for an offline device carries its last values: they must not be integrated
    energy.observe(DP, dp_summary(pv=500, load=0), 0, live=False)
    energy.observe(DP, dp_summary(pv=500, load=0), 120 * S, live=False)
    energy.observe(DP, dp_summary(pv=360, load=0), 180 * S, live=True)
    energy.observe(DP, dp_summary(pv=360, load=0), 190 * S, live=True)
    c = counters(energy)
    assert (c["pv_input_wh"], c["covered_s"], c["gap_s"]) == (1.0, 10.0, 180.0)


def test_clock_jump_backwards_never_decreases_a_counter(energy: EnergyCounters) -> None:
    energy.observe(DP, dp_summary(pv=360, load=0), 1000 * S, live=True)
    energy.observe(DP, dp_summary(pv=720, load=0), 1010 * S, live=True)  # +1 Wh
    with capture_logs() as logs:
        energy.observe(DP, dp_summary(pv=36, load=0), 900 * S, live=True)  # 110 s back in time
    assert counters(energy)["pv_input_wh"] == 1.0
    assert energy.clock_jumps == 1
    assert [e["event"] for e in logs] == ["energy.clock_backwards"]
    energy.observe(DP, dp_summary(pv=36, load=0), 1000 * S, live=True)  # 100 s at 36 W from 900 s
    c = counters(energy)
    assert (c["pv_input_wh"], c["covered_s"], c["gap_s"]) == (2.0, 110.0, 0.0)


@pytest.mark.parametrize(
    ("summary", "reason"),
    [
        ({"pv_input_w": -5.0}, "negative"),
        ({"pv_input_w": float("nan")}, "not_finite"),
        ({"pv_input_w": float("inf")}, "not_finite"),
        ({"pv_input_w": 2500.0}, "out_of_range"),  # mppt.inWatts: 0..2000 W in the catalog
    ],
)
def test_bad_power_values_are_not_integrated_and_counted(
    energy: EnergyCounters, summary: dict[str, float], reason: str
) -> None:
    good = dp_summary(pv=360, load=36)
    energy.observe(DP, good, 0, live=True)
    with capture_logs() as logs:
        energy.observe(DP, {**good, **summary}, 10 * S, live=True)
        energy.observe(DP, {**good, **summary}, 20 * S, live=True)
    energy.observe(DP, good, 30 * S, live=True)
    energy.observe(DP, good, 40 * S, live=True)
    c = counters(energy)
    # PV: 10 s before the bad value and 10 s after the good one came back; the other flows throughout
    assert c["pv_input_wh"] == 2.0
    assert c["output_wh"] == 36 * 40 / 3600
    assert c["covered_s"] == 40.0
    assert energy.rejected == {reason: 2}
    assert [(e["event"], e["reason"]) for e in logs] == [("energy.value_rejected", reason)]  # logged once


def test_summary_limits_come_from_the_catalog_ranges() -> None:
    catalog = default_catalog()
    assert summary_limits(catalog.get("delta_pro")) == {
        "pv_input_w": (0.0, 2000.0),
        "input_w": (0.0, 8000.0),
        "output_w": (0.0, 8000.0),
        "battery_w": (-8000.0, 8000.0),
    }
    ps = summary_limits(catalog.get("powerstream"))
    assert ps["pv_input_w"] == (0.0, 1600.0)  # two strings of 0..800 W


def test_points_only_for_devices_with_new_data(energy: EnergyCounters) -> None:
    energy.observe(DP, dp_summary(pv=360, load=0), 5 * S, live=True)
    energy.observe(DP, dp_summary(pv=360, load=0), 15 * S, live=True)
    energy.observe(
        PS, {"pv_input_w": 100.0, "input_w": 100.0, "output_w": 100.0, "battery_w": 0.0}, 7 * S, True
    )
    written = energy.points()
    assert [(p.tags[2][1], p.time_ms, p.fields["pv_input_wh"]) for p in written] == [
        (DP.sn, 5 * S, 0.0),  # the start: counters at zero
        (DP.sn, 15 * S, 1.0),
        (PS.sn, 7 * S, 0.0),  # nothing integrated yet: the start point is the only one
    ]
    first = {p.tags: p for p in written}
    dp = first[(("name", "Garage"), ("product", "delta_pro"), ("sn", DP.sn))]
    assert dp.measurement == "ecoflow_energy"
    assert dp.time_ms == 15 * S  # stamped with the time the counters are integrated up to
    assert dp.fields["pv_input_wh"] == 1.0
    assert set(dp.fields) == {*COUNTERS, "covered_s", "gap_s"}
    assert len(first) == 2
    assert energy.points() == []  # nothing new
    energy.observe(DP, dp_summary(pv=360, load=0), 25 * S, live=True)
    assert [p.tags[2][1] for p in energy.points()] == [DP.sn]


def test_restart_continues_the_counters_and_the_downtime_is_a_gap(tmp_path: Path) -> None:
    path = tmp_path / "energy.json"
    first = EnergyCounters(path)
    first.observe(DP, dp_summary(pv=360, load=0), 0, live=True)
    first.observe(DP, dp_summary(pv=360, load=0), 100 * S, live=True)  # 10 Wh
    first.save()
    # a SIGKILL now loses what is integrated after the save: 100 s more in memory only
    first.observe(DP, dp_summary(pv=360, load=0), 200 * S, live=True)
    second = EnergyCounters(path)
    assert counters(second)["pv_input_wh"] == 10.0
    second.observe(DP, dp_summary(pv=720, load=0), 250 * S, live=True)  # from the saved 100 s: gap
    second.observe(DP, dp_summary(pv=720, load=0), 260 * S, live=True)  # +2 Wh
    c = counters(second)
    assert (c["pv_input_wh"], c["covered_s"], c["gap_s"]) == (12.0, 110.0, 150.0)
    assert c["pv_input_wh"] >= 10.0  # never below anything written to InfluxDB (written after a save)


@pytest.mark.parametrize(
    "content", [b"{not json", b'{"version": 1, "devices": {"X": {"pv_input_wh": -3}}}', b"[]", b"\xff\xfe"]
)
def test_corrupt_file_restores_from_influxdb_rows(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "energy.json"
    path.write_bytes(content)
    row = {"name": "Garage", "product": "delta_pro", "time": 50_000, "pv_input_wh": 123.5, "covered_s": 900.0}
    with capture_logs() as logs:
        energy = EnergyCounters(path, restore=lambda: {DP.sn: row})
    events = [e["event"] for e in logs]
    assert events == ["energy.state_corrupt", "energy.restored"]
    assert all(e["log_level"] in ("error", "warning") for e in logs)
    assert counters(energy)["pv_input_wh"] == 123.5
    energy.observe(DP, dp_summary(pv=360, load=0), 60_000, live=True)  # 10 s since InfluxDB's last: gap
    assert counters(energy)["gap_s"] == 10.0


def test_corrupt_file_and_influxdb_down_start_from_zero(tmp_path: Path) -> None:
    path = tmp_path / "energy.json"
    path.write_text('{"version": 1, "devices": 7}')

    def down() -> dict[str, Any]:
        raise ConnectionRefusedError("InfluxDB is not answering")

    with capture_logs() as logs:
        energy = EnergyCounters(path, restore=down)
    assert len(energy) == 0
    assert [e["event"] for e in logs] == ["energy.state_corrupt", "energy.restore_failed", "energy.restored"]


def test_restore_rows_take_the_most_advanced_series_of_a_serial() -> None:
    rows: list[dict[str, Any]] = [
        {"sn": "A", "name": "old", "covered_s": 10.0, "gap_s": 0.0, "pv_input_wh": 1.0},
        {"sn": "A", "name": "new", "covered_s": 50.0, "gap_s": 5.0, "pv_input_wh": 4.0},
        {"sn": "B", "name": "b", "covered_s": 1.0, "gap_s": 0.0},
        {"name": "no serial"},
    ]
    best = restore_rows(rows)
    assert sorted(best) == ["A", "B"]
    assert best["A"]["name"] == "new"


def test_saved_file_is_json_with_every_counter(tmp_path: Path, energy: EnergyCounters) -> None:
    energy.observe(DP, dp_summary(pv=360, load=0), 0, live=True)
    energy.observe(DP, dp_summary(pv=360, load=0), 10 * S, live=True)
    energy.save()
    data = json.loads((tmp_path / "energy.json").read_text())
    assert data["version"] == 1
    assert data["devices"][DP.sn] == {
        "name": "Garage",
        "product": "delta_pro",
        "last_ms": 10_000,
        "pv_input_wh": 1.0,
        "input_wh": 1.0,
        "output_wh": 0.0,
        "battery_charge_wh": 1.0,
        "battery_discharge_wh": 0.0,
        "covered_s": 10.0,
        "gap_s": 0.0,
    }
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed over the real one


# --- through the daemon: MQTT messages on the collector's own (frozen) clock ----------------------


def _collector(tmp_path: Path) -> tuple[Collector, Path]:
    settings = settings_from_values(
        {
            "ecoflow": {"access_key": "k", "secret_key": "s", "api_url": "http://127.0.0.1:9"},
            "collector": {"state_dir": str(tmp_path / "state")},
            "devices": [{"sn": DP.sn, "name": "Garage", "product": "delta_pro"}],
        }
    )
    lines = tmp_path / "points.lp"
    from collector.api.client import EcoflowClient

    collector = Collector(
        settings, default_catalog(), EcoflowClient.from_settings(settings.ecoflow), LineFileSink(lines), "t"
    )
    collector.add_devices(collector.configured_devices())
    return collector, lines


def _report(collector: Collector, **values: int) -> None:
    payload = {"id": 1, "version": "1.0", "timestamp": 0, "params": values}
    collector.handle_message(DP.sn, TopicKind.QUOTA, json.dumps(payload).encode())


SOLAR_360W = {"ems.f32LcdShowSoc": 50, "pd.wattsInSum": 360, "pd.wattsOutSum": 0, "mppt.inWatts": 3600}


def _energy_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("ecoflow_energy,")]


def test_daemon_integrates_mqtt_reports_by_receive_time(tmp_path: Path) -> None:
    collector, lines = _collector(tmp_path)
    with freeze_time("2026-06-01 10:00:00") as clock:
        _report(collector, **SOLAR_360W)
        clock.tick(60)
        _report(collector, **{"pd.wattsOutSum": 180})  # incremental: only what changed
        clock.tick(60)
        _report(collector, **{"pd.soc": 51})  # a report without power keys still ends the interval
        assert collector.write_energy() == 2
        collector.sink.close(1.0)
    zero, line = _energy_lines(lines)
    # the counters start at zero at the first data: the baseline of a report over this day
    assert zero.endswith(" 1780308000000")
    assert all(float(item.split("=")[1]) == 0.0 for item in zero.split(" ")[1].split(","))
    series, fields, stamp = line.split(" ")
    assert series == f"ecoflow_energy,name=Garage,product=delta_pro,sn={DP.sn}"
    assert stamp == str(1_780_308_120_000)  # 2026-06-01 10:02:00 UTC
    values = dict(item.split("=") for item in fields.split(","))
    assert float(values["pv_input_wh"]) == 12.0  # 360 W x 120 s
    assert float(values["output_wh"]) == 3.0  # 180 W x 60 s
    assert float(values["battery_charge_wh"]) == 6.0 + 3.0  # 360 W x 60 s + 180 W x 60 s
    assert float(values["covered_s"]) == 120.0
    saved = json.loads((tmp_path / "state" / "energy.json").read_text())["devices"][DP.sn]
    assert saved["pv_input_wh"] == 12.0  # persisted before the points were handed over


def test_daemon_status_offline_stops_the_integration(tmp_path: Path) -> None:
    collector, _ = _collector(tmp_path)
    with freeze_time("2026-06-01 10:00:00") as clock:
        _report(collector, **SOLAR_360W)
        clock.tick(30)
        status = {"id": "1", "version": "1.0", "timestamp": 0, "params": {"status": 0}}
        collector.handle_message(DP.sn, TopicKind.STATUS, json.dumps(status).encode())
        clock.tick(100)
        _report(collector, **{"pd.soc": 51})
        clock.tick(10)
        _report(collector, **{"pd.soc": 51})
    collector.sink.close(1.0)
    c = collector.energy.snapshot()[DP.sn]
    # 30 s at 360 W, offline for 100 s (a gap), then 10 s at the values the device reported again
    assert (c["pv_input_wh"], c["covered_s"], c["gap_s"]) == (3.0 + 1.0, 40.0, 100.0)


# --- SIGKILL: a real process killed mid-run, then started again ----------------------------------

_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from collector.catalog import default_catalog
    from collector.history.energy import EnergyCounters
    from collector.points import Device

    device = Device.resolve(default_catalog(), "DCABZ0000000001", "Garage", "delta_pro")
    energy = EnergyCounters(Path(sys.argv[1]))
    summary = {"input_w": 360.0, "output_w": 0.0, "pv_input_w": 360.0, "battery_w": 360.0}
    start = max((c["covered_s"] + c["gap_s"] for c in energy.snapshot().values()), default=0.0)
    t = int(start * 1000)
    for step in range(10**9):
        energy.observe(device, summary, t, live=True)
        t += 10_000
        if step % 10 == 9:
            energy.save()
            print("saved", flush=True)
    """
)


def test_sigkill_during_saves_never_loses_or_corrupts_the_counters(tmp_path: Path) -> None:
    path = tmp_path / "energy.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    totals = []
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert child.stdout is not None
        try:
            saves = 0
            while saves < 50:  # let it save 50 times, then kill it wherever it is
                line = child.stdout.readline()
                assert line, "the child ended before saving 50 times"
                saves += line == "saved\n"
        finally:
            child.send_signal(signal.SIGKILL)
            child.wait(10)
            child.stdout.close()
        energy = EnergyCounters(path)  # never corrupt: the rename is atomic
        totals.append(energy.snapshot()["DCABZ0000000001"]["pv_input_wh"])
    # each run saves 500 steps of 10 s at 360 W: its first step only starts the integration (after a
    # restart, the time since the last save is a gap), so at least 499 Wh on top of the last saved value
    assert totals[0] >= 499.0
    assert totals[1] >= totals[0] + 499.0
    assert totals[2] >= totals[1] + 499.0


def test_missing_file_restores_from_the_real_influxdb(
    tmp_path: Path, influx_server: InfluxServer, influx_db: str
) -> None:
    dp = f"product=delta_pro,sn={DP.sn}"
    influx_server.write_lines(
        influx_db,
        [
            f"ecoflow_energy,name=Old,{dp} pv_input_wh=10.5,covered_s=60,gap_s=0 1000",
            f"ecoflow_energy,name=Garage,{dp} pv_input_wh=99.25,covered_s=900,gap_s=30 7000",
            f"ecoflow_energy,name=Garage,{dp} pv_input_wh=42.0,covered_s=300,gap_s=0 4000",
            f"ecoflow_energy,name=Balcony,product=powerstream,sn={PS.sn} output_wh=5.5,covered_s=10 2000",
        ],
        precision="ms",
    )
    with InfluxQL(influx_server.url, token="t") as client, capture_logs() as logs:
        energy = EnergyCounters(tmp_path / "energy.json", restore=influx_restorer(client, influx_db))
    assert [(e["event"], e["from_influxdb"]) for e in logs if e["event"] == "energy.restored"] == [
        ("energy.restored", 2)
    ]
    assert energy.snapshot()[DP.sn]["pv_input_wh"] == 99.25  # the newest row of the most advanced series
    assert energy.snapshot()[PS.sn]["output_wh"] == 5.5
    energy.observe(DP, dp_summary(pv=360, load=0), 8000, live=True)  # from InfluxDB's 7 s: a 1 s gap
    assert energy.snapshot()[DP.sn]["gap_s"] == 31.0
