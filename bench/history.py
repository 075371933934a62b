"""History benchmark: `report --by month` over a year of hourly rollups, and the rollup of a week of
raw data, for a fleet of devices, against a private InfluxDB 1.6.7 (collector.testbed).

    python3 bench/history.py [--devices 10] [--days 7] [--report-days 366]

(a) report: one year of `ecoflow_energy_1h` (one point per device and hour, the five energy counters
    plus `covered_s` and `gap_s`), then `energy_report(..., by="month")` over that year, as the
    `report` command runs it (rollups, the raw fallback after the last rollup, the baseline).
(b) rollup: one week of raw data, half the devices Delta Pro and half PowerStream, with their real
    field sets (every field of the fixtures' quota/all answers, decoded and normalized as the
    collector does: 329 Delta Pro fields, 70 PowerStream fields): a full report every 15 minutes
    and an incremental one of 12 fields every 30 s per device, `ecoflow_summary` every 30 s,
    `ecoflow_status` and `ecoflow_energy` every 60 s; then `roll_up` of the whole week into
    `*_1h`, as `ecoflow-collector rollup --since 7d` does.

Floors: report < 1 s, week rollup < 60 s. Prints the timings and PASS/FAIL.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from collector.catalog import default_catalog
from collector.decoding import flatten
from collector.history.influxql import InfluxQL
from collector.history.report import energy_report
from collector.history.rollup import roll_up
from collector.logs import configure
from collector.normalize import normalize_values
from collector.testbed import InfluxServer

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
HOUR_MS = 3_600_000
REPORT_FLOOR_S = 1.0
ROLLUP_FLOOR_S = 60.0
COUNTERS = ("pv_input_wh", "input_wh", "output_wh", "battery_charge_wh", "battery_discharge_wh")


def product_fields(slug: str) -> dict[str, float]:
    data = json.loads((FIXTURES / slug / "quota_all.json").read_text())["data"]
    return normalize_values(default_catalog().get(slug), flatten(data), slug=slug)


def year_of_rollups(devices: int, start_ms: int, hours: int) -> Iterator[str]:
    for d in range(devices):
        series = f"ecoflow_energy_1h,name=Device\\ {d},product=delta_pro,sn=DEV{d:04d}"
        counters = [0.0] * len(COUNTERS)
        covered = gap = 0.0
        for h in range(hours):
            solar = max(0.0, 400.0 - abs((h % 24) - 12) * 60.0)
            steps = (solar, solar + 50.0, 120.0 + d, solar * 0.5, 60.0)
            counters = [c + s for c, s in zip(counters, steps, strict=True)]
            covered += 3540.0
            gap += 60.0
            fields = ",".join(f"{n}={v:.3f}" for n, v in zip(COUNTERS, counters, strict=True))
            yield f"{series} {fields},covered_s={covered},gap_s={gap} {start_ms + h * HOUR_MS}"


def week_of_raw(devices: int, start_ms: int, days: int) -> Iterator[str]:
    rng = random.Random(7)
    shapes = {slug: product_fields(slug) for slug in ("delta_pro", "powerstream")}
    end_ms = start_ms + days * 24 * HOUR_MS
    for d in range(devices):
        slug = "delta_pro" if d % 2 == 0 else "powerstream"
        full = dict(shapes[slug])
        keys = sorted(full)
        name, sn = f"Device\\ {d}", f"DEV{d:04d}"
        tags = f"name={name},sn={sn}"
        energy = 0.0
        for t in range(start_ms, end_ms, 30_000):
            if (t - start_ms) % 900_000 == 0:
                for key in keys:
                    full[key] = round(full[key] + rng.uniform(-1, 1), 2)
                fields = full
            else:
                fields = {key: round(full[key] + rng.uniform(-1, 1), 2) for key in rng.sample(keys, 12)}
            body = ",".join(f"{k}={v!r}" for k, v in fields.items())
            yield f"{slug},{tags} {body} {t}"
            soc = 50 + 40 * rng.random()
            yield (
                f"ecoflow_summary,{tags.replace(',sn', f',product={slug},sn')} soc_percent={soc:.1f},"
                f"input_w={rng.uniform(0, 800):.1f},output_w={rng.uniform(0, 600):.1f},"
                f"pv_input_w={rng.uniform(0, 400):.1f},battery_w={rng.uniform(-300, 300):.1f} {t}"
            )
            if (t - start_ms) % 60_000 == 0:
                yield f"ecoflow_status,{tags} online=1,state=2 {t}"
                energy += rng.uniform(0, 10)
                counters = ",".join(f"{n}={energy * (i + 1):.3f}" for i, n in enumerate(COUNTERS))
                yield (
                    f"ecoflow_energy,{tags.replace(',sn', f',product={slug},sn')} {counters},"
                    f"covered_s={(t - start_ms) / 1000},gap_s=0 {t}"
                )


def write(server: InfluxServer, db: str, lines: Iterator[str], batch: int = 5000) -> tuple[int, float]:
    began = time.perf_counter()
    count = 0
    chunk: list[str] = []
    for line in lines:
        chunk.append(line)
        if len(chunk) >= batch:
            server.write_lines(db, chunk, precision="ms")
            count += len(chunk)
            chunk = []
    if chunk:
        server.write_lines(db, chunk, precision="ms")
        count += len(chunk)
    return count, time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10)
    parser.add_argument("--days", type=int, default=7, help="days of raw data to roll up")
    parser.add_argument("--report-days", type=int, default=366, help="days of rollups to report over")
    args = parser.parse_args()
    configure("warning")
    ok = True
    berlin = ZoneInfo("Europe/Berlin")
    with InfluxServer() as server:
        client = InfluxQL(server.url)
        # (a) report over a year of rollups
        server.create_database("report")
        year = datetime(2024, 1, 1, tzinfo=berlin)
        start_ms = int(year.timestamp() * 1000)
        points, took = write(server, "report", year_of_rollups(args.devices, start_ms, args.report_days * 24))
        print(f"(a) wrote {points:,} ecoflow_energy_1h points ({args.devices} devices) in {took:.1f} s")
        times = []
        for _ in range(5):
            began = time.perf_counter()
            rows = energy_report(
                client,
                bucket="report",
                start=year,
                end=year + timedelta(days=args.report_days),
                by="month",
                tz=berlin,
                now=datetime(2026, 1, 1, tzinfo=UTC),
            )
            times.append(time.perf_counter() - began)
        best, worst = min(times), max(times)
        good = worst < REPORT_FLOOR_S
        ok &= good
        print(
            f"    report --by month: {len(rows)} rows, {best * 1000:.0f} ms best / {worst * 1000:.0f} ms "
            f"worst of 5 (floor {REPORT_FLOOR_S:g} s): {'PASS' if good else 'FAIL'}"
        )

        # (b) rollup of a week of raw data
        server.create_database("raw")
        week_ms = int(datetime(2024, 6, 3, tzinfo=UTC).timestamp() * 1000)
        points, took = write(server, "raw", week_of_raw(args.devices, week_ms, args.days))
        fields = sum(r["count"] for r in server.rows("raw", 'SELECT count("pd.wattsInSum") FROM "delta_pro"'))
        print(
            f"(b) wrote {points:,} raw points ({args.days} days, {args.devices} devices; "
            f"{fields:,} delta_pro pd.wattsInSum values) in {took:.1f} s"
        )
        for chunk_hours in (24, 168):
            began = time.perf_counter()
            result = roll_up(
                client, "raw", "raw", week_ms, week_ms + args.days * 24 * HOUR_MS, chunk_hours=chunk_hours
            )
            took = time.perf_counter() - began
            good = result.ok and took < ROLLUP_FLOOR_S
            ok &= good
            print(
                f"    rollup ({chunk_hours} h chunks): {result.hours} hours x {len(result.measurements)} "
                f"measurements -> {result.points:,} points in {took:.1f} s "
                f"(floor {ROLLUP_FLOOR_S:g} s): {'PASS' if good else 'FAIL'}"
            )
        client.close()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
