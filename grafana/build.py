"""Generates grafana/dashboards/*.json (the dashboards are code; edit here or the catalog, then run this).

One dashboard per catalog product (`<slug>.json`, uid `ecoflow-<slug>`), made from its catalog file
(summary, kinds, units, dashboard hints: CONTRIBUTING.md) and PRODUCT_EXTRAS; and the fleet overview,
collector health and energy dashboards.

    python3 grafana/build.py            # rewrite grafana/dashboards/*.json and the alerting files
    python3 grafana/build.py --check    # exit 1 if a file differs from what this script makes

The alerting provisioning (grafana/provisioning/alerting/, grafana/alerting-extras/) is made by
grafana/alerting.py, called from here.

Every query is InfluxQL that InfluxDB 1.8, 2.x (v1-compatible /query with a DBRP mapping) and 3.x
all run: no INTEGRAL() (energy comes from the collector's Wh counters, ecoflow_energy, and their
hourly rollups), no SHOW SERIES or SHOW DATABASES, field names double-quoted (they contain dots).
Units are Grafana unit ids taken from the catalog's stored units; value mappings of state panels are
the catalog's enum labels.
tests/test_grafana.py checks the files are current, validate against Grafana's schema, name only
fields that exist, and that every query returns data from a collector fed by the local cloud.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import alerting  # noqa: E402  (grafana/alerting.py: the alerting provisioning files)

from collector.catalog import FieldSpec, Kind, Product, default_catalog  # noqa: E402
from collector.catalog.model import DEFAULT_ROW, DEFAULT_STATE_ROW, ROWS  # noqa: E402

DASHBOARDS = ROOT / "dashboards"
SCHEMA_VERSION = 42  # dashboard JSON schema version of Grafana 12.4 (@grafana/schema defaultDashboard)
DATASOURCE_UID = "ecoflow-influxdb"  # provisioning/datasources/influxdb.yaml
DS = {"type": "influxdb", "uid": "${datasource}"}

KWH = "kwatth"
# Seconds may also be shown as a duration (d hh:mm:ss) where that reads better.
UNIT_ALIASES = {"s": {"s", "dtdurations"}}

GREEN, YELLOW, ORANGE, RED, BLUE, PURPLE, GREY = (
    "green",
    "yellow",
    "orange",
    "red",
    "blue",
    "purple",
    "text",
)
SPAN_NULLS_MS = 16 * 60 * 1000  # connect points up to the HTTP poll period (15 min); longer gaps show


# ------------------------------------------------------------------------------------- queries
def q(text: str) -> str:
    """One-line query text (the builders write queries over several lines for reading)."""
    return " ".join(text.split())


def device_filter(variable: str = "sn") -> str:
    return f'"{variable}" =~ /^${variable}$/'


def series(
    measurement: str,
    columns: Sequence[tuple[str, str]],
    *,
    where: str,
    agg: str = "mean",
    fill: str = "null",
    scale: str = "",
) -> str:
    """`agg(field) AS "label"` per column, per device, per $__interval."""
    select = ", ".join(f'{agg}("{field}"){scale} AS "{label}"' for field, label in columns)
    return q(
        f"""SELECT {select} FROM "{measurement}" WHERE $timeFilter AND {where}
        GROUP BY time($__interval), "name" fill({fill})"""
    )


def latest(measurement: str, columns: Sequence[tuple[str, str]], *, where: str, scale: str = "") -> str:
    select = ", ".join(f'last("{field}"){scale} AS "{label}"' for field, label in columns)
    return q(f'SELECT {select} FROM "{measurement}" WHERE $timeFilter AND {where} GROUP BY "name"')


ENERGY = "ecoflow_energy"  # Wh counters since the collector first saw the device (docs/schema.md)
ENERGY_1H = "ecoflow_energy_1h"  # each counter's last value per hour (hourly rollup)
SUMMARY_1H = "ecoflow_summary_1h"  # <field>_mean/_min/_max of ecoflow_summary per hour (hourly rollup)
ROLLUPS = (ENERGY_1H, SUMMARY_1H)
ROLLUP_DS = {"type": "influxdb", "uid": "${rollups}"}


def counter_energy(
    measurement: str,
    columns: Sequence[tuple[str, str]],
    *,
    where: str,
    bucket: str | None,
    by: str = '"name"',
) -> str:
    """kWh from Wh counters: the sum of the increases between consecutive points of each device
    (non_negative_difference: a counter that restarts at 0 adds nothing, instead of a negative day),
    per `bucket` (1d: days from midnight in the 'Day boundary' zone) or over the whole range, per
    `by` tag or ('' ) for all devices together. The increase between the last point before a
    bucket and its first point counts in the bucket, so nothing falls between two days."""
    inner = ", ".join(f'non_negative_difference("{field}") AS "{label}"' for field, label in columns)
    outer = ", ".join(f'sum("{label}") / 1000 AS "{label}"' for _field, label in columns)
    groups = ([f"time({bucket})"] if bucket else []) + ([by] if by else [])
    group = f"GROUP BY {', '.join(groups)}" if groups else ""
    if bucket:
        group += " fill(none) tz('$tz')"
    return q(
        f"""SELECT {outer} FROM (SELECT {inner} FROM "{measurement}" WHERE $timeFilter AND {where}
        GROUP BY "sn", "name") WHERE $timeFilter {group}"""
    )


def target(query: str, ref: str, *, alias: str = "$tag_name $col", table: bool = False) -> dict[str, Any]:
    rollup = any(f'FROM "{m}"' in query for m in ROLLUPS)
    out: dict[str, Any] = {
        "refId": ref,
        "datasource": ROLLUP_DS if rollup else DS,
        "query": query,
        "rawQuery": True,
        "resultFormat": "table" if table else "time_series",
    }
    if not table:
        out["alias"] = alias
    return out


def targets(
    *queries: str | tuple[str, str], table: bool = False, alias: str = "$tag_name $col"
) -> list[dict[str, Any]]:
    """Targets A, B, C, ... from query texts, or (query, alias) pairs. The default alias names a
    series by device and column; "$col" suits queries without GROUP BY tags (fleet totals)."""
    out = []
    for index, item in enumerate(queries):
        query, alias = item if isinstance(item, tuple) else (item, alias)
        out.append(target(query, chr(ord("A") + index), alias=alias, table=table))
    return out


# ------------------------------------------------------------------------------------- panels
def thresholds(*steps: tuple[float | None, str]) -> dict[str, Any]:
    return {"mode": "absolute", "steps": [{"color": color, "value": value} for value, color in steps]}


NEUTRAL = thresholds((None, GREEN))


def value_mappings(labels: dict[str, str], colors: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """One Grafana value mapping from a catalog enum's labels (value -> text, optional colour)."""
    options: dict[str, Any] = {}
    for index, (value, text) in enumerate(sorted(labels.items(), key=lambda kv: float(kv[0]))):
        result: dict[str, Any] = {"text": text, "index": index}
        if colors and value in colors:
            result["color"] = colors[value]
        options[value] = result
    return [{"type": "value", "options": options}]


def override(matcher: str, pattern: str, **properties: Any) -> dict[str, Any]:
    """A field override: matcher `byName` or `byRegexp`; properties as id=value (`custom__x` is
    `custom.x`)."""
    return {
        "matcher": {"id": matcher, "options": pattern},
        "properties": [{"id": key.replace("__", "."), "value": value} for key, value in properties.items()],
    }


def panel(
    kind: str,
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    *,
    unit: str | None = None,
    custom: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    defaults: dict[str, Any] | None = None,
    overrides: Iterable[dict[str, Any]] = (),
    size: tuple[int, int] = (12, 8),
    **extra: Any,
) -> dict[str, Any]:
    field_defaults: dict[str, Any] = {
        "color": {"mode": "palette-classic"},
        "mappings": [],
        "thresholds": NEUTRAL,
    }
    if unit is not None:
        field_defaults["unit"] = unit
    if custom is not None:
        field_defaults["custom"] = custom
    field_defaults.update(defaults or {})
    out: dict[str, Any] = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": panel_targets[0]["datasource"] if panel_targets else DS,
        "fieldConfig": {"defaults": field_defaults, "overrides": list(overrides)},
        "options": options or {},
        "targets": panel_targets,
        "_size": size,
    }
    out.update(extra)
    return out


def timeseries(
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    unit: str,
    *,
    stack: bool = False,
    bars: bool = False,
    step: bool = False,
    fill: int = 10,
    soft_min: float | None = None,
    minmax: tuple[float, float] | None = None,
    calcs: Sequence[str] = ("lastNotNull", "max"),
    **kwargs: Any,
) -> dict[str, Any]:
    custom: dict[str, Any] = {
        "drawStyle": "bars" if bars else "line",
        "lineInterpolation": "stepAfter" if step else "linear",
        "lineWidth": 1,
        "fillOpacity": 80 if bars else (35 if stack else fill),
        "gradientMode": "none" if bars else "opacity",
        "showPoints": "never",
        "pointSize": 4,
        "spanNulls": SPAN_NULLS_MS,
        "insertNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "axisPlacement": "auto",
        "axisLabel": "",
        "axisBorderShow": False,
        "axisCenteredZero": False,
        "axisColorMode": "text",
        "barAlignment": 1 if bars else 0,
        "scaleDistribution": {"type": "linear"},
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
        "thresholdsStyle": {"mode": "off"},
    }
    if soft_min is not None:
        custom["axisSoftMin"] = soft_min
    defaults: dict[str, Any] = {}
    if minmax is not None:
        defaults.update(min=minmax[0], max=minmax[1])
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": list(calcs)},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return panel(
        "timeseries",
        title,
        description,
        panel_targets,
        unit=unit,
        custom=custom,
        options=options,
        defaults=defaults,
        **kwargs,
    )


def reduce(calc: str = "lastNotNull", fields: str = "") -> dict[str, Any]:
    return {"calcs": [calc], "fields": fields, "values": False}


def reading(
    kind: str,
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    unit: str,
    options: dict[str, Any],
    *,
    steps: dict[str, Any],
    size: tuple[int, int],
    defaults: dict[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """The family of one-number panels (stat, gauge, bar gauge): the last value of each series,
    coloured by threshold steps."""
    field_defaults: dict[str, Any] = {"thresholds": steps, "color": {"mode": "thresholds"}}
    field_defaults.update(defaults or {})
    return panel(
        kind,
        title,
        description,
        panel_targets,
        unit=unit,
        options={"reduceOptions": reduce(fields=kwargs.pop("fields", "")), **options},
        defaults=field_defaults,
        size=size,
        **kwargs,
    )


def stat(
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    unit: str,
    *,
    steps: dict[str, Any] = NEUTRAL,
    graph: bool = True,
    decimals: int | None = None,
    color_mode: str = "value",
    size: tuple[int, int] = (4, 5),
    **kwargs: Any,
) -> dict[str, Any]:
    options = {
        "orientation": "auto",
        "textMode": "value_and_name",
        "colorMode": color_mode,
        "graphMode": "area" if graph else "none",
        "justifyMode": "auto",
        "wideLayout": True,
        "showPercentChange": False,
    }
    defaults = {"decimals": decimals} if decimals is not None else {}
    defaults.update(kwargs.pop("defaults", {}))
    return reading(
        "stat",
        title,
        description,
        panel_targets,
        unit,
        options,
        steps=steps,
        size=size,
        defaults=defaults,
        **kwargs,
    )


def gauge(
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    unit: str,
    *,
    steps: dict[str, Any],
    size: tuple[int, int] = (4, 5),
    **kwargs: Any,
) -> dict[str, Any]:
    options = {
        "orientation": "auto",
        "showThresholdLabels": False,
        "showThresholdMarkers": True,
        "sizing": "auto",
        "minVizHeight": 75,
        "minVizWidth": 75,
    }
    defaults = {"min": 0, "max": 100}
    return reading(
        "gauge",
        title,
        description,
        panel_targets,
        unit,
        options,
        steps=steps,
        size=size,
        defaults=defaults,
        **kwargs,
    )


def bargauge(
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    unit: str,
    *,
    steps: dict[str, Any] = NEUTRAL,
    minmax: tuple[float, float] | None = None,
    size: tuple[int, int] = (8, 8),
    **kwargs: Any,
) -> dict[str, Any]:
    options = {
        "orientation": "horizontal",
        "displayMode": "gradient",
        "valueMode": "color",
        "namePlacement": "auto",
        "showUnfilled": True,
        "sizing": "auto",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "maxVizHeight": 300,
    }
    defaults: dict[str, Any] = {"min": minmax[0], "max": minmax[1]} if minmax is not None else {}
    defaults.update(kwargs.pop("defaults", {}))
    return reading(
        "bargauge",
        title,
        description,
        panel_targets,
        unit,
        options,
        steps=steps,
        size=size,
        defaults=defaults,
        **kwargs,
    )


def state_timeline(
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    *,
    unit: str | None = None,
    mappings: list[dict[str, Any]] | None = None,
    steps: dict[str, Any] | None = None,
    size: tuple[int, int] = (12, 6),
    **kwargs: Any,
) -> dict[str, Any]:
    options = {
        "mergeValues": True,
        "showValue": "auto",
        "alignValue": "left",
        "rowHeight": 0.85,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": False, "calcs": []},
        "tooltip": {"mode": "single", "sort": "none"},
    }
    custom = {
        "fillOpacity": 75,
        "lineWidth": 0,
        "hideFrom": {"legend": False, "tooltip": False, "viz": False},
    }
    defaults: dict[str, Any] = {"color": {"mode": "thresholds" if steps else "continuous-GrYlRd"}}
    if steps:
        defaults["thresholds"] = steps
    if mappings:
        defaults["mappings"] = mappings
    return panel(
        "state-timeline",
        title,
        description,
        panel_targets,
        unit=unit,
        custom=custom,
        options=options,
        defaults=defaults,
        size=size,
        **kwargs,
    )


def table(
    title: str,
    description: str,
    panel_targets: list[dict[str, Any]],
    *,
    unit: str | None = None,
    size: tuple[int, int] = (24, 8),
    **kwargs: Any,
) -> dict[str, Any]:
    options = {"showHeader": True, "cellHeight": "sm", "frameIndex": 0}
    custom = {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False, "filterable": False}
    return panel(
        "table",
        title,
        description,
        panel_targets,
        unit=unit,
        custom=custom,
        options=options,
        size=size,
        **kwargs,
    )


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_size": (24, 1)}


def today_stat(
    title: str, description: str, panel_targets: list[dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    """kWh since the browser's midnight (the panel's own time range: today)."""
    return stat(
        title,
        description,
        panel_targets,
        KWH,
        graph=False,
        decimals=2,
        timeFrom="now/d",
        hideTimeOverride=True,
        **kwargs,
    )


def by_device(title: str, description: str, query: str, unit: str, **kwargs: Any) -> dict[str, Any]:
    """A graph of one query, a series per device (named by the device alone)."""
    kwargs.setdefault("size", (8, 8))
    return timeseries(title, description, [target(query, "A", alias="$tag_name")], unit, **kwargs)


def energy_bars(
    title: str, description: str, panel_targets: list[dict[str, Any]], **kwargs: Any
) -> dict[str, Any]:
    """kWh per period as bars, with the sum and mean in the legend."""
    kwargs.setdefault("calcs", ("sum", "mean"))
    return timeseries(title, description, panel_targets, KWH, bars=True, **kwargs)


# ------------------------------------------------------------------------------------- dashboard
def layout(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Give each panel an id and a gridPos: left to right, a new line when the width is used up;
    a row always starts a new line."""
    x = y = line_height = 0
    out = []
    for index, item in enumerate(items, start=1):
        width, height = item.pop("_size")
        if item["type"] == "row" or x + width > 24:
            x, y, line_height = 0, y + line_height, 0
        item["id"] = index
        item["gridPos"] = {"h": height, "w": width, "x": x, "y": y}
        x += width
        line_height = max(line_height, height)
        if item["type"] == "row":
            x, y, line_height = 0, y + height, 0
        out.append(item)
    return out


def query_variable(
    name: str, label: str, query: str, *, multi: bool = True, description: str = ""
) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "query",
        "datasource": DS,
        "query": query,
        "refresh": 2,  # on time range change: new devices appear without a reload
        "regex": "",
        "sort": 1,
        "multi": multi,
        "includeAll": multi,
        "current": {"text": ["All"], "value": ["$__all"]} if multi else {"text": "", "value": ""},
        "options": [],
        "hide": 0,
    }


def datasource_variable(name: str, label: str, description: str) -> dict[str, Any]:
    """A variable choosing an InfluxDB data source, the provisioned one by default."""
    return {
        "name": name,
        "label": label,
        "description": description,
        "type": "datasource",
        "query": "influxdb",
        "current": {"text": "EcoFlow InfluxDB", "value": DATASOURCE_UID},
        "options": [],
        "refresh": 1,
        "regex": "",
        "hide": 0,
        "multi": False,
        "includeAll": False,
    }


DATASOURCE_VARIABLE = datasource_variable(
    "datasource",
    "Data source",
    "An InfluxDB data source in InfluxQL mode (the provisioned one is EcoFlow InfluxDB)",
)
ROLLUP_VARIABLE = datasource_variable(
    "rollups",
    "Rollups",
    "The InfluxDB data source holding the hourly rollups (ecoflow_energy_1h, "
    "ecoflow_summary_1h): the main one unless the collector's [history] bucket is another bucket",
)

TZ_VARIABLE = {
    "name": "tz",
    "label": "Day boundary",
    "description": "Time zone whose midnight starts an 'energy per day' bar (an IANA name; type another)",
    "type": "custom",
    "query": "UTC,Europe/Berlin,Europe/London,Europe/Paris,Europe/Madrid,Europe/Rome,Europe/Amsterdam,"
    "Europe/Vienna,Europe/Zurich,America/New_York,America/Chicago,America/Denver,America/Los_Angeles,"
    "Asia/Tokyo,Australia/Sydney",
    "current": {"text": "UTC", "value": "UTC"},
    "options": [],
    "multi": False,
    "includeAll": False,
    "allowCustomValue": True,
    "hide": 0,
}


def dashboard(
    uid: str,
    title: str,
    description: str,
    tags: list[str],
    variables: list[dict[str, Any]],
    items: list[dict[str, Any]],
    *,
    time_from: str = "now-24h",
) -> dict[str, Any]:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["ecoflow", *tags],
        "editable": True,
        "graphTooltip": 1,
        "timezone": "browser",
        "refresh": "30s",
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "links": [
            {
                "title": "EcoFlow",
                "type": "dashboards",
                "tags": ["ecoflow"],
                "asDropdown": False,
                "icon": "external link",
                "includeVars": False,
                "keepTime": True,
                "targetBlank": False,
                "tooltip": "",
                "url": "",
            }
        ],
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "templating": {"list": [DATASOURCE_VARIABLE, *variables]},
        "panels": layout(items),
    }


def account_variable(measurement: str) -> dict[str, Any]:
    """The `account` tag exists only where several accounts are configured: "All" is `.*`, which
    also matches the points of a one-account install (no tag at all)."""
    variable = query_variable(
        "account",
        "Account",
        f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "account"',
        description="EcoFlow accounts ([[accounts]] names; empty with one account)",
    )
    variable["allValue"] = ".*"
    return variable


def device_variables(measurement: str) -> list[dict[str, Any]]:
    return [
        account_variable(measurement),
        query_variable(
            "name",
            "Device",
            f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "name" WHERE {device_filter("account")}',
            description="Device names (from the device list or the config)",
        ),
        query_variable(
            "sn",
            "Serial",
            f'SHOW TAG VALUES FROM "{measurement}" WITH KEY = "sn" WHERE {device_filter("name")}',
            description="Serial numbers of the devices chosen under Device",
        ),
    ]


SOC_STEPS = thresholds((None, RED), (15, ORANGE), (30, YELLOW), (50, GREEN))
TEMP_STEPS = thresholds((None, BLUE), (5, GREEN), (45, ORANGE), (60, RED))
ERROR_STEPS = thresholds((None, GREEN), (1, RED))


# ------------------------------------------------------------------------------------- products
# Every catalog product gets a dashboard `ecoflow-<slug>` (the fleet table links there), made from its
# catalog file: the summary makes the header (state of charge gauge; solar, input, output and battery
# power now, with the summary's signs) and the energy panels (the collector's counters of the flows the
# summary has); the fields' dashboard hints (`panel`, `row`, `label`; `[dashboard]`) make the rows of
# graphs and state timelines; without hints, defaults from kind, unit and key (catalog_panels); every
# error_code field goes into the error table. PRODUCT_EXTRAS adds what a catalog file cannot say.
FLOW_LABELS = {
    "pv_input_w": ("pv_input_wh", "solar"),
    "input_w": ("input_wh", "input"),
    "output_w": ("output_wh", "output"),
}
STATE_COLORS = (GREEN, BLUE, YELLOW, ORANGE, RED, PURPLE)
DASHED = {
    "custom__lineStyle": {"fill": "dash", "dash": [10, 10]},
    "custom__fillOpacity": 0,
    "custom__lineInterpolation": "stepAfter",
}
QUANTITY_ROWS = {"power": "Power", "temperature": "Temperatures", "ratio": "Battery"}


@dataclass(frozen=True)
class Column:
    """One series of a product panel: a catalog key, its name in the legend, and `* -1` where the
    summary counts the field with the opposite sign (PowerStream batInputWatts: battery_w = -it)."""

    key: str
    label: str
    negate: bool = False

    def select(self, agg: str) -> str:
        return f'{agg}("{self.key}"){" * -1" if self.negate else ""} AS "{self.label}"'


@dataclass
class PanelPlan:
    """A panel the catalog asks for: graph (measurements; settings in it drawn as dashed steps) or
    state timeline (enums and settings only)."""

    title: str
    row: str
    unit: str
    specs: list[FieldSpec]
    stack: bool = False
    description: str | None = None
    order: int = 0

    @property
    def state(self) -> bool:
        return all(s.kind in (Kind.ENUM, Kind.SETTING) for s in self.specs)


@dataclass(frozen=True)
class ExtraStat:
    """A stat panel over catalog keys that no summary field gives (PRODUCT_EXTRAS); `unit` is the
    Grafana unit of the keys' stored unit unless another display of it is named (UNIT_ALIASES)."""

    title: str
    description: str
    columns: tuple[tuple[str, str], ...]
    unit: str | None = None
    energy_row: bool = False  # in the Energy row (full width) instead of the header


@dataclass(frozen=True)
class ProductExtras:
    gauge: tuple[tuple[str, str], ...] = ()  # more state-of-charge series in the gauge
    stats: tuple[ExtraStat, ...] = ()


PRODUCT_EXTRAS: dict[str, ProductExtras] = {
    "powerstream": ProductExtras(
        stats=(
            ExtraStat(
                "Custom load",
                "The base load the inverter always supplies (setting permanentWatts)",
                (("20_1.permanentWatts", "custom load"),),
            ),
        )
    ),
    "delta_pro": ProductExtras(
        gauge=(("bmsMaster.f32ShowSoc", "BMS"),),
        stats=(
            ExtraStat(
                "Remaining time",
                "Time to full while charging, to empty while discharging (shown only when the device "
                "reports one)",
                (("ems.chgRemainTime", "to full"), ("ems.dsgRemainTime", "to empty")),
                unit="dtdurations",
            ),
            ExtraStat(
                "Lifetime energy",
                "The device's cumulative energy counters",
                (
                    ("pd.chgSunPower", "charged from solar"),
                    ("pd.chgPowerAc", "charged from AC"),
                    ("pd.chgPowerDc", "charged from DC adapter"),
                    ("pd.dsgPowerAc", "discharged via AC"),
                    ("pd.dsgPowerDc", "discharged via DC"),
                ),
                energy_row=True,
            ),
        ),
    ),
}


def spec_of(product: Product, key: str) -> FieldSpec:
    spec = product.lookup(key)
    if spec is None:
        raise SystemExit(f"build.py: {product.slug} has no field {key!r} in the catalog")
    return spec


def default_label(key: str) -> str:
    return key.rsplit(".", 1)[-1]


def group_title(prefix: str, what: str) -> str:
    return f"{prefix}: {what}" if prefix else what[:1].upper() + what[1:]


def negated_keys(product: Product) -> set[str]:
    """Keys a summary field takes alone and negated: the panels show them with the summary's sign."""
    return {terms[0][0] for terms in product.summary.values() if len(terms) == 1 and terms[0][1] < 0}


def plotted(spec: FieldSpec) -> bool:
    return not spec.array and "#" not in spec.key


def hinted_panels(product: Product) -> list[PanelPlan]:
    plans: dict[str, PanelPlan] = {}
    for spec in product.all_fields():
        for title in spec.panels:
            plan = plans.setdefault(title, PanelPlan(title, "", spec.unit.grafana, []))
            plan.specs.append(spec)
            if spec.row is not None:
                plan.row = spec.row
    for title, plan in plans.items():
        options = product.dashboard.panels.get(title)
        if options is not None:
            plan.row = options.row or plan.row
            plan.stack, plan.description, plan.order = options.stack, options.description, options.order
        plan.row = plan.row or (DEFAULT_STATE_ROW if plan.state else DEFAULT_ROW)
    return list(plans.values())


def default_panels(product: Product) -> list[PanelPlan]:
    """A product file without panel hints: measurements with a unit by [[groups]] entry and quantity
    (a graph each), settings by group, unit and labels (a state timeline each); not arrays, pattern
    keys, counters (lifetime totals: the energy panels show what the collector counts) or hidden
    fields."""
    plans: dict[tuple[str, ...], PanelPlan] = {}
    for spec in product.all_fields():
        if not plotted(spec) or spec.hide or (spec.unit.grafana == "none" and spec.kind is not Kind.SETTING):
            continue
        prefix, unit = spec.group, spec.unit
        if spec.kind is Kind.MEASUREMENT:
            group: tuple[str, ...] = (prefix, unit.quantity)
            title, row_title = group_title(prefix, unit.quantity), QUANTITY_ROWS.get(unit.quantity)
        elif spec.kind is Kind.SETTING:
            labels = " / ".join(spec.values.values())
            detail = labels or unit.stored
            group = (prefix, "setting", unit.grafana, labels)
            title = group_title(prefix, "settings" + (f" ({detail})" if detail else ""))
            row_title = DEFAULT_STATE_ROW
        else:
            continue
        plan = plans.setdefault(group, PanelPlan(title, row_title or DEFAULT_ROW, unit.grafana, []))
        plan.specs.append(spec)
    return list(plans.values())


def catalog_panels(product: Product) -> list[tuple[str, list[PanelPlan]]]:
    """The product's panels by row, rows in the order `[dashboard] rows` then ROWS give; panels by
    `order`, then in the order the file names them."""
    hinted = any(spec.panels for spec in product.all_fields())
    plans = hinted_panels(product) if hinted else default_panels(product)
    order = [*product.dashboard.rows, *(r for r in ROWS if r not in product.dashboard.rows)]
    rows = []
    for title in order:
        members = sorted((p for p in plans if p.row == title), key=lambda p: p.order)
        if members:
            rows.append((title, members))
    return rows


def columns_of(product: Product, specs: Sequence[FieldSpec]) -> list[Column]:
    negated = negated_keys(product)
    labels = [spec.label or default_label(spec.key) for spec in specs]
    if len(set(labels)) < len(labels):  # two keys end alike: name them in full
        labels = [spec.label or spec.key for spec in specs]
    return [Column(s.key, label, s.key in negated) for s, label in zip(specs, labels, strict=True)]


def regex_escape(text: str) -> str:
    """Escaped for a JavaScript regex (a field override's byRegexp), as Grafana's escapeRegex does."""
    return re.sub(r"[\\^$*+?.()|[\]{}/]", lambda m: "\\" + m.group(0), text)


def select_series(measurement: str, columns: Sequence[Column], *, where: str, last: bool = False) -> str:
    """Per device and $__interval: the mean of measurements, or the last value held (settings)."""
    agg, fill = ("last", "previous") if last else ("mean", "null")
    select = ", ".join(c.select(agg) for c in columns)
    return q(
        f"""SELECT {select} FROM "{measurement}" WHERE $timeFilter AND {where}
        GROUP BY time($__interval), "name" fill({fill})"""
    )


def describe(plan: PanelPlan, columns: Sequence[Column]) -> str:
    if plan.description:
        return plan.description
    parts = []
    for spec, column in zip(plan.specs, columns, strict=True):
        sign = ", shown negated as in the summary" if column.negate else ""
        step = (
            " (a setting: dashed, its last value held)"
            if spec.kind is Kind.SETTING and not plan.state
            else ""
        )
        parts.append(f"{column.label}: {spec.desc} ({spec.key}{sign}){step}")
    return "; ".join(parts)


def state_mappings(specs: Sequence[FieldSpec]) -> list[dict[str, Any]] | None:
    labels: dict[str, str] = {}
    for spec in specs:
        for value, text in spec.values.items():
            labels.setdefault(value, text)
    if not labels:
        return None
    ordered = sorted(labels, key=float)
    colors = {value: STATE_COLORS[i % len(STATE_COLORS)] for i, value in enumerate(ordered)}
    return value_mappings(labels, colors)


def plan_panel(product: Product, plan: PanelPlan, width: int) -> dict[str, Any]:
    m, dev = product.slug, device_filter()
    columns = columns_of(product, plan.specs)
    description = describe(plan, columns)
    unit = None if plan.unit == "none" else plan.unit
    if plan.state:
        mappings = state_mappings(plan.specs)
        return state_timeline(
            plan.title,
            description,
            targets(select_series(m, columns, where=dev, last=True)),
            unit=unit,
            mappings=mappings,
            steps=NEUTRAL if mappings else thresholds((None, BLUE)),
            size=(width, 6),
        )
    held = [c for s, c in zip(plan.specs, columns, strict=True) if s.kind is Kind.SETTING]
    measured = [c for c in columns if c not in held]
    queries = [select_series(m, measured, where=dev)]
    overrides = []
    if held:
        queries.append(select_series(m, held, where=dev, last=True))
        names = "|".join(regex_escape(c.label) for c in held)
        overrides.append(override("byRegexp", f"/ ({names})$/", **DASHED))
    signed = any(c.negate for c in columns) or any((s.range or (0, 0))[0] < 0 for s in plan.specs)
    percent = plan.unit == "percent" and all(s.range == (0, 100) for s in plan.specs)
    return timeseries(
        plan.title,
        description,
        targets(*queries),
        plan.unit,
        stack=plan.stack,
        soft_min=None if signed or percent else 0,
        minmax=(0, 100) if percent else None,
        size=(width, 8),
        overrides=overrides,
    )


def widths(count: int) -> list[int]:
    """Up to three panels a line; the last line's panels share its width."""
    out = []
    for start in range(0, count, 3):
        line = min(3, count - start)
        out += [24 // line] * line
    return out


def summary_expression(terms: Sequence[tuple[str, float]]) -> str:
    """`last("a") - last("b")` of a summary field's terms (a leading minus as `* -1`)."""
    text = ""
    for index, (key, sign) in enumerate(terms):
        if index == 0:
            text = f'last("{key}")' + (" * -1" if sign < 0 else "")
        else:
            text += f' {"-" if sign < 0 else "+"} last("{key}")'
    return text


def summary_stat(product: Product, name: str, title: str, label: str, description: str) -> dict[str, Any]:
    terms = product.summary[name]
    formula = " ".join(f"{'-' if sign < 0 else '+'} {key}" for key, sign in terms).removeprefix("+ ")
    query = q(
        f'SELECT {summary_expression(terms)} AS "{label}" FROM "{product.slug}" '
        f'WHERE $timeFilter AND {device_filter()} GROUP BY "name"'
    )
    steps = thresholds((None, ORANGE), (0, GREEN)) if name == "battery_w" else NEUTRAL
    return stat(
        title, f"{description} ({formula}; the catalog's summary {name})", targets(query), "watt", steps=steps
    )


def product_flows(product: Product) -> list[tuple[str, str]]:
    """The energy counters the collector keeps for the product, one per summary power it has (input
    not where it is the solar input under another name: PowerStream)."""
    summary = product.summary
    flows = [FLOW_LABELS[name] for name in FLOW_LABELS if name in summary]
    if "input_w" in summary and summary["input_w"] == summary.get("pv_input_w"):  # all input is solar
        flows.remove(FLOW_LABELS["input_w"])
    if "battery_w" in product.summary:
        flows += [("battery_charge_wh", "battery charge"), ("battery_discharge_wh", "battery discharge")]
    return flows


def extra_stat(product: Product, extra: ExtraStat, size: tuple[int, int]) -> dict[str, Any]:
    units = {spec_of(product, key).unit for key, _label in extra.columns}
    (stored,) = units  # one unit a stat
    unit = extra.unit or stored.grafana
    if unit not in UNIT_ALIASES.get(stored.stored, {stored.grafana}):
        raise SystemExit(f"build.py: {product.slug} {extra.title}: {unit} does not show {stored.stored}")
    query = latest(product.slug, extra.columns, where=device_filter())
    return stat(
        extra.title,
        extra.description,
        targets(query),
        unit,
        graph=False,
        size=size,
        color_mode="none" if extra.energy_row else "value",
    )


def header(product: Product, extras: ProductExtras) -> list[dict[str, Any]]:
    items = []
    if "soc_percent" in product.summary:
        columns = [
            (key, spec_of(product, key).label or "SoC") for key, _sign in product.summary["soc_percent"]
        ]
        columns += [(key, label) for key, label in extras.gauge if spec_of(product, key)]
        keys = ", ".join(key for key, _label in columns)
        items.append(
            gauge(
                "State of charge",
                f"Battery state of charge ({keys}; the first is the catalog's summary soc_percent)",
                targets(latest(product.slug, columns, where=device_filter())),
                "percent",
                steps=SOC_STEPS,
            )
        )
    now = (
        ("pv_input_w", "Solar now", "solar", "Solar input power"),
        ("input_w", "Input now", "input", "Total input power, all sources"),
        ("output_w", "Output now", "output", "Total output power, all ports"),
        ("battery_w", "Battery now", "battery", "Battery power: positive = charging, negative = discharging"),
    )
    for name, title, label, description in now:
        duplicate = name == "input_w" and product.summary.get(name) == product.summary.get("pv_input_w")
        if name in product.summary and not duplicate:
            items.append(summary_stat(product, name, title, label, description))
    items += [extra_stat(product, extra, (4, 5)) for extra in extras.stats if not extra.energy_row]
    flows = [flow for flow in product_flows(product) if not flow[0].startswith("battery_")]
    if flows:
        items.append(
            today_stat(
                "Energy today",
                "Energy since midnight (browser time) from the collector's energy counters (ecoflow_energy: "
                + ", ".join(field for field, _label in flows)
                + ")",
                targets(counter_energy(ENERGY, flows, where=device_filter(), bucket=None)),
                size=(4, 5),
            )
        )
    return items


def error_table(product: Product) -> dict[str, Any] | None:
    """Every report with a non-zero value in any error_code field of the product."""
    specs = [s for s in product.all_fields() if s.kind is Kind.ERROR_CODE and plotted(s)]
    if not specs:
        return None
    columns = [(s.key, s.label or default_label(s.key)) for s in specs]
    select = ", ".join(f'"{key}" AS "{label}"' for key, label in columns)
    nonzero = " OR ".join(f'"{key}" <> 0' for key, _label in columns)
    query = q(
        f"""SELECT {select} FROM "{product.slug}" WHERE $timeFilter AND {device_filter()} AND ({nonzero})
        GROUP BY "name" ORDER BY time DESC LIMIT 500"""
    )
    return table(
        "Error and warning codes",
        "Every report in the time range with a non-zero error or warning code (0 = none, shown as "
        "a dash) in the catalog's error_code fields. The numbers are the device's own codes; EcoFlow "
        "documents no meanings for most.",
        targets(query, table=True),
        size=(24, 7),
        defaults={
            "mappings": [{"type": "value", "options": {"0": {"text": "–", "index": 0}}}],
            "thresholds": ERROR_STEPS,
            "custom": {
                "align": "auto",
                "cellOptions": {"type": "color-text"},
                "inspect": False,
                "filterable": True,
            },
            "noValue": "no error codes in this time range",
        },
        overrides=[
            override("byName", "Time", unit="dateTimeAsLocal", custom__cellOptions={"type": "auto"}),
            override("byName", "name", displayName="Device", custom__cellOptions={"type": "auto"}),
        ],
    )


def product_dashboard(product: Product) -> dict[str, Any]:
    extras = PRODUCT_EXTRAS.get(product.slug, ProductExtras())
    items = header(product, extras)
    sections = catalog_panels(product)
    for title, plans in sections:
        items.append(row(title))
        items += [plan_panel(product, plan, w) for plan, w in zip(plans, widths(len(plans)), strict=True)]
    errors = error_table(product)
    if errors is not None:
        items += [row("Errors"), errors]
    flows = product_flows(product)
    energy = [extra_stat(product, extra, (24, 4)) for extra in extras.stats if extra.energy_row]
    if flows:
        energy.append(
            energy_bars(
                "Energy per day",
                "Energy per day from the collector's energy counters (ecoflow_energy: "
                + ", ".join(field for field, _label in flows)
                + "); days start at midnight in the 'Day boundary' time zone",
                targets(counter_energy(ENERGY, flows, where=device_filter(), bucket="1d")),
                size=(24, 8),
                timeFrom="7d",
            )
        )
    if energy:
        items += [row("Energy"), *energy]
    parts = (
        [t.lower() for t, _p in sections] + (["errors"] if errors else []) + (["energy"] if energy else [])
    )
    return dashboard(
        f"ecoflow-{product.slug}",
        f"EcoFlow {product.name}",
        f"{product.name}, from its catalog file: " + ", ".join(["state now", *parts]),
        [product.slug],
        [*device_variables(product.slug), *([TZ_VARIABLE] if flows else [])],
        items,
    )


# ------------------------------------------------------------------------------------- fleet
def fleet() -> dict[str, Any]:
    s = "ecoflow_summary"
    st = "ecoflow_status"
    dev = device_filter("name")
    state_map = value_mappings(
        {"0": "offline", "1": "assumed offline", "2": "online"}, {"0": RED, "1": ORANGE, "2": GREEN}
    )

    def fleet_sum(field: str, label: str) -> str:
        return q(f'''SELECT sum("w") AS "{label}" FROM (SELECT last("{field}") AS "w" FROM "{s}"
                 WHERE $timeFilter AND {dev} GROUP BY "sn")''')

    devices_table = table(
        "Devices",
        "Every device: online state, state of charge, power now and when it last reported. Click a name "
        "to open its product dashboard.",
        targets(
            q(f'''SELECT last("soc_percent") AS "SoC", last("input_w") AS "input",
               last("output_w") AS "output",
               last("pv_input_w") AS "solar", last("battery_w") AS "battery" FROM "{s}"
               WHERE $timeFilter AND {dev} GROUP BY "name", "product"'''),
            q(f'SELECT last("state") AS "state" FROM "{st}" WHERE $timeFilter AND {dev} GROUP BY "name"'),
            q(f'SELECT last("soc_percent") AS "seen" FROM "{s}" WHERE $timeFilter AND {dev} GROUP BY "name"'),
            table=True,
        ),
        size=(24, 8),
        transformations=[
            # the last report's time becomes a column; the other queries' times go
            {
                "id": "organize",
                "filter": {"id": "byRefId", "options": "C"},
                "options": {
                    "excludeByName": {"seen": True},
                    "renameByName": {"Time": "last seen"},
                    "indexByName": {},
                },
            },
            {
                "id": "organize",
                "options": {"excludeByName": {"Time": True}, "renameByName": {}, "indexByName": {}},
            },
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {},
                    "indexByName": {
                        "name": 0,
                        "product": 1,
                        "state": 2,
                        "SoC": 3,
                        "solar": 4,
                        "input": 5,
                        "output": 6,
                        "battery": 7,
                        "last seen": 8,
                    },
                    "renameByName": {"name": "device"},
                },
            },
        ],
        overrides=[
            override(
                "byName",
                "device",
                links=[
                    {
                        "title": "Open the device dashboard",
                        "url": "/d/ecoflow-${__data.fields.product}"
                        "?var-name=${__value.raw}&${__url_time_range}",
                        "targetBlank": False,
                    }
                ],
            ),
            override(
                "byName",
                "state",
                mappings=state_map,
                custom__cellOptions={"type": "color-background"},
                thresholds=thresholds((None, GREY)),
            ),
            override(
                "byName",
                "SoC",
                unit="percent",
                min=0,
                max=100,
                thresholds=SOC_STEPS,
                custom__cellOptions={"type": "gauge", "mode": "basic", "valueDisplayMode": "text"},
            ),
            override("byRegexp", "/^(solar|input|output|battery)$/", unit="watt", decimals=0),
            override("byName", "last seen", unit="dateTimeFromNow"),
        ],
    )
    items = [
        stat(
            "Devices online",
            "Devices whose last status is online, and all devices",
            targets(
                q(f'''SELECT sum("online") AS "online" FROM (SELECT last("online") AS "online" FROM "{st}"
                    WHERE $timeFilter AND {dev} GROUP BY "sn")'''),
                q(f'''SELECT count("online") AS "devices" FROM (SELECT last("online") AS "online" FROM "{st}"
                    WHERE $timeFilter AND {dev} GROUP BY "sn")'''),
                alias="$col",
            ),
            "none",
            graph=False,
            decimals=0,
            size=(4, 5),
            overrides=[override("byRegexp", "/online/", thresholds=thresholds((None, RED), (1, GREEN)))],
        ),
        *[
            stat(
                title,
                f"{what} of all devices, now",
                targets(fleet_sum(field, label), alias="$col"),
                "watt",
                graph=False,
            )
            for title, what, field, label in (
                ("Solar now", "Solar input", "pv_input_w", "solar"),
                ("Input now", "Input power", "input_w", "input"),
                ("Output now", "Output power", "output_w", "output"),
            )
        ],
        today_stat(
            "Energy today",
            "Solar and output energy of all devices since midnight (browser time), from the collector's "
            "energy counters (ecoflow_energy)",
            targets(
                counter_energy(
                    ENERGY, [("pv_input_wh", "solar"), ("output_wh", "output")], where=dev, bucket=None, by=""
                ),
                alias="$col",
            ),
            size=(8, 5),
        ),
        devices_table,
        state_timeline(
            "Online",
            "Online state of every device: online, assumed offline (silent longer than "
            "offline_after_s), offline",
            [
                target(
                    series(st, [("state", "state")], where=dev, agg="last", fill="previous"),
                    "A",
                    alias="$tag_name",
                )
            ],
            mappings=state_map,
            steps=thresholds((None, GREY)),
            size=(24, 6),
        ),
        bargauge(
            "State of charge",
            "State of charge of every device",
            [target(latest(s, [("soc_percent", "SoC")], where=dev), "A", alias="$tag_name")],
            "percent",
            steps=SOC_STEPS,
            minmax=(0, 100),
            size=(8, 8),
        ),
        bargauge(
            "Energy today by device",
            "Output energy of each device since midnight (browser time), from the collector's energy "
            "counters (ecoflow_energy)",
            [
                target(
                    counter_energy(ENERGY, [("output_wh", "output")], where=dev, bucket=None),
                    "A",
                    alias="$tag_name",
                )
            ],
            KWH,
            size=(8, 8),
            timeFrom="now/d",
            hideTimeOverride=True,
            defaults={"decimals": 2, "color": {"mode": "continuous-BlPu"}},
        ),
        by_device(
            "State of charge over time",
            "State of charge of every device",
            series(s, [("soc_percent", "SoC")], where=dev),
            "percent",
            minmax=(0, 100),
        ),
        *[
            by_device(
                title, f"{title} of every device", series(s, [(field, label)], where=dev), "watt", soft_min=0
            )
            for title, field, label in (
                ("Output power", "output_w", "output"),
                ("Solar input", "pv_input_w", "solar"),
            )
        ],
        by_device(
            "Battery power",
            "Battery power of every device: positive = charging",
            series(s, [("battery_w", "battery")], where=dev),
            "watt",
        ),
    ]
    variables = [
        account_variable(s),
        query_variable(
            "product",
            "Product",
            f'SHOW TAG VALUES FROM "{s}" WITH KEY = "product" WHERE {device_filter("account")}',
            description="Product slugs (powerstream, delta_pro, ...)",
        ),
        query_variable(
            "name",
            "Device",
            f'SHOW TAG VALUES FROM "{s}" WITH KEY = "name" WHERE {device_filter("product")} '
            f"AND {device_filter('account')}",
            description="Device names",
        ),
    ]
    return dashboard(
        "ecoflow-fleet",
        "EcoFlow fleet overview",
        "Every device in one view: online state, state of charge, power, last report, energy today",
        ["fleet"],
        variables,
        items,
        time_from="now-6h",
    )


# ------------------------------------------------------------------------------------- energy
def bar_options(legend: bool = True) -> dict[str, Any]:
    return {
        "orientation": "auto",
        "xTickLabelRotation": 0,
        "xTickLabelSpacing": 0,
        "showValue": "auto",
        "stacking": "none",
        "groupWidth": 0.7,
        "barWidth": 0.97,
        "barRadius": 0,
        "fullHighlight": False,
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": legend, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "none"},
    }


BAR_CUSTOM = {
    "lineWidth": 1,
    "fillOpacity": 80,
    "gradientMode": "none",
    "axisPlacement": "auto",
    "axisLabel": "",
    "axisBorderShow": False,
    "axisCenteredZero": False,
    "axisColorMode": "text",
    "scaleDistribution": {"type": "linear"},
    "hideFrom": {"legend": False, "tooltip": False, "viz": False},
    "thresholdsStyle": {"mode": "off"},
}


def calendar_bars(
    title: str,
    description: str,
    query: str,
    columns: Sequence[str],
    *,
    period: str,
    per_device: bool,
    time_from: str,
) -> dict[str, Any]:
    """Bars per calendar month ("YYYY-MM") or year ("YYYY"): InfluxQL cannot GROUP BY a month, so
    the query returns days (table format) and Grafana's transformations format each day's time as
    its month or year (in the browser's time zone) and add the days up; per device, one bar per
    device (groupingToMatrix)."""
    transformations: list[dict[str, Any]] = [
        {"id": "formatTime", "options": {"timeField": "Time", "outputFormat": period, "useTimezone": True}},
        {
            "id": "groupBy",
            "options": {
                "fields": {
                    "Time": {"operation": "groupby", "aggregations": []},
                    **({"name": {"operation": "groupby", "aggregations": []}} if per_device else {}),
                    **{c: {"operation": "aggregate", "aggregations": ["sum"]} for c in columns},
                }
            },
        },
    ]
    if per_device:
        (column,) = columns
        transformations.append(
            {
                "id": "groupingToMatrix",
                "options": {
                    "columnField": "name",
                    "rowField": "Time",
                    "valueField": f"{column} (sum)",
                    "emptyValue": "null",
                },
            }
        )
    else:
        transformations.append(
            {
                "id": "organize",
                "options": {
                    "excludeByName": {},
                    "indexByName": {},
                    "renameByName": {f"{c} (sum)": c for c in columns},
                },
            }
        )
    return panel(
        "barchart",
        title,
        description,
        targets(query, table=True),
        unit=KWH,
        custom=BAR_CUSTOM,
        options=bar_options(),
        defaults={"decimals": 1},
        size=(12, 8),
        transformations=transformations,
        timeFrom=time_from,
    )


FLOWS = [
    ("pv_input_wh", "solar"),
    ("input_wh", "input"),
    ("output_wh", "output"),
    ("battery_charge_wh", "battery charge"),
    ("battery_discharge_wh", "battery discharge"),
]
CALENDAR_FLEET = {
    "month": "All chosen devices per calendar month (browser time zone) of the last 12 months, from the "
    "hourly rollups (ecoflow_energy_1h, data source 'Rollups')",
    "year": "All chosen devices per calendar year of the last 5 years (hourly rollups)",
}
SELF_CONSUMPTION = (
    "Self-consumption = battery charge ÷ solar × 100 %: the share of the solar energy that did not leave "
    "the device as output at once but was stored in its battery for later own use. With the five flows "
    "(energy balance: input + battery discharge = output + battery charge + losses; solar is part of "
    "input), the rest of the solar, solar - battery charge, left through the output as it was produced. "
    "Exact for devices whose battery charges only from solar (PowerStream: PV ports and battery share "
    "one bus); a device that also charges from AC (Delta Pro) can exceed 100 % on days it did: compare "
    "input and solar in 'Energy per day'."
)


def energy_dashboard() -> dict[str, Any]:
    dev = device_filter()
    e = ENERGY

    def per_device(columns: Sequence[tuple[str, str]], bucket: str | None, m: str = e) -> str:
        return counter_energy(m, columns, where=dev, bucket=bucket)

    def fleet(columns: Sequence[tuple[str, str]], bucket: str | None, m: str = e) -> str:
        return counter_energy(m, columns, where=dev, bucket=bucket, by="")

    def daily(m: str, columns: Sequence[tuple[str, str]], by_device: bool) -> str:
        return counter_energy(m, columns, where=dev, bucket="1d", by='"name"' if by_device else "")

    coverage = q(f'''SELECT sum("covered") / (sum("covered") + sum("gap")) * 100 AS "coverage" FROM
        (SELECT non_negative_difference("covered_s") AS "covered", non_negative_difference("gap_s") AS "gap"
        FROM "{e}" WHERE $timeFilter AND {dev} GROUP BY "sn", "name") WHERE $timeFilter''')
    consumption = q(f'''SELECT sum("charge") / sum("solar") * 100 AS "self-consumption" FROM
        (SELECT non_negative_difference("battery_charge_wh") AS "charge",
        non_negative_difference("pv_input_wh") AS "solar" FROM "{e}" WHERE $timeFilter AND {dev}
        GROUP BY "sn", "name") WHERE $timeFilter''')
    h = SUMMARY_1H
    items = [
        row("Today"),
        table(
            "Energy today by device",
            "Each device's energy since midnight (browser time), from the collector's counters "
            "(ecoflow_energy: the sum of each counter's increases)",
            targets(per_device(FLOWS, None), table=True),
            unit=KWH,
            size=(16, 6),
            defaults={"decimals": 2},
            timeFrom="now/d",
            hideTimeOverride=True,
            overrides=[override("byName", "name", displayName="Device", unit="string")],
        ),
        today_stat(
            "Fleet today",
            "All chosen devices together since midnight (browser time)",
            targets(fleet(FLOWS[:3], None), alias="$col"),
            size=(8, 6),
        ),
        row("Per day"),
        *[
            energy_bars(
                title, description, [target(daily(e, [flow], True), "A", alias="$tag_name")], size=(12, 8)
            )
            for title, description, flow in (
                (
                    "Solar per day",
                    "Solar energy per device and day; days start at midnight in the 'Day boundary' time zone",
                    ("pv_input_wh", "solar"),
                ),
                ("Output per day", "Output energy per device and day", ("output_wh", "output")),
            )
        ],
        energy_bars(
            "Fleet energy per day",
            "The five flows of all chosen devices together per day: solar, all input (solar, AC, car), "
            "all output, battery charge and discharge",
            targets(daily(e, FLOWS, False), alias="$col"),
            size=(24, 8),
        ),
        row("Per month and year (hourly rollups)"),
        *[
            calendar_bars(
                title,
                description,
                daily(ENERGY_1H, flows, per_device),
                [label for _f, label in flows],
                period=period,
                per_device=per_device,
                time_from=time_from,
            )
            for period, time_from, span in (("YYYY-MM", "1y", "month"), ("YYYY", "5y", "year"))
            for title, description, flows, per_device in (
                (
                    f"Fleet energy per {span}",
                    CALENDAR_FLEET[span],
                    FLOWS,
                    False,
                ),
                (
                    f"Solar per {span} by device",
                    f"Solar energy of each device per calendar {span} of the last "
                    f"{'12 months' if span == 'month' else '5 years'} (hourly rollups)",
                    [("pv_input_wh", "solar")],
                    True,
                ),
            )
        ],
        row("Coverage"),
        bargauge(
            "Coverage",
            "Share of the time range the energy counters integrated (covered_s) rather than skipped "
            "(gap_s: the device did not report, or the collector was down): coverage = covered ÷ "
            "(covered + gap). Energy in the gaps is missing from every panel here.",
            [target(coverage + ' GROUP BY "name"', "A", alias="$tag_name")],
            "percent",
            steps=thresholds((None, RED), (90, ORANGE), (99, GREEN)),
            minmax=(0, 100),
            size=(8, 8),
            defaults={"decimals": 1},
        ),
        timeseries(
            "Coverage per day",
            "Coverage of each device per day (days from midnight in the 'Day boundary' time zone)",
            [
                target(
                    coverage + " GROUP BY time(1d), \"name\" fill(none) tz('$tz')",
                    "A",
                    alias="$tag_name",
                )
            ],
            "percent",
            bars=True,
            minmax=(0, 100),
            calcs=("min", "mean"),
            size=(16, 8),
        ),
        row("Self-consumption and battery"),
        timeseries(
            "Self-consumption per day",
            SELF_CONSUMPTION,
            [
                target(
                    consumption + " GROUP BY time(1d), \"name\" fill(none) tz('$tz')",
                    "A",
                    alias="$tag_name",
                )
            ],
            "percent",
            bars=True,
            soft_min=0,
            calcs=("mean",),
            size=(12, 8),
        ),
        stat(
            "Self-consumption",
            SELF_CONSUMPTION,
            [target(consumption + ' GROUP BY "name"', "A", alias="$tag_name")],
            "percent",
            graph=False,
            decimals=0,
            size=(4, 8),
        ),
        stat(
            "BMS charge cycles in range",
            "Full cycles the battery management system itself counted in the time range (increase of "
            "ecoflow_summary battery_cycles, hourly rollups; Delta Pro: bmsMaster.cycles). Equivalent full "
            "cycles from the throughput would need the usable capacity in Wh, which no stored field gives.",
            [
                target(
                    q(f'''SELECT max("battery_cycles_max") - min("battery_cycles_min") AS "cycles" FROM "{h}"
                       WHERE $timeFilter AND {dev} GROUP BY "name"'''),
                    "A",
                    alias="$tag_name",
                )
            ],
            "none",
            graph=False,
            decimals=0,
            size=(8, 8),
        ),
        timeseries(
            "Battery throughput per day",
            "Energy into (charge) and out of (discharge) each device's battery per day",
            [
                target(
                    daily(e, [("battery_charge_wh", "charge"), ("battery_discharge_wh", "discharge")], True),
                    "A",
                )
            ],
            KWH,
            bars=True,
            calcs=("sum", "mean"),
            size=(24, 8),
        ),
        row("Battery health (hourly rollups)"),
        timeseries(
            "State of health",
            "Battery state of health per day, the mean of the hourly means (ecoflow_summary "
            "battery_soh_percent; Delta Pro: bmsMaster.soh), over the last 2 years",
            [
                target(
                    q(f'''SELECT mean("battery_soh_percent_mean") AS "SoH" FROM "{h}" WHERE $timeFilter
                       AND {dev} GROUP BY time(1d), "name" fill(none) tz('$tz')'''),
                    "A",
                    alias="$tag_name",
                )
            ],
            "percent",
            soft_min=80,
            calcs=("lastNotNull", "min"),
            size=(12, 8),
            timeFrom="2y",
        ),
        timeseries(
            "Charge cycles",
            "The battery management system's cycle counter per day (ecoflow_summary battery_cycles; "
            "Delta Pro: bmsMaster.cycles), over the last 2 years",
            [
                target(
                    q(f'''SELECT max("battery_cycles_max") AS "cycles" FROM "{h}" WHERE $timeFilter AND {dev}
                       GROUP BY time(1d), "name" fill(none) tz('$tz')'''),
                    "A",
                    alias="$tag_name",
                )
            ],
            "none",
            step=True,
            calcs=("lastNotNull",),
            size=(12, 8),
            timeFrom="2y",
        ),
    ]
    return dashboard(
        "ecoflow-energy",
        "EcoFlow energy",
        "Energy per day, month and year per device and for the fleet from the collector's energy "
        "counters; coverage, self-consumption, battery throughput and battery health",
        ["energy"],
        [ROLLUP_VARIABLE, *device_variables(e), TZ_VARIABLE],
        items,
        time_from="now-30d",
    )


# ------------------------------------------------------------------------------------- collector
def collector_health() -> dict[str, Any]:
    c = "ecoflow_collector"
    inst = device_filter("instance")

    def rate(columns: Sequence[tuple[str, str]], per: str = "1s") -> str:
        select = ", ".join(
            f'non_negative_derivative(max("{field}"), {per}) AS "{label}"' for field, label in columns
        )
        return q(f'''SELECT {select} FROM "{c}" WHERE $timeFilter AND {inst}
                  GROUP BY time($__interval), "instance" fill(none)''')

    def gauge_series(columns: Sequence[tuple[str, str]]) -> str:
        select = ", ".join(f'last("{field}") AS "{label}"' for field, label in columns)
        return q(f'''SELECT {select} FROM "{c}" WHERE $timeFilter AND {inst}
                  GROUP BY time($__interval), "instance" fill(previous)''')

    def now(field: str, label: str, scale: str = "") -> str:
        return q(
            f'SELECT last("{field}"){scale} AS "{label}" FROM "{c}" WHERE $timeFilter AND {inst} '
            f'GROUP BY "instance"'
        )

    def per_instance(
        title: str, description: str, queries: Sequence[str], unit: str, **kwargs: Any
    ) -> dict[str, Any]:
        """A graph of counters per collector instance (from 0)."""
        kwargs.setdefault("size", (12, 8))
        panel_targets = targets(*queries, alias="$tag_instance $col")
        return timeseries(title, description, panel_targets, unit, soft_min=0, **kwargs)

    connected = value_mappings({"0": "disconnected", "1": "connected"}, {"0": RED, "1": GREEN})
    alias = "$col"
    items = [
        stat(
            "MQTT",
            "Whether the collector's MQTT session is connected",
            targets((now("mqtt_connected", "MQTT"), alias)),
            "none",
            graph=False,
            defaults={"mappings": connected},
            steps=thresholds((None, RED), (1, GREEN)),
            color_mode="background",
        ),
        stat(
            "Devices online",
            "Devices online / devices known",
            targets((now("devices_online", "online"), alias), (now("devices", "devices"), alias)),
            "none",
            graph=False,
            decimals=0,
        ),
        stat(
            "Messages now",
            "MQTT quota messages per second (last interval)",
            targets((rate([("messages_quota", "messages")]), alias)),
            "cps",
            decimals=2,
        ),
        stat(
            "Spool",
            "Batches waiting in the on-disk spool (InfluxDB unreachable or failing)",
            targets((now("spool_depth", "batches"), alias)),
            "none",
            decimals=0,
            steps=thresholds((None, GREEN), (1, ORANGE), (100, RED)),
        ),
        stat(
            "Write errors",
            "Failed InfluxDB write requests since the collector started (the batches went to the spool "
            "and are replayed; see Write problems below)",
            targets((now("write_errors", "write errors"), alias)),
            "none",
            graph=False,
            decimals=0,
            steps=thresholds((None, GREEN), (1, ORANGE)),
        ),
        stat(
            "Last write",
            "When InfluxDB last accepted a batch",
            targets((now("last_success_time", "last write", scale=" * 1000"), alias)),
            "dateTimeFromNow",
            graph=False,
        ),
        row("Traffic"),
        per_instance(
            "Messages per second",
            "MQTT messages received per second, by topic, and rejected payloads",
            [
                rate(
                    [
                        ("messages_quota", "quota"),
                        ("messages_status", "status"),
                        ("messages_set_reply", "set_reply"),
                        ("messages_rejected", "rejected"),
                    ]
                )
            ],
            "cps",
        ),
        per_instance(
            "Points written per second",
            "Points InfluxDB accepted per second",
            [rate([("points_written", "points")])],
            "cps",
        ),
        row("Problems"),
        per_instance(
            "Write problems per minute",
            "Failed InfluxDB write requests; points that went to the spool, were set aside as rejected "
            "(400/422) or were dropped (spool full); HTTP errors talking to EcoFlow",
            [
                rate(
                    [
                        ("write_errors", "failed writes"),
                        ("points_spooled", "spooled"),
                        ("points_rejected", "rejected"),
                        ("points_dropped", "dropped"),
                        ("http_errors", "EcoFlow HTTP errors"),
                    ],
                    per="1m",
                )
            ],
            "cpm",
        ),
        per_instance(
            "Spool depth",
            "What waits in the on-disk spool for InfluxDB",
            [
                gauge_series([("spool_depth", "batches"), ("spool_points", "points")]),
                gauge_series([("spool_bytes", "bytes")]),
            ],
            "none",
            overrides=[override("byRegexp", "/bytes$/", unit="decbytes", custom__axisPlacement="right")],
        ),
        row("Connections and polls"),
        state_timeline(
            "MQTT connected",
            "MQTT session state over time",
            targets((gauge_series([("mqtt_connected", "MQTT")]), "$tag_instance $col")),
            mappings=connected,
            steps=thresholds((None, RED), (1, GREEN)),
            size=(12, 6),
        ),
        per_instance(
            "Fallback polls and reconnects per minute",
            "HTTP quota/all polls made because MQTT was down or a device's data was stale, and MQTT "
            "(re)connects",
            [rate([("fallback_polls", "fallback polls"), ("mqtt_connects", "MQTT connects")], per="1m")],
            "cpm",
            size=(12, 6),
        ),
        per_instance(
            "Devices",
            "Devices known and online",
            [gauge_series([("devices", "known"), ("devices_online", "online")])],
            "none",
            size=(24, 6),
            step=True,
        ),
    ]
    variables = [
        query_variable(
            "instance",
            "Instance",
            f'SHOW TAG VALUES FROM "{c}" WITH KEY = "instance"',
            description="Collector instances (their MQTT client ids)",
        )
    ]
    return dashboard(
        "ecoflow-collector",
        "EcoFlow collector health",
        "The collector itself: MQTT, messages, InfluxDB writes, spool, fallback polls, devices online",
        ["collector"],
        variables,
        items,
        time_from="now-6h",
    )


# ------------------------------------------------------------------------------------- files
def build() -> dict[str, dict[str, Any]]:
    catalog = default_catalog()
    return {
        **{f"{slug}.json": product_dashboard(product) for slug, product in sorted(catalog.products.items())},
        "fleet.json": fleet(),
        "collector.json": collector_health(),
        "energy.json": energy_dashboard(),
    }


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, board in build().items():
        path = DASHBOARDS / name
        text = render(board)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            stale.append(name)
            if not args.check:
                DASHBOARDS.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    stale += alerting.stale(write=not args.check)
    if args.check and stale:
        print(f"stale: {', '.join(stale)} (run python3 grafana/build.py)", file=sys.stderr)
        return 1
    print(("stale: " if args.check else "written: ") + (", ".join(stale) or "none"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
