"""Export raw or rollup data of one measurement: one row per timestamp and device.

Columns: `time` (ISO 8601, UTC, milliseconds), `sn`, `name`, then the fields: in the order asked
for, else sorted by name. The range is read in windows of 7 days, each streamed in chunks
(`chunked=true`), and rows are written as they arrive (CSV line by line, Parquet in row groups),
so memory stays flat for a year of data.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, TextIO

from collector.history.influxql import InfluxQL, quote_ident, quote_literal
from collector.history.report import MissingExtraError

__all__ = ["ExportError", "export_csv", "export_parquet", "export_rows", "measurement_fields"]

Format = Literal["csv", "parquet"]
WINDOW_MS: Final = 7 * 24 * 3_600_000
ROW_GROUP_ROWS: Final = 50_000
PARQUET_HINT: Final = "pip install 'ecoflow-collector[parquet]'"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


class ExportError(Exception):
    """The export cannot be made as asked (unknown measurement or field)."""


def measurement_fields(client: InfluxQL, bucket: str, measurement: str) -> list[str]:
    """The field keys of `measurement`, sorted."""
    rows = client.rows(bucket, f"SHOW FIELD KEYS FROM {quote_ident(measurement)}")
    return sorted(str(row.values["fieldKey"]) for row in rows)


def _columns(client: InfluxQL, bucket: str, measurement: str, fields: Sequence[str] | None) -> list[str]:
    known = measurement_fields(client, bucket, measurement)
    if not known:
        names = sorted(str(row.values["name"]) for row in client.rows(bucket, "SHOW MEASUREMENTS"))
        raise ExportError(
            f"measurement {measurement!r} has no data in bucket {bucket!r}; measurements: "
            + (", ".join(names) or "none")
        )
    if not fields:
        return known
    unknown = [name for name in fields if name not in set(known)]
    if unknown:
        sample = ", ".join(known[:10]) + (", ..." if len(known) > 10 else "")
        raise ExportError(
            f"{measurement} has no field {', '.join(unknown)} (its fields: {sample}; "
            "`ecoflow-collector schema` lists them)"
        )
    return list(dict.fromkeys(fields))


def iso_utc(ms: int) -> str:
    """`2024-03-31T01:00:00.000Z`."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def export_rows(
    client: InfluxQL,
    bucket: str,
    measurement: str,
    start_ms: int,
    end_ms: int,
    *,
    sns: Sequence[str] = (),
    fields: Sequence[str] | None = None,
) -> tuple[list[str], Iterator[tuple[int, str, str, list[Any]]]]:
    """The field columns, and an iterator of (time ms, sn, name, field values) in time order."""
    columns = _columns(client, bucket, measurement, fields)
    select = ", ".join(['"sn"::tag', '"name"::tag', *(f"{quote_ident(name)}::field" for name in columns)])
    where = ""
    if sns:
        where = " AND (" + " OR ".join(f'"sn" = {quote_literal(sn)}' for sn in sns) + ")"

    def rows() -> Iterator[tuple[int, str, str, list[Any]]]:
        for window in range(start_ms, end_ms, WINDOW_MS):
            query = (
                f"SELECT {select} FROM {quote_ident(measurement)} "
                f"WHERE time >= {window}ms AND time < {min(window + WINDOW_MS, end_ms)}ms{where}"
            )
            for part in client.series(bucket, query):
                index = {name: i for i, name in enumerate(part.columns)}
                # a column InfluxDB names `sn_1` when a field is called `sn` too: take the tag's
                t, sn, name = index["time"], index.get("sn", -1), index.get("name", -1)
                picks = [index.get(column, -1) for column in columns]
                for values in part.values:
                    yield (
                        int(values[t]),
                        str(values[sn] or "") if sn >= 0 else "",
                        str(values[name] or "") if name >= 0 else "",
                        [values[i] if i >= 0 else None for i in picks],
                    )

    return columns, rows()


def export_csv(
    client: InfluxQL,
    bucket: str,
    measurement: str,
    start_ms: int,
    end_ms: int,
    out: TextIO,
    *,
    sns: Sequence[str] = (),
    fields: Sequence[str] | None = None,
) -> int:
    """Write CSV (header `time,sn,name,<fields>`) to `out`; the number of rows."""
    columns, rows = export_rows(client, bucket, measurement, start_ms, end_ms, sns=sns, fields=fields)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["time", "sn", "name", *columns])
    count = 0
    for when, sn, name, values in rows:
        writer.writerow([iso_utc(when), sn, name, *("" if v is None else v for v in values)])
        count += 1
    return count


def parquet_available() -> None:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise MissingExtraError(
            f"--format parquet needs pyarrow, which is not installed: {PARQUET_HINT}"
        ) from None


def export_parquet(
    client: InfluxQL,
    bucket: str,
    measurement: str,
    start_ms: int,
    end_ms: int,
    path: Path,
    *,
    sns: Sequence[str] = (),
    fields: Sequence[str] | None = None,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> int:
    """Write a Parquet file (`time` timestamp[ms, UTC], `sn`, `name`, float64 fields), one row
    group per `row_group_rows` rows; the number of rows."""
    parquet_available()
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns, rows = export_rows(client, bucket, measurement, start_ms, end_ms, sns=sns, fields=fields)
    schema = pa.schema(
        [
            pa.field("time", pa.timestamp("ms", tz="UTC")),
            pa.field("sn", pa.string()),
            pa.field("name", pa.string()),
            *(pa.field(column, pa.float64()) for column in columns),
        ]
    )
    count = 0
    with pq.ParquetWriter(str(path), schema) as writer:
        buffer: list[list[Any]] = [[] for _ in range(3 + len(columns))]

        def flush() -> None:
            arrays = [pa.array(values, type=schema.field(i).type) for i, values in enumerate(buffer)]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            for values in buffer:
                values.clear()

        for when, sn, name, values in rows:
            buffer[0].append(when)
            buffer[1].append(sn)
            buffer[2].append(name)
            for i, value in enumerate(values, start=3):
                buffer[i].append(None if value is None else float(value))
            count += 1
            if len(buffer[0]) >= row_group_rows:
                flush()
        if buffer[0] or count == 0:
            flush()
    return count
