"""Normalization and the line protocol, on a small catalog written by the test."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from collector.catalog import Catalog, CatalogError, load_catalog, slugify
from collector.decoding import decode_object
from collector.normalize import KeyReporter, normalize_values, summarize
from collector.pipeline import Pipeline
from collector.points import Device, Point, escape_key

CATALOG = """
[product]
slug = "widget"
name = "Widget Pro"
aliases = ["WIDGET PRO 2"]
serial_prefixes = ["WG"]

[summary]
soc_percent = ["x.soc"]
battery_w = ["x.inWatts", "-x.outWatts"]

[[groups]]
prefixes = ["x", "y"]
[groups.fields]
soc = { unit = "%", kind = "measurement", desc = "state of charge", range = [0, 100] }
vol = { unit = "mV", kind = "measurement", desc = "pack voltage" }
inWatts = { unit = "0.1W", kind = "measurement", desc = "in" }
outWatts = { unit = "0.1W", kind = "measurement", desc = "out" }
remain = { unit = "min", kind = "measurement", desc = "time left", sentinels = [5939, -5939] }
cells = { unit = "mV", kind = "measurement", desc = "cells", array = true }
cap = { unit = "mAh", kind = "counter", desc = "capacity", sentinels = [4294967295] }

[[groups]]
prefixes = ["20_134"]
[groups.fields]
"task#.type" = { kind = "enum", desc = "task type" }
"""


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    (tmp_path / "widget.toml").write_text(CATALOG)
    return load_catalog(tmp_path)


def test_scaling_to_stored_units_is_exact(catalog: Catalog) -> None:
    product = catalog.products["widget"]
    values = {"x.vol": 52345, "x.inWatts": 2960, "x.remain": 90, "x.cap": 80000, "y.soc": 80}
    assert normalize_values(product, values) == {
        "x.vol": 52.345,
        "x.inWatts": 296.0,
        "x.remain": 5400.0,
        "x.cap": 80.0,
        "y.soc": 80.0,
    }


def test_sentinels_are_not_written(catalog: Catalog) -> None:
    reporter = KeyReporter()
    fields = normalize_values(
        catalog.products["widget"], {"x.remain": -5939, "x.cap": 4294967295, "x.soc": 5}, reporter
    )
    assert fields == {"x.soc": 5.0}
    assert reporter.sentinels_skipped == 2


def test_arrays_and_patterns_resolve(catalog: Catalog) -> None:
    product = catalog.products["widget"]
    fields = normalize_values(product, {"x.cells[0]": 3301, "x.cells[14]": 3299, "20_134.task3.type": 2})
    assert fields == {"x.cells[0]": 3.301, "x.cells[14]": 3.299, "20_134.task3.type": 2.0}
    assert product.lookup("20_134.taskX.type") is None


def test_unknown_keys_are_kept_and_reported_once(catalog: Catalog) -> None:
    reporter = KeyReporter()
    product = catalog.products["widget"]
    with capture_logs() as logs:
        for _ in range(3):
            assert normalize_values(product, {"x.newThing": 12, "x.soc": 1}, reporter)["x.newThing"] == 12.0
    assert reporter.unknown_keys == 1
    assert [(e["event"], e["key"]) for e in logs] == [("catalog.unknown_key", "x.newThing")]


def test_unknown_product_keeps_every_number_and_drops_text() -> None:
    reporter = KeyReporter()
    fields = normalize_values(None, {"a": 1, "b": 2.5, "c": "v1.0"}, reporter, slug="delta_2_max")
    assert fields == {"a": 1.0, "b": 2.5}
    assert all(type(v) is float for v in fields.values())
    assert reporter.unknown_keys == 2 and reporter.non_numeric_values == 1


def test_summary_needs_every_term(catalog: Catalog) -> None:
    product = catalog.products["widget"]
    assert summarize(product, {"x.soc": 50.0, "x.inWatts": 100.0}) == {"soc_percent": 50.0}
    assert summarize(product, {"x.inWatts": 100.0, "x.outWatts": 30.0}) == {"battery_w": 70.0}


def test_identify_by_slug_name_alias_and_serial(catalog: Catalog) -> None:
    assert catalog.identify("widget", "X")[0] == "widget"
    assert catalog.identify("Widget Pro", "X")[0] == "widget"
    assert catalog.identify("WIDGET PRO 2", "X")[0] == "widget"
    assert catalog.identify(None, "WG123")[0] == "widget"
    assert catalog.identify("DELTA 2 Max", "R351") == ("delta_2_max", None)
    assert slugify("Smart Plug") == "smart_plug"


def test_line_protocol_escapes_and_types(catalog: Catalog) -> None:
    device = Device.resolve(catalog, "WG1", "Garage, left = 1", "widget")
    decoded = decode_object({"params": {"x.soc": "81", "x.vol": 50000}, "version": "1.0"})
    points = Pipeline().points(device, decoded, 1700000000123)
    assert [p.to_line() for p in points] == [
        r"widget,name=Garage\,\ left\ \=\ 1,sn=WG1 x.soc=81.0,x.vol=50.0 1700000000123",
        r"ecoflow_summary,name=Garage\,\ left\ \=\ 1,product=widget,sn=WG1 soc_percent=81.0 1700000000123",
    ]


def test_status_point(catalog: Catalog) -> None:
    device = Device.resolve(catalog, "WG1", None, "widget")
    points = Pipeline().points(device, decode_object({"params": {"status": 0}}), 5)
    assert [p.to_line() for p in points] == ["ecoflow_status,name=WG1,sn=WG1 online=0.0,state=0.0 5"]


def test_escape_key() -> None:
    assert escape_key("a b,c=d\\") == r"a\ b\,c\=d"  # a trailing backslash would escape the separator
    assert escape_key("back\\slash") == "back\\slash"
    assert Point("m x", (("t", "v"),), {"f": 1.0}, 1).to_line() == r"m\ x,t=v f=1.0 1"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[product]\nslug="widget"\nname="W"\n[[groups]]\nprefixes=["x"]\n[groups.fields]\n'
            'a={unit="parsec",kind="measurement",desc="d"}',
            "unknown unit 'parsec'",
        ),
        (
            '[product]\nslug="widget"\nname="W"\n[[groups]]\nprefixes=["x"]\n[groups.fields]\n'
            'a={kind="measurement",desc="d",colour=1}',
            "Extra inputs are not permitted",
        ),
        (
            '[product]\nslug="other"\nname="W"\n[[groups]]\nprefixes=["x"]\n[groups.fields]\n'
            'a={kind="enum",desc="d"}',
            "must match the file name",
        ),
        (
            '[product]\nslug="widget"\nname="W"\n[summary]\nsoc_percent=["x.b"]\n[[groups]]\nprefixes=["x"]\n'
            '[groups.fields]\na={kind="enum",desc="d"}',
            "not a catalog field",
        ),
        ("[product", "Expected"),
    ],
)
def test_invalid_catalog_files_are_refused(tmp_path: Path, text: str, error: str) -> None:
    (tmp_path / "widget.toml").write_text(text)
    with pytest.raises(CatalogError, match=error):
        load_catalog(tmp_path)
