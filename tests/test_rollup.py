"""Hourly rollups against the real InfluxDB of the testbed: exact mean/min/max, energy counters'
last values, idempotence, the watermark, catch-up after an outage, and the InfluxQL client's errors."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import structlog

from collector.cli import main
from collector.config import load_settings
from collector.history.influxql import InfluxQL, InfluxQLError, split_bucket
from collector.history.rollup import WATERMARK_FILE, RollupJob, Watermark, roll_up
from collector.testbed import InfluxServer

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
M = 60_000
H = 3_600_000
ENERGY = "ecoflow_energy,name=Garage,product=delta_pro,sn=DCABZ1"

LINES = [
    # delta_pro: hour 0 -> pd.wattsInSum 1, 2, 6; the cell voltage twice; hour 1 -> 10
    f"delta_pro,name=Garage,sn=DCABZ1 pd.wattsInSum=1,bmsMaster.cellVol[3]=3.25 {T0}",
    f"delta_pro,name=Garage,sn=DCABZ1 pd.wattsInSum=2 {T0 + 20 * M}",
    f"delta_pro,name=Garage,sn=DCABZ1 pd.wattsInSum=6,bmsMaster.cellVol[3]=3.5 {T0 + 40 * M}",
    f"delta_pro,name=Garage,sn=DCABZ1 pd.wattsInSum=10 {T0 + 90 * M}",
    f"powerstream,name=Balcony,sn=HW51X 20_1.pv1InputWatts=100 {T0 + 5 * M}",
    f"powerstream,name=Balcony,sn=HW51X 20_1.pv1InputWatts=300 {T0 + 10 * M}",
    f"ecoflow_summary,name=Garage,product=delta_pro,sn=DCABZ1 soc_percent=50 {T0}",
    f"ecoflow_summary,name=Garage,product=delta_pro,sn=DCABZ1 soc_percent=53 {T0 + 30 * M}",
    f"ecoflow_status,name=Garage,sn=DCABZ1 online=1,state=2 {T0}",
    f"ecoflow_status,name=Garage,sn=DCABZ1 online=0,state=1 {T0 + 30 * M}",
    f"ecoflow_collector,instance=x messages_quota=5 {T0}",
    f"{ENERGY} pv_input_wh=10,covered_s=60,gap_s=0 {T0 + M}",
    f"{ENERGY} pv_input_wh=12.5,covered_s=120,gap_s=0 {T0 + 59 * M}",
    f"{ENERGY} pv_input_wh=20,covered_s=180,gap_s=1800 {T0 + 90 * M}",
]

EXPECTED = {
    "delta_pro_1h": [
        {
            "time": T0,
            "name": "Garage",
            "sn": "DCABZ1",
            "pd.wattsInSum_mean": 3,
            "pd.wattsInSum_min": 1,
            "pd.wattsInSum_max": 6,
            "bmsMaster.cellVol[3]_mean": 3.375,
            "bmsMaster.cellVol[3]_min": 3.25,
            "bmsMaster.cellVol[3]_max": 3.5,
        },
        {
            "time": T0 + H,
            "name": "Garage",
            "sn": "DCABZ1",
            "pd.wattsInSum_mean": 10,
            "pd.wattsInSum_min": 10,
            "pd.wattsInSum_max": 10,
            "bmsMaster.cellVol[3]_mean": None,
            "bmsMaster.cellVol[3]_min": None,
            "bmsMaster.cellVol[3]_max": None,
        },
    ],
    "powerstream_1h": [
        {
            "time": T0,
            "name": "Balcony",
            "sn": "HW51X",
            "20_1.pv1InputWatts_mean": 200,
            "20_1.pv1InputWatts_min": 100,
            "20_1.pv1InputWatts_max": 300,
        }
    ],
    "ecoflow_summary_1h": [
        {
            "time": T0,
            "name": "Garage",
            "product": "delta_pro",
            "sn": "DCABZ1",
            "soc_percent_mean": 51.5,
            "soc_percent_min": 50,
            "soc_percent_max": 53,
        }
    ],
    "ecoflow_status_1h": [
        {
            "time": T0,
            "name": "Garage",
            "sn": "DCABZ1",
            "online_mean": 0.5,
            "online_min": 0,
            "online_max": 1,
            "state_mean": 1.5,
            "state_min": 1,
            "state_max": 2,
        }
    ],
    "ecoflow_energy_1h": [
        {
            "time": T0,
            "name": "Garage",
            "product": "delta_pro",
            "sn": "DCABZ1",
            "pv_input_wh": 12.5,
            "covered_s": 120,
            "gap_s": 0,
        },
        {
            "time": T0 + H,
            "name": "Garage",
            "product": "delta_pro",
            "sn": "DCABZ1",
            "pv_input_wh": 20,
            "covered_s": 180,
            "gap_s": 1800,
        },
    ],
}


pytestmark = pytest.mark.usefixtures("no_env_overrides")  # the developer's environment must not change a test


def write_config(
    path: Path, url: str, bucket: str, state_dir: Path, history_bucket: str | None = None, token: str = "t"
) -> Path:
    history = f'bucket = "{history_bucket}"\n' if history_bucket else ""
    path.write_text(
        f'[influxdb]\nurl = "{url}"\ntoken = "{token}"\nbucket = "{bucket}"\n'
        f'[collector]\nstate_dir = "{state_dir}"\n'
        f'[history]\ntimezone = "Europe/Berlin"\n{history}'
    )
    return path


def rollups(server: InfluxServer, db: str) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    for name in EXPECTED:
        out[name] = server.rows(db, f'SELECT * FROM "{name}"', epoch="ms")
    return out


def test_rollup_command_writes_exact_hourly_aggregates_and_is_idempotent(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    influx_server.write_lines(influx_db, LINES, precision="ms")
    config = write_config(tmp_path / "c.toml", influx_server.url, influx_db, tmp_path / "state")
    argv = ["rollup", "--config", str(config), "--from", "2024-01-01T00:00Z", "--to", "2024-01-01T01:30Z"]

    assert main(argv) == 0
    out = capsys.readouterr()
    summary = (
        rf"rolled up 2 hours \(2024-01-01T00:00:00Z \.\. 2024-01-01T02:00:00Z\) of 5 measurements: "
        rf"7 points written to bucket {influx_db} in \d+\.\d s\n"
    )
    assert re.fullmatch(summary, out.out), out.out
    assert out.err == ""  # not a terminal: no progress
    first = rollups(influx_server, influx_db)
    assert first == EXPECTED
    measurements = {row["name"] for row in influx_server.rows(influx_db, "SHOW MEASUREMENTS")}
    assert "ecoflow_collector_1h" not in measurements

    # again: the *_1h measurements now exist and are skipped; the same points, nothing added
    assert main(argv) == 0
    assert re.fullmatch(summary, capsys.readouterr().out)
    assert rollups(influx_server, influx_db) == first
    counts = influx_server.rows(influx_db, 'SELECT count("pd.wattsInSum_mean") FROM "delta_pro_1h"')
    assert counts[0]["count"] == 2


def test_rollup_into_the_history_bucket(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    history = influx_db + "_history"
    influx_server.create_database(history)
    try:
        influx_server.write_lines(influx_db, LINES, precision="ms")
        config = write_config(tmp_path / "c.toml", influx_server.url, influx_db, tmp_path / "s", history)
        assert main(["rollup", "--config", str(config), "--from", "2024-01-01", "--to", "2024-01-01"]) == 0
        assert f"7 points written to bucket {history} " in capsys.readouterr().out
        assert rollups(influx_server, history) == EXPECTED
        names = {row["name"] for row in influx_server.rows(influx_db, "SHOW MEASUREMENTS")}
        assert not any(name.endswith("_1h") for name in names)
    finally:
        influx_server.drop_database(history)


def test_rollup_command_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path / "c.toml", "http://127.0.0.1:1", "db", tmp_path / "s")
    assert main(["rollup", "--config", str(config), "--since", "30 days"]) == 2
    assert "--since '30 days': give a number and a unit s, m, h, d or w" in capsys.readouterr().err
    assert main(["rollup", "--config", str(config), "--from", "2024-02-01", "--to", "2024-01-01"]) == 2
    assert "--from (2024-02-01T00:00:00+01:00) must be before --to" in capsys.readouterr().err
    assert main(["rollup", "--config", str(config), "--since", "2d"]) == 1
    err = capsys.readouterr().err
    assert "ecoflow-collector rollup: stopped after 0 hours" in err
    assert "cannot connect to InfluxDB at http://127.0.0.1:1: connection refused" in err


def _minute_series(start_ms: int, hours: int) -> list[str]:
    """delta_pro value = minutes since start, every 10 minutes: the hour h has mean 60h+25."""
    return [
        f"delta_pro,name=Garage,sn=DCABZ1 pd.wattsInSum={m} {start_ms + m * M}"
        for m in range(0, hours * 60, 10)
    ]


def _means(server: InfluxServer, db: str) -> dict[int, float]:
    rows = server.rows(db, 'SELECT "pd.wattsInSum_mean" FROM "delta_pro_1h"', epoch="ms")
    return {int(row["time"]): row["pd.wattsInSum_mean"] for row in rows}


def test_job_watermark_and_catch_up_after_an_outage(tmp_path: Path) -> None:
    day = T0 - 24 * H  # 2023-12-31T00:00Z: data from then on, every 10 minutes for 10 hours
    with InfluxServer(token="sekrit-token") as server:
        server.create_database("ecoflow")
        server.write_lines("ecoflow", _minute_series(day, 10), precision="ms")
        config = write_config(
            tmp_path / "c.toml", server.url, "ecoflow", tmp_path / "state", token="sekrit-token"
        )
        settings = load_settings(config)
        job = RollupJob(settings, first_lookback=timedelta(hours=3), chunk_hours=2)
        mark_file = tmp_path / "state" / WATERMARK_FILE

        with structlog.testing.capture_logs() as logs:
            first = job.run(datetime.fromtimestamp((day + 4 * H + 30 * M) / 1000, UTC))  # 04:30
        assert first.ok and (first.start_ms, first.end_ms) == (day + H, day + 5 * H)
        assert first.hours == 4
        assert _means(server, "ecoflow") == {day + h * H: 60 * h + 25 for h in range(1, 5)}
        assert json.loads(mark_file.read_text())["until_ms"] == day + 4 * H  # the current hour stays open
        assert [e["event"] for e in logs] == ["history.rollup_catching_up", "history.rollup_done"]

        server.kill()
        with structlog.testing.capture_logs() as logs:
            failed = job.run(datetime.fromtimestamp((day + 7 * H + 5 * M) / 1000, UTC))
            job.run(datetime.fromtimestamp((day + 7 * H + 20 * M) / 1000, UTC))
        assert failed.error is not None and "HTTP 502" in failed.error
        assert failed.done_until_ms == day + 4 * H and failed.points == 0
        assert Watermark(mark_file).load() == day + 4 * H  # not past the hours that failed
        # one event for the change of state, not one per run
        assert [e["event"] for e in logs] == ["history.rollup_catching_up", "history.rollup_failed"]
        assert "sekrit" not in json.dumps(logs)

        server.restart()
        with structlog.testing.capture_logs() as logs:
            caught_up = job.run(datetime.fromtimestamp((day + 9 * H + 30 * M) / 1000, UTC))
        assert caught_up.ok and caught_up.start_ms == day + 4 * H and caught_up.hours == 6
        assert _means(server, "ecoflow") == {day + h * H: 60 * h + 25 for h in range(1, 10)}
        assert Watermark(mark_file).load() == day + 9 * H
        assert [e["event"] for e in logs] == ["history.rollup_recovered"]

        # a quiet run: the previous and the current hour only, logged at debug
        with structlog.testing.capture_logs() as logs:
            again = job.run(datetime.fromtimestamp((day + 9 * H + 45 * M) / 1000, UTC))
        assert (again.start_ms, again.end_ms, again.points) == (day + 8 * H, day + 10 * H, 2)
        assert [(e["event"], e["log_level"]) for e in logs] == [("history.rollup_done", "debug")]
        job.close()


def test_corrupt_watermark_is_logged_and_treated_as_missing(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    influx_server.write_lines(influx_db, _minute_series(T0, 3), precision="ms")
    config = write_config(tmp_path / "c.toml", influx_server.url, influx_db, tmp_path / "state")
    mark_file = tmp_path / "state" / WATERMARK_FILE
    mark_file.parent.mkdir(parents=True)
    mark_file.write_text('{"until_ms": "yesterday"')
    job = RollupJob(load_settings(config), first_lookback=timedelta(hours=2))
    with structlog.testing.capture_logs() as logs:
        result = job.run(datetime.fromtimestamp((T0 + 2 * H + M) / 1000, UTC))
    assert logs[0]["event"] == "history.watermark_corrupt" and logs[0]["log_level"] == "error"
    assert logs[0]["path"] == str(mark_file)
    assert (result.start_ms, result.hours) == (T0, 3)
    assert _means(influx_server, influx_db) == {T0: 25, T0 + H: 85, T0 + 2 * H: 145}
    assert json.loads(mark_file.read_text()) == {
        "version": 1,
        "until": "2024-01-01T02:00:00Z",
        "until_ms": T0 + 2 * H,
    }
    assert not mark_file.with_name(WATERMARK_FILE + ".tmp").exists()
    job.close()


def test_roll_up_in_chunks_reports_progress(influx_server: InfluxServer, influx_db: str) -> None:
    influx_server.write_lines(influx_db, _minute_series(T0, 5), precision="ms")
    seen: list[tuple[int, int, int]] = []
    with InfluxQL(influx_server.url) as client:
        result = roll_up(
            client,
            influx_db,
            influx_db,
            T0 + 30 * M,
            T0 + 4 * H + M,
            chunk_hours=2,
            progress=lambda *a: seen.append(a),
        )
    assert (result.start_ms, result.end_ms, result.points) == (T0, T0 + 5 * H, 5)
    assert seen == [(T0 + 2 * H, T0 + 5 * H, 2), (T0 + 4 * H, T0 + 5 * H, 4), (T0 + 5 * H, T0 + 5 * H, 5)]
    assert _means(influx_server, influx_db) == {T0 + h * H: 60 * h + 25 for h in range(5)}


def test_client_errors_say_what_is_wrong_without_the_token(
    influx_server: InfluxServer, influx_db: str
) -> None:
    assert split_bucket("ecoflow") == ("ecoflow", None)
    assert split_bucket("ecoflow/autogen") == ("ecoflow", "autogen")
    with InfluxQL(influx_server.url, "my-secret") as client:
        with pytest.raises(InfluxQLError, match=r"answered HTTP 400: error parsing query: found FROM"):
            client.query(influx_db, "SELECT FROM")
        with pytest.raises(InfluxQLError, match=r"^InfluxDB: database not found: nope$"):
            client.query("nope", "SELECT * FROM m")
        influx_server.write_lines(influx_db, ["m,sn=A f=1 1000", "m,sn=A f=2 2000", "m,sn=A f=3 3000"], "ms")
        # a retention policy from the bucket name; chunks of 2 rows stream as partial series
        chunked = InfluxQL(influx_server.url, chunk_size=2)
        parts = list(chunked.series(influx_db + "/autogen", 'SELECT "f" FROM "m"'))
        assert [(p.values, p.partial) for p in parts] == [
            ([[1000, 1], [2000, 2]], True),
            ([[3000, 3]], False),
        ]
        assert [row.values for row in chunked.rows(influx_db, 'SELECT "f" FROM "m"')] == [
            {"time": 1000, "f": 1},
            {"time": 2000, "f": 2},
            {"time": 3000, "f": 3},
        ]
        with pytest.raises(InfluxQLError, match=r"^InfluxDB: retention policy not found: nope$"):
            list(chunked.series(influx_db + "/nope", 'SELECT "f" FROM "m"'))
        chunked.close()
    refused = InfluxQL("http://user:pw@127.0.0.1:1", "my-secret")
    with pytest.raises(InfluxQLError) as caught:
        refused.query("db", "SHOW MEASUREMENTS")
    assert str(caught.value) == "cannot connect to InfluxDB at http://127.0.0.1:1: connection refused"


def test_write_refused_token_is_named_not_shown(tmp_path: Path) -> None:
    with InfluxServer(token="right-token") as server:
        server.create_database("db")
        with InfluxQL(server.url, "wrong-token") as client, pytest.raises(InfluxQLError) as caught:
            client.write("db", ["m f=1 1000"])
        assert caught.value.status == 401
        assert str(caught.value) == (
            f"InfluxDB at {server.url} refused the credentials (HTTP 401: unauthorized access); "
            "check [influxdb] token (for InfluxDB 1.8: user:password) and its permissions"
        )
        with InfluxQL(server.url, "right-token") as client:
            assert client.write("db", (f"m f={i} {1000 + i}" for i in range(7000))) == 7000
        assert server.rows("db", 'SELECT count("f") FROM "m"')[0]["count"] == 7000


def test_progress_on_a_terminal(
    influx_server: InfluxServer,
    influx_db: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    influx_server.write_lines(influx_db, _minute_series(T0, 3), precision="ms")
    config = write_config(tmp_path / "c.toml", influx_server.url, influx_db, tmp_path / "state")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["rollup", "--config", str(config), "--from", "2024-01-01T00:00Z", "--to", "2024-01-01T03:00Z"]
    assert main([*argv, "--chunk-hours", "2"]) == 0
    out = capsys.readouterr()
    assert out.err == (
        "\rrollup:  66.7% up to 2024-01-01T02:00:00Z, 2 points"
        "\rrollup: 100.0% up to 2024-01-01T03:00:00Z, 3 points\n"
    )
    assert out.out.startswith(
        "rolled up 3 hours (2024-01-01T00:00:00Z .. 2024-01-01T03:00:00Z) of 1 measurements"
    )
