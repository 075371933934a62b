"""Hourly rollups: `<measurement>_1h`, computed by the collector through InfluxQL.

For every measurement SHOW MEASUREMENTS lists in the `[influxdb] bucket` (device measurements such
as `delta_pro` and `powerstream`, `ecoflow_summary`, `ecoflow_status`), except `ecoflow_collector`
and the rollups themselves, each hour gets one point per series in `<measurement>_1h`:

- fields `<field>_mean`, `<field>_min`, `<field>_max` of every numeric field that has data in the
  hour, tags as the source's, timestamp the start of the hour (UTC);
- `ecoflow_energy_1h` instead holds each counter's **last** value in the hour, under the counter's
  own name (`pv_input_wh`, ..., `covered_s`, `gap_s`): energy of a span of hours is the difference
  of two such values.

Rollups go to `[history] bucket` (default: the `[influxdb] bucket`) through `/api/v2/write`.
Recomputing an hour writes the same points (same series and timestamp), which InfluxDB stores
once: every run is idempotent. One query per measurement and chunk of hours
(`GROUP BY time(1h), *` with `mean(*), min(*), max(*)`), streamed, so the work is InfluxDB's and
the collector's memory stays flat.

:class:`RollupJob` is what the daemon schedules (every `[history] interval_s`): it recomputes the
hours from its watermark (a JSON file in `[collector] state_dir`) to now, and always at least the
last two hours, so it catches up after an InfluxDB outage or a stopped collector. The watermark
moves only past hours that were written; an hour stays open for recomputation until the hour after
it has begun (late points, e.g. replayed from the writer's spool, are then included).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import structlog

from collector.config import Settings
from collector.history.energy import ENERGY_MEASUREMENT
from collector.history.influxql import InfluxQL, InfluxQLError, quote_ident
from collector.points import COLLECTOR_MEASUREMENT, Point
from collector.statedir import write_atomic

__all__ = [
    "HOUR_MS",
    "ROLLUP_SUFFIX",
    "RollupJob",
    "RollupResult",
    "Watermark",
    "roll_up",
    "rollup_measurements",
]

log = structlog.get_logger("collector.history")

ROLLUP_SUFFIX: Final = "_1h"
HOUR_MS: Final = 3_600_000
WATERMARK_FILE: Final = "history_rollup.json"
_AGGREGATES: Final = ("mean", "min", "max")

Progress = Callable[[int, int, int], None]  # (chunk end ms, range end ms, points so far)


def floor_hour_ms(ms: int) -> int:
    return ms - ms % HOUR_MS


def to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: give a time zone")
    return int(moment.timestamp() * 1000)


def iso_ms(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def rollup_measurements(client: InfluxQL, bucket: str) -> list[str]:
    """The measurements of `bucket` that get rollups (all but `ecoflow_collector` and `*_1h`)."""
    names = [row.values["name"] for row in client.rows(bucket, "SHOW MEASUREMENTS")]
    return sorted(
        str(name) for name in names if name != COLLECTOR_MEASUREMENT and not str(name).endswith(ROLLUP_SUFFIX)
    )


def _rollup_query(measurement: str, start_ms: int, end_ms: int) -> str:
    select = "last(*)" if measurement == ENERGY_MEASUREMENT else "mean(*), min(*), max(*)"
    return (
        f"SELECT {select} FROM {quote_ident(measurement)} "
        f"WHERE time >= {start_ms}ms AND time < {end_ms}ms GROUP BY time(1h), * fill(none)"
    )


def _field_names(measurement: str, columns: list[str]) -> list[str | None]:
    """Rollup field of each column (`mean_x` -> `x_mean`; `last_x` -> `x` for the energy counters);
    None for `time` and for anything else."""
    out: list[str | None] = []
    for column in columns:
        aggregate, sep, name = column.partition("_")
        if not sep or not name:
            out.append(None)
        elif measurement == ENERGY_MEASUREMENT:
            out.append(name if aggregate == "last" else None)
        else:
            out.append(f"{name}_{aggregate}" if aggregate in _AGGREGATES else None)
    return out


def rollup_lines(
    client: InfluxQL, bucket: str, measurement: str, start_ms: int, end_ms: int
) -> Iterator[str]:
    """Line protocol of the rollup points of `measurement` for the hours in [start_ms, end_ms)."""
    target = measurement + ROLLUP_SUFFIX
    for part in client.series(bucket, _rollup_query(measurement, start_ms, end_ms)):
        names = _field_names(measurement, part.columns)
        time_index = part.columns.index("time")
        tags = tuple(sorted((k, v) for k, v in part.tags.items() if v))
        for values in part.values:
            fields: dict[str, float] = {}
            for name, value in zip(names, values, strict=True):
                if name is not None and type(value) in (float, int):
                    fields[name] = float(value)
            if fields:
                yield Point(target, tags, fields, int(values[time_index])).to_line()


@dataclass(slots=True)
class RollupResult:
    """What one rollup pass did. `done_until_ms`: hours before it are written (== end_ms when all
    went well); `error`: why it stopped early, else None."""

    start_ms: int
    end_ms: int
    done_until_ms: int
    points: int = 0
    measurements: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def hours(self) -> int:
        return max(0, self.done_until_ms - self.start_ms) // HOUR_MS

    @property
    def ok(self) -> bool:
        return self.error is None


def roll_up(
    client: InfluxQL,
    source_bucket: str,
    target_bucket: str,
    start_ms: int,
    end_ms: int,
    *,
    chunk_hours: int = 24,
    progress: Progress | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> RollupResult:
    """Roll up the whole hours overlapping [start_ms, end_ms), chunk by chunk (oldest first).

    Stops at the first chunk that fails (InfluxDB down, query refused): `error` says why, and
    `done_until_ms` is the end of the last chunk written completely. `on_chunk(chunk_end_ms)` is
    called after each chunk is written (the daemon moves its watermark there)."""
    began = time.monotonic()
    start_ms = floor_hour_ms(start_ms)
    end_ms = -(-end_ms // HOUR_MS) * HOUR_MS
    result = RollupResult(start_ms, end_ms, start_ms)
    try:
        result.measurements = rollup_measurements(client, source_bucket)
        chunk_ms = max(1, chunk_hours) * HOUR_MS
        for chunk_start in range(start_ms, end_ms, chunk_ms):
            chunk_end = min(chunk_start + chunk_ms, end_ms)
            for measurement in result.measurements:
                lines = rollup_lines(client, source_bucket, measurement, chunk_start, chunk_end)
                result.points += client.write(target_bucket, lines)
            result.done_until_ms = chunk_end
            if on_chunk is not None:
                on_chunk(chunk_end)
            if progress is not None:
                progress(chunk_end, end_ms, result.points)
    except InfluxQLError as exc:
        result.error = str(exc)
    result.seconds = time.monotonic() - began
    return result


class Watermark:
    """The persisted start of the first hour not yet rolled up for good (a JSON file).

    Written atomically (temporary file, fsync, rename, fsync of the folder); a file that cannot be
    read as one is logged as an error and treated as missing (the job then starts afresh)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self) -> int | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.error("history.watermark_unreadable", path=str(self.path), reason=exc.strerror)
            return None
        try:
            data: Any = json.loads(text)
            value = data["until_ms"]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"until_ms is {value!r}")
            return value
        except (ValueError, KeyError, TypeError) as exc:
            log.error(
                "history.watermark_corrupt",
                path=str(self.path),
                reason=str(exc)[:200],
                action="treated as missing: the rollups restart from the default look-back",
            )
            return None

    def save(self, until_ms: int) -> None:
        data = {"version": 1, "until": iso_ms(until_ms), "until_ms": until_ms}
        write_atomic(self.path, (json.dumps(data) + "\n").encode())


class RollupJob:
    """The daemon's rollup job: `RollupJob(settings).run()` every `[history] interval_s`.

    Each run recomputes the hours from the watermark up to the current hour (included), and always
    at least the previous and the current hour; with no watermark yet (first start, or a corrupt
    file), the last `first_lookback` (7 days; older data: `ecoflow-collector rollup --since`).
    The watermark moves to the end of each chunk written, never past the current hour (which is
    incomplete) and never past a chunk that failed. Never raises for InfluxDB problems: they are
    logged (once per change of state) and in the result."""

    def __init__(
        self,
        settings: Settings,
        *,
        client: InfluxQL | None = None,
        first_lookback: timedelta = timedelta(days=7),
        chunk_hours: int = 24,
    ) -> None:
        self.source_bucket = settings.influxdb.bucket
        self.target_bucket = settings.history.bucket or settings.influxdb.bucket
        self.client = client or InfluxQL.from_settings(settings.influxdb)
        self.watermark = Watermark(settings.collector.state_dir / WATERMARK_FILE)
        self.first_lookback_ms = int(first_lookback.total_seconds() * 1000)
        self.chunk_hours = chunk_hours
        self._failing = False

    def close(self) -> None:
        self.client.close()

    def run(self, now: datetime | None = None) -> RollupResult:
        now_ms = to_ms(now) if now is not None else int(time.time() * 1000)
        current_hour = floor_hour_ms(now_ms)
        mark = self.watermark.load()
        if mark is None:
            start = floor_hour_ms(current_hour - self.first_lookback_ms)
        else:
            start = min(floor_hour_ms(mark), current_hour - HOUR_MS)
        if start < current_hour - HOUR_MS and not self._failing:
            log.info(
                "history.rollup_catching_up",
                since=iso_ms(start),
                hours=(current_hour + HOUR_MS - start) // HOUR_MS,
                watermark=iso_ms(mark) if mark is not None else None,
                hint=None if mark is not None else "older hours: ecoflow-collector rollup --since 365d",
            )
        saved = mark

        def advance(chunk_end: int) -> None:
            nonlocal saved
            until = min(chunk_end, current_hour)
            if saved is None or until > saved:
                try:
                    self.watermark.save(until)
                except OSError as exc:  # the rollups are written; the next run redoes them
                    log.error(
                        "history.watermark_unwritable", path=str(self.watermark.path), reason=exc.strerror
                    )
                    return
                saved = until

        result = roll_up(
            self.client,
            self.source_bucket,
            self.target_bucket,
            start,
            current_hour + HOUR_MS,
            chunk_hours=self.chunk_hours,
            on_chunk=advance,
        )
        if result.error is not None:
            if not self._failing:
                log.warning(
                    "history.rollup_failed",
                    error=result.error,
                    done_until=iso_ms(result.done_until_ms),
                    retry="at the next run, from the watermark",
                )
            self._failing = True
        else:
            if self._failing:
                log.info("history.rollup_recovered", hours=result.hours, points=result.points)
            else:
                log.debug("history.rollup_done", hours=result.hours, points=result.points)
            self._failing = False
        return result
