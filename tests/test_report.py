"""`report`: kWh per device and period from the energy counters, against the real InfluxDB.

Europe/Berlin: 2024-03-31 is 23 hours long (02:00 CET -> 03:00 CEST). Day boundaries in UTC:
2024-03-30 [03-29T23:00Z, 03-30T23:00Z), 2024-03-31 [03-30T23:00Z, 03-31T22:00Z),
2024-04-01 [03-31T22:00Z, 04-01T22:00Z).
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from freezegun import freeze_time

from collector.cli import main
from collector.history.influxql import InfluxQL
from collector.history.report import ReportRow, energy_report, format_table, local_zone, period_bounds
from collector.history.rollup import to_ms
from collector.testbed import InfluxServer

BERLIN = ZoneInfo("Europe/Berlin")
GARAGE = "ecoflow_energy,name=Garage,product=delta_pro,sn=DCABZ1"
BALCONY = "ecoflow_energy,name=Balcony,product=powerstream,sn=HW51X"


def ms(text: str) -> int:
    return to_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))


def garage(when: str, pv: float, inp: float, out: float, chg: float, dis: float, cov: float) -> str:
    fields = f"pv_input_wh={pv},input_wh={inp},output_wh={out},battery_charge_wh={chg}"
    return f"{GARAGE} {fields},battery_discharge_wh={dis},covered_s={cov},gap_s=0 {ms(when)}"


DST_LINES = [
    garage("2024-03-29T22:50Z", 1000, 500, 200, 100, 50, 10000),  # before --from: the baseline
    garage("2024-03-30T10:00Z", 3000, 1500, 700, 400, 150, 50000),
    garage("2024-03-30T22:59Z", 4000, 2500, 1200, 900, 250, 96400),  # 23:59 CET, March 30
    garage("2024-03-30T23:05Z", 4100, 2600, 1300, 950, 260, 96700),  # 00:05 CET, March 31
    garage("2024-03-31T21:59Z", 6500, 3734, 1999.999, 1234, 321, 137800),  # 23:59 CEST, March 31
    garage("2024-03-31T22:00Z", 6600, 3800, 2050, 1300, 330, 137900),  # 00:00 CEST, April 1
    garage("2024-04-01T12:00Z", 7000, 4000, 2100, 1400, 400, 159400),
    # a device seen first inside the range, whose counters are reset at 09:00 (a drop)
    f"{BALCONY} output_wh=100,covered_s=0 {ms('2024-03-30T01:00Z')}",
    f"{BALCONY} output_wh=300,covered_s=14400 {ms('2024-03-30T05:00Z')}",
    f"{BALCONY} output_wh=50,covered_s=60 {ms('2024-03-30T09:00Z')}",
    f"{BALCONY} output_wh=80,covered_s=10860 {ms('2024-03-30T12:00Z')}",
]


def zero(sn: str, name: str, start: str) -> dict[str, object]:
    return {
        "sn": sn,
        "name": name,
        "period_start": start,
        "pv_input_kwh": 0.0,
        "input_kwh": 0.0,
        "output_kwh": 0.0,
        "battery_charge_kwh": 0.0,
        "battery_discharge_kwh": 0.0,
        "coverage_percent": 0.0,
    }


EXPECTED_DAYS = [
    {
        **zero("HW51X", "Balcony", "2024-03-30T00:00:00+01:00"),
        "output_kwh": 0.23,  # (300 - 100) + (80 - 50): the drop to 50 restarts the counter there
        "coverage_percent": 29.2,  # (14400 + 10800) / 86400
    },
    zero("HW51X", "Balcony", "2024-03-31T00:00:00+01:00"),
    zero("HW51X", "Balcony", "2024-04-01T00:00:00+02:00"),
    {
        "sn": "DCABZ1",
        "name": "Garage",
        "period_start": "2024-03-30T00:00:00+01:00",
        "pv_input_kwh": 3.0,
        "input_kwh": 2.0,
        "output_kwh": 1.0,
        "battery_charge_kwh": 0.8,
        "battery_discharge_kwh": 0.2,
        "coverage_percent": 100.0,
    },
    {
        "sn": "DCABZ1",
        "name": "Garage",
        "period_start": "2024-03-31T00:00:00+01:00",
        "pv_input_kwh": 2.5,
        "input_kwh": 1.234,
        "output_kwh": 0.8,
        "battery_charge_kwh": 0.334,
        "battery_discharge_kwh": 0.071,
        "coverage_percent": 50.0,  # 41400 s of a 23-hour day
    },
    {
        "sn": "DCABZ1",
        "name": "Garage",
        "period_start": "2024-04-01T00:00:00+02:00",
        "pv_input_kwh": 0.5,
        "input_kwh": 0.266,
        "output_kwh": 0.1,
        "battery_charge_kwh": 0.166,
        "battery_discharge_kwh": 0.079,
        "coverage_percent": 25.0,
    },
]


pytestmark = pytest.mark.usefixtures("no_env_overrides")  # the developer's environment must not change a test


def config(tmp_path: Path, server: InfluxServer, bucket: str, history_bucket: str | None = None) -> str:
    history = f'bucket = "{history_bucket}"\n' if history_bucket else ""
    path = tmp_path / "collector.toml"
    path.write_text(
        f'[influxdb]\nurl = "{server.url}"\nbucket = "{bucket}"\n'
        f'[collector]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[history]\ntimezone = "Europe/Berlin"\n{history}'
    )
    return str(path)


def test_days_across_dst_baseline_and_counter_drop_as_json(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influx_server.write_lines(influx_db, DST_LINES, precision="ms")
    argv = ["report", "--config", config(tmp_path, influx_server, influx_db), "--from", "2024-03-30"]
    assert main([*argv, "--to", "2024-04-01", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == EXPECTED_DAYS

    assert main([*argv, "--to", "2024-04-01", "--format", "csv", "--sn", "DCABZ1"]) == 0
    assert capsys.readouterr().out == (
        "sn,name,period_start,pv_input_kwh,input_kwh,output_kwh,battery_charge_kwh,"
        "battery_discharge_kwh,coverage_percent\n"
        "DCABZ1,Garage,2024-03-30T00:00:00+01:00,3.000,2.000,1.000,0.800,0.200,100.0\n"
        "DCABZ1,Garage,2024-03-31T00:00:00+01:00,2.500,1.234,0.800,0.334,0.071,50.0\n"
        "DCABZ1,Garage,2024-04-01T00:00:00+02:00,0.500,0.266,0.100,0.166,0.079,25.0\n"
    )

    assert main([*argv, "--to", "2024-03-31", "--sn", "HW51X"]) == 0
    assert capsys.readouterr().out == (
        "device   sn     period      pv kWh  in kWh  out kWh  charge kWh  discharge kWh  cover %\n"
        "Balcony  HW51X  2024-03-30   0.000   0.000    0.230       0.000          0.000     29.2\n"
        "Balcony  HW51X  2024-03-31   0.000   0.000    0.000       0.000          0.000      0.0\n"
    )


def test_weeks_and_an_empty_range(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influx_server.write_lines(influx_db, DST_LINES, precision="ms")
    argv = ["report", "--config", config(tmp_path, influx_server, influx_db), "--by", "week"]
    assert (
        main([*argv, "--from", "2024-03-27", "--to", "2024-04-02", "--sn", "DCABZ1", "--format", "csv"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    # Monday March 25 (CET) to Monday April 1 (CEST): 6500 - 1000 Wh; coverage 127800 s of 167 hours
    assert lines[1:] == [
        "DCABZ1,Garage,2024-03-25T00:00:00+01:00,5.500,3.234,1.800,1.134,0.271,21.3",
        "DCABZ1,Garage,2024-04-01T00:00:00+02:00,0.500,0.266,0.100,0.166,0.079,3.6",
    ]
    assert main([*argv, "--from", "2023-01-01", "--to", "2023-01-31"]) == 0
    assert capsys.readouterr().out == "no energy counters (ecoflow_energy) in this range\n"


def test_current_period_coverage_runs_to_now(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influx_server.write_lines(influx_db, DST_LINES, precision="ms")
    with InfluxQL(influx_server.url) as client:
        rows = energy_report(
            client,
            bucket=influx_db,
            start=datetime(2024, 4, 1, tzinfo=BERLIN),
            end=datetime(2024, 4, 30, tzinfo=BERLIN),
            by="day",
            sns=["DCABZ1"],
            tz=BERLIN,
            now=datetime(2024, 4, 1, 12, tzinfo=UTC),
        )
    # April 1 so far: 14 hours; 21600 s covered; later days have not begun
    assert [(r.period_start.isoformat(), r.pv_input_kwh, round(r.coverage_percent, 3)) for r in rows] == [
        ("2024-04-01T00:00:00+02:00", 0.5, 42.857)
    ]
    with freeze_time("2024-04-01T12:00:00Z"):
        argv = ["report", "--config", config(tmp_path, influx_server, influx_db), "--format", "json"]
        assert main([*argv, "--sn", "DCABZ1"]) == 0
    days = json.loads(capsys.readouterr().out)
    # the default range: the last 7 days, today included
    assert [d["period_start"][:10] for d in days] == [f"2024-03-{n}" for n in range(26, 32)] + ["2024-04-01"]
    assert [d["pv_input_kwh"] for d in days] == [0.0, 0.0, 0.0, 0.0, 3.0, 2.5, 0.5]
    assert [d["coverage_percent"] for d in days][-1] == 42.9


MONTH_ROLLUPS = [
    f"ecoflow_energy_1h,name=Garage,product=delta_pro,sn=DCABZ1 pv_input_wh={pv},covered_s={cov} {ms(t)}"
    for t, pv, cov in [
        ("2023-12-31T23:00Z", 0, 0),  # the first hour of January, Berlin
        ("2024-01-31T22:00Z", 1000, 2678400),  # the last hour of January
        ("2024-02-29T22:00Z", 3000, 3931200),  # the last hour of February; no rollups after it
    ]
]
MONTH_RAW = [
    f"{GARAGE} pv_input_wh=3500,covered_s=4000000 {ms('2024-03-15T12:00Z')}",
    f"{GARAGE} pv_input_wh=4200,covered_s=4198680 {ms('2024-03-31T21:00Z')}",
]


def test_long_ranges_use_the_hourly_rollups_and_raw_data_after_them(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = influx_db + "_h"
    influx_server.create_database(history)
    try:
        influx_server.write_lines(history, MONTH_ROLLUPS, precision="ms")
        influx_server.write_lines(influx_db, MONTH_RAW, precision="ms")
        argv = ["report", "--config", config(tmp_path, influx_server, influx_db, history), "--by", "month"]
        assert main([*argv, "--from", "2024-01-01", "--to", "2024-03-31", "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == [
            # January and February from the rollups alone (no raw data then), March from raw data
            "DCABZ1,Garage,2024-01-01T00:00:00+01:00,1.000,0.000,0.000,0.000,0.000,100.0",
            "DCABZ1,Garage,2024-02-01T00:00:00+01:00,2.000,0.000,0.000,0.000,0.000,50.0",
            "DCABZ1,Garage,2024-03-01T00:00:00+01:00,1.200,0.000,0.000,0.000,0.000,10.0",
        ]
        # 31 days or less: raw data only (there is none in February)
        assert main([*argv, "--from", "2024-02-01", "--to", "2024-02-29", "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == []
        # no rollups inside the range: raw data, with the baseline from the last rollup before it
        assert main([*argv, "--from", "2024-03-01", "--to", "2024-05-31", "--format", "csv"]) == 0
        assert capsys.readouterr().out.splitlines()[1:] == [
            "DCABZ1,Garage,2024-03-01T00:00:00+01:00,1.200,0.000,0.000,0.000,0.000,10.0",
            "DCABZ1,Garage,2024-04-01T00:00:00+02:00,0.000,0.000,0.000,0.000,0.000,0.0",
            "DCABZ1,Garage,2024-05-01T00:00:00+02:00,0.000,0.000,0.000,0.000,0.000,0.0",
        ]
    finally:
        influx_server.drop_database(history)


def test_plot_needs_matplotlib(
    influx_server: InfluxServer,
    influx_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    influx_server.write_lines(influx_db, DST_LINES, precision="ms")
    argv = ["report", "--config", config(tmp_path, influx_server, influx_db), "--from", "2024-03-30"]
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "matplotlib", None)  # as if it were not installed
        assert main([*argv, "--plot", str(tmp_path / "r.png")]) == 2
    assert capsys.readouterr().err == (
        "ecoflow-collector report: --plot needs matplotlib, which is not installed: "
        "pip install 'ecoflow-collector[plot]'\n"
    )
    assert not (tmp_path / "r.png").exists()


def test_plot_draws_a_png(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib")
    influx_server.write_lines(influx_db, DST_LINES, precision="ms")
    argv = ["report", "--config", config(tmp_path, influx_server, influx_db), "--from", "2024-03-30"]
    assert main([*argv, "--to", "2024-04-01", "--format", "csv", "--plot", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr()
    assert len(out.out.splitlines()) == 7
    assert out.err == f"plot written to {tmp_path / 'r.png'}\n"
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unreachable_influxdb_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[influxdb]\nurl = "http://127.0.0.1:1"\ntoken = "hidden-token"\n')
    assert main(["report", "--config", str(path), "--from", "2024-01-01", "--to", "2024-01-02"]) == 1
    assert capsys.readouterr().err == (
        "ecoflow-collector report: cannot connect to InfluxDB at http://127.0.0.1:1: connection refused\n"
    )


def test_calendar_periods_are_dst_safe() -> None:
    bounds = period_bounds(
        datetime(2024, 10, 26, 12, tzinfo=BERLIN), datetime(2024, 10, 28, tzinfo=BERLIN), "day", BERLIN
    )
    assert [b.isoformat() for b in bounds] == [
        "2024-10-26T00:00:00+02:00",
        "2024-10-27T00:00:00+02:00",
        "2024-10-28T00:00:00+01:00",
    ]
    assert (to_ms(bounds[2]) - to_ms(bounds[1])) // 3_600_000 == 25
    months = period_bounds(
        datetime(2024, 11, 15, tzinfo=BERLIN), datetime(2025, 1, 2, tzinfo=BERLIN), "month", BERLIN
    )
    assert [b.date().isoformat() for b in months] == ["2024-11-01", "2024-12-01", "2025-01-01", "2025-02-01"]
    assert isinstance(local_zone(), ZoneInfo)
    row = ReportRow("X", "n", bounds[0], bounds[1], 1.0, 2.0, 3.0, 4.0, 5.0, 99.95)
    assert format_table([row]).splitlines()[1].split() == [
        "n", "X", "2024-10-26", "1.000", "2.000", "3.000", "4.000", "5.000", "100.0"
    ]  # fmt: skip


def test_a_device_starting_inside_a_bucket_counts_from_its_zero_point(
    influx_server: InfluxServer, influx_db: str
) -> None:
    # the collector writes all counters at 0 where a device's counters start; the next values may
    # fall into the same 15-minute bucket: the energy counts from the zero, not from that bucket
    fields = "pv_input_wh={},input_wh={},output_wh=0,battery_charge_wh={},battery_discharge_wh=0,covered_s={}"
    influx_server.write_lines(
        influx_db,
        [
            f"{GARAGE} {fields.format(0, 0, 0, 0)},gap_s=0 {ms('2024-05-02T10:01Z')}",
            f"{GARAGE} {fields.format(5.5, 5.5, 5.5, 60)},gap_s=0 {ms('2024-05-02T10:02Z')}",
            f"{GARAGE} {fields.format(12.25, 12.25, 12.25, 120)},gap_s=0 {ms('2024-05-02T10:03Z')}",
        ],
        precision="ms",
    )
    with InfluxQL(influx_server.url) as client:
        (row,) = energy_report(
            client,
            bucket=influx_db,
            start=datetime(2024, 5, 2, tzinfo=UTC),
            end=datetime(2024, 5, 3, tzinfo=UTC),
            tz=ZoneInfo("UTC"),
            now=datetime(2024, 5, 2, 12, tzinfo=UTC),
        )
    assert (row.pv_input_kwh, row.battery_charge_kwh, row.output_kwh) == (0.01225, 0.01225, 0.0)
