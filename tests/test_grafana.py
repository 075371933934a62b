"""The dashboards, checked the ways that stand in for a Grafana server (none can be installed here):

- they are what grafana/build.py generates (the dashboards are code);
- they validate against Grafana's own dashboard and panel schemas (npm @grafana/schema of the Grafana
  version docker-compose.yml runs, compiled with tsc --strict by grafana/check/check.mjs);
- every field they name exists in the catalog or in docs/schema.md, with the unit the panel shows;
- no serial number is written into them: every device query filters by a template variable;
- every variable query and every panel query, with Grafana's macros and variables substituted the way
  Grafana substitutes them (the panel's own time range or the dashboard's), runs against a real
  InfluxDB that a collector filled from the local EcoFlow cloud (a PowerStream and a Delta Pro) and
  returns at least one non-null value; the energy counters (ecoflow_energy) are written here when the
  collector has not made them in the few seconds it runs, and the hourly rollups (ecoflow_energy_1h,
  ecoflow_summary_1h: a scheduled job of the collector) always, as line protocol of their documented
  schema;
- the provisioning files point at the dashboards and read the datasource's settings from the
  environment.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from collector.catalog import default_catalog
from collector.simulator.server import LocalCloud
from collector.sink.influx import InfluxWriter
from collector.testbed import InfluxServer, MosquittoServer
from tests.test_daemon import make_settings, running, wait_for

try:
    import yaml
except ImportError:  # pragma: no cover - the test extra installs it
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "grafana"
DASHBOARD_DIR = GRAFANA / "dashboards"
CHECK_DIR = GRAFANA / "check"
SETUP_HINT = "run `bash scripts/setup.sh` (or `(cd grafana/check && npm ci --no-audit --no-fund)`)"
DEVICE_MEASUREMENTS = ("powerstream", "delta_pro")
TAGS = {"sn", "name", "product", "instance"}
DASHBOARD_NAMES = ["powerstream.json", "delta_pro.json", "fleet.json", "collector.json", "energy.json"]
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


def _build_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_build", GRAFANA / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()


def _need_yaml() -> Any:
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
def test_the_five_dashboards_exist_and_are_what_build_py_generates() -> None:
    built = BUILD.build()
    assert set(built) == set(DASHBOARD_NAMES)
    for name, board in built.items():
        path = DASHBOARD_DIR / name
        assert path.exists(), f"{path} is missing: run python3 grafana/build.py"
        assert path.read_text(encoding="utf-8") == BUILD.render(board), (
            f"{path} differs from what grafana/build.py makes: run python3 grafana/build.py"
        )
    uids = [b["uid"] for b in built.values()]
    assert len(set(uids)) == len(uids)
    # the fleet table links a device to /d/ecoflow-<product slug>
    assert {"ecoflow-powerstream", "ecoflow-delta_pro"} <= set(uids)
    assert built["energy.json"]["uid"] == "ecoflow-energy"


def grafana_version_in_compose() -> str:
    compose = _need_yaml().safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
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
    # "the writer's counters (... see collector/sink/)": the numeric keys InfluxWriter.stats documents
    doc = InfluxWriter.stats.__doc__ or ""
    expanded |= set(re.findall(r"``(\w+)``", doc))
    out["ecoflow_collector"] = expanded
    return out


def _catalog_fields() -> dict[str, dict[str, str]]:
    """measurement -> stored field name -> stored unit, from the catalog (arrays as key[0..15])."""
    catalog = default_catalog()
    out: dict[str, dict[str, str]] = {}
    for slug, product in catalog.products.items():
        fields: dict[str, str] = {}
        for spec in product.all_fields():
            keys = [f"{spec.key}[{i}]" for i in range(16)] if spec.array else [spec.key]
            for key in keys:
                keys_n = [key.replace("#", str(n)) for n in range(1, 12)] if "#" in key else [key]
                for k in keys_n:
                    fields[k] = spec.unit.stored
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
    stored = {**catalog, "ecoflow_summary": SUMMARY_UNITS, ENERGY: ENERGY_UNITS, **ROLLUP_UNITS}
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
                    if unit == "":
                        assert units <= {None, "none"}, (
                            f"{where}: {field} has no unit, the panel shows {units}"
                        )
                    else:
                        grafana = BUILD.GRAFANA_UNITS[unit]
                        allowed = BUILD.UNIT_ALIASES.get(unit, {grafana})
                        assert units & allowed, (
                            f"{where}: {field} is stored in {unit}: {allowed}, not {units}"
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
    y = _need_yaml()
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


@pytest.fixture(scope="module")
def live(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    """A collector that ingested a few seconds of both simulated products into a fresh database,
    with a non-zero error code on each device and two self-telemetry points."""
    db = f"grafana_{uuid.uuid4().hex[:10]}"
    influx_server.create_database(db)
    started = int(time.time())
    try:
        with LocalCloud("powerstream=1,delta_pro=1", mosquitto=mosquitto_server, publish_rate=8.0) as cloud:
            state = tmp_path_factory.mktemp("grafana-live")
            settings = make_settings(cloud, influx_server, db, state)
            with running(settings) as collector:
                wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
                powerstream, delta_pro = (
                    next(d for d in cloud.devices if d.product_slug == slug) for slug in DEVICE_MEASUREMENTS
                )
                powerstream.set_quota("20_1.invErrCode", 4096)  # the document's sample inverter error
                delta_pro.set_quota("pd.errCode", 3)

                def landed() -> bool:
                    for device in (powerstream, delta_pro):
                        count = influx_server.rows(
                            db, f"SELECT count(*) FROM \"{device.product_slug}\" WHERE sn = '{device.sn}'"
                        )
                        if not count or max(v for k, v in count[0].items() if k != "time") < 4:
                            return False
                    errors = influx_server.rows(
                        db, 'SELECT "20_1.invErrCode" FROM "powerstream" WHERE "20_1.invErrCode" <> 0'
                    ) and influx_server.rows(
                        db, 'SELECT "pd.errCode" FROM "delta_pro" WHERE "pd.errCode" <> 0'
                    )
                    return bool(errors)

                wait_for(landed, timeout=30, what="reports of both products and the error codes")
                collector.write_all_status()
                collector.write_telemetry()
                time.sleep(1.2)  # the rate panels need two telemetry points in different 1 s buckets
                collector.write_telemetry()
                collector.sink.flush(5)  # type: ignore[attr-defined]
                instance = collector.mqtt.client_id
            devices = [(d.sn, d.device_name, d.product_slug) for d in cloud.devices]
            write_energy_history(influx_server, db, devices, started)
            yield Live(
                influx_server,
                db,
                [d.sn for d in cloud.devices],
                [d.device_name for d in cloud.devices],
                instance,
            )
    finally:
        influx_server.drop_database(db)


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
    _min, _max, with the Delta Pro's battery health) over two years, hourly for the last two days and
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
        if counted.get(sn, 0) < 2:
            times = [*range(started - 3 * 3600, started - 60, 60), started - 20, started - 10, started - 1]
            lines += [_line(ENERGY, tags, counters(t, origin, product), t) for t in times]
        hours = [*range(hour - 760 * 86400, hour - 48 * 3600, 6 * 3600), *range(hour - 48 * 3600, hour, 3600)]
        for t in hours:
            lines.append(_line(ENERGY_1H, tags, counters(t + 3599, origin, product), t))
            days = (t - origin) / 86400
            summary = {
                "soc_percent": 55.0,
                "input_w": 320.0,
                "output_w": 250.0,
                "pv_input_w": 300.0,
                "battery_w": 5.0,
            }
            if product == "delta_pro":
                summary |= {"battery_soh_percent": 100 - 2.5 * days / 365, "battery_cycles": 120 + days // 3}
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
    at "All"; every one must find values."""
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
        values[var["name"]] = sorted(set(found))
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
