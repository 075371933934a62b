"""The InfluxDB sink: batches points, writes them with influxdb-client, spools what cannot be written.

Points go into a bounded in-memory queue (:meth:`InfluxWriter.submit` never blocks on the network;
bounded in points and in bytes). One writer thread cuts the queue into batches of ``batch_size``
points (at most 4 MiB), or whatever has waited ``flush_interval_s``, and writes each with one
synchronous request (precision ms; gzip'ed unless ``[influxdb] gzip = false``).

While everything works, the spool on disk is not touched. When a write fails for a reason that
time or the user can fix, the batch goes to the spool and the writer is in *replay mode* for as
long as the spool holds anything: new batches are appended behind the old ones, and the oldest
spooled batches are retried with capped exponential backoff (or the server's ``Retry-After``),
committed one by one as they succeed. Order is kept (a newer value of a field is never written
before an older one). A batch is sent again only if its write may have failed (or was still out
when it had to be spooled); InfluxDB absorbs that, storing a point with the same series and
timestamp once.

How outcomes are sorted (after Telegraf's InfluxDB v2 output):

=============================================  ============  ======================================
outcome                                        class         what happens
=============================================  ============  ======================================
2xx                                            (success)     counted (``points_written``)
connection refused/reset, DNS, bad response    connection    spool, replay with backoff (warning)
connect/read timeout                           timeout       spool, replay with backoff (warning)
5xx (a proxy's 502/503/504 included)           server        spool, replay, ``Retry-After`` honoured
429, 408                                       throttled     spool, replay, ``Retry-After`` honoured
401, 403                                       auth          spool, replay with backoff, error log:
                                                             fix ``influxdb.token``; nothing is lost
404                                            not_found     spool, replay with backoff, error log:
                                                             create the bucket/database or fix it
413                                            too_large     split in halves, each written on its own
400, 422 (type conflict, bad line, partial)    rejected      batch set aside in ``rejected/`` with
                                                             InfluxDB's reason, counted, not retried
any other status (3xx, 4xx), TLS failure       client        spool, replay with backoff, error log
anything else raised by the client             unexpected    spool, replay with backoff, error log
=============================================  ============  ======================================

A 400/422 from InfluxDB 1.x/2.x is usually a *partial* write: the other points of the batch are
stored; the file in ``rejected/`` keeps the whole batch (with the reason as a ``#`` comment line)
so the user can fix and re-import it. ``rejected/`` is bounded: the oldest files go first.

When the in-memory queue is full (the writer is stuck in a long request, or slower than the data
comes), :meth:`submit` spills
the queue, and the batch in flight, to the spool rather than drop anything; points are dropped
(and counted) only if the spool cannot take them. :meth:`InfluxWriter.close` writes what is
pending to InfluxDB or, if that does not succeed within its timeout, to the spool.
"""

from __future__ import annotations

import email.utils
import json
import os
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Final, Self, cast

import structlog
import urllib3
from influxdb_client.client.influxdb_client import InfluxDBClient
from influxdb_client.client.write_api import SYNCHRONOUS
from influxdb_client.domain.write_precision import WritePrecision
from influxdb_client.rest import ApiException

from collector.config import CollectorSection, InfluxSection, Settings
from collector.points import Point
from collector.sink import SinkStats
from collector.sink.spool import Spool, SpoolClosedError, SpoolError, SpoolStats

__all__ = ["ErrorClass", "InfluxWriter", "WriteFailure", "classify", "parse_retry_after"]

log = structlog.get_logger("collector.influx")

# Bounds by size besides points: a fleet's full reports are ~10 kB of line protocol each. A batch
# stops at _BATCH_MAX_BYTES (a request InfluxDB finishes well within its timeout, and under common
# proxy body limits); past _QUEUE_MAX_BYTES in memory, the queue goes to the spool (as when full).
_BATCH_MAX_BYTES: Final = 4 * 1024 * 1024
_QUEUE_MAX_BYTES: Final = 32 * 1024 * 1024
_TICK_S: Final = 1.0  # the writer loop wakes at least this often, which is what stuck() watches
_RETRY_AFTER_CAP_S: Final = 900.0  # a sane bound on whatever a server or proxy asks for
_REASON_CHARS: Final = 500
# influxdb-client declares its precision constants as plain str
_PRECISION_MS: Final = cast(WritePrecision, WritePrecision.MS)


class ErrorClass(StrEnum):
    CONNECTION = "connection"
    TIMEOUT = "timeout"
    SERVER = "server"
    THROTTLED = "throttled"
    AUTH = "auth"
    NOT_FOUND = "not_found"
    TOO_LARGE = "too_large"
    REJECTED = "rejected"
    CLIENT = "client"
    UNEXPECTED = "unexpected"


# Failures that fix themselves with time: logged as warnings, not errors.
_TRANSIENT: Final = frozenset(
    {ErrorClass.CONNECTION, ErrorClass.TIMEOUT, ErrorClass.SERVER, ErrorClass.THROTTLED}
)


@dataclass(frozen=True, slots=True)
class WriteFailure:
    error: ErrorClass
    reason: str
    status: int | None = None
    retry_after_s: float | None = None


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _reason(exc: ApiException) -> str:
    """InfluxDB's own words: ``message`` (2.x) or ``error`` (1.x) of a JSON body, else the body."""
    body = exc.body
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body or "")
    try:
        data = json.loads(text)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "error"):
            if isinstance(data.get(key), str):
                text = data[key]
                break
    return (text.strip() or str(exc.reason or ""))[:_REASON_CHARS]


def classify(exc: Exception) -> WriteFailure:
    """Sort an exception raised by ``WriteApi.write`` (see the module's table)."""
    if isinstance(exc, ApiException):
        status = int(exc.status or 0)
        reason = _reason(exc)
        retry_after = parse_retry_after(exc.retry_after)
        if status == 0:  # influxdb-client's way of reporting a TLS failure
            error = ErrorClass.CLIENT
        elif status in (401, 403):
            error = ErrorClass.AUTH
        elif status == 404:
            error = ErrorClass.NOT_FOUND
        elif status == 413:
            error = ErrorClass.TOO_LARGE
        elif status in (400, 422):
            error = ErrorClass.REJECTED
        elif status in (408, 429):
            error = ErrorClass.THROTTLED
        elif status >= 500:
            error = ErrorClass.SERVER
        else:
            error = ErrorClass.CLIENT
        return WriteFailure(error, reason, status, retry_after)
    # urllib3 makes NewConnectionError (refused, unreachable) a subclass of ConnectTimeoutError
    if isinstance(exc, urllib3.exceptions.TimeoutError | socket.timeout) and not isinstance(
        exc, urllib3.exceptions.NewConnectionError
    ):
        return WriteFailure(ErrorClass.TIMEOUT, str(exc)[:_REASON_CHARS])
    if isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        return WriteFailure(ErrorClass.CONNECTION, str(exc)[:_REASON_CHARS])
    return WriteFailure(ErrorClass.UNEXPECTED, f"{type(exc).__name__}: {exc}"[:_REASON_CHARS])


@dataclass(slots=True)
class _Inflight:
    """A batch taken from the queue for a direct write. Until its outcome is known it is still
    ahead of the queue: a spill puts it into the spool first (``spilled``)."""

    payload: bytes
    points: int
    spilled: bool = False


class _RejectedStore:
    """Batches InfluxDB refused, one file each, oldest deleted beyond ``max_bytes``."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._seq = 0

    def put(self, payload: bytes, failure: WriteFailure) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        path = self.directory / f"{stamp}-{self._seq:04d}-{failure.status}.lp"
        tmp = path.with_suffix(".tmp")
        # a "#" line is a comment in line protocol: the file can be re-imported once fixed
        comment = " ".join(f"# InfluxDB answered {failure.status}: {failure.reason}".splitlines())
        with tmp.open("wb") as fh:
            fh.write(comment.encode() + b"\n" + payload + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        self._trim(keep=path)
        return path

    def _trim(self, keep: Path) -> None:
        files = sorted(self.directory.glob("*.lp"))
        total = sum(f.stat().st_size for f in files)
        for old in files:
            if total <= self.max_bytes or old == keep:
                break
            total -= old.stat().st_size
            old.unlink()


class InfluxWriter:
    """The InfluxDB sink (see the module docstring). Starts its writer thread on construction."""

    def __init__(
        self,
        influx: InfluxSection,
        collector: CollectorSection,
        *,
        queue_max_points: int | None = None,
        queue_max_bytes: int = _QUEUE_MAX_BYTES,
        batch_max_bytes: int = _BATCH_MAX_BYTES,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 60.0,
        stuck_after_s: float | None = None,
        rejected_max_bytes: int = 64 * 1024 * 1024,
        spool_segment_bytes: int | None = None,
        spool_fsync: Callable[[int], None] | None = None,
    ) -> None:
        self._bucket = influx.bucket
        self._org = influx.org
        self._batch_size = influx.batch_size
        self._flush_interval_s = influx.flush_interval_s
        self._queue_max = queue_max_points or max(10 * influx.batch_size, 50_000)
        self._queue_max_bytes = queue_max_bytes
        self._batch_max_bytes = batch_max_bytes
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        # a healthy writer finishes any request within timeout_s (a total limit) and then ticks
        self._stuck_after_s = stuck_after_s or max(60.0, 3 * influx.timeout_s)
        self._rejected = _RejectedStore(collector.state_dir / "rejected", rejected_max_bytes)
        self._client = InfluxDBClient(
            url=influx.url,
            token=influx.token.get_secret_value(),
            org=influx.org,
            timeout=int(influx.timeout_s * 1000),
            enable_gzip=influx.gzip,
        )
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)
        try:
            self._spool = Spool(
                collector.state_dir / "spool",
                collector.spool_max_bytes,
                segment_bytes=spool_segment_bytes,
                fsync=spool_fsync,
            )
        except BaseException:
            self._client.close()  # type: ignore[no-untyped-call]  # untyped in influxdb-client
            raise

        self._cond = threading.Condition()
        # Spool appends (an fsync each) happen under _spool_io, never under _cond, so that submit()
        # never waits for the disk. Lock order: _spool_io before _cond.
        self._spool_io = threading.Lock()
        # batches taken from memory for the spool, oldest first, not yet durable (and not yet handled)
        self._outbox: deque[tuple[bytes, int]] = deque()
        self._outbox_points = 0
        self._outbox_bytes = 0
        self._spool_snapshot = self._spool.stats()  # refreshed under _spool_io after each change
        self._queue: deque[bytes] = deque()  # UTF-8 lines
        self._queue_bytes = 0  # bytes of the queued lines, one newline each counted
        self._queue_since = 0.0  # monotonic time the oldest queued point arrived
        self._inflight: _Inflight | None = None
        self._flush_requested = False
        self._closing = False
        self._closed = False
        self._submitted = 0  # points accepted by submit()
        self._handled = 0  # of those, points no longer only in memory (written, spooled, set aside, dropped)
        self._backoff_s = retry_initial_s
        self._next_retry = 0.0
        self._failures = 0  # consecutive failed writes
        self._last_tick = time.monotonic()
        self._final_spool_stats: SpoolStats | None = None
        self._logged_submit_after_close = False

        self._points_written = 0
        self._batches_written = 0
        self._write_errors: dict[str, int] = {}
        self._points_spooled = 0
        self._points_replayed = 0
        self._points_rejected = 0
        self._points_dropped = 0
        self._last_success_time: float | None = None
        self._last_error: ErrorClass | None = None

        log.info(
            "influx.writer_started",
            url=influx.url,
            org=influx.org,
            bucket=influx.bucket,
            batch_size=influx.batch_size,
            flush_interval_s=influx.flush_interval_s,
            spool_points=self._spool_snapshot.points,
        )
        self._thread = threading.Thread(target=self._run, name="influx-writer", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.influxdb, settings.collector)

    @staticmethod
    def probe(settings: Settings, timeout_s: float) -> str | None:
        """Check that the configured bucket takes writes, without writing data: None if it does,
        else what is wrong (for ``check``).

        The body is a comment line only. Servers check the token and the bucket before they parse
        the body, so a 2xx, or a 400/422 about the body holding no points (InfluxDB 2.x says
        "writing requires points"), means token and bucket are good."""
        influx = settings.influxdb
        with InfluxDBClient(
            url=influx.url,
            token=influx.token.get_secret_value(),
            org=influx.org,
            timeout=int(timeout_s * 1000),
        ) as client:
            try:
                client.write_api(write_options=SYNCHRONOUS).write(
                    bucket=influx.bucket, org=influx.org, record=b"# ecoflow-collector probe\n"
                )
            except Exception as exc:
                failure = classify(exc)
                if failure.error is ErrorClass.REJECTED:
                    return None
                return _describe(failure, influx)
        return None

    # ------------------------------------------------------------------ the public side

    def submit(self, points: list[Point]) -> None:
        """Queue points for writing; never waits for the network."""
        lines = [point.to_line().encode() for point in points if point.fields]
        if not lines:
            return
        size = sum(map(len, lines)) + len(lines)
        spilled = False
        with self._cond:
            if self._closed:
                self._points_dropped += len(lines)
                if not self._logged_submit_after_close:
                    self._logged_submit_after_close = True
                    log.warning("influx.submit_after_close", points=len(lines))
                return
            self._submitted += len(lines)
            held_points = len(self._queue) + self._outbox_points
            held_bytes = self._queue_bytes + self._outbox_bytes
            if held_points + len(lines) > self._queue_max or held_bytes + size > self._queue_max_bytes:
                log.warning(
                    "influx.queue_full_spilled",
                    points=held_points + len(lines),
                    queue_max_points=self._queue_max,
                    bytes=held_bytes + size,
                    queue_max_bytes=self._queue_max_bytes,
                )
                self._spill_locked(lines)
                spilled = True
            else:
                if not self._queue:
                    self._queue_since = time.monotonic()
                    self._cond.notify_all()
                self._queue.extend(lines)
                self._queue_bytes += size
                if len(self._queue) >= self._batch_size or self._queue_bytes >= self._batch_max_bytes:
                    self._cond.notify_all()
        if spilled:
            # memory is full: the caller waits for the disk (back-pressure), as it must somewhere
            self._drain_outbox()

    def flush(self, timeout: float = 5.0) -> bool:
        """Write (or spool) everything submitted so far, now; False if that took longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            target = self._submitted
            self._flush_requested = True
            self._cond.notify_all()
            while self._handled < target:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return self._handled >= target
                self._cond.wait(remaining)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Stop within ``timeout`` seconds: write what is pending to InfluxDB or, failing that in
        time, to the spool. Points lost on the way (only if the spool fails) count as dropped."""
        deadline = time.monotonic() + timeout
        with self._cond:
            if self._closed:
                return
            dropped_before = self._points_dropped
            self._closing = True
            self._cond.notify_all()
        # keep a moment for spooling what the writer could not finish
        self._thread.join(max(0.0, deadline - min(1.0, timeout / 5) - time.monotonic()))
        with self._cond:
            if self._closed:
                return  # another thread's close() finished meanwhile
            self._closed = True
            if self._queue or (self._inflight is not None and not self._inflight.spilled):
                self._spill_locked([])
        self._drain_outbox()
        with self._spool_io:
            final = self._spool.stats()
            self._spool.close()
        with self._cond:
            self._final_spool_stats = final
            self._cond.notify_all()
            lost = self._points_dropped - dropped_before
        log.info(
            "influx.closed",
            spool_points=final.points,
            points_lost=lost,
            writer_finished=not self._thread.is_alive(),
        )

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def stuck(self) -> bool:
        """True when the writer thread has work but has made no progress for ``stuck_after_s``
        (or has died): a reason for a health check to fail and the daemon to be restarted."""
        with self._cond:
            if self._closed:
                return False
            if not self._thread.is_alive():
                return True
            busy = (
                bool(self._queue)
                or bool(self._outbox)
                or self._inflight is not None
                or self._spool_snapshot.batches > 0
            )
            return busy and time.monotonic() - self._last_tick > self._stuck_after_s

    def stats(self) -> SinkStats:
        """Counters since start (for the collector's own measurement and the health check):
        see :class:`~collector.sink.SinkStats`; ``write_errors`` is keyed by :class:`ErrorClass` value."""
        stuck = self.stuck()
        with self._cond:
            spool = self._final_spool_stats or self._spool_snapshot
            return SinkStats(
                points_written=self._points_written,
                batches_written=self._batches_written,
                write_errors=MappingProxyType(dict(self._write_errors)),
                points_spooled=self._points_spooled,
                points_replayed=self._points_replayed,
                points_rejected=self._points_rejected,
                points_dropped=self._points_dropped + spool.dropped_points,
                queue_points=len(self._queue) + self._outbox_points,
                spool_depth=spool.batches,
                spool_points=spool.points,
                spool_bytes=spool.bytes,
                last_success_time=self._last_success_time,
                last_error=None if self._last_error is None else self._last_error.value,
                stuck=stuck,
            )

    # ------------------------------------------------------------------ the writer thread

    def _run(self) -> None:
        try:
            while True:
                try:
                    if not self._step():
                        return
                except SpoolClosedError:
                    return  # close() gave up waiting for us and closed the spool
                except Exception:
                    # never let the thread die: log, wait a backoff, carry on
                    log.exception("influx.writer_error")
                    with self._cond:
                        self._cond.wait(self._backoff_s)
        finally:
            self._client.close()  # type: ignore[no-untyped-call]  # untyped in influxdb-client

    def _step(self) -> bool:
        """One round of the writer loop; False when the writer is done."""
        with self._cond:
            now = time.monotonic()
            self._last_tick = now
            if self._closed:
                return False
            replaying = self._spool_snapshot.batches > 0 or bool(self._outbox)
            if self._batch_due_locked(now):
                if replaying:
                    self._move_queue_to_outbox_locked()
                    inflight, to_spool = None, True
                else:
                    inflight, to_spool = self._take_inflight_locked(), False
            elif replaying and not self._closing and now >= self._next_retry:
                inflight, to_spool = None, False
            elif self._closing:
                return False  # queue empty; replaying the spool is for the next start
            else:
                self._cond.wait(self._wait_s_locked(now, replaying))
                return True
        if to_spool:
            self._drain_outbox()
        elif inflight is not None:
            self._write_direct(inflight)
        else:
            self._replay_once()
        return True

    def _batch_due_locked(self, now: float) -> bool:
        return bool(self._queue) and (
            len(self._queue) >= self._batch_size
            or self._queue_bytes >= self._batch_max_bytes
            or self._flush_requested
            or self._closing
            or now - self._queue_since >= self._flush_interval_s
        )

    def _wait_s_locked(self, now: float, replaying: bool) -> float:
        wait = _TICK_S
        if self._queue:
            wait = min(wait, self._queue_since + self._flush_interval_s - now)
        if replaying:
            wait = min(wait, self._next_retry - now)
        return max(wait, 0.001)

    def _take_lines_locked(self) -> list[bytes]:
        """The next batch: at most ``batch_size`` lines and ``batch_max_bytes`` bytes joined by
        newlines (a single longer line goes alone)."""
        count = min(self._batch_size, len(self._queue))
        lines: list[bytes] = []
        size = 0  # each line with its newline: the joined batch is size - 1 bytes
        while len(lines) < count and (not lines or size + len(self._queue[0]) <= self._batch_max_bytes):
            line = self._queue.popleft()
            lines.append(line)
            size += len(line) + 1
        self._queue_bytes = self._queue_bytes - size if self._queue else 0
        if self._queue:
            # the rest waits for a full batch or its own flush interval
            self._queue_since = time.monotonic()
        else:
            self._flush_requested = False
        return lines

    def _take_inflight_locked(self) -> _Inflight:
        lines = self._take_lines_locked()
        self._inflight = _Inflight(b"\n".join(lines), len(lines))
        return self._inflight

    def _move_queue_to_outbox_locked(self) -> None:
        while self._queue:
            lines = self._take_lines_locked()
            self._outbox_locked(b"\n".join(lines), len(lines))

    def _spill_locked(self, extra: list[bytes]) -> None:
        """Put everything held in memory on its way to the spool, in order: the batch in flight
        (whatever becomes of its request; a success only means it is sent twice), the queue,
        ``extra``. The caller then calls :meth:`_drain_outbox` (without holding ``_cond``)."""
        inflight = self._inflight
        if inflight is not None and not inflight.spilled:
            inflight.spilled = True
            self._outbox_locked(inflight.payload, inflight.points)
        self._queue.extend(extra)
        self._queue_bytes += sum(map(len, extra)) + len(extra)
        self._move_queue_to_outbox_locked()

    def _outbox_locked(self, payload: bytes, points: int) -> None:
        self._outbox.append((payload, points))
        self._outbox_points += points
        self._outbox_bytes += len(payload)

    def _drain_outbox(self) -> None:
        """Append the outbox to the spool, oldest first, each batch fsync'd, WITHOUT holding
        ``_cond`` (submit() goes on meanwhile). Whoever holds ``_spool_io`` drains all of it, so
        the spool's order is the outbox's. A batch counts as handled once it is durable (or lost,
        counted, if the spool cannot take it)."""
        with self._spool_io:
            while True:
                with self._cond:
                    if not self._outbox:
                        return
                    payload, points = self._outbox[0]
                error: SpoolError | None = None
                try:
                    self._spool.append(payload, points)
                except SpoolClosedError:
                    raise
                except SpoolError as exc:
                    error = exc
                snapshot = self._spool.stats()
                with self._cond:
                    self._outbox.popleft()
                    self._outbox_points -= points
                    self._outbox_bytes -= len(payload)
                    self._handled += points
                    self._spool_snapshot = snapshot
                    if error is None:
                        self._points_spooled += points
                    else:
                        self._points_dropped += points
                    self._cond.notify_all()
                if error is not None:
                    log.error("influx.spool_failed", points=points, error=str(error))

    def _refresh_spool_snapshot(self) -> None:
        with self._spool_io:
            snapshot = self._spool.stats()
            with self._cond:
                self._spool_snapshot = snapshot

    def _write_direct(self, inflight: _Inflight) -> None:
        failure = self._deliver(inflight.payload, inflight.points)
        with self._cond:
            self._inflight = None
            if not inflight.spilled:
                if failure is not None:
                    # nothing newer is in the outbox: a spill would have taken this batch first
                    self._outbox_locked(inflight.payload, inflight.points)
                else:
                    self._handled += inflight.points
            self._after_write_locked(failure, inflight.points, replay=False)
        if failure is not None:
            self._drain_outbox()

    def _replay_once(self) -> None:
        batch = self._spool.peek(max_points=self._batch_size, max_bytes=self._batch_max_bytes)
        if batch is None:
            self._refresh_spool_snapshot()  # what peek found damaged is gone
            return
        failure = self._deliver(batch.payload, batch.points)
        with self._spool_io:
            if failure is None:
                self._spool.commit(batch)
            snapshot = self._spool.stats()
            with self._cond:
                self._spool_snapshot = snapshot
                if failure is None:
                    self._points_replayed += batch.points
                self._after_write_locked(failure, batch.points, replay=True)

    def _after_write_locked(self, failure: WriteFailure | None, points: int, *, replay: bool) -> None:
        if self._closed:
            return  # close() took over (and closed the spool) while this request was out
        now = time.monotonic()
        if failure is None:
            if self._failures:
                log.info("influx.write_recovered", failed_attempts=self._failures)
            self._failures = 0
            self._backoff_s = self._retry_initial_s
            self._next_retry = now
            self._last_error = None
            if replay and self._spool_snapshot.batches == 0 and not self._outbox:
                log.info("influx.spool_drained", points_replayed=self._points_replayed)
        else:
            self._failures += 1
            self._last_error = failure.error
            delay = self._backoff_s * random.uniform(0.8, 1.2)  # jitter: collectors do not retry in step
            if failure.retry_after_s is not None:
                delay = max(delay, min(failure.retry_after_s, _RETRY_AFTER_CAP_S))
            self._backoff_s = min(self._backoff_s * 2, self._retry_max_s)
            self._next_retry = now + delay
            self._log_failure(failure, points, delay, replay=replay)
        self._cond.notify_all()

    def _log_failure(self, failure: WriteFailure, points: int, delay: float, *, replay: bool) -> None:
        fields = {
            "error": failure.error.value,
            "status": failure.status,
            "reason": failure.reason,
            "points": points,
            "replay": replay,
            "retry_in_s": round(delay, 2),
            "spool_points": self._spool_snapshot.points + self._outbox_points,
        }
        if failure.error in _TRANSIENT:
            log.warning("influx.write_failed", **fields)
        elif failure.error is ErrorClass.AUTH:
            log.error(
                "influx.write_unauthorized",
                hint="InfluxDB refused the token: fix influxdb.token (it needs write access to the "
                "bucket); the data is kept in the spool and written once it is accepted",
                **fields,
            )
        elif failure.error is ErrorClass.NOT_FOUND:
            log.error(
                "influx.bucket_not_found",
                bucket=self._bucket,
                org=self._org,
                hint="create the bucket (database) or fix influxdb.bucket / influxdb.org; the data is "
                "kept in the spool and written once the bucket exists",
                **fields,
            )
        else:
            log.error("influx.write_failed", **fields)

    # ------------------------------------------------------------------ one batch, one outcome

    def _deliver(self, payload: bytes, points: int) -> WriteFailure | None:
        """Write one batch, splitting on 413 and setting aside what InfluxDB rejects; None when the
        batch is dealt with, else the failure that leaves it to be retried."""
        try:
            self._write_api.write(
                bucket=self._bucket, org=self._org, record=payload, write_precision=_PRECISION_MS
            )
            failure = None
        except Exception as exc:
            # no traceback in the log: a renderer that shows locals would print the client's
            # request headers, token included
            failure = classify(exc)
        self._last_tick = time.monotonic()
        with self._cond:
            if failure is None:
                self._points_written += points
                self._batches_written += 1
                self._last_success_time = time.time()
                return None
            self._write_errors[failure.error.value] = self._write_errors.get(failure.error.value, 0) + 1
        if failure.error is ErrorClass.TOO_LARGE and points > 1:
            lines = payload.split(b"\n")
            half = len(lines) // 2
            log.warning("influx.batch_split", points=points, reason=failure.reason)
            first = self._deliver(b"\n".join(lines[:half]), half)
            if first is not None:
                return first  # the whole batch is retried; its first half is then sent twice
            return self._deliver(b"\n".join(lines[half:]), len(lines) - half)
        if failure.error in (ErrorClass.REJECTED, ErrorClass.TOO_LARGE):
            self._set_aside(payload, points, failure)
            return None
        return failure

    def _set_aside(self, payload: bytes, points: int, failure: WriteFailure) -> None:
        try:
            path: Path | str = self._rejected.put(payload, failure)
        except OSError as exc:
            path = f"(not saved: {exc})"
        with self._cond:
            self._points_rejected += points
        log.error(
            "influx.batch_rejected",
            status=failure.status,
            reason=failure.reason,
            points=points,
            saved_to=str(path),
        )


def _describe(failure: WriteFailure, influx: InfluxSection) -> str:
    status = f"HTTP {failure.status}: " if failure.status else ""
    if failure.error is ErrorClass.AUTH:
        return f"{status}the token is refused (influxdb.token, or its write permission on the bucket)"
    if failure.error is ErrorClass.NOT_FOUND:
        return f"{status}bucket {influx.bucket!r} (org {influx.org!r}) does not exist: {failure.reason}"
    return f"{failure.error.value}: {status}{failure.reason}"
