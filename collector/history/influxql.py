"""A small InfluxQL client over HTTP: the `/query` API of InfluxDB 1.8, 2.x (v1-compatible API with a
DBRP mapping) and 3.x, and `/api/v2/write` (the API the daemon writes through).

- A bucket names the database and, optionally, its retention policy: `ecoflow` or, for InfluxDB
  1.8, `database/retention_policy` (:func:`split_bucket`); queries go with `db` and `rp` set to
  those, so `FROM "m"` reads that retention policy.
- Times come as integers, milliseconds since the epoch (`epoch=ms`).
- Results stream: every query is sent with `chunked=true`; InfluxDB answers one JSON object per
  line, each holding at most `chunk_size` rows of one series, and :meth:`InfluxQL.series` yields
  them as they arrive, so memory stays flat however long the answer is.
- Every failure is an :class:`InfluxQLError` whose message says what went wrong (InfluxDB's own
  error text, connection refused, credentials refused) and never holds the token.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, Self
from urllib.parse import urlencode

import orjson
import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import NewConnectionError
from urllib3.exceptions import TimeoutError as Urllib3Timeout

from collector.config import InfluxSection

__all__ = [
    "InfluxQL",
    "InfluxQLError",
    "Row",
    "Series",
    "quote_ident",
    "quote_literal",
    "split_bucket",
]

_WRITE_MAX_LINES: Final = 5000
_WRITE_MAX_BYTES: Final = 4 * 1024 * 1024
_READ_BYTES: Final = 256 * 1024
_TEXT_CHARS: Final = 500


class InfluxQLError(Exception):
    """A query or a write failed; the message is meant for the user (no secrets in it)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def split_bucket(bucket: str) -> tuple[str, str | None]:
    """`db` and `rp` of a bucket name: `ecoflow` -> (`ecoflow`, None); `ecoflow/autogen` ->
    (`ecoflow`, `autogen`) (InfluxDB 1.8's `database/retention_policy`)."""
    db, _, rp = bucket.partition("/")
    if not db:
        raise ValueError(f"bucket {bucket!r} names no database")
    return db, rp or None


def quote_ident(name: str) -> str:
    """An InfluxQL double-quoted identifier (measurement, field or tag key)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def quote_literal(text: str) -> str:
    """An InfluxQL single-quoted string literal (a tag value)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True, slots=True)
class Series:
    """One series of an answer, or one chunk of it (`partial`: more rows of it follow)."""

    name: str
    tags: dict[str, str]
    columns: list[str]
    values: list[list[Any]]
    partial: bool = False


class Row(NamedTuple):
    """One row: its series' measurement and tags, and the columns (`time` in ms) by name."""

    measurement: str
    tags: dict[str, str]
    values: dict[str, Any]


def _public_url(url: str) -> str:
    """The URL without any user:password part, for messages."""
    parsed = urllib3.util.parse_url(url)
    return parsed._replace(auth=None).url.rstrip("/")


def _server_text(body: bytes) -> str:
    """InfluxDB's error text from an error body (`{"error": ...}` 1.x, `{"message": ...}` 2.x/3.x)."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return text[:_TEXT_CHARS]
    if isinstance(data, dict):
        for key in ("error", "message"):
            if isinstance(data.get(key), str):
                return str(data[key])[:_TEXT_CHARS]
    return text[:_TEXT_CHARS]


class InfluxQL:
    """InfluxQL queries and line-protocol writes against one InfluxDB (thread-safe: urllib3 pool)."""

    def __init__(
        self,
        url: str,
        token: str = "",
        org: str = "",
        *,
        timeout_s: float = 60.0,
        chunk_size: int = 10_000,
        gzip_writes: bool = True,
    ) -> None:
        self.url = url.rstrip("/")
        self.org = org
        self.chunk_size = chunk_size
        self.gzip_writes = gzip_writes
        self._where = _public_url(self.url)
        self._timeout = urllib3.Timeout(connect=min(10.0, timeout_s), read=timeout_s)
        self._headers = {"Accept": "application/json"}
        if token:
            self._headers["Authorization"] = f"Token {token}"
        self._pool = urllib3.PoolManager(num_pools=2, maxsize=4, retries=False)

    @classmethod
    def from_settings(cls, influx: InfluxSection, **kwargs: Any) -> Self:
        return cls(
            influx.url,
            influx.token.get_secret_value(),
            influx.org,
            gzip_writes=influx.gzip,
            **kwargs,
        )

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ queries
    def series(self, bucket: str, query: str) -> Iterator[Series]:
        """The series of one InfluxQL statement, chunk by chunk as InfluxDB sends them."""
        db, rp = split_bucket(bucket)
        params = {"db": db, "epoch": "ms", "chunked": "true", "chunk_size": str(self.chunk_size)}
        if rp is not None:
            params["rp"] = rp
        response = self._request(
            "POST",
            f"/query?{urlencode(params)}",
            body=urlencode({"q": query}).encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        try:
            pending = bytearray()
            for piece in response.stream(_READ_BYTES):
                searched = len(pending)  # a chunk spans many pieces: look for its end in the new bytes only
                pending += piece
                newline = pending.find(b"\n", searched)
                while newline >= 0:
                    line = bytes(pending[:newline])
                    del pending[: newline + 1]
                    yield from self._chunk(line)
                    newline = pending.find(b"\n")
            if pending.strip():
                yield from self._chunk(bytes(pending))
        except (Urllib3Error, OSError) as exc:
            raise InfluxQLError(f"InfluxDB at {self._where} broke off its answer: {_reason(exc)}") from None
        finally:
            response.release_conn()

    def rows(self, bucket: str, query: str) -> Iterator[Row]:
        """The rows of one statement, one by one (streamed as :meth:`series`)."""
        for part in self.series(bucket, query):
            columns = part.columns
            for values in part.values:
                yield Row(part.name, part.tags, dict(zip(columns, values, strict=True)))

    def query(self, bucket: str, query: str) -> list[Series]:
        """All series of one statement, the chunks of each joined (for small answers)."""
        out: list[Series] = []
        for part in self.series(bucket, query):
            last = out[-1] if out else None
            if last is not None and last.partial and last.name == part.name and last.tags == part.tags:
                out[-1] = Series(part.name, part.tags, last.columns, last.values + part.values, part.partial)
            else:
                out.append(part)
        return out

    def _chunk(self, line: bytes) -> Iterator[Series]:
        if not line.strip():
            return
        try:
            data = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise InfluxQLError(
                f"InfluxDB at {self._where} sent an answer that is not JSON: {line[:200]!r}"
            ) from None
        if "error" in data:
            raise InfluxQLError(f"InfluxDB: {data['error']}")
        for result in data.get("results", []):
            if "error" in result:
                raise InfluxQLError(f"InfluxDB: {result['error']}")
            for series in result.get("series", []):
                yield Series(
                    series.get("name", ""),
                    series.get("tags") or {},
                    series["columns"],
                    series.get("values") or [],
                    bool(series.get("partial", False)),
                )

    # ------------------------------------------------------------------ writes
    def write(self, bucket: str, lines: Iterable[str]) -> int:
        """Write line protocol (ms timestamps) through `/api/v2/write`, in batches; the number of
        lines written. Raises :class:`InfluxQLError` at the first batch that fails."""
        written = 0
        batch: list[str] = []
        size = 0
        for line in lines:
            batch.append(line)
            size += len(line) + 1
            if len(batch) >= _WRITE_MAX_LINES or size >= _WRITE_MAX_BYTES:
                self._write_batch(bucket, batch)
                written += len(batch)
                batch, size = [], 0
        if batch:
            self._write_batch(bucket, batch)
            written += len(batch)
        return written

    def _write_batch(self, bucket: str, lines: list[str]) -> None:
        params = urlencode({"org": self.org, "bucket": bucket, "precision": "ms"})
        body = "\n".join(lines).encode()
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.gzip_writes and len(body) > 1024:
            body = gzip.compress(body, compresslevel=1)
            headers["Content-Encoding"] = "gzip"
        response = self._request("POST", f"/api/v2/write?{params}", body=body, headers=headers)
        response.drain_conn()
        response.release_conn()

    # ------------------------------------------------------------------ HTTP
    def _request(
        self, method: str, path: str, *, body: bytes, headers: dict[str, str]
    ) -> urllib3.BaseHTTPResponse:
        try:
            response = self._pool.request(
                method,
                self.url + path,
                body=body,
                headers={**self._headers, **headers},
                timeout=self._timeout,
                preload_content=False,
                redirect=False,
            )
        except NewConnectionError as exc:
            raise InfluxQLError(f"cannot connect to InfluxDB at {self._where}: {_reason(exc)}") from None
        except Urllib3Timeout:
            raise InfluxQLError(f"InfluxDB at {self._where} did not answer in time") from None
        except (Urllib3Error, OSError) as exc:
            raise InfluxQLError(f"InfluxDB at {self._where}: {_reason(exc)}") from None
        if response.status < 300:
            return response
        text = _server_text(response.data)
        response.release_conn()
        if response.status in (401, 403):
            raise InfluxQLError(
                f"InfluxDB at {self._where} refused the credentials (HTTP {response.status}: {text}); "
                "check [influxdb] token (for InfluxDB 1.8: user:password) and its permissions",
                response.status,
            )
        raise InfluxQLError(
            f"InfluxDB at {self._where} answered HTTP {response.status}: {text}", response.status
        )


def _reason(exc: BaseException) -> str:
    """The innermost reason of a urllib3/socket error, in words (`connection refused`)."""
    text = str(getattr(exc, "reason", None) or exc)
    lowered = text.lower()
    if "refused" in lowered:
        return "connection refused"
    if "name or service not known" in lowered or "nodename nor servname" in lowered:
        return "unknown host"
    return text.split(": ", 1)[-1][:_TEXT_CHARS] if ": " in text else text[:_TEXT_CHARS]
