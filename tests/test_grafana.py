"""The dashboards, checked the ways that stand in for a Grafana server (none can be installed here):

- they are what grafana/build.py generates (the dashboards are code);
- they validate against Grafana's own dashboard and panel schemas (npm @grafana/schema of the Grafana
  version docker-compose.yml runs, compiled with tsc --strict by grafana/check/check.mjs);
- every catalog product has its dashboard `ecoflow-<slug>`, generated from its catalog file (the hints
  place the fields the README promises; a file without hints gets the default panels), and invalid
  hints are refused with a message that names them;
- every field they name exists in the catalog or in docs/schema.md, with the unit the panel shows;
- no serial number is written into them: every device query filters by a template variable;
- every variable query and every panel query, with Grafana's macros and variables substituted the way
  Grafana substitutes them (the panel's own time range or the dashboard's), runs against a real
  InfluxDB that a collector filled from the local EcoFlow cloud (every product the simulator
  simulates) and, for the other products, their fixture payloads (tests/fixtures/<slug>/*.json) sent
  through the collector's own pipeline (decode -> normalize -> points -> line protocol) at several
  times, and returns at least one non-null value; the energy counters (ecoflow_energy) are written
  here when the collector has not made them in the few seconds it runs, and the hourly rollups
  (ecoflow_energy_1h, ecoflow_summary_1h: a scheduled job of the collector) always, as line protocol
  of their documented schema;
- the provisioning files point at the dashboards and read the datasource's settings from the
  environment.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from collector import sink
from collector.catalog import CatalogError, Product, default_catalog, load_product_file
from collector.catalog.units import DEVICE_UNITS, DeviceUnit
from collector.config import settings_from_values
from collector.decoding import Decoded, decode_bytes
from collector.pipeline import Pipeline
from collector.points import Device, to_lines
from collector.simulator.devices import PRODUCTS as SIMULATED
from collector.simulator.server import LocalCloud
from collector.sink.influx import InfluxWriter
from collector.state import FieldMemory, KeyTable
from collector.testbed import InfluxServer, MosquittoServer
from tests.test_accounts import accounts_settings
from tests.test_daemon import running, wait_for

try:
    import yaml
except ImportError:  # pragma: no cover - the test extra installs it
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
CHECK_DIR = GRAFANA / "check"
SETUP_HINT = "run `bash scripts/setup.sh` (or `(cd grafana/check && npm ci --no-audit --no-fund)`)"
CATALOG = default_catalog()
FIXTURES = ROOT / "tests" / "fixtures"
DEVICE_MEASUREMENTS = tuple(sorted(CATALOG.products))
# the products the local cloud simulates; the others are fed from their fixture payloads
SIMULATED_PRODUCTS = tuple(sorted(set(SIMULATED) & set(CATALOG.products)))
FIXTURE_PRODUCTS = tuple(sorted(set(CATALOG.products) - set(SIMULATED_PRODUCTS)))
TAGS = {"sn", "name", "product", "instance", "account"}
FLEET_DASHBOARDS = ["fleet.json", "collector.json", "energy.json"]
DASHBOARD_NAMES = [f"{slug}.json" for slug in DEVICE_MEASUREMENTS] + FLEET_DASHBOARDS
ENERGY, ENERGY_1H, SUMMARY_1H = "ecoflow_energy", "ecoflow_energy_1h", "ecoflow_summary_1h"
# the energy counters' contract (collector/history/energy.py): Wh since the collector first saw the
# device, and the seconds integrated / not integrated
ENERGY_UNITS = {
    "pv_input_wh": "Wh",
    "input_wh": "Wh",
    "output_wh": "Wh",
    "battery_charge_wh": "Wh",
    "battery_discharge_wh": "Wh",
    "covered_s": "s",
    "gap_s": "s",
}


def load_script(path: Path, name: str) -> ModuleType:
    """A script of grafana/ (not a package) as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


BUILD = load_script(GRAFANA / "build.py", "grafana_build")


def need_yaml() -> Any:
    if yaml is None:
        pytest.fail("PyYAML is missing: pip install -e '.[test]'", pytrace=False)
    return yaml


def dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in sorted(DASHBOARD_DIR.glob("*.json"))}


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for item in board.get("panels", []):
        if item["type"] == "row":
            yield from item.get("panels", [])
        else:
            yield item


@dataclass(frozen=True)
class Query:
    board: str
    where: str  # "panel 3 'Title' A" or "variable sn"
    text: str
    time_from: str = "now-1h"  # the panel's own time range (timeFrom), else the dashboard's


def panel_queries(name: str, board: dict[str, Any]) -> list[Query]:
    return [
        Query(
            name,
            f"panel {p['id']} {p['title']!r} {t['refId']}",
            t["query"],
            p.get("timeFrom", board["time"]["from"]),
        )
        for p in panels(board)
        for t in p.get("targets", [])
    ]


def variable_queries(name: str, board: dict[str, Any]) -> list[Query]:
    return [
        Query(name, f"variable {v['name']}", v["query"], board["time"]["from"])
        for v in board["templating"]["list"]
        if v["type"] == "query"
    ]


# ------------------------------------------------------------------------------------ static checks
def test_every_product_has_a_dashboard_and_the_files_are_what_build_py_generates() -> None:
    built = BUILD.build()
    assert sorted(built) == sorted(DASHBOARD_NAMES)
    assert sorted(p.name for p in DASHBOARD_DIR.glob("*.json")) == sorted(DASHBOARD_NAMES), (
        "a dashboard file no catalog product makes: run python3 grafana/build.py and remove it"
    )
    for name, board in built.items():
        path = DASHBOARD_DIR / name
        assert path.exists(), f"{path} is missing: run python3 grafana/build.py"
        assert path.read_text(encoding="utf-8") == BUILD.render(board), (
            f"{path} differs from what grafana/build.py makes: run python3 grafana/build.py"
        )
    # the fleet table links a device to /d/ecoflow-<product slug>
    for slug in DEVICE_MEASUREMENTS:
        assert built[f"{slug}.json"]["uid"] == f"ecoflow-{slug}"
        assert built[f"{slug}.json"]["title"] == f"EcoFlow {CATALOG.products[slug].name}"
    assert [built[n]["uid"] for n in FLEET_DASHBOARDS] == [
        "ecoflow-fleet",
        "ecoflow-collector",
        "ecoflow-energy",
    ]
    assert "/d/ecoflow-${__data.fields.product}" in json.dumps(built["fleet.json"])


def _panel_keys(panel: dict[str, Any]) -> list[str]:
    """The catalog keys a product panel queries, in query order (aliases and tags left out)."""
    keys: list[str] = []
    for target in panel["targets"]:
        _measurements, _aliases, fields = _identifiers(target["query"])
        ordered = [f for f in IDENT.findall(target["query"]) if f in fields]
        keys += [k for k in dict.fromkeys(ordered) if k not in keys]
    return keys


def _layout(name: str) -> list[tuple[str, str, list[str]]]:
    """(type, title, keys queried) of every panel and row of a dashboard file, in order."""
    board = json.loads((DASHBOARD_DIR / name).read_text(encoding="utf-8"))
    return [(p["type"], p["title"], _panel_keys(p) if p["type"] != "row" else []) for p in board["panels"]]


PS = "20_1."
PS_ERRORS = [
    f"{PS}{k}"
    for k in (
        "pv1ErrCode",
        "pv2ErrCode",
        "pv1WarnCode",
        "pv2WarningCode",
        "batErrCode",
        "batWarningCode",
        "llcErrCode",
        "llcWarningCode",
        "invErrCode",
        "invWarnCode",
        "wirelessErrCode",
        "wirelessWarnCode",
    )
]
FLOW_COUNTERS = ["pv_input_wh", "output_wh", "battery_charge_wh", "battery_discharge_wh"]


def test_the_powerstream_dashboard_shows_what_the_readme_promises() -> None:
    """Battery SoC gauge; solar, AC output, battery power and custom load now; energy today; PV1/PV2
    power, voltage, current; AC output against the custom load; grid frequency and voltage; SoC with
    the limits; battery power; temperatures; supply priority and the limits as state timelines; the
    error table; energy per day: every panel, in order, with exactly the fields it shows."""
    limits = [f"{PS}upperLimit", f"{PS}lowerLimit"]
    assert _layout("powerstream.json") == [
        ("gauge", "State of charge", [f"{PS}batSoc"]),
        ("stat", "Solar now", [f"{PS}pv1InputWatts", f"{PS}pv2InputWatts"]),
        ("stat", "Output now", [f"{PS}invOutputWatts"]),
        ("stat", "Battery now", [f"{PS}batInputWatts"]),
        ("stat", "Custom load", [f"{PS}permanentWatts"]),
        ("stat", "Energy today", ["pv_input_wh", "output_wh"]),
        ("row", "Solar input", []),
        ("timeseries", "PV power", [f"{PS}pv1InputWatts", f"{PS}pv2InputWatts"]),
        ("timeseries", "PV voltage", [f"{PS}pv1InputVolt", f"{PS}pv2InputVolt"]),
        ("timeseries", "PV current", [f"{PS}pv1InputCur", f"{PS}pv2InputCur"]),
        ("row", "Inverter", []),
        ("timeseries", "AC output vs custom load", [f"{PS}invOutputWatts", f"{PS}permanentWatts"]),
        ("timeseries", "Grid voltage", [f"{PS}invOpVolt"]),
        ("timeseries", "Grid frequency", [f"{PS}invFreq"]),
        ("row", "Battery", []),
        ("timeseries", "State of charge and limits", [f"{PS}batSoc", *reversed(limits)]),
        ("timeseries", "Battery power", [f"{PS}batInputWatts"]),
        ("timeseries", "Temperatures", [f"{PS}{k}" for k in ("pv1Temp", "pv2Temp", "batTemp", "llcTemp")]),
        ("row", "Settings", []),
        ("state-timeline", "Supply priority", [f"{PS}supplyPriority"]),
        ("state-timeline", "Charge and discharge limits", list(reversed(limits))),
        ("row", "Errors", []),
        ("table", "Error and warning codes", PS_ERRORS),
        ("row", "Energy", []),
        ("timeseries", "Energy per day", FLOW_COUNTERS),
    ]
    board = json.loads((DASHBOARD_DIR / "powerstream.json").read_text(encoding="utf-8"))
    by_title = {p["title"]: p for p in panels(board)}
    # the summary's sign (battery_w = -batInputWatts) drives the battery panels: positive = charging
    for title in ("Battery now", "Battery power"):
        assert '"20_1.batInputWatts") * -1 AS "battery"' in by_title[title]["targets"][0]["query"]
    # settings in a graph are held (last, fill previous) and dashed
    soc = by_title["State of charge and limits"]
    assert [t["query"] for t in soc["targets"]] == [
        'SELECT mean("20_1.batSoc") AS "SoC" FROM "powerstream" WHERE $timeFilter AND "sn" =~ /^$sn$/ '
        'GROUP BY time($__interval), "name" fill(null)',
        'SELECT last("20_1.lowerLimit") AS "discharge limit", last("20_1.upperLimit") AS "charge limit" '
        'FROM "powerstream" WHERE $timeFilter AND "sn" =~ /^$sn$/ '
        'GROUP BY time($__interval), "name" fill(previous)',
    ]
    (dashed,) = soc["fieldConfig"]["overrides"]
    assert dashed["matcher"] == {"id": "byRegexp", "options": "/ (discharge limit|charge limit)$/"}
    priority = by_title["Supply priority"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert {v: o["text"] for v, o in priority.items()} == {"0": "power supply", "1": "power storage"}
    assert by_title["Error and warning codes"]["targets"][0]["query"].count(" <> 0") == len(PS_ERRORS)


def test_the_delta_pro_dashboard_shows_what_the_readme_promises() -> None:
    """SoC (display and BMS); input, output, remaining time now; energy today; input by source, output
    by port; cell voltages; temperatures; inverter power, voltage, frequency; limits, AC charging power
    and fan as state timelines; remaining time; errors; lifetime counters; energy per day."""
    packs = ("bmsMaster", "bmsSlave1", "bmsSlave2")  # the hints of the BMS group hold for every pack

    def each(*suffixes: str) -> list[str]:
        return [f"{p}.{s}" for p in packs for s in suffixes]

    layout = _layout("delta_pro.json")
    assert [(kind, title) for kind, title, _k in layout] == [
        ("gauge", "State of charge"),
        ("stat", "Solar now"),
        ("stat", "Input now"),
        ("stat", "Output now"),
        ("stat", "Battery now"),
        ("stat", "Remaining time"),
        ("stat", "Energy today"),
        ("row", "Power"),
        ("timeseries", "Total input and output"),
        ("timeseries", "Input by source"),
        ("timeseries", "Output by port"),
        ("row", "Battery"),
        *[("timeseries", t) for t in layout_titles(layout, "Battery")],
        ("row", "Inverter"),
        ("timeseries", "Inverter power"),
        ("timeseries", "Inverter voltage"),
        ("timeseries", "Inverter frequency"),
        ("row", "Settings"),
        *[("state-timeline", t) for t in layout_titles(layout, "Settings")],
        ("row", "Errors"),
        ("table", "Error and warning codes"),
        ("row", "Energy"),
        ("stat", "Lifetime energy"),
        ("timeseries", "Energy per day"),
    ]
    keys = {title: k for _kind, title, k in layout}  # a title twice: the later panel
    assert layout[0] == ("gauge", "State of charge", ["ems.f32LcdShowSoc", "bmsMaster.f32ShowSoc"])
    assert keys["Input now"] == ["pd.wattsInSum"] and keys["Output now"] == ["pd.wattsOutSum"]
    assert keys["Remaining time"] == ["ems.chgRemainTime", "ems.dsgRemainTime"]
    assert keys["Input by source"] == ["inv.inputWatts", "mppt.inWatts"]
    usb = [f"pd.{k}Watts" for k in ("usb1", "usb2", "qcUsb1", "qcUsb2", "typec1", "typec2")]
    assert sorted(keys["Output by port"]) == sorted(
        ["inv.outputWatts", "pd.carWatts", "mppt.dcdc12vWatts", *usb]
    )
    assert sorted(set(layout_titles(layout, "Battery"))) == [
        "Cell voltage",
        "Remaining time",
        "State of charge",
        "Temperatures",
    ]
    battery = {t: k for _kind, t, k in layout[layout.index(("row", "Battery", [])) :]}
    assert sorted(battery["Cell voltage"]) == sorted(each("maxCellVol", "minCellVol"))
    assert sorted(battery["Temperatures"]) == sorted(
        [*each("maxCellTemp", "minCellTemp", "maxMosTemp"), "inv.outTemp", "mppt.mpptTemp"]
    )
    assert sorted(battery["State of charge"]) == sorted(
        ["ems.f32LcdShowSoc", *each("f32ShowSoc"), "ems.maxChargeSoc", "ems.minDsgSoc"]
    )
    assert battery["Remaining time"] == ["ems.chgRemainTime", "ems.dsgRemainTime"]
    assert sorted(keys["Inverter voltage"]) == ["inv.acInVol", "inv.invOutVol"]
    assert sorted(keys["Inverter frequency"]) == ["inv.acInFreq", "inv.invOutFreq"]
    assert sorted(keys["Inverter power"]) == ["inv.inputWatts", "inv.outputWatts"]
    assert sorted(layout_titles(layout, "Settings")) == [
        "AC charging power setting",
        "Charge and discharge limits",
        "Fan",
    ]
    assert keys["Fan"] == ["inv.fanState"] and keys["AC charging power setting"] == ["inv.cfgSlowChgWatts"]
    assert sorted(keys["Error and warning codes"]) == sorted(
        [
            "pd.errCode",
            "inv.errCode",
            "mppt.faultCode",
            *each("errCode", "bmsFault", "allErrCode", "allBmsFault"),
        ]
    )
    assert keys["Lifetime energy"] == [
        "pd.chgSunPower",
        "pd.chgPowerAc",
        "pd.chgPowerDc",
        "pd.dsgPowerAc",
        "pd.dsgPowerDc",
    ]
    assert keys["Energy per day"] == ["pv_input_wh", "input_wh", "output_wh", *FLOW_COUNTERS[2:]]


def layout_titles(layout: list[tuple[str, str, list[str]]], row_title: str) -> list[str]:
    """The titles of the panels under a row (up to the next row)."""
    start = layout.index(("row", row_title, [])) + 1
    out = []
    for kind, title, _keys in layout[start:]:
        if kind == "row":
            break
        out.append(title)
    return out


# a product file without a single panel hint: its dashboard is made by the defaults
PLAIN_PRODUCT = """
[product]
slug = "test_box"
name = "Test Box"

[summary]
soc_percent = ["bms.soc"]
output_w = ["inv.outWatts"]
battery_w = ["-bms.dsgWatts"]

[[groups]]
prefixes = ["bms"]
[groups.fields]
soc = { unit = "%", kind = "measurement", desc = "State of charge", range = [0, 100] }
dsgWatts = { unit = "0.1W", kind = "measurement", desc = "Discharging power", range = [-100, 100] }
temp = { unit = "0.1°C", kind = "measurement", desc = "Pack temperature" }
cellVol = { unit = "mV", kind = "measurement", desc = "Cell voltages", array = true }
cycles = { kind = "counter", desc = "Charge cycles" }
errCode = { kind = "error_code", desc = "BMS error code" }

[[groups]]
prefixes = ["inv"]
[groups.fields]
outWatts = { unit = "W", kind = "measurement", desc = "AC output power", range = [0, 500] }
outVol = { unit = "0.1V", kind = "measurement", desc = "AC output voltage" }
outAmp = { unit = "0.1A", kind = "measurement", desc = "AC output current", hide = true }
raw = { kind = "measurement", desc = "A figure without a unit" }
acEnabled = { kind = "setting", desc = "AC output switch", values = { "0" = "off", "1" = "on" } }
maxWatts = { unit = "W", kind = "setting", desc = "Output limit", range = [0, 500] }
mode = { kind = "enum", desc = "Operating mode", values = { "0" = "idle", "1" = "running" } }
fw = { kind = "identifier", desc = "Firmware version" }

[[groups]]
prefixes = ["task"]
hide = true
[groups.fields]
hour = { kind = "setting", desc = "Start hour", range = [0, 23] }
"""


def _product(tmp_path: Path, text: str) -> Product:
    path = tmp_path / "test_box.toml"
    path.write_text(text, encoding="utf-8")
    return load_product_file(path)


def test_a_product_file_without_hints_gets_the_default_dashboard(tmp_path: Path) -> None:
    """Measurements with a unit by group and quantity (rows by quantity), settings as state timelines
    by group, unit and labels, error codes in the table; not arrays, counters, unitless figures,
    enums, identifiers, hidden fields or hidden groups; the summary makes the header and the energy
    panels, and its sign (battery_w = -dsgWatts) the sign of the battery panels."""
    board = BUILD.product_dashboard(_product(tmp_path, PLAIN_PRODUCT))
    assert board["uid"] == "ecoflow-test_box" and board["title"] == "EcoFlow Test Box"
    layout = [(p["type"], p["title"], _panel_keys(p) if p["type"] != "row" else []) for p in board["panels"]]
    assert layout == [
        ("gauge", "State of charge", ["bms.soc"]),
        ("stat", "Output now", ["inv.outWatts"]),
        ("stat", "Battery now", ["bms.dsgWatts"]),
        ("stat", "Energy today", ["output_wh"]),
        ("row", "Power", []),
        ("timeseries", "bms: power", ["bms.dsgWatts"]),
        ("timeseries", "inv: power", ["inv.outWatts"]),
        ("row", "Battery", []),
        ("timeseries", "bms: ratio", ["bms.soc"]),
        ("row", "Temperatures", []),
        ("timeseries", "bms: temperature", ["bms.temp"]),
        ("row", "Measurements", []),
        ("timeseries", "inv: voltage", ["inv.outVol"]),
        ("row", "Settings", []),
        ("state-timeline", "inv: settings (off / on)", ["inv.acEnabled"]),
        ("state-timeline", "inv: settings (W)", ["inv.maxWatts"]),
        ("row", "Errors", []),
        ("table", "Error and warning codes", ["bms.errCode"]),
        ("row", "Energy", []),
        ("timeseries", "Energy per day", ["output_wh", "battery_charge_wh", "battery_discharge_wh"]),
    ]
    by_title = {p["title"]: p for p in panels(board)}
    assert [p["gridPos"]["w"] for p in board["panels"][4:7]] == [24, 12, 12]
    assert by_title["bms: power"]["targets"][0]["query"].startswith(
        'SELECT mean("bms.dsgWatts") * -1 AS "dsgWatts" FROM "test_box"'
    )
    assert '"bms.dsgWatts") * -1 AS "battery"' in by_title["Battery now"]["targets"][0]["query"]
    assert by_title["bms: ratio"]["fieldConfig"]["defaults"]["unit"] == "percent"
    switch = by_title["inv: settings (off / on)"]["fieldConfig"]["defaults"]["mappings"][0]["options"]
    assert switch == {
        "0": {"text": "off", "index": 0, "color": "green"},
        "1": {"text": "on", "index": 1, "color": "blue"},
    }
    assert by_title["inv: settings (W)"]["fieldConfig"]["defaults"]["unit"] == "watt"
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "account", "name", "sn", "tz"]


def test_hints_make_the_panels_and_only_those(tmp_path: Path) -> None:
    text = PLAIN_PRODUCT.replace(
        'desc = "AC output power", range = [0, 500] }',
        'desc = "AC output power", range = [0, 500], panel = "Output", row = "Outputs", label = "AC" }',
    ).replace(
        'desc = "Output limit", range = [0, 500] }',
        'desc = "Output limit", range = [0, 500], panel = ["Output", "Limit"], label = "limit" }',
    )
    text += '\n[dashboard]\nrows = ["Outputs"]\n[dashboard.panels."Output"]\nstack = true\n'
    board = BUILD.product_dashboard(_product(tmp_path, text))
    layout = [
        (p["type"], p["title"], _panel_keys(p) if p["type"] != "row" else []) for p in board["panels"][4:]
    ]
    assert layout == [
        ("row", "Outputs", []),
        ("timeseries", "Output", ["inv.outWatts", "inv.maxWatts"]),
        ("row", "Settings", []),
        ("state-timeline", "Limit", ["inv.maxWatts"]),
        ("row", "Errors", []),
        ("table", "Error and warning codes", ["bms.errCode"]),
        ("row", "Energy", []),
        ("timeseries", "Energy per day", ["output_wh", "battery_charge_wh", "battery_discharge_wh"]),
    ]
    output = board["panels"][5]
    assert output["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    assert [o["matcher"]["options"] for o in output["fieldConfig"]["overrides"]] == ["/ (limit)$/"]


POWER = 'desc = "AC output power", range = [0, 500]'
VOLTS = 'desc = "AC output voltage"'


@pytest.mark.parametrize(
    ("edits", "message"),
    [
        (
            [(POWER, f'{POWER}, panel = "P", row = "Solar"')],
            "field outWatts: row 'Solar' is not a dashboard row; known: Power, Solar input, Battery,",
        ),
        (
            [(POWER, f'{POWER}, row = "Power"')],
            "row 'Power' without a panel: name the panel the field goes in",
        ),
        (
            [(POWER, f'{POWER}, panel = "P"'), (VOLTS, f'{VOLTS}, panel = "P"')],
            "panel 'P' mixes Grafana units ['volt', 'watt'] (inv.outWatts, inv.outVol): one unit a panel",
        ),
        (
            [(POWER, f'{POWER}, panel = "P", row = "Power"'), (VOLTS, f'{VOLTS}, panel = "P", row = "Grid"')],
            "panel 'P' is put in rows ['Grid', 'Power']: give it one row",
        ),
        (
            [
                ('desc = "Operating mode"', 'desc = "Operating mode", panel = "P"'),
                (POWER, f'{POWER}, panel = "P"'),
            ],
            "panel 'P' mixes enum fields (a state timeline) with measurements (a graph)",
        ),
        (
            [('desc = "BMS error code"', 'desc = "BMS error code", panel = "Errors"')],
            "a error_code field takes no panel hint (error codes go to the error table by themselves",
        ),
        ([('desc = "Firmware version"', 'desc = "Firmware version", label = "fw"')], "it takes no label"),
        (
            [('desc = "Cell voltages", array = true', 'desc = "Cell voltages", array = true, panel = "P"')],
            "an array field takes no panel hint",
        ),
        (
            [
                (
                    'desc = "AC output current", hide = true',
                    'desc = "AC output current", hide = true, panel = "P"',
                )
            ],
            "hide with a panel: a field is either in a panel or hidden",
        ),
        (
            [(POWER, f'{POWER}, panel = ["P", "Q"], row = "Power"')],
            "row 'Power' with several panels: give each panel its row in [dashboard.panels]",
        ),
        ([(POWER, f'{POWER}, panel = ["P", "P"]')], "names a panel twice"),
        (
            [
                (
                    'desc = "Start hour", range = [0, 23] }',
                    'desc = "Start hour", range = [0, 23], panel = "P" }',
                )
            ],
            "hide with a panel: a hidden group's fields take no panel",
        ),
        ([(POWER, f'{POWER}, panel = ""')], "a panel title is empty"),
    ],
)
def test_invalid_hints_are_refused_with_a_message_naming_them(
    tmp_path: Path, edits: list[tuple[str, str]], message: str
) -> None:
    text = PLAIN_PRODUCT
    for old, new in edits:
        assert old in text
        text = text.replace(old, new)
    with pytest.raises(CatalogError) as caught:
        _product(tmp_path, text)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("dashboard", "message"),
    [
        ('[dashboard.panels."Nope"]\nstack = true', "[dashboard.panels] 'Nope': no field names this panel"),
        ('[dashboard]\nrows = ["Errors"]', "rows Errors, Energy are generated, not declared"),
        ('[dashboard]\nrows = ["A", "A"]', "rows ('A', 'A') names a row twice"),
        (
            '[dashboard.panels."P"]\nrow = "Nowhere"',
            "[dashboard.panels] 'P': row 'Nowhere' is not a dashboard row",
        ),
        ('[dashboard.panels."P"]\nsize = 3', "Extra inputs are not permitted"),
    ],
)
def test_invalid_dashboard_sections_are_refused(tmp_path: Path, dashboard: str, message: str) -> None:
    text = PLAIN_PRODUCT.replace(POWER, f'{POWER}, panel = "P"') + "\n" + dashboard + "\n"
    with pytest.raises(CatalogError) as caught:
        _product(tmp_path, text)
    assert message in str(caught.value)


def grafana_version_in_compose() -> str:
    compose = need_yaml().safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    image = compose["services"]["grafana"]["image"]
    match = re.fullmatch(r"grafana/grafana(?:-oss)?:(\d+\.\d+\.\d+)", image)
    assert match, f"pin an exact Grafana version in docker-compose.yml, not {image!r}"
    return match.group(1)


def test_dashboards_validate_against_grafanas_schema_of_the_compose_version() -> None:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"node is not installed: {SETUP_HINT}", pytrace=False)
    installed = CHECK_DIR / "node_modules" / "@grafana" / "schema" / "package.json"
    if not installed.exists():
        pytest.fail(f"grafana/check/node_modules is missing: {SETUP_HINT}", pytrace=False)
    version = grafana_version_in_compose()
    pinned = json.loads((CHECK_DIR / "package.json").read_text(encoding="utf-8"))["devDependencies"]
    assert pinned["@grafana/schema"] == version, "grafana/check pins another Grafana than docker-compose.yml"
    lock = json.loads((CHECK_DIR / "package-lock.json").read_text(encoding="utf-8"))
    assert lock["packages"]["node_modules/@grafana/schema"]["version"] == version
    assert json.loads(installed.read_text(encoding="utf-8"))["version"] == version, (
        f"grafana/check/node_modules holds another @grafana/schema: {SETUP_HINT}"
    )
    result = subprocess.run(
        [node, str(CHECK_DIR / "check.mjs")], capture_output=True, text=True, timeout=120, cwd=CHECK_DIR
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"valid against @grafana/schema {version}" in result.stdout


def test_the_schema_check_rejects_a_broken_dashboard(tmp_path: Path) -> None:
    """The check is not vacuous: wrong enum values, unknown keys and a missing gridPos member fail it."""
    node = shutil.which("node")
    if node is None or not (CHECK_DIR / "node_modules" / "typescript").exists():
        pytest.fail(f"node or grafana/check/node_modules is missing: {SETUP_HINT}", pytrace=False)
    board = json.loads((DASHBOARD_DIR / "powerstream.json").read_text(encoding="utf-8"))
    series_panel = next(p for p in panels(board) if p["type"] == "timeseries")
    series_panel["options"]["legend"]["displayMode"] = "lst"
    series_panel["fieldConfig"]["defaults"]["custom"]["drawStyle"] = "curvy"
    stat_panel = next(p for p in panels(board) if p["type"] == "stat")
    stat_panel["fieldConfig"]["defaults"]["thresholds"]["mode"] = "absolut"
    stat_panel["gridPos"].pop("y")
    board["templating"]["list"][1]["bogus"] = True
    (tmp_path / "broken.json").write_text(json.dumps(board), encoding="utf-8")
    result = subprocess.run(
        [node, str(CHECK_DIR / "check.mjs"), str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    out = result.stdout + result.stderr
    assert result.returncode != 0
    for needle in ('"lst"', '"curvy"', '"absolut"', "Property 'y' is missing", "'\"bogus\"' does not exist"):
        assert needle in out, out


def _doc_fields() -> dict[str, set[str]]:
    """Fields of ecoflow_summary / ecoflow_status / ecoflow_collector as docs/schema.md names them."""
    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.M)
    out: dict[str, set[str]] = {}
    for section in sections:
        for measurement in ("ecoflow_summary", "ecoflow_status"):
            if section.startswith(f"`{measurement}`"):
                table = section.split("| field | meaning |", 1)[1].split("\n\n", 1)[0]
                out[measurement] = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.M))
    collector = next(s for s in sections if s.startswith("`ecoflow_collector`"))
    names = set(re.findall(r"`(\w+(?:<\w+>)?)`", collector))
    reasons = {
        "rejected": re.search(r"`rejected_<reason>` \(([^)]*)\)", collector),
        "polls": re.search(r"`polls_<reason>`\s*\(([^)]*)\)", collector),
    }
    expanded = {n for n in names if "<" not in n}
    for prefix, found in reasons.items():
        assert found, f"docs/schema.md no longer lists the {prefix}_<reason> values"
        expanded |= {f"{prefix}_{r}" for r in re.findall(r"`(\w+)`", found.group(1))}
    # "the writer's counters (... see collector/sink/)": the numeric keys InfluxWriter.stats documents,
    # or the sink's stats class it points to
    doc = (InfluxWriter.stats.__doc__ or "") + (getattr(sink, "SinkStats", None).__doc__ or "")
    expanded |= set(re.findall(r"``(\w+)``", doc))
    out["ecoflow_collector"] = expanded
    return out


def _catalog_fields() -> dict[str, dict[str, DeviceUnit]]:
    """measurement -> stored field name -> its unit, from the catalog (arrays as key[0..15])."""
    out: dict[str, dict[str, DeviceUnit]] = {}
    for slug, product in CATALOG.products.items():
        fields: dict[str, DeviceUnit] = {}
        for spec in product.all_fields():
            keys = [f"{spec.key}[{i}]" for i in range(16)] if spec.array else [spec.key]
            for key in keys:
                keys_n = [key.replace("#", str(n)) for n in range(1, 12)] if "#" in key else [key]
                for k in keys_n:
                    fields[k] = spec.unit
        out[slug] = fields
    return out


BASE_SUMMARY = {"soc_percent": "%", "input_w": "W", "output_w": "W", "pv_input_w": "W", "battery_w": "W"}
# ecoflow_summary is gaining the battery's health (Delta Pro: bmsMaster.soh, bmsMaster.cycles)
SUMMARY_UNITS = {**BASE_SUMMARY, "battery_soh_percent": "%", "battery_cycles": ""}
ROLLUP_UNITS = {
    ENERGY_1H: ENERGY_UNITS,  # each counter's last value in the hour, under its own name
    SUMMARY_1H: {f"{f}_{agg}": unit for f, unit in SUMMARY_UNITS.items() for agg in ("mean", "min", "max")},
}
IDENT = re.compile(r'"((?:[^"\\]|\\.)*)"')


def _identifiers(query: str) -> tuple[set[str], set[str], set[str]]:
    """(measurements after FROM, aliases after AS, every other double-quoted identifier)."""
    measurements = set(re.findall(r'FROM\s+"([^"]+)"', query))
    aliases = set(re.findall(r'AS\s+"([^"]+)"', query))
    quoted = set(IDENT.findall(query))
    return measurements, aliases, quoted - measurements - aliases - TAGS


def test_every_field_a_dashboard_names_exists() -> None:
    catalog = _catalog_fields()
    docs = _doc_fields()
    known = {
        **{m: set(f) for m, f in catalog.items()},
        **docs,
        "ecoflow_summary": set(SUMMARY_UNITS),
        ENERGY: set(ENERGY_UNITS),
        **{m: set(units) for m, units in ROLLUP_UNITS.items()},
    }
    assert docs["ecoflow_summary"] in (set(BASE_SUMMARY), set(SUMMARY_UNITS))
    assert {"online", "state"} == docs["ecoflow_status"]
    problems = []
    count = 0
    for name, board in dashboards().items():
        for query in panel_queries(name, board) + variable_queries(name, board):
            measurements, aliases, fields = _identifiers(query.text)
            assert measurements, f'{name} {query.where}: no FROM "measurement"'
            unknown_measurements = measurements - set(known)
            if unknown_measurements:
                problems.append(f"{name} {query.where}: unknown measurement {unknown_measurements}")
                continue
            for field in fields:
                count += 1
                # a name is either a field of one of the measurements or a subquery's alias
                if field not in aliases and not any(field in known[m] for m in measurements):
                    problems.append(
                        f"{name} {query.where}: {field!r} is not a field of {sorted(measurements)}"
                    )
    assert not problems, "\n".join(problems)
    assert count > 100


def _panel_units(panel: dict[str, Any]) -> set[str]:
    units = {panel["fieldConfig"]["defaults"].get("unit")}
    for override in panel["fieldConfig"].get("overrides", []):
        if override["matcher"]["options"] in ("Time", "name"):  # table columns, not the fields
            continue
        units |= {p["value"] for p in override["properties"] if p["id"] == "unit"}
    return units


def test_panels_show_the_stored_unit_of_their_fields() -> None:
    """A panel that plots fields as they are stored uses the Grafana unit of their stored unit; energy
    made from power (/ 60000) or from Wh counters (/ 1000) is kWh; a ratio (* 100) is percent."""
    catalog = _catalog_fields()
    documented = {"ecoflow_summary": SUMMARY_UNITS, ENERGY: ENERGY_UNITS, **ROLLUP_UNITS}
    stored = {
        **catalog,
        **{m: {f: DEVICE_UNITS[u] for f, u in fields.items()} for m, fields in documented.items()},
    }
    checked = 0
    for name, board in dashboards().items():
        for panel in panels(board):
            units = _panel_units(panel)
            for target in panel["targets"]:
                query = target["query"]
                measurements, _aliases, fields = _identifiers(query)
                if not measurements <= set(stored):
                    continue
                where = f"{name} panel {panel['id']} {panel['title']!r} {target['refId']}"
                if "/ 60000" in query or ("non_negative_difference(" in query and "/ 1000 AS" in query):
                    assert units == {BUILD.KWH}, f"{where}: energy must be kWh, not {units}"
                    checked += 1
                    continue
                if " * 100 AS " in query:
                    assert units == {"percent"}, f"{where}: a share must be percent, not {units}"
                    checked += 1
                    continue
                selected = set(re.findall(r'(?:mean|last|max|min)\("([^"]+)"\)', query)) or fields
                for field in selected:
                    unit = next(stored[m][field] for m in measurements if field in stored[m])
                    if unit.stored == "":
                        assert units <= {None, "none"}, (
                            f"{where}: {field} has no unit, the panel shows {units}"
                        )
                    else:
                        # the Grafana unit of units.py (DeviceUnit.grafana), or another display of it
                        allowed = BUILD.UNIT_ALIASES.get(unit.stored, {unit.grafana})
                        assert unit.grafana in allowed
                        assert units & allowed, (
                            f"{where}: {field} is stored in {unit.stored}: {allowed}, not {units}"
                        )
                    checked += 1
    assert checked > 100


SERIAL = re.compile(r"\b(?:HW51|HW52|DCABZ|DCEBZ|R3\d\d|P1\d\d)[A-Z0-9]{6,}\b")


def test_no_serial_is_hard_coded_and_every_device_query_filters_by_a_variable() -> None:
    for name, board in dashboards().items():
        text = json.dumps(board)
        assert not SERIAL.search(text), f"{name}: a serial number is written into the dashboard"
        variables = {v["name"]: v for v in board["templating"]["list"]}
        for query in panel_queries(name, board):
            measurements, _a, _f = _identifiers(query.text)
            if measurements & {
                *DEVICE_MEASUREMENTS,
                "ecoflow_summary",
                "ecoflow_status",
                ENERGY,
                *ROLLUP_UNITS,
            }:
                assert re.search(r'"(sn|name)" =~ /\^\$(sn|name)\$/', query.text), f"{name} {query.where}"
            if "ecoflow_collector" in measurements:
                assert '"instance" =~ /^$instance$/' in query.text, f"{name} {query.where}"
        for var in ("sn", "name", "instance", "product"):
            if var in variables:
                assert variables[var]["multi"] and variables[var]["includeAll"], (
                    f"{name}: ${var} multi-select"
                )
                assert variables[var]["type"] == "query"


def test_provisioning_reads_the_datasource_from_the_environment_and_loads_the_dashboards() -> None:
    y = need_yaml()
    source = y.safe_load((GRAFANA / "provisioning" / "datasources" / "influxdb.yaml").read_text("utf-8"))
    assert source["apiVersion"] == 1
    (ds,) = source["datasources"]
    assert ds["type"] == "influxdb" and ds["uid"] == BUILD.DATASOURCE_UID and ds["access"] == "proxy"
    assert ds["url"] == "${INFLUXDB_URL}"
    json_data, secure = ds["jsonData"], ds["secureJsonData"]
    assert json_data["version"] == "InfluxQL"
    assert json_data["dbName"] == "${INFLUXDB_BUCKET}"
    assert json_data["httpMode"] in ("GET", "POST")
    assert json_data["httpHeaderName1"] == "Authorization"
    assert secure["httpHeaderValue1"] == "Token ${INFLUXDB_TOKEN}"
    provider = y.safe_load((GRAFANA / "provisioning" / "dashboards" / "ecoflow.yaml").read_text("utf-8"))
    (prov,) = provider["providers"]
    assert prov["type"] == "file"
    compose = y.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    mounts = compose["services"]["grafana"]["volumes"]
    targets = {m.split(":")[1] for m in mounts if m.split(":")[0] == "./grafana/dashboards"}
    assert targets == {prov["options"]["path"]}
    assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in mounts
    env = compose["services"]["grafana"]["environment"]
    assert {"INFLUXDB_URL", "INFLUXDB_BUCKET", "INFLUXDB_TOKEN"} <= set(env)
    for name, board in dashboards().items():
        sources = {v["name"]: v for v in board["templating"]["list"] if v["type"] == "datasource"}
        # the energy dashboard reads the hourly rollups through a second one (they may be in another
        # bucket), by default the same data source
        assert set(sources) == ({"datasource", "rollups"} if name == "energy.json" else {"datasource"})
        for ds_var in sources.values():
            assert ds_var["query"] == "influxdb" and ds_var["current"]["value"] == BUILD.DATASOURCE_UID
        for panel in panels(board):
            for target in panel["targets"]:
                rollup = bool(_identifiers(target["query"])[0] & set(ROLLUP_UNITS))
                uid = "${rollups}" if rollup else "${datasource}"
                assert target["datasource"] == {"type": "influxdb", "uid": uid}, f"{name} {panel['title']}"
                assert panel["datasource"] == target["datasource"], f"{name} {panel['title']}"


# ------------------------------------------------------------------------------------ live queries
@dataclass
class Live:
    influx: InfluxServer
    db: str
    serials: list[str]
    names: list[str]
    instance: str


def first_error_key(product: Product) -> str | None:
    """The error_code field the live test sets non-zero (the error table shows only such reports)."""
    keys = sorted(s.key for s in product.all_fields() if s.kind.value == "error_code" and not s.array)
    return keys[0] if keys else None


@pytest.fixture(scope="module")
def live(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """A collector that ingested a few seconds of every simulated product into a fresh database, with
    a non-zero error code on each device and two self-telemetry points; and a device of every other
    product fed from its fixture payloads through the collector's pipeline."""
    db = f"grafana_{uuid.uuid4().hex[:10]}"
    influx_server.create_database(db)
    started = int(time.time())
    spec = ",".join(f"{slug}=1" for slug in SIMULATED_PRODUCTS)
    try:
        # two accounts, so every point carries the `account` tag the dashboards' Account variable reads
        with LocalCloud(spec, accounts=2, mosquitto=mosquitto_server, publish_rate=16.0) as cloud:
            state = tmp_path_factory.mktemp("grafana-live")
            influx = {"url": influx_server.url, "bucket": db, "token": "t", "flush_interval_s": 0.2}
            settings = settings_from_values(accounts_settings(cloud, state, influx))
            with running(settings) as collector:
                wait_for(lambda: all(a.mqtt.connected for a in collector.accounts), what="MQTT sessions")
                errors: dict[str, str] = {}  # sn -> error key set non-zero
                for device in cloud.devices:
                    key = first_error_key(CATALOG.products[device.product_slug])
                    if key is not None:
                        device.set_quota(key, 3)
                        errors[device.sn] = key

                def landed() -> bool:
                    for device in cloud.devices:
                        count = influx_server.rows(
                            db, f"SELECT count(*) FROM \"{device.product_slug}\" WHERE sn = '{device.sn}'"
                        )
                        # a field not written yet counts as null (InfluxDB answers a row of them
                        # while a device's first points are still on their way)
                        counts = [v or 0 for k, v in count[0].items() if k != "time"] if count else []
                        if not counts or max(counts) < 4:
                            return False
                    return all(
                        influx_server.rows(
                            db,
                            f'SELECT "{key}" FROM "{device.product_slug}" '
                            f"WHERE \"{key}\" <> 0 AND sn = '{device.sn}'",
                        )
                        for device in cloud.devices
                        if (key := errors.get(device.sn))
                    )

                wait_for(landed, timeout=30, what="reports of every simulated product and the error codes")
                collector.write_all_status()
                collector.write_telemetry()
                time.sleep(1.2)  # the rate panels need two telemetry points in different 1 s buckets
                collector.write_telemetry()
                collector.sink.flush(5)  # type: ignore[attr-defined]
                instance = collector.mqtt.client_id
            devices = [(d.sn, d.device_name, d.product_slug) for d in cloud.devices]
            fed = [
                feed_fixtures(influx_server, db, CATALOG.products[slug], started) for slug in FIXTURE_PRODUCTS
            ]
            write_energy_history(influx_server, db, devices + fed, started)
            yield Live(
                influx_server,
                db,
                [d.sn for d in cloud.devices] + [sn for sn, _n, _p in fed],
                [d.device_name for d in cloud.devices] + [name for _s, name, _p in fed],
                instance,
            )
    finally:
        influx_server.drop_database(db)


FEED_TIMES = (-1800, -1200, -600, -300, -60)  # seconds before the collector started
FIXTURE_ACCOUNT = "home"  # the live data has two accounts: every device point carries the tag


def feed_fixtures(influx: InfluxServer, db: str, product: Product, started: int) -> tuple[str, str, str]:
    """A device of `product` that sent each of its fixture payloads (tests/fixtures/<slug>/*.json) at
    each of FEED_TIMES, written as the daemon writes them: decode -> normalize -> points (with the
    device's memory, so the summary is made as the daemon makes it) -> line protocol. Like the
    simulated devices, it reports one non-zero error code (the last report at the last time), added
    to the decoded payload before it is normalized. Returns (sn, name, product)."""
    paths = sorted((FIXTURES / product.slug).glob("*.json"))
    assert paths, f"{product.slug}: no fixture payloads in tests/fixtures/{product.slug}"
    prefix = product.serial_prefixes[0] if product.serial_prefixes else "FX"
    sn, name = f"{prefix}FIXTURE0001", f"fixture {product.name}"
    device = Device.resolve(CATALOG, sn, name, product.slug, account=FIXTURE_ACCOUNT)
    assert device.product is product
    pipeline, memory = Pipeline(), FieldMemory(KeyTable())
    error = first_error_key(product)
    lines = []
    for offset in FEED_TIMES:
        for index, path in enumerate(paths):
            decoded = decode_bytes(path.read_bytes())
            if error is not None and offset == FEED_TIMES[-1] and index == len(paths) - 1:
                decoded = Decoded(decoded.kind, {**decoded.values, error: 7}, decoded.online)
            time_ms = (started + offset) * 1000 + index
            points = pipeline.points(device, decoded, time_ms, memory)
            lines.append(to_lines(points))
    influx.write_lines(db, [line for line in lines if line], precision="ms")
    return sn, name, product.slug


def test_fixture_feeding_writes_what_the_pipeline_makes(influx_server: InfluxServer, influx_db: str) -> None:
    """The path for products the simulator does not simulate: a DELTA 2's fixture payloads at each of
    FEED_TIMES land as the daemon writes them, in SI units (its summary too), with the error code."""
    product = CATALOG.products["delta_2"]
    started = int(time.time())
    sn, name, slug = feed_fixtures(influx_server, influx_db, product, started)
    assert (sn, name, slug) == ("R331FIXTURE0001", "fixture DELTA 2", "delta_2")
    payloads = len(list((FIXTURES / slug).glob("*.json")))
    every = influx_server.rows(influx_db, 'SELECT * FROM "delta_2"', epoch="ms")
    assert sorted(row["time"] for row in every) == [
        (started + offset) * 1000 + index for offset in FEED_TIMES for index in range(payloads)
    ]
    rows = influx_server.rows(influx_db, 'SELECT "bms_bmsStatus.vol" FROM "delta_2"')
    volts = [row["bms_bmsStatus.vol"] for row in rows if row["bms_bmsStatus.vol"] is not None]
    assert volts and all(40 < v < 60 for v in volts)  # mV on the wire, V stored
    summary = influx_server.rows(influx_db, 'SELECT count("soc_percent") FROM "ecoflow_summary"')
    assert summary[0]["count"] >= len(FEED_TIMES)
    error = first_error_key(product)
    assert error is not None
    faults = influx_server.rows(influx_db, f'SELECT "{error}" FROM "delta_2" WHERE "{error}" <> 0', epoch="s")
    assert [(row["time"], row[error]) for row in faults] == [(started + FEED_TIMES[-1], 7.0)]


def _tag(value: str) -> str:
    return re.sub(r"([ ,=])", r"\\\1", value)


def _line(measurement: str, tags: dict[str, str], fields: dict[str, float], t: int) -> str:
    tag_text = ",".join(f"{k}={_tag(v)}" for k, v in sorted(tags.items()))
    return f"{measurement},{tag_text} {','.join(f'{k}={float(v)!r}' for k, v in fields.items())} {t}"


def counters(t: int, origin: int, product: str) -> dict[str, float]:
    """Energy counters as the collector's contract defines them, at time t (s): a device that saw
    300 W of solar on average since `origin`, 250 W out, a battery cycling through 40/35 W, and
    1 minute in 30 not integrated (the Delta Pro also charges 20 W from AC)."""
    seconds = t - origin
    solar = 300 * seconds / 3600
    gap = (seconds // 1800) * 60.0
    return {
        "pv_input_wh": solar,
        "input_wh": solar + (20 * seconds / 3600 if product == "delta_pro" else 0),
        "output_wh": 250 * seconds / 3600,
        "battery_charge_wh": 40 * seconds / 3600,
        "battery_discharge_wh": 35 * seconds / 3600,
        "covered_s": seconds - gap,
        "gap_s": gap,
    }


def write_energy_history(
    influx: InfluxServer, db: str, devices: list[tuple[str, str, str]], started: int
) -> None:
    """Points of the documented schema where the collector did not make them itself in the few
    seconds it ran: the energy counters (ecoflow_energy, every 60 s, when the collector wrote fewer
    than two per device) for the 3 hours before the collector started, and the hourly rollups
    (ecoflow_energy_1h: each counter's last value in the hour; ecoflow_summary_1h: <field>_mean,
    _min, _max of the product's summary fields) over two years, hourly for the last two days and
    every 6 hours before (rollups are written by a scheduled job of the collector, not in seconds).
    All of it ends before the collector's own points, so a counter the collector starts at 0 later is
    a restart that adds nothing (non_negative_difference)."""
    counted = {
        row["sn"]: row["count"]
        for row in influx.rows(db, f'SELECT count("pv_input_wh") FROM "{ENERGY}" GROUP BY "sn"')
    }
    origin = started - 800 * 86400
    hour = started - started % 3600
    lines = []
    for sn, name, product in devices:
        tags = {"sn": sn, "name": name, "product": product}
        # the counters of the flows the product's summary has (collector/history/energy.py)
        kept = {field for field, _label in BUILD.product_flows(CATALOG.products[product])}
        if not kept:  # no summary power: the collector counts no energy for it
            continue
        kept |= {"covered_s", "gap_s"}

        def flows(t: int, product: str = product, kept: set[str] = kept) -> dict[str, float]:
            return {k: v for k, v in counters(t, origin, product).items() if k in kept}

        if counted.get(sn, 0) < 2:
            times = [*range(started - 3 * 3600, started - 60, 60), started - 20, started - 10, started - 1]
            lines += [_line(ENERGY, tags, flows(t), t) for t in times]
        hours = [*range(hour - 760 * 86400, hour - 48 * 3600, 6 * 3600), *range(hour - 48 * 3600, hour, 3600)]
        summarized = CATALOG.products[product].summary
        for t in hours:
            lines.append(_line(ENERGY_1H, tags, flows(t + 3599), t))
            days = (t - origin) / 86400
            typical = {
                "soc_percent": 55.0,
                "input_w": 320.0,
                "output_w": 250.0,
                "pv_input_w": 300.0,
                "battery_w": 5.0,
                "battery_soh_percent": 100 - 2.5 * days / 365,
                "battery_cycles": 120 + days // 3,
            }
            summary = {k: v for k, v in typical.items() if k in summarized}
            fields: dict[str, float] = {}
            for key, v in summary.items():
                fields |= {f"{key}_mean": v, f"{key}_min": v - (v % 7), f"{key}_max": v + 3}
            lines.append(_line(SUMMARY_1H, tags, fields, t))
    for start in range(0, len(lines), 5000):
        influx.write_lines(db, lines[start : start + 5000], precision="s")


def time_filter(time_from: str) -> str:
    """Grafana's $timeFilter for a range from `time_from` to now: 'now-6h', a panel's '7d' or '1y',
    'now/d' (today, here in UTC)."""
    if time_from == "now/d":
        midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return f"time >= '{midnight:%Y-%m-%dT%H:%M:%SZ}'"
    match = re.fullmatch(r"(?:now-)?(\d+)([smhdwy])", time_from)
    assert match, f"unsupported time range {time_from!r}"
    count, unit = int(match.group(1)), match.group(2)
    if unit == "y":
        count, unit = count * 365, "d"
    return f"time > now() - {count}{unit}"


ALL_VALUE = "\0all:"  # marks a variable at "All" whose allValue Grafana puts into the query unescaped


def grafana_regex_escape(value: str) -> str:
    """Grafana's InfluxDB data source escapes regex values like this (escapeRegex in @grafana/data)."""
    return re.sub(r"[\\^$*+?.()|[\]{}/]", lambda m: "\\" + m.group(0), value)


def substitute(
    query: str, variables: dict[str, list[str]], tz: str = "UTC", time_from: str = "now-1h"
) -> str:
    """The query as Grafana sends it: $timeFilter, $__interval and the template variables replaced
    (a multi-value variable inside /^...$/ becomes (a|b), each value regex-escaped)."""
    text = query.replace("$timeFilter", time_filter(time_from))
    text = text.replace("$__interval_ms", "1000").replace("$__interval", "1s").replace("$interval", "1s")
    text = text.replace("$tz", tz)

    def regex_value(match: re.Match[str]) -> str:
        values = variables[match.group(1)]
        if len(values) == 1 and values[0].startswith(ALL_VALUE):  # "All" with a custom all value: as is
            return "/^" + values[0].removeprefix(ALL_VALUE) + "$/"
        escaped = [grafana_regex_escape(v) for v in values]
        return "/^" + (escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")") + "$/"

    text = re.sub(r"/\^\$(\w+)\$/", regex_value, text)
    leftover = re.findall(r"\$\{?\w+", text)
    assert not leftover, f"unknown variable or macro {leftover} in {query}"
    return text


def non_null_values(result: dict[str, Any]) -> int:
    count = 0
    for statement in result["results"]:
        for series in statement.get("series", []):
            columns = series["columns"]
            for values in series["values"]:
                count += sum(
                    1 for col, v in zip(columns, values, strict=True) if col != "time" and v is not None
                )
    return count


def resolve_variables(live: Live, name: str, board: dict[str, Any]) -> dict[str, list[str]]:
    """Run the dashboard's variable queries in order, as Grafana does, each seeing the ones before it
    at "All" (a variable's own `allValue` where it has one); every one must find values."""
    values: dict[str, list[str]] = {}
    for var in board["templating"]["list"]:
        if var["type"] == "custom":
            values[var["name"]] = [var["current"]["value"]]
        if var["type"] != "query":
            continue
        query = substitute(var["query"], values, time_from=board["time"]["from"])
        result = live.influx.query(live.db, query)
        found = [row[1] for s in result["results"][0].get("series", []) for row in s["values"]]
        assert found, f"{name} variable {var['name']}: {query} found nothing"
        values[var["name"]] = [ALL_VALUE + var["allValue"]] if var.get("allValue") else sorted(set(found))
    return values


@pytest.mark.parametrize("name", DASHBOARD_NAMES)
def test_every_dashboard_query_returns_data_from_a_real_influxdb(live: Live, name: str) -> None:
    board = dashboards()[name]
    variables = resolve_variables(live, name, board)
    if "sn" in variables:
        assert set(variables["sn"]) <= set(live.serials) and variables["sn"]
    if "name" in variables:
        assert set(variables["name"]) <= set(live.names)
    if "instance" in variables:
        assert live.instance in variables["instance"]
    failures = []
    queries = panel_queries(name, board)
    assert queries
    for query in queries:
        for tz in ("UTC", "Europe/Berlin") if "$tz" in query.text else ("UTC",):
            text = substitute(query.text, variables, tz, query.time_from)
            try:
                result = live.influx.query(live.db, text)
            except Exception as exc:  # the message names the query
                failures.append(f"{query.where}: {exc}")
                continue
            if non_null_values(result) == 0:
                failures.append(f"{query.where}: no data: {text}")
    assert not failures, "\n".join(failures)
