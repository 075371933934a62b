"""`rollup`, `report` and `export`: the historical side, computed through InfluxQL.

Times (`--from`, `--to`) are ISO dates (`2024-03-31`) or datetimes (`2024-03-31T12:00`,
`2024-03-31T12:00:00+02:00`, `...Z`); without an offset they are in `[history] timezone` (default:
the machine's zone). A date given to `--to` includes that day.
"""

from __future__ import annotations

import argparse
import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from zoneinfo import ZoneInfo

from collector.cli import UsageError
from collector.config import load_settings
from collector.history.export import ExportError, export_csv, export_parquet, parquet_available
from collector.history.influxql import InfluxQL, InfluxQLError
from collector.history.report import (
    PERIODS,
    MissingExtraError,
    Period,
    default_start,
    format_csv,
    format_json,
    format_table,
    plot_available,
    plot_report,
    report_from_settings,
    report_zone,
)
from collector.history.rollup import HOUR_MS, iso_ms, roll_up, to_ms

_SINCE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def register(commands: Any) -> None:
    rollup = commands.add_parser(
        "rollup",
        help="compute the hourly rollups (<measurement>_1h) of a time range",
        description="Recompute the hourly rollups of every measurement (mean/min/max per hour; the "
        "energy counters' last value per hour) for a range of hours, into [history] bucket. Safe to "
        "repeat: an hour written again replaces itself.",
    )
    _config(rollup)
    span = rollup.add_mutually_exclusive_group(required=True)
    span.add_argument("--since", help="this long before now: 30d, 12h, 2w")
    span.add_argument("--from", dest="start", help="start (ISO date or datetime)")
    rollup.add_argument("--to", dest="end", help="end (ISO date, included, or datetime); default now")
    rollup.add_argument("--chunk-hours", type=int, default=168, help=argparse.SUPPRESS)
    rollup.set_defaults(handler=run_rollup)

    report = commands.add_parser(
        "report",
        help="energy per device and day/week/month/year (kWh) from the energy counters",
        description="Energy per device and calendar period in [history] timezone, from the energy "
        "counters (ecoflow_energy; the hourly rollups for ranges over 31 days).",
    )
    _config(report)
    report.add_argument(
        "--from", dest="start", help="first day (default: 7 days, 4 weeks, 12 months or 3 years)"
    )
    report.add_argument("--to", dest="end", help="last day, included (default: now)")
    report.add_argument("--by", choices=PERIODS, default="day", help="period (default: day)")
    report.add_argument("--sn", action="append", default=[], help="only this device (repeatable)")
    report.add_argument("--format", choices=["table", "csv", "json"], default="table")
    report.add_argument("--plot", type=Path, metavar="FILE.png", help="also draw a stacked bar chart")
    report.set_defaults(handler=run_report)

    export = commands.add_parser(
        "export",
        help="export raw or rollup data of one measurement as CSV or Parquet",
        description="One row per timestamp and device: time (ISO 8601 UTC), sn, name, then the "
        "fields (in the order given, else sorted).",
    )
    _config(export)
    export.add_argument("--measurement", required=True, help="e.g. delta_pro, ecoflow_summary_1h")
    export.add_argument("--sn", action="append", default=[], help="only this device (repeatable)")
    export.add_argument("--from", dest="start", required=True, help="start (ISO date or datetime)")
    export.add_argument("--to", dest="end", required=True, help="end (ISO date, included, or datetime)")
    export.add_argument("--fields", nargs="+", metavar="F", help="these fields, in this order")
    export.add_argument("--format", choices=["csv", "parquet"], default="csv")
    export.add_argument("--output", type=Path, help="file to write (default for CSV: stdout)")
    export.add_argument(
        "--bucket", help="read this bucket (default: [influxdb] bucket; [history] bucket for *_1h)"
    )
    export.set_defaults(handler=run_export)


def _config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML config file (environment overrides it)")


# ---------------------------------------------------------------------------- times


def parse_since(text: str) -> timedelta:
    match = _SINCE.match(text)
    if match is None:
        raise UsageError(f"--since {text!r}: give a number and a unit s, m, h, d or w (e.g. 30d)")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def parse_time(text: str, tz: ZoneInfo, *, end: bool = False, option: str = "--from") -> datetime:
    """An ISO date (its midnight in `tz`; with `end`, the next midnight) or datetime (naive: in `tz`)."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
            return datetime(day.year, day.month, day.day, tzinfo=tz)
        moment = datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"{option} {text!r}: give an ISO date (2024-03-31) or datetime (2024-03-31T12:00)"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=tz)


def _range(args: argparse.Namespace, tz: ZoneInfo, now: datetime) -> tuple[datetime, datetime]:
    end = parse_time(args.end, tz, end=True, option="--to") if args.end else now
    start = parse_time(args.start, tz, option="--from")
    if start >= end:
        raise UsageError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    return start, end


def _fail(command: str, exc: Exception) -> int:
    print(f"ecoflow-collector {command}: {exc}", file=sys.stderr)
    return 1


# ---------------------------------------------------------------------------- rollup


def run_rollup(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    tz = report_zone(settings)
    now = datetime.now(UTC)
    if args.since is not None:
        if args.end:
            raise UsageError("--to goes with --from, not with --since")
        start, end = now - parse_since(args.since), now
    else:
        start, end = _range(args, tz, now)
    start_ms, end_ms = to_ms(start), to_ms(end)
    target = settings.history.bucket or settings.influxdb.bucket
    tty = sys.stderr.isatty()
    first_hour = start_ms - start_ms % HOUR_MS

    def progress(done_ms: int, end_ms: int, points: int) -> None:
        if tty:
            share = (done_ms - first_hour) / max(1, end_ms - first_hour)
            print(
                f"\rrollup: {share:6.1%} up to {iso_ms(done_ms)}, {points:,} points",
                end="",
                file=sys.stderr,
                flush=True,
            )

    with InfluxQL.from_settings(settings.influxdb) as client:
        result = roll_up(
            client,
            settings.influxdb.bucket,
            target,
            start_ms,
            end_ms,
            chunk_hours=args.chunk_hours,
            progress=progress,
        )
    if tty:
        print(file=sys.stderr)
    if result.error is not None:
        print(
            f"ecoflow-collector rollup: stopped after {result.hours} hours "
            f"({iso_ms(result.start_ms)} .. {iso_ms(result.done_until_ms)} done, {result.points:,} points): "
            f"{result.error}",
            file=sys.stderr,
        )
        return 1
    print(
        f"rolled up {result.hours} hours ({iso_ms(result.start_ms)} .. {iso_ms(result.end_ms)}) of "
        f"{len(result.measurements)} measurements: {result.points:,} points written to bucket {target} "
        f"in {result.seconds:.1f} s"
    )
    return 0


# ---------------------------------------------------------------------------- report


def run_report(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.plot is not None:
        try:
            plot_available()
        except MissingExtraError as exc:
            raise UsageError(str(exc)) from None
    tz = report_zone(settings)
    now = datetime.now(UTC)
    by: Period = args.by
    end = parse_time(args.end, tz, end=True, option="--to") if args.end else now
    start = (
        parse_time(args.start, tz, option="--from") if args.start else default_start(min(now, end), by, tz)
    )
    if start >= end:
        raise UsageError(f"--from ({start.isoformat()}) must be before --to ({end.isoformat()})")
    try:
        rows = report_from_settings(settings, start=start, end=end, by=by, sns=args.sn, now=now)
    except InfluxQLError as exc:
        return _fail("report", exc)
    if args.format == "json":
        print(format_json(rows))
    elif args.format == "csv":
        print(format_csv(rows), end="")
    else:
        print(format_table(rows))
    if args.plot is not None:
        plot_report(rows, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- export


def run_export(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    if args.format == "parquet":
        try:
            parquet_available()
        except MissingExtraError as exc:
            raise UsageError(str(exc)) from None
        if args.output is None:
            raise UsageError("--format parquet needs --output FILE")
    tz = report_zone(settings)
    start, end = _range(args, tz, datetime.now(UTC))
    bucket = args.bucket or (
        settings.history.bucket
        if args.measurement.endswith("_1h") and settings.history.bucket
        else settings.influxdb.bucket
    )
    kwargs: dict[str, Any] = {"sns": args.sn, "fields": args.fields}
    try:
        with InfluxQL.from_settings(settings.influxdb) as client:
            if args.format == "parquet":
                rows = export_parquet(
                    client, bucket, args.measurement, to_ms(start), to_ms(end), args.output, **kwargs
                )
            elif args.output is None:
                rows = export_csv(
                    client, bucket, args.measurement, to_ms(start), to_ms(end), sys.stdout, **kwargs
                )
            else:
                with args.output.open("w", encoding="utf-8", newline="") as out:
                    rows = export_csv(
                        client, bucket, args.measurement, to_ms(start), to_ms(end), out, **kwargs
                    )
    except ExportError as exc:
        raise UsageError(str(exc)) from None
    except InfluxQLError as exc:
        return _fail("export", exc)
    print(f"exported {rows:,} rows of {args.measurement}", file=sys.stderr)
    return 0
