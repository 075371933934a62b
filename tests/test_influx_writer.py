"""InfluxWriter against a real InfluxDB 1.6.7 (behind the testbed's /api/v2/write proxy).

Disruptive tests (kill, SIGSTOP, token checks) get a private server each; the others share the
session server with a fresh database. Read-back is InfluxQL.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from collector.config import CollectorSection, InfluxSection, Settings
from collector.points import Point
from collector.sink import Sink
from collector.sink.influx import InfluxWriter, parse_retry_after
from collector.sink.spool import Spool
from collector.testbed import InfluxServer, free_port

T0 = 1_700_000_000_000  # ms
TOKEN = "right-token-3f9a"


WriterFactory = Callable[..., InfluxWriter]


@pytest.fixture()
def make_writer() -> Iterator[WriterFactory]:
    """``make_writer(url, bucket, state_dir, token=..., **tuning)``; every writer is closed at the end."""
    writers: list[InfluxWriter] = []

    def make(url: str, bucket: str, state_dir: Path, *, token: str = "any", **tuning: Any) -> InfluxWriter:
        influx = InfluxSection(
            url=url,
            token=SecretStr(token),
            org="test",
            bucket=bucket,
            batch_size=tuning.pop("batch_size", 50),
            flush_interval_s=tuning.pop("flush_interval_s", 0.05),
            timeout_s=tuning.pop("timeout_s", 5.0),
            gzip=tuning.pop("gzip", True),
        )
        tuning.setdefault("retry_initial_s", 0.05)
        tuning.setdefault("retry_max_s", 0.3)
        collector = CollectorSection(
            state_dir=state_dir, spool_max_bytes=tuning.pop("spool_max_bytes", 64 * 1024 * 1024)
        )
        writer = InfluxWriter(influx, collector, **tuning)
        writers.append(writer)
        return writer

    yield make
    for writer in writers:
        writer.close(5)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _count(server: InfluxServer, db: str, query: str) -> int:
    series = server.query(db, query)["results"][0].get("series", [])
    return int(series[0]["values"][0][1]) if series else 0


def _point(sn: str, value: float, time_ms: int, measurement: str = "m") -> Point:
    return Point(measurement, (("sn", sn),), {"v": value}, time_ms)


def _spool_stats(state_dir: Path) -> tuple[int, int]:
    with Spool(state_dir / "spool", 1024 * 1024 * 1024) as spool:
        stats = spool.stats()
    return stats.batches, stats.points


@pytest.fixture()
def private_influx() -> Iterator[InfluxServer]:
    with InfluxServer() as server:
        yield server


@pytest.fixture()
def stoppable(private_influx: InfluxServer) -> Iterator[Callable[[bool], None]]:
    """freeze(True) SIGSTOPs influxd (requests hang, as on an overloaded server); freeze(False) resumes."""
    pid = private_influx.influxd_pid
    assert pid is not None

    def freeze(stop: bool) -> None:
        os.kill(pid, signal.SIGSTOP if stop else signal.SIGCONT)

    try:
        yield freeze
    finally:
        freeze(False)


def test_points_land_with_their_values_timestamps_and_float_type(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, make_writer: WriterFactory
) -> None:
    points = [
        Point(
            "powerstream",
            (("name", "Balcony PV, east"), ("sn", "HW51ZOH4SF4E0001")),
            {"pv1_input_watts": 123.4, "bat_soc": 87.0, "inv_temp": -5.25, "zero": 0.0},
            T0,
        ),
        Point("powerstream", (("name", "Garage"), ("sn", "HW51ZOH4SF4E0002")), {"bat_soc": 12.0}, T0 + 1),
        Point("ecoflow_status", (("name", "Garage"), ("sn", "HW51ZOH4SF4E0002")), {"online": 1.0}, T0 + 2),
        Point("empty", (("sn", "X"),), {}, T0),  # nothing storable: skipped, not an error
    ]
    writer = make_writer(influx_server.url, influx_db, tmp_path)
    sink: Sink = writer
    sink.submit(points)
    assert writer.flush(10)
    rows = influx_server.rows(influx_db, 'SELECT * FROM "powerstream"', epoch="ms")
    assert rows == [
        {
            "time": T0,
            "bat_soc": 87.0,
            "inv_temp": -5.25,
            "name": "Balcony PV, east",
            "pv1_input_watts": 123.4,
            "sn": "HW51ZOH4SF4E0001",
            "zero": 0.0,
        },
        {
            "time": T0 + 1,
            "bat_soc": 12.0,
            "inv_temp": None,
            "name": "Garage",
            "pv1_input_watts": None,
            "sn": "HW51ZOH4SF4E0002",
            "zero": None,
        },
    ]
    assert influx_server.rows(influx_db, 'SELECT "online" FROM "ecoflow_status"', epoch="ms") == [
        {"time": T0 + 2, "online": 1.0}
    ]
    field_types = influx_server.query(influx_db, "SHOW FIELD KEYS")["results"][0]["series"]
    assert {tuple(v) for s in field_types for v in s["values"]} == {
        ("bat_soc", "float"),
        ("inv_temp", "float"),
        ("pv1_input_watts", "float"),
        ("zero", "float"),
        ("online", "float"),
    }
    sink.close(5)
    stats = writer.stats()
    assert (stats.points_written, stats.points_spooled, stats.points_dropped) == (3, 0, 0)
    assert stats.last_success_time is not None and stats.last_error is None


def test_outage_then_restart_every_point_once_and_in_order(
    private_influx: InfluxServer, tmp_path: Path, make_writer: WriterFactory
) -> None:
    """Steady submits while influxd is killed and restarted. Series A has one point per
    timestamp (counts prove nothing is missing); series B writes two values to each timestamp,
    the second newer: if a newer value ever went out before the older one, the older would win."""
    server = private_influx
    server.create_database("telemetry")
    writer = make_writer(server.url, "telemetry", tmp_path, batch_size=7, timeout_s=2.0)
    submitted = 0
    stop = threading.Event()

    def produce() -> None:
        nonlocal submitted
        k = 0
        while not stop.is_set():
            writer.submit([_point("A", float(k), T0 + k)])
            writer.submit([_point("B", float(k), T0 + k // 2)])
            k += 1
            submitted = k
            time.sleep(0.002)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        _wait(lambda: writer.stats().points_written > 100, "first writes")
        server.kill()
        _wait(lambda: writer.stats().spool_points > 200, "points spooled during the outage")
        assert writer.stats().write_errors.get("server", 0) >= 1  # the proxy's 502
        server.restart()
        _wait(lambda: writer.stats().points_replayed > 0, "replay after the restart")
        time.sleep(0.2)
    finally:
        stop.set()
        producer.join()
    assert writer.flush(10)
    _wait(lambda: writer.stats().spool_depth == 0, "the spool to drain")
    writer.close(5)

    n = submitted
    assert _count(server, "telemetry", "SELECT count(v) FROM m WHERE sn = 'A'") == n
    rows = server.rows("telemetry", "SELECT v FROM m WHERE sn = 'A'", epoch="ms")
    assert [row["v"] for row in rows] == [float(k) for k in range(n)]
    rows = server.rows("telemetry", "SELECT v FROM m WHERE sn = 'B'", epoch="ms")
    assert len(rows) == (n + 1) // 2
    # each timestamp holds the newer of its two values
    assert [row["v"] for row in rows] == [float(min(2 * i + 1, n - 1)) for i in range(len(rows))]
    stats = writer.stats()
    assert stats.points_spooled > 200 and stats.points_replayed >= stats.points_spooled
    assert (stats.points_dropped, stats.points_rejected, stats.spool_points) == (0, 0, 0)


def test_wrong_token_keeps_data_until_a_right_token_replays_it(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    with InfluxServer(token=TOKEN) as server:
        server.create_database("telemetry")
        wrong = "wrong-token-77c1"
        with capture_logs() as logs:
            writer = make_writer(server.url, "telemetry", tmp_path, token=wrong)
            writer.submit([_point("A", float(k), T0 + k) for k in range(20)])
            _wait(lambda: writer.stats().write_errors.get("auth", 0) >= 2, "401s")
            stats = writer.stats()
            assert (stats.spool_points, stats.points_dropped) == (20, 0)
            writer.close(5)
        errors = [entry for entry in logs if entry["event"] == "influx.write_unauthorized"]
        assert errors and errors[0]["log_level"] == "error" and errors[0]["status"] == 401
        assert "influxdb.token" in errors[0]["hint"]
        assert not any(wrong in str(entry) for entry in logs), "the token was logged"
        assert _count(server, "telemetry", "SELECT count(v) FROM m") == 0

        writer = make_writer(server.url, "telemetry", tmp_path, token=TOKEN)
        _wait(lambda: writer.stats().spool_depth == 0, "replay with the right token")
        writer.close(5)
        assert _count(server, "telemetry", "SELECT count(v) FROM m") == 20
        assert writer.stats().points_replayed == 20


def test_missing_database_keeps_data_until_it_exists(
    influx_server: InfluxServer, tmp_path: Path, make_writer: WriterFactory
) -> None:
    name = f"later_{uuid.uuid4().hex[:8]}"
    with capture_logs() as logs:
        writer = make_writer(influx_server.url, name, tmp_path)
        writer.submit([_point("A", float(k), T0 + k) for k in range(10)])
        _wait(lambda: writer.stats().write_errors.get("not_found", 0) >= 1, "a 404")
        # the failed batch reaches the spool on the writer thread just after the error is counted
        _wait(lambda: writer.stats().spool_points == 10, "the batch in the spool")
        influx_server.create_database(name)
        try:
            _wait(lambda: writer.stats().spool_depth == 0, "replay once the database exists")
            writer.close(5)
            assert _count(influx_server, name, "SELECT count(v) FROM m") == 10
        finally:
            influx_server.drop_database(name)
    errors = [entry for entry in logs if entry["event"] == "influx.bucket_not_found"]
    assert errors and errors[0]["log_level"] == "error" and errors[0]["bucket"] == name


def test_field_type_conflict_is_set_aside_and_later_batches_still_land(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, make_writer: WriterFactory
) -> None:
    influx_server.write_lines(influx_db, f"m,sn=X v=1i {T0}", precision="ms")  # v is an integer now
    writer = make_writer(influx_server.url, influx_db, tmp_path, rejected_max_bytes=600)
    with capture_logs() as logs:
        for k in range(3):
            writer.submit([_point("X", 2.5, T0 + 1 + k), _point("Y", 1.0, T0 + k, measurement="other")])
            assert writer.flush(10)
        writer.submit([_point("Z", float(k), T0 + k, measurement="later") for k in range(5)])
        assert writer.flush(10)
    writer.close(5)
    stats = writer.stats()
    assert (stats.points_rejected, stats.write_errors["rejected"]) == (6, 3)
    assert (stats.spool_depth, stats.points_dropped) == (0, 0)
    assert _count(influx_server, influx_db, "SELECT count(v) FROM later") == 5
    rejected = [entry for entry in logs if entry["event"] == "influx.batch_rejected"]
    assert len(rejected) == 3 and all(entry["status"] == 400 for entry in rejected)
    assert "field type conflict" in rejected[0]["reason"]
    files = sorted((tmp_path / "rejected").glob("*.lp"))
    assert 1 <= len(files) < 3  # bounded: the oldest went
    text = files[-1].read_text()
    assert text.startswith("# InfluxDB answered 400: ") and "field type conflict" in text.splitlines()[0]
    assert f"m,sn=X v=2.5 {T0 + 3}" in text.splitlines()


def test_close_with_influxdb_down_spools_the_pending_batch_in_time(
    private_influx: InfluxServer, tmp_path: Path, make_writer: WriterFactory
) -> None:
    server = private_influx
    server.create_database("telemetry")
    writer = make_writer(server.url, "telemetry", tmp_path, flush_interval_s=60)
    writer.submit([_point("A", float(k), T0 + k) for k in range(30)])
    server.kill()
    started = time.monotonic()
    writer.close(3)
    assert time.monotonic() - started < 3
    assert _spool_stats(tmp_path) == (1, 30)

    server.restart()
    writer = make_writer(server.url, "telemetry", tmp_path)
    _wait(lambda: writer.stats().spool_depth == 0, "replay at the next start")
    writer.close(5)
    assert _count(server, "telemetry", "SELECT count(v) FROM m") == 30


def test_close_with_influxdb_hanging_spools_the_batch_in_flight(
    private_influx: InfluxServer,
    stoppable: Callable[[bool], None],
    tmp_path: Path,
    make_writer: WriterFactory,
) -> None:
    server = private_influx
    server.create_database("telemetry")
    writer = make_writer(server.url, "telemetry", tmp_path, timeout_s=30)
    stoppable(True)
    writer.submit([_point("A", float(k), T0 + k) for k in range(30)])
    _wait(lambda: writer.stats().queue_points == 0, "the batch to be in flight")
    started = time.monotonic()
    writer.close(2)
    assert time.monotonic() - started < 2.2
    assert _spool_stats(tmp_path) == (1, 30)

    stoppable(False)
    writer = make_writer(server.url, "telemetry", tmp_path)
    _wait(lambda: writer.stats().spool_depth == 0, "replay at the next start")
    writer.close(5)
    assert _count(server, "telemetry", "SELECT count(v) FROM m") == 30


def test_hanging_server_full_queue_spills_to_spool_and_stuck_is_reported(
    private_influx: InfluxServer,
    stoppable: Callable[[bool], None],
    tmp_path: Path,
    make_writer: WriterFactory,
) -> None:
    server = private_influx
    server.create_database("telemetry")
    writer = make_writer(
        server.url, "telemetry", tmp_path, timeout_s=30, queue_max_points=40, batch_size=10, stuck_after_s=0.5
    )
    writer.submit([_point("A", -1.0, T0 - 1)])
    assert writer.flush(10)
    assert not writer.stuck()
    stoppable(True)
    n = 300
    for k in range(n):
        writer.submit([_point("A", float(k), T0 + k)])
        writer.submit([_point("B", float(k), T0 + k // 2)])
    stats = writer.stats()
    assert stats.points_dropped == 0
    assert stats.spool_points >= 2 * n - 40 - 10  # at most a queue and a batch in memory
    _wait(writer.stuck, "stuck() while the request hangs", timeout=5)
    stoppable(False)
    _wait(lambda: writer.stats().spool_depth == 0 and writer.stats().queue_points == 0, "drain")
    assert not writer.stuck()
    writer.close(5)
    rows = server.rows("telemetry", "SELECT v FROM m WHERE sn = 'A'", epoch="ms")
    assert [row["v"] for row in rows] == [-1.0] + [float(k) for k in range(n)]
    rows = server.rows("telemetry", "SELECT v FROM m WHERE sn = 'B'", epoch="ms")
    assert [row["v"] for row in rows] == [float(2 * i + 1) for i in range(n // 2)]


def test_unreachable_server_is_a_connection_error_and_nothing_is_lost(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    writer = make_writer(f"http://127.0.0.1:{free_port()}", "telemetry", tmp_path)
    writer.submit([_point("A", float(k), T0 + k) for k in range(5)])
    _wait(lambda: writer.stats().write_errors.get("connection", 0) >= 2, "connection errors")
    writer.close(3)
    assert writer.stats().last_error == "connection"
    assert _spool_stats(tmp_path) == (1, 5)


def test_full_spool_drops_oldest_and_counts_it(tmp_path: Path, make_writer: WriterFactory) -> None:
    writer = make_writer(
        f"http://127.0.0.1:{free_port()}",
        "telemetry",
        tmp_path,
        batch_size=1000,
        spool_max_bytes=1024 * 1024,  # the smallest the config allows
        spool_segment_bytes=64 * 1024,
    )
    for k in range(40):
        writer.submit([_point("A", float(i), T0 + 1000 * k + i) for i in range(1000)])
        assert writer.flush(10)
    stats = writer.stats()
    assert stats.points_dropped > 0
    assert stats.points_dropped + stats.spool_points == 40_000
    assert stats.spool_bytes <= 1024 * 1024


def test_submit_after_close_is_counted_not_raised(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, make_writer: WriterFactory
) -> None:
    writer = make_writer(influx_server.url, influx_db, tmp_path)
    writer.close(5)
    writer.submit([_point("A", 1.0, T0)])
    assert writer.stats().points_dropped == 1
    writer.close(5)  # a second close is harmless
    assert writer.stats().points_dropped == 1


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    in_a_minute = format_datetime(datetime.now(UTC) + timedelta(seconds=60), usegmt=True)
    seconds = parse_retry_after(in_a_minute)
    assert seconds is not None and 55 <= seconds <= 61
    past = format_datetime(datetime.now(UTC) - timedelta(seconds=60), usegmt=True)
    assert parse_retry_after(past) == 0.0


def test_probe_says_what_is_wrong_without_writing(tmp_path: Path) -> None:
    with InfluxServer(token=TOKEN) as server:
        server.create_database("telemetry")

        def probe(token: str, bucket: str, url: str = server.url) -> str | None:
            influx = InfluxSection(url=url, token=SecretStr(token), bucket=bucket)
            return InfluxWriter.probe(
                Settings(influxdb=influx, collector=CollectorSection(state_dir=tmp_path)), 3
            )

        assert probe(TOKEN, "telemetry") is None
        assert "token" in (probe("wrong", "telemetry") or "")
        assert "'nothing_here'" in (probe(TOKEN, "nothing_here") or "")
        assert (probe(TOKEN, "telemetry", f"http://127.0.0.1:{free_port()}") or "").startswith("connection")
        assert server.query("telemetry", "SHOW MEASUREMENTS")["results"][0].get("series") is None


def test_from_settings(influx_server: InfluxServer, influx_db: str, tmp_path: Path) -> None:
    settings = Settings(
        influxdb=InfluxSection(url=influx_server.url, bucket=influx_db, flush_interval_s=0.05),
        collector=CollectorSection(state_dir=tmp_path),
    )
    writer = InfluxWriter.from_settings(settings)
    try:
        writer.submit([_point("A", 1.0, T0)])
        assert writer.flush(10)
    finally:
        writer.close(5)
    assert (tmp_path / "spool").is_dir()
    assert _count(influx_server, influx_db, "SELECT count(v) FROM m") == 1


class StuckDisk:
    """A spool disk whose fsync hangs while `stuck` is set (until `release`), and counts calls."""

    def __init__(self) -> None:
        self.stuck = threading.Event()
        self.inside = threading.Event()  # an fsync is hanging now
        self.release = threading.Event()

    def fsync(self, fd: int) -> None:
        if self.stuck.is_set():
            self.inside.set()
            self.release.wait(60)
        os.fdatasync(fd)


def test_submit_does_not_wait_for_spool_fsyncs_in_replay_mode(
    tmp_path: Path, make_writer: WriterFactory
) -> None:
    """InfluxDB down, so every batch goes to the spool, on a disk whose fsync hangs: the caller of
    submit() (paho's thread in the daemon) must not wait for it. Every point still reaches the
    spool, in order, once the disk answers. No timing is measured: before the fix, submit() blocks
    until the fsync returns, which here is never (until released)."""
    disk = StuckDisk()
    writer = make_writer(
        f"http://127.0.0.1:{free_port()}",
        "telemetry",
        tmp_path,
        batch_size=5,
        flush_interval_s=0.01,
        retry_initial_s=30,
        retry_max_s=30,
        spool_fsync=disk.fsync,
    )
    writer.submit([_point("A", -1.0, T0 - 1)])
    _wait(lambda: writer.stats().spool_points == 1, "replay mode (the first batch spooled)")
    disk.stuck.set()
    writer.submit([_point("A", 0.0, T0)])
    assert disk.inside.wait(10), "the writer never appended to the spool"
    n = 200

    def submit_the_rest() -> None:
        for k in range(1, n):
            writer.submit([_point("A", float(k), T0 + k)])

    submitter = threading.Thread(target=submit_the_rest, daemon=True)
    submitter.start()
    submitter.join(20)  # a generous bound: what it guards against is waiting forever
    blocked = submitter.is_alive()
    disk.release.set()
    assert not blocked, "submit() waited for the spool's fsync"
    assert writer.flush(30)
    writer.close(5)
    assert writer.stats().points_dropped == 0
    with Spool(tmp_path / "spool", 1024 * 1024 * 1024) as spool:
        lines: list[bytes] = []
        while (batch := spool.peek(max_points=1000)) is not None:
            lines.extend(batch.payload.split(b"\n"))
            spool.commit(batch)
    assert lines == [_point("A", float(k), T0 + k).to_line().encode() for k in range(-1, n)]


def _requests_for(server: InfluxServer, bucket: str, status: str = "204") -> int:
    """Write requests for ``bucket`` that nginx answered with ``status`` (its access log)."""
    lines = server.nginx_access_log.read_text().splitlines()
    return sum(1 for line in lines if f"bucket={bucket}&" in line + "&" and f" {status} " in line)


def test_a_batch_stops_at_batch_max_bytes(
    influx_server: InfluxServer, influx_db: str, tmp_path: Path, make_writer: WriterFactory
) -> None:
    """Lines of 99 bytes, a 995-byte limit: nine lines and their eight newlines (899 bytes) fit,
    ten (999 bytes) do not. 100 lines make 12 requests, each body within the limit."""
    base = len(Point("m", (("sn", "x"),), {"v": 1.5}, T0).to_line())
    points = [Point("m", (("sn", "x" * (100 - base)),), {"v": 1.5}, T0 + i) for i in range(100)]
    assert {len(p.to_line()) for p in points} == {99}
    writer = make_writer(
        influx_server.url, influx_db, tmp_path, batch_size=10_000, batch_max_bytes=995, gzip=False
    )
    writer.submit(points)
    assert writer.flush(10)
    written = writer.stats().batches_written
    _wait(lambda: _requests_for(influx_server, influx_db) >= written, "the requests in the access log")
    assert (written, _requests_for(influx_server, influx_db)) == (12, 12)
    assert _count(influx_server, influx_db, "SELECT count(v) FROM m") == 100


def test_queue_past_queue_max_bytes_spills_to_the_spool_and_nothing_is_lost(
    private_influx: InfluxServer,
    stoppable: Callable[[bool], None],
    tmp_path: Path,
    make_writer: WriterFactory,
) -> None:
    """influxd stalled (SIGSTOP): the batch in flight hangs and the queue grows. Past
    ``queue_max_bytes`` (far below the point bound) everything held in memory goes to the spool;
    once influxd answers again the spool is replayed: every point stored once, in order."""
    server = private_influx
    server.create_database("telemetry")
    queue_max_bytes = 20_000
    writer = make_writer(
        server.url,
        "telemetry",
        tmp_path,
        timeout_s=30,
        batch_size=100_000,  # neither the point count of a batch ...
        queue_max_points=1_000_000,  # ... nor of the queue is what cuts here
        queue_max_bytes=queue_max_bytes,
        batch_max_bytes=8_000,
    )
    writer.submit([_point("A", -1.0, T0 - 1)])
    assert writer.flush(10)
    stoppable(True)
    n = 3000  # ~28 bytes a line: ~84 kB, four times the bound
    with capture_logs() as logs:
        for k in range(n):
            writer.submit([_point("A", float(k), T0 + k)])
    stats = writer.stats()
    held = stats.queue_points * len(_point("A", 1000.0, T0 + 1000).to_line())
    assert held <= queue_max_bytes
    assert stats.spool_points >= n - queue_max_bytes // 20 - 8_000 // 20
    assert stats.points_dropped == 0
    spills = [entry for entry in logs if entry["event"] == "influx.queue_full_spilled"]
    assert spills and all(entry["queue_max_bytes"] == queue_max_bytes for entry in spills)
    assert all(entry["points"] < 1_000_000 and entry["bytes"] > queue_max_bytes for entry in spills)
    stoppable(False)
    _wait(lambda: writer.stats().spool_depth == 0 and writer.stats().queue_points == 0, "drain")
    writer.close(5)
    rows = server.rows("telemetry", "SELECT v FROM m WHERE sn = 'A'", epoch="ms")
    assert [row["v"] for row in rows] == [-1.0] + [float(k) for k in range(n)]
    stats = writer.stats()
    assert (stats.points_dropped, stats.points_rejected, stats.spool_points) == (0, 0, 0)
    assert stats.points_replayed >= stats.points_spooled >= n - queue_max_bytes // 20
    # the replayed batches kept to batch_max_bytes too
    assert stats.batches_written >= 1 + 84_000 // 8_000
