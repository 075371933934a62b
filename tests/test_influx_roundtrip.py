"""decode -> write with influxdb-client -> read back with InfluxQL: same values, floats, no sentinels.

Runs against the real InfluxDB the tests start (see tests/conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision

from collector.catalog import default_catalog
from collector.decoding import decode_bytes
from collector.pipeline import Pipeline
from collector.points import Device, Point
from collector.testbed import InfluxServer

ROOT = Path(__file__).resolve().parents[1]
CAPTURES = ROOT.parent / "shared" / "captures"
TIME_MS = 1_700_000_000_123

OWN = [
    ("powerstream", ROOT / "tests/fixtures/powerstream/heartbeat_param.json"),
    ("powerstream", ROOT / "tests/fixtures/powerstream/quota_all.json"),
    ("delta_pro", ROOT / "tests/fixtures/delta_pro/quota_all.json"),
    ("delta_pro", ROOT / "tests/fixtures/delta_pro/mqtt_quota_strings.json"),
]
REAL = [
    ("delta_pro", "deltapro_rustyy-fixture_1.json"),
    ("powerstream", "powerstream_rustyy-fixture_1.json"),
    ("powerstream", "powerstream_shuette42-fixture_1.json"),
    ("powerstream", "powerstream_official-doc_1.json"),
]


def write_and_read(server: InfluxServer, db: str, points: list[Point]) -> dict[str, dict[str, object]]:
    with InfluxDBClient(url=server.url, token="unused", org="ecoflow") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=db, record=[p.to_line() for p in points], write_precision=WritePrecision.MS
        )
    stored: dict[str, dict[str, object]] = {}
    for point in points:
        rows = server.rows(db, f'SELECT * FROM "{point.measurement}"', epoch="ms")
        assert len(rows) == 1, rows
        stored[point.measurement] = rows[0]
    return stored


def check_round_trip(server: InfluxServer, db: str, product: str, payload: bytes) -> Point:
    device = Device.resolve(default_catalog(), "SN0001", "Garage unit", product)
    _, points = Pipeline().process(device, payload, None, TIME_MS)
    stored = write_and_read(server, db, points)
    for point in points:
        row = stored[point.measurement]
        assert row["time"] == TIME_MS
        assert row["sn"] == "SN0001" and row["name"] == "Garage unit"
        for key, value in point.fields.items():
            assert row[key] == pytest.approx(value, rel=1e-12, abs=0), key
        not_ours = (
            {k for k, v in row.items() if v is not None}
            - set(point.fields)
            - {"time", "sn", "name", "product"}
        )
        assert not not_ours
    types = server.query(db, f'SHOW FIELD KEYS FROM "{product}"')["results"][0]["series"][0]["values"]
    assert {field_type for _, field_type in types} == {"float"}
    return points[0]


@pytest.mark.parametrize(("product", "path"), OWN, ids=[p.name for _, p in OWN])
def test_own_fixtures_round_trip(
    influx_server: InfluxServer, influx_db: str, product: str, path: Path
) -> None:
    check_round_trip(influx_server, influx_db, product, path.read_bytes())


@pytest.mark.parametrize(("product", "name"), REAL, ids=[n for _, n in REAL])
def test_real_captures_round_trip(
    influx_server: InfluxServer, influx_db: str, product: str, name: str
) -> None:
    path = CAPTURES / name
    if not path.exists():
        pytest.skip("../shared/captures is not present")
    point = check_round_trip(influx_server, influx_db, product, path.read_bytes())
    # no sentinel survives: every value the catalog calls "unset" is absent
    catalog = default_catalog().products[product]
    raw = decode_bytes(path.read_bytes()).values
    for key, value in raw.items():
        spec = catalog.lookup(key)
        if spec is not None and value in spec.sentinels:
            assert key not in point.fields


def test_delta_pro_capture_values_in_si_units(influx_server: InfluxServer, influx_db: str) -> None:
    path = CAPTURES / "deltapro_rustyy-fixture_1.json"
    if not path.exists():
        pytest.skip("../shared/captures is not present")
    device = Device.resolve(default_catalog(), "DCABZ", None, "delta_pro")
    _, points = Pipeline().process(device, path.read_bytes(), None, TIME_MS)
    row = write_and_read(influx_server, influx_db, points)["delta_pro"]
    assert row["mppt.inVol"] == 69.1 and row["mppt.inAmp"] == 4.28 and row["mppt.inWatts"] == 296.0
    assert row["bmsMaster.vol"] == 50.133
    assert row["inv.cfgAcOutVoltage"] == 120.0
    assert "bmsMaster.totalDsgCap" not in row  # 4294967295 = unset: never written


def test_hostile_names_and_keys_round_trip(influx_server: InfluxServer, influx_db: str) -> None:
    """Names and keys with every character line protocol treats specially land, and land as named."""
    catalog = default_catalog()
    hostile = 'Garage, "left" = 1\\ back\\slash\ttab\\'
    device = Device.resolve(catalog, "SN,= 1", hostile, "Odd Product, Inc.")
    payload = b'{"params": {"a b": 1, "c=d": 2, "e,f": 3, "g\\\\": 4, "time": 5, "ok": 6}, "version": "1.0"}'
    _, points = Pipeline().process(device, payload, None, TIME_MS)
    with InfluxDBClient(url=influx_server.url, token="unused", org="ecoflow") as client:
        client.write_api(write_options=SYNCHRONOUS).write(
            bucket=influx_db, record=[p.to_line() for p in points], write_precision=WritePrecision.MS
        )
    (row,) = influx_server.rows(influx_db, 'SELECT * FROM "odd_product_inc"', epoch="ms")
    assert row["name"] == 'Garage, "left" = 1 back\\slash tab'
    assert row["sn"] == "SN,= 1"
    assert (row["a b"], row["c=d"], row["e,f"], row["g"], row["ok"]) == (1.0, 2.0, 3.0, 4.0, 6.0)
    assert row["time"] == TIME_MS  # the payload's "time" field was not written over the timestamp
