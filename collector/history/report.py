"""Energy per device and calendar period, from the energy counters (`ecoflow_energy`).

The counters (`pv_input_wh`, `input_wh`, `output_wh`, `battery_charge_wh`, `battery_discharge_wh`,
`covered_s`) only grow, so the energy of a period is the counter's value at the end of the period
minus its value at the end of the previous period. The baseline before the first period is the
last value in the 31 days before the report's start, else the first value inside the report.

Periods are calendar days, ISO weeks (Monday to Sunday), months or years in `[history] timezone`
(default: the machine's zone), computed with zoneinfo, so a day is 23 or 25 hours long across a
DST change. The report covers whole periods: its start is moved back to the start of the period
it falls in, its end forward to the end of the period; periods that have not begun are left out,
and the current one runs up to now.

Where the values come from (``source="auto"``):

- ranges of up to 31 days: the raw counters, the last value of each 15 minutes
  (`GROUP BY time(15m)`; every time zone's offset is a multiple of 15 minutes, so no bucket
  straddles a period boundary);
- longer ranges: the hourly rollups `ecoflow_energy_1h` (the last value of each hour, in
  `[history] bucket`), and the raw counters before the first and after the last rollup (hours not
  rolled up yet). In zones whose offset is not a whole number of hours (India, Nepal), an hour
  that straddles a boundary is counted in the period where it starts.

A counter that goes down (a reset of the collector's energy state) is treated as restarting from
the value it dropped to: the drop itself counts as zero, what comes after counts from there. The
drop is seen at the resolution of the values (15 minutes raw, 1 hour from rollups): the energy
between the reset and the end of that interval is not counted.

Coverage % is the growth of `covered_s` (seconds the counters integrated) over the period's length
(up to now for the current period), at most 100.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, get_args
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from collector.config import Settings
from collector.history.energy import COUNTERS, ENERGY_MEASUREMENT
from collector.history.influxql import InfluxQL, quote_ident, quote_literal
from collector.history.rollup import HOUR_MS, ROLLUP_SUFFIX, to_ms

__all__ = [
    "COUNTERS",
    "MissingExtraError",
    "Period",
    "ReportRow",
    "energy_report",
    "format_csv",
    "format_json",
    "format_table",
    "local_zone",
    "period_bounds",
    "plot_report",
    "report_from_settings",
    "report_zone",
]

Period = Literal["day", "week", "month", "year"]
Source = Literal["auto", "raw", "rollup"]
PERIODS: Final[tuple[str, ...]] = get_args(Period)

COVERED: Final = "covered_s"
RAW_MAX_DAYS: Final = 31
BASELINE_LOOKBACK: Final = timedelta(days=31)
RAW_BUCKET_MS: Final = 15 * 60 * 1000


class MissingExtraError(Exception):
    """An optional dependency is not installed; the message names the extra to install."""


@dataclass(frozen=True, slots=True)
class ReportRow:
    """Energy of one device in one period (kWh, unrounded) and how much of it the counters saw."""

    sn: str
    name: str
    period_start: datetime  # aware, in the report's time zone
    period_end: datetime
    pv_input_kwh: float
    input_kwh: float
    output_kwh: float
    battery_charge_kwh: float
    battery_discharge_kwh: float
    coverage_percent: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape: kWh with 3 decimals, coverage with 1, `period_start` ISO 8601 with offset."""
        return {
            "sn": self.sn,
            "name": self.name,
            "period_start": self.period_start.isoformat(),
            "pv_input_kwh": round(self.pv_input_kwh, 3),
            "input_kwh": round(self.input_kwh, 3),
            "output_kwh": round(self.output_kwh, 3),
            "battery_charge_kwh": round(self.battery_charge_kwh, 3),
            "battery_discharge_kwh": round(self.battery_discharge_kwh, 3),
            "coverage_percent": round(self.coverage_percent, 1),
        }


# ---------------------------------------------------------------------------- calendar


def local_zone() -> ZoneInfo:
    """The machine's time zone as a zoneinfo zone (DST rules included): `TZ`, else /etc/localtime."""
    name = os.environ.get("TZ", "").lstrip(":")
    if name:
        try:
            return ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    localtime = Path("/etc/localtime")
    try:
        target = str(localtime.resolve())
        if "/zoneinfo/" in target:
            return ZoneInfo(target.split("/zoneinfo/", 1)[1])
        with localtime.open("rb") as handle:
            return ZoneInfo.from_file(handle, key="localtime")
    except (OSError, ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def report_zone(settings: Settings) -> ZoneInfo:
    """`[history] timezone`, else the machine's zone."""
    return ZoneInfo(settings.history.timezone) if settings.history.timezone else local_zone()


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def period_start(moment: datetime, by: Period, tz: ZoneInfo) -> datetime:
    """Start (local midnight) of the period `moment` falls in."""
    day = moment.astimezone(tz).date()
    if by == "week":
        day -= timedelta(days=day.weekday())
    elif by == "month":
        day = day.replace(day=1)
    elif by == "year":
        day = day.replace(month=1, day=1)
    return _midnight(day, tz)


def next_period(start: datetime, by: Period, tz: ZoneInfo) -> datetime:
    day = start.date()
    if by == "day":
        day += timedelta(days=1)
    elif by == "week":
        day += timedelta(days=7)
    elif by == "month":
        day = date(day.year + day.month // 12, day.month % 12 + 1, 1)
    else:
        day = date(day.year + 1, 1, 1)
    return _midnight(day, tz)


def period_bounds(start: datetime, end: datetime, by: Period, tz: ZoneInfo) -> list[datetime]:
    """Boundaries of the whole periods covering [start, end): b0 <= start < ... <= b_n >= end."""
    bounds = [period_start(start, by, tz)]
    while bounds[-1] < end:
        bounds.append(next_period(bounds[-1], by, tz))
    if len(bounds) == 1:
        bounds.append(next_period(bounds[0], by, tz))
    return bounds


# ---------------------------------------------------------------------------- data

_COLUMNS: Final = (*COUNTERS, COVERED)
Rows = list[list[Any]]  # [time ms, pv_input_wh, ..., battery_discharge_wh, covered_s] (None: no value)


def _larger(a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else max(a, b)


@dataclass(slots=True)
class _Device:
    """The value rows of one serial, per name it was seen under (a renamed device has two)."""

    series: dict[str, Rows]
    last_ms: dict[str, int]

    def name(self) -> str:
        return max(self.last_ms, key=lambda name: self.last_ms[name])

    def rows(self) -> Rows:
        if len(self.series) == 1:
            return next(iter(self.series.values()))
        merged: Rows = []
        for row in sorted((row for rows in self.series.values() for row in rows), key=lambda r: r[0]):
            if merged and merged[-1][0] == row[0]:  # two names at one time: counters only grow
                merged[-1] = [row[0]] + [_larger(a, b) for a, b in zip(merged[-1][1:], row[1:], strict=True)]
            else:
                merged.append(row)
        return merged


def _sn_filter(sns: Sequence[str]) -> str:
    if not sns:
        return ""
    return " AND (" + " OR ".join(f'"sn" = {quote_literal(sn)}' for sn in sns) + ")"


def _collect(
    client: InfluxQL, bucket: str, query: str, devices: dict[str, _Device]
) -> tuple[int, int] | None:
    """Add the rows of `query` (columns `time` and _COLUMNS, grouped by sn and name) to `devices`;
    the first and last time seen (None: no rows)."""
    first: int | None = None
    last: int | None = None
    for part in client.series(bucket, query):
        if not part.values:
            continue
        values = part.values
        if part.columns != ["time", *_COLUMNS]:  # another server's column order
            index = [part.columns.index(c) if c in part.columns else -1 for c in ("time", *_COLUMNS)]
            values = [[row[i] if i >= 0 else None for i in index] for row in values]
        sn, name = part.tags.get("sn", ""), part.tags.get("name", "")
        device = devices.get(sn)
        if device is None:
            devices[sn] = device = _Device({}, {})
        device.series.setdefault(name, []).extend(values)
        device.last_ms[name] = max(device.last_ms.get(name, values[-1][0]), values[-1][0])
        first = values[0][0] if first is None else min(first, values[0][0])
        last = values[-1][0] if last is None else max(last, values[-1][0])
    return None if first is None or last is None else (first, last)


def _last_of_each() -> str:
    return ", ".join(f"last({quote_ident(name)}) AS {quote_ident(name)}" for name in _COLUMNS)


def _raw_query(start_ms: int, end_ms: int, sns: Sequence[str]) -> str:
    """Last value of each counter per 15 minutes from `ecoflow_energy`."""
    return (
        f"SELECT {_last_of_each()} FROM {quote_ident(ENERGY_MEASUREMENT)} "
        f"WHERE time >= {start_ms}ms AND time < {end_ms}ms{_sn_filter(sns)} "
        f'GROUP BY time(15m), "sn", "name" fill(none)'
    )


def _rollup_query(start_ms: int, end_ms: int, sns: Sequence[str]) -> str:
    """The hourly values of `ecoflow_energy_1h` (each the last of its hour)."""
    fields = ", ".join(quote_ident(name) for name in _COLUMNS)
    return (
        f"SELECT {fields} FROM {quote_ident(ENERGY_MEASUREMENT + ROLLUP_SUFFIX)} "
        f'WHERE time >= {start_ms}ms AND time < {end_ms}ms{_sn_filter(sns)} GROUP BY "sn", "name"'
    )


def _baseline(
    client: InfluxQL, bucket: str, measurement: str, start_ms: int, sns: Sequence[str]
) -> dict[str, list[float | None]]:
    """Each device's last counter values (in _COLUMNS order) in the look-back before `start_ms`."""
    lookback = start_ms - int(BASELINE_LOOKBACK.total_seconds() * 1000)
    query = (
        f"SELECT {_last_of_each()} FROM {quote_ident(measurement)} "
        f'WHERE time >= {lookback}ms AND time < {start_ms}ms{_sn_filter(sns)} GROUP BY "sn", "name"'
    )
    devices: dict[str, _Device] = {}
    _collect(client, bucket, query, devices)
    out: dict[str, list[float | None]] = {}
    for sn, device in devices.items():
        values: list[float | None] = [None] * len(_COLUMNS)
        for row in (row for rows in device.series.values() for row in rows):
            values = [
                b if a is None else a if b is None else max(a, b)
                for a, b in zip(values, row[1:], strict=True)
            ]
        out[sn] = values
    return out


def _first_values(
    client: InfluxQL, bucket: str, start_ms: int, end_ms: int, sns: Sequence[str]
) -> dict[str, list[float | None]]:
    """Each device's first counter values (in _COLUMNS order) in the raw counters of a range."""
    firsts = ", ".join(f"first({quote_ident(name)}) AS {quote_ident(name)}" for name in _COLUMNS)
    query = (
        f"SELECT {firsts} FROM {quote_ident(ENERGY_MEASUREMENT)} "
        f'WHERE time >= {start_ms}ms AND time < {end_ms}ms{_sn_filter(sns)} GROUP BY "sn"'
    )
    devices: dict[str, _Device] = {}
    _collect(client, bucket, query, devices)
    return {sn: list(device.rows()[0][1:]) for sn, device in devices.items()}


def energy_report(
    client: InfluxQL,
    *,
    bucket: str,
    history_bucket: str | None = None,
    start: datetime,
    end: datetime,
    by: Period = "day",
    sns: Sequence[str] = (),
    tz: ZoneInfo,
    now: datetime | None = None,
    source: Source = "auto",
) -> list[ReportRow]:
    """Energy per device (`sns`, else every device with counters in the range) and period.

    `start`/`end` are aware datetimes (end exclusive), widened to whole periods of `by` in `tz`;
    `bucket` holds `ecoflow_energy`, `history_bucket` (default: `bucket`) `ecoflow_energy_1h`.
    Rows are ordered by device name, serial, then period. Raises InfluxQLError."""
    now = now or datetime.now(UTC)
    history_bucket = history_bucket or bucket
    every = period_bounds(start, end, by, tz)
    bounds = [b for b in every[:-1] if b < now]  # the periods that have begun
    if not bounds:
        return []
    bounds.append(every[len(bounds)])
    edges = [to_ms(b) for b in bounds]
    start_ms, end_ms, now_ms = edges[0], edges[-1], to_ms(now)
    fetch_end = min(end_ms, now_ms + 1)
    use_rollups = source == "rollup" or (
        source == "auto" and fetch_end - start_ms > RAW_MAX_DAYS * 24 * HOUR_MS
    )
    devices: dict[str, _Device] = {}
    if use_rollups:
        found = _collect(client, history_bucket, _rollup_query(start_ms, fetch_end, sns), devices)
        if found is None:
            _collect(client, bucket, _raw_query(start_ms, fetch_end, sns), devices)
        else:
            if found[0] > start_ms:
                _collect(client, bucket, _raw_query(start_ms, found[0], sns), devices)
            if found[1] + HOUR_MS < fetch_end:
                _collect(client, bucket, _raw_query(found[1] + HOUR_MS, fetch_end, sns), devices)
        baselines = _baseline(client, history_bucket, ENERGY_MEASUREMENT + ROLLUP_SUFFIX, start_ms, sns)
        missing = [sn for sn in devices if sn not in baselines]
        if missing:
            baselines.update(_baseline(client, bucket, ENERGY_MEASUREMENT, start_ms, missing))
    else:
        _collect(client, bucket, _raw_query(start_ms, fetch_end, sns), devices)
        baselines = _baseline(client, bucket, ENERGY_MEASUREMENT, start_ms, sns)
    # a device with no value before the range starts inside it: its first raw value (the zero point
    # written where its counters start) is the baseline, not the first bucket's last value
    starting = [sn for sn in devices if sn not in baselines]
    if starting:
        baselines.update(_first_values(client, bucket, start_ms, fetch_end, starting))

    out: list[ReportRow] = []
    named = sorted((device.name(), sn, device) for sn, device in devices.items())
    for name, sn, device in named:
        totals = _totals(device.rows(), baselines.get(sn), edges)
        out.extend(_report_rows(sn, name, totals, bounds, edges, now_ms))
    return out


def _totals(rows: Rows, baseline: list[float | None] | None, edges: list[int]) -> list[list[float]]:
    """Per period, the growth of each column: the sum of the increases between consecutive values
    (a value below the one before is a restart from there: it adds nothing)."""
    width = len(_COLUMNS)
    previous: list[Any] = list(baseline) if baseline is not None else [None] * width
    totals = [[0.0] * width for _ in edges[:-1]]
    period, last_period = 0, len(totals) - 1
    next_edge = edges[1]
    total = totals[0]
    columns = range(width)
    for row in rows:
        if row[0] >= next_edge and period < last_period:
            while period < last_period and row[0] >= edges[period + 1]:
                period += 1
            next_edge = edges[period + 1]
            total = totals[period]
        for i in columns:
            value = row[i + 1]
            if value is not None:
                before = previous[i]
                if before is not None and value > before:
                    total[i] += value - before
                previous[i] = value
    return totals


def _report_rows(
    sn: str, name: str, totals: list[list[float]], bounds: list[datetime], edges: list[int], now_ms: int
) -> list[ReportRow]:
    rows = []
    for index, total in enumerate(totals):
        length_s = (min(edges[index + 1], now_ms) - edges[index]) / 1000
        covered = total[len(COUNTERS)]
        coverage = min(100.0, 100.0 * covered / length_s) if length_s > 0 else 0.0
        rows.append(
            ReportRow(
                sn=sn,
                name=name,
                period_start=bounds[index],
                period_end=bounds[index + 1],
                pv_input_kwh=total[0] / 1000,
                input_kwh=total[1] / 1000,
                output_kwh=total[2] / 1000,
                battery_charge_kwh=total[3] / 1000,
                battery_discharge_kwh=total[4] / 1000,
                coverage_percent=coverage,
            )
        )
    return rows


def report_from_settings(
    settings: Settings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    by: Period = "day",
    sns: Sequence[str] = (),
    now: datetime | None = None,
    client: InfluxQL | None = None,
) -> list[ReportRow]:
    """:func:`energy_report` with the buckets and zone of `settings`; by default the last 7 days
    (today included) up to now."""
    tz = report_zone(settings)
    now = now or datetime.now(UTC)
    end = end or now
    start = start or default_start(now, by, tz)
    own = client is None
    client = client or InfluxQL.from_settings(settings.influxdb)
    try:
        return energy_report(
            client,
            bucket=settings.influxdb.bucket,
            history_bucket=settings.history.bucket,
            start=start,
            end=end,
            by=by,
            sns=sns,
            tz=tz,
            now=now,
        )
    finally:
        if own:
            client.close()


DEFAULT_PERIODS: Final[dict[str, int]] = {"day": 7, "week": 4, "month": 12, "year": 3}


def default_start(now: datetime, by: Period, tz: ZoneInfo) -> datetime:
    """Start of the default range: the current period and the ones before it (7 days, 4 weeks,
    12 months, 3 years)."""
    start = period_start(now, by, tz)
    for _ in range(DEFAULT_PERIODS[by] - 1):
        start = period_start(start - timedelta(hours=1), by, tz)
    return start


# ---------------------------------------------------------------------------- output

_HEADER: Final = (
    "sn",
    "name",
    "period_start",
    "pv_input_kwh",
    "input_kwh",
    "output_kwh",
    "battery_charge_kwh",
    "battery_discharge_kwh",
    "coverage_percent",
)


def period_label(row: ReportRow) -> str:
    """`2024-03-31` (a day), `2024-W13` (an ISO week), `2024-03` (a month), `2024` (a year)."""
    start, end = row.period_start, row.period_end
    days = (end.date() - start.date()).days
    if days == 1:
        return start.date().isoformat()
    if days == 7:
        year, week, _ = start.date().isocalendar()
        return f"{year}-W{week:02d}"
    if days <= 31:
        return f"{start.year}-{start.month:02d}"
    return str(start.year)


def _cells(row: ReportRow) -> list[str]:
    return [
        f"{row.pv_input_kwh:.3f}",
        f"{row.input_kwh:.3f}",
        f"{row.output_kwh:.3f}",
        f"{row.battery_charge_kwh:.3f}",
        f"{row.battery_discharge_kwh:.3f}",
        f"{row.coverage_percent:.1f}",
    ]


def format_table(rows: Sequence[ReportRow]) -> str:
    """A text table: device, serial, period, kWh of each flow (3 decimals), coverage %."""
    header = [
        "device",
        "sn",
        "period",
        "pv kWh",
        "in kWh",
        "out kWh",
        "charge kWh",
        "discharge kWh",
        "cover %",
    ]
    body = [[row.name, row.sn, period_label(row), *_cells(row)] for row in rows]
    if not body:
        return "no energy counters (ecoflow_energy) in this range"
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    lines = []
    for line in [header, *body]:
        left = [cell.ljust(widths[i]) for i, cell in enumerate(line[:3])]
        right = [cell.rjust(widths[i + 3]) for i, cell in enumerate(line[3:])]
        lines.append("  ".join(left + right).rstrip())
    return "\n".join(lines)


def format_csv(rows: Iterable[ReportRow]) -> str:
    """CSV with a header: `sn,name,period_start,pv_input_kwh,...,coverage_percent`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(_HEADER)
    for row in rows:
        writer.writerow([row.sn, row.name, row.period_start.isoformat(), *_cells(row)])
    return out.getvalue()


def format_json(rows: Iterable[ReportRow]) -> str:
    """A JSON list of :meth:`ReportRow.as_dict` objects."""
    return json.dumps([row.as_dict() for row in rows], indent=2)


PLOT_HINT: Final = "pip install 'ecoflow-collector[plot]'"


def plot_available() -> None:
    """Raise MissingExtraError unless matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"--plot needs matplotlib, which is not installed: {PLOT_HINT}") from None


def plot_report(rows: Sequence[ReportRow], path: Path) -> None:
    """A PNG: solar input and output per period, bars stacked by device."""
    plot_available()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels: list[str] = []
    for row in rows:
        if period_label(row) not in labels:
            labels.append(period_label(row))
    labels.sort()
    devices = sorted({(row.name, row.sn) for row in rows})
    figure, axes = plt.subplots(2, 1, figsize=(max(6.0, 0.5 * len(labels) + 3), 7), sharex=True)
    for axis, attribute, title in (
        (axes[0], "pv_input_kwh", "Solar input (kWh)"),
        (axes[1], "output_kwh", "Output (kWh)"),
    ):
        bottom = [0.0] * len(labels)
        for name, sn in devices:
            heights = [0.0] * len(labels)
            for row in rows:
                if row.sn == sn and row.name == name:
                    heights[labels.index(period_label(row))] += getattr(row, attribute)
            axis.bar(labels, heights, bottom=bottom, label=f"{name} ({sn})")
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        axis.set_title(title)
        axis.set_ylabel("kWh")
    axes[0].legend(fontsize="small")
    axes[1].tick_params(axis="x", labelrotation=45)
    figure.tight_layout()
    figure.savefig(path, format="png")
    plt.close(figure)
