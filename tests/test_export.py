"""`export`: raw and rollup data as CSV or Parquet, against the real InfluxDB."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from collector.cli import main
from collector.history.export import export_csv, export_parquet
from collector.history.influxql import InfluxQL
from collector.history.rollup import roll_up
from collector.testbed import InfluxServer

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DAY = 86_400_000
LINES = [
    f"delta_pro,name=Garage,sn=DCABZ1 pd.wattsInSum=1.5,bmsMaster.cellVol[3]=3.25 {T0}",
    f"delta_pro,name=Shed,sn=DCABZ2 pd.wattsInSum=7 {T0}",
    f"delta_pro,name=Garage,sn=DCABZ1 mppt.inWatts=200 {T0 + 1000}",
    f"delta_pro,name=Shed,sn=DCABZ2 pd.wattsInSum=8.25 {T0 + 8 * DAY}",  # in the second 7-day window
    f"delta_pro,name=Shed,sn=DCABZ2 pd.wattsInSum=9 {T0 + 10 * DAY}",  # after --to
]
RANGE = ["--from", "2024-01-01T00:00Z", "--to", "2024-01-10T00:00Z"]


pytestmark = pytest.mark.usefixtures("no_env_overrides")  # the developer's environment must not change a test


@pytest.fixture()
def argv(influx_server: InfluxServer, influx_db: str, tmp_path: Path) -> list[str]:
    influx_server.write_lines(influx_db, LINES, precision="ms")
    path = tmp_path / "collector.toml"
    path.write_text(
        f'[influxdb]\nurl = "{influx_server.url}"\nbucket = "{influx_db}"\n'
        f'[collector]\nstate_dir = "{tmp_path / "state"}"\n[history]\ntimezone = "Europe/Berlin"\n'
    )
    return ["export", "--config", str(path)]


def test_csv_to_stdout_all_fields_sorted(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--measurement", "delta_pro", *RANGE]) == 0
    out = capsys.readouterr()
    assert out.out == (
        "time,sn,name,bmsMaster.cellVol[3],mppt.inWatts,pd.wattsInSum\n"
        "2024-01-01T00:00:00.000Z,DCABZ1,Garage,3.25,,1.5\n"
        "2024-01-01T00:00:00.000Z,DCABZ2,Shed,,,7\n"
        "2024-01-01T00:00:01.000Z,DCABZ1,Garage,,200,\n"
        "2024-01-09T00:00:00.000Z,DCABZ2,Shed,,,8.25\n"
    )
    assert out.err == "exported 4 rows of delta_pro\n"


def test_csv_fields_in_the_order_given_for_one_device_to_a_file(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "out.csv"
    fields = ["--fields", "pd.wattsInSum", "mppt.inWatts"]
    # dates without a time are Berlin days, --to included: 2023-12-31T23:00Z .. 2024-01-01T23:00Z
    days = ["--from", "2024-01-01", "--to", "2024-01-01"]
    assert (
        main([*argv, "--measurement", "delta_pro", "--sn", "DCABZ1", *days, *fields, "--output", str(target)])
        == 0
    )
    assert capsys.readouterr() == ("", "exported 2 rows of delta_pro\n")
    assert target.read_text() == (
        "time,sn,name,pd.wattsInSum,mppt.inWatts\n"
        "2024-01-01T00:00:00.000Z,DCABZ1,Garage,1.5,\n"
        "2024-01-01T00:00:01.000Z,DCABZ1,Garage,,200\n"
    )


def test_rollups_export(
    argv: list[str], influx_server: InfluxServer, influx_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with InfluxQL(influx_server.url) as client:
        assert roll_up(client, influx_db, influx_db, T0, T0 + 10 * DAY).ok
    fields = ["--fields", "pd.wattsInSum_mean", "pd.wattsInSum_max"]
    assert main([*argv, "--measurement", "delta_pro_1h", "--sn", "DCABZ2", *RANGE, *fields]) == 0
    assert capsys.readouterr().out == (
        "time,sn,name,pd.wattsInSum_mean,pd.wattsInSum_max\n"
        "2024-01-01T00:00:00.000Z,DCABZ2,Shed,7,7\n"
        "2024-01-09T00:00:00.000Z,DCABZ2,Shed,8.25,8.25\n"
    )


def test_unknown_measurement_or_field_is_a_usage_error(
    argv: list[str], influx_db: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--measurement", "delta_pro", *RANGE, "--fields", "pd.wattsInSum", "nope"]) == 2
    assert capsys.readouterr().err == (
        "ecoflow-collector export: delta_pro has no field nope (its fields: bmsMaster.cellVol[3], "
        "mppt.inWatts, pd.wattsInSum; `ecoflow-collector schema` lists them)\n"
    )
    assert main([*argv, "--measurement", "river", *RANGE]) == 2
    assert capsys.readouterr().err == (
        f"ecoflow-collector export: measurement 'river' has no data in bucket '{influx_db}'; "
        "measurements: delta_pro\n"
    )


def test_parquet_needs_pyarrow(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "pyarrow", None)  # as if it were not installed
        target = ["--output", str(tmp_path / "x.parquet")]
        assert main([*argv, "--measurement", "delta_pro", *RANGE, "--format", "parquet", *target]) == 2
    assert capsys.readouterr().err == (
        "ecoflow-collector export: --format parquet needs pyarrow, which is not installed: "
        "pip install 'ecoflow-collector[parquet]'\n"
    )
    assert not (tmp_path / "x.parquet").exists()


def test_parquet_file(argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    target = tmp_path / "x.parquet"
    assert main([*argv, "--measurement", "delta_pro", *RANGE, "--format", "parquet"]) == 2
    assert capsys.readouterr().err == "ecoflow-collector export: --format parquet needs --output FILE\n"
    assert (
        main([*argv, "--measurement", "delta_pro", *RANGE, "--format", "parquet", "--output", str(target)])
        == 0
    )
    table = pq.read_table(target)
    assert [str(f.type) for f in table.schema] == [
        "timestamp[ms, tz=UTC]",
        "string",
        "string",
        *["double"] * 3,
    ]
    rows = table.to_pylist()
    assert [(int(r["time"].timestamp() * 1000), r["sn"], r["name"]) for r in rows] == [
        (T0, "DCABZ1", "Garage"),
        (T0, "DCABZ2", "Shed"),
        (T0 + 1000, "DCABZ1", "Garage"),
        (T0 + 8 * DAY, "DCABZ2", "Shed"),
    ]
    assert [[r["bmsMaster.cellVol[3]"], r["mppt.inWatts"], r["pd.wattsInSum"]] for r in rows] == [
        [3.25, None, 1.5],
        [None, None, 7.0],
        [None, 200.0, None],
        [None, None, 8.25],
    ]


def test_long_exports_stream_in_windows_chunks_and_row_groups(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    # 3000 points, one every 10 minutes for ~21 days: 3 windows of 7 days, chunks of 100 rows
    lines = [f"powerstream,name=P,sn=HW1 a={i},b={i / 4} {T0 + i * 600_000}" for i in range(3000)]
    influx_server.write_lines(influx_db, lines, precision="ms")
    client = InfluxQL(influx_server.url, chunk_size=100)
    out = io.StringIO()
    assert export_csv(client, influx_db, "powerstream", T0, T0 + 30 * DAY, out, fields=["b", "a"]) == 3000
    text = out.getvalue().splitlines()
    assert text[0] == "time,sn,name,b,a"
    assert text[1] == "2024-01-01T00:00:00.000Z,HW1,P,0,0"
    assert text[2999] == "2024-01-21T19:40:00.000Z,HW1,P,749.5,2998"
    assert [line.split(",")[4] for line in text[1:]] == [str(i) for i in range(3000)]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        return
    target = tmp_path / "long.parquet"
    assert (
        export_parquet(client, influx_db, "powerstream", T0, T0 + 30 * DAY, target, row_group_rows=1000)
        == 3000
    )
    meta = pq.ParquetFile(target).metadata
    assert (meta.num_rows, meta.num_row_groups) == (3000, 3)
    assert pq.read_table(target).column("a").to_pylist() == [float(i) for i in range(3000)]
    client.close()
