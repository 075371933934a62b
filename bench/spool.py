"""Spool and InfluxDB writer benchmark: what an outage costs and how fast a backlog drains.

    python3 bench/spool.py [--dir /var/tmp] [--open-mb 128] [--influx] [--fsync-delay-ms 50]

- append: fsync'd appends of whole batches (what happens during an outage), by batch size;
- drain: peek (coalesced to 5000 points) + commit, i.e. reading the backlog back;
- open: opening (and checking) a spool of ``--open-mb`` MB, as at a start after a long outage;
- with ``--influx`` (needs the testbed's influxd and nginx): points/s written directly by
  InfluxWriter, and points/s replayed from a spool backlog into InfluxDB;
- with ``--fsync-delay-ms D``: a slow disk (every spool fsync sleeps D ms first) while InfluxDB is
  down, so the writer is in replay mode and every batch goes to the spool: the latency of
  ``InfluxWriter.submit`` (the caller is paho's network thread in the daemon), percentiles side
  by side for the spool appended under the writer's lock (as before the fix: emulated by holding
  the lock around the append) and outside it (the writer as it is).

Points look like a PowerStream report: 2 tags, 8 float fields (~190 bytes of line protocol).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from collector.config import CollectorSection, InfluxSection
from collector.logs import configure
from collector.points import Point
from collector.sink.spool import Spool

T0 = 1_700_000_000_000
FIELDS = (
    "pv1_input_watts",
    "pv2_input_watts",
    "bat_soc",
    "bat_input_watts",
    "inv_output_watts",
    "inv_temp",
    "pv1_input_volt",
    "llc_temp",
)


def point(i: int) -> Point:
    tags = (("name", "Balcony PV"), ("sn", f"HW51ZOH4SF4E{i % 16:04d}"))
    return Point("powerstream", tags, {key: round(i * 0.37 + n, 2) for n, key in enumerate(FIELDS)}, T0 + i)


def batch(start: int, points: int) -> bytes:
    return "\n".join(point(start + i).to_line() for i in range(points)).encode()


def bench_append(root: Path) -> None:
    print("append (fsync per batch):")
    for size in (100, 1000, 5000):
        payload = batch(0, size)
        directory = root / f"append-{size}"
        with Spool(directory, 4 * 1024**3) as spool:
            count, started = 0, time.perf_counter()
            while time.perf_counter() - started < 2.0:
                spool.append(payload, size)
                count += 1
            elapsed = time.perf_counter() - started
        shutil.rmtree(directory)
        mb = count * len(payload) / 1e6
        print(
            f"  {size:5d} points/batch: {count / elapsed:8.0f} batches/s  "
            f"{count * size / elapsed:10.0f} points/s  {mb / elapsed:7.1f} MB/s"
        )


def fill(directory: Path, megabytes: int) -> tuple[int, int]:
    payload = batch(0, 1000)
    with Spool(directory, 4 * 1024**3) as spool:
        while spool.stats().disk_bytes < megabytes * 1e6:
            spool.append(payload, 1000)
        stats = spool.stats()
    return stats.points, stats.disk_bytes


def bench_open_and_drain(root: Path, megabytes: int) -> None:
    directory = root / "backlog"
    points, size = fill(directory, megabytes)
    started = time.perf_counter()
    spool = Spool(directory, 4 * 1024**3)
    opened = time.perf_counter() - started
    print(f"open: {size / 1e6:.0f} MB, {points} points: {opened:.3f} s")
    started = time.perf_counter()
    drained = 0
    while (out := spool.peek(max_points=5000)) is not None:
        drained += out.points
        spool.commit(out)
    elapsed = time.perf_counter() - started
    spool.close()
    shutil.rmtree(directory)
    rate, mb_rate = drained / elapsed, size / 1e6 / elapsed
    print(f"drain (peek 5000 points + commit): {rate:.0f} points/s, {mb_rate:.0f} MB/s")


def bench_influx(root: Path) -> None:
    from collector.sink.influx import InfluxWriter
    from collector.testbed import InfluxServer, free_port

    n = 200_000
    points = [point(i) for i in range(n)]
    with InfluxServer() as server:
        server.create_database("bench")
        influx = InfluxSection(url=server.url, bucket="bench", batch_size=5000, flush_interval_s=1.0)
        writer = InfluxWriter(influx, CollectorSection(state_dir=root / "direct"))
        started = time.perf_counter()
        for i in range(0, n, 1000):
            writer.submit(points[i : i + 1000])
        submitted = time.perf_counter() - started
        while writer.stats().spool_points or writer.stats().queue_points or not writer.flush(0):
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        stats = writer.stats()
        writer.close(10)
        stored = server.query("bench", "SELECT count(bat_soc) FROM powerstream")["results"][0]["series"][0]
        print(
            f"writer, submitting as fast as the caller can ({n / submitted:.0f} points/s): all {n} points "
            f"in InfluxDB after {elapsed:.2f} s = {n / elapsed:.0f} points/s end to end; "
            f"{stats.points_spooled} spilled to the spool on the way, {stats.points_dropped} dropped, "
            f"{stored['values'][0][1]} stored"
        )

        # a backlog made while InfluxDB was unreachable, then replayed into it
        down = InfluxSection(url=f"http://127.0.0.1:{free_port()}", bucket="bench", batch_size=5000)
        state = CollectorSection(state_dir=root / "replay")
        writer = InfluxWriter(down, state, retry_initial_s=60)
        shifted = [Point(p.measurement, p.tags, p.fields, p.time_ms + n) for p in points]
        for i in range(0, n, 1000):
            writer.submit(shifted[i : i + 1000])
        assert writer.flush(120)
        writer.close(10)
        writer = InfluxWriter(influx, state)
        started = time.perf_counter()
        while writer.stats().spool_points:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        writer.close(10)
        print(f"writer replay: {n} spooled points in {elapsed:.2f} s = {n / elapsed:.0f} points/s")


def bench_submit_latency(root: Path, delay_ms: float, seconds: float = 5.0) -> None:
    from collector.sink.influx import InfluxWriter
    from collector.testbed import free_port

    class SpoolUnderLock(InfluxWriter):
        """Before the fix: the spool append (and its fsync) ran under the lock submit() takes."""

        def _drain_outbox(self) -> None:
            with self._cond:
                super()._drain_outbox()

    def slow_fsync(fd: int) -> None:
        time.sleep(delay_ms / 1000)
        os.fdatasync(fd)

    def run(cls: type[InfluxWriter], name: str) -> tuple[list[float], int, int]:
        down = InfluxSection(
            url=f"http://127.0.0.1:{free_port()}", bucket="bench", batch_size=100, flush_interval_s=0.05
        )
        writer = cls(
            down, CollectorSection(state_dir=root / name), retry_initial_s=60, spool_fsync=slow_fsync
        )
        writer.submit([point(0)])
        while writer.stats().spool_points < 1:  # replay mode: the first batch failed and is spooled
            time.sleep(0.01)
        latencies: list[float] = []
        i, started = 1, time.perf_counter()
        while time.perf_counter() - started < seconds:  # ~1,000 points/s in reports of 10 points
            t = time.perf_counter()
            writer.submit([point(i + k) for k in range(10)])
            latencies.append(time.perf_counter() - t)
            i += 10
            time.sleep(0.01)
        assert writer.flush(120)
        stats = writer.stats()
        writer.close(10)
        return latencies, stats.spool_points, stats.points_dropped

    def pct(values: list[float], q: float) -> float:
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] * 1000

    print(f"submit() latency, InfluxDB down (replay mode), spool fsync +{delay_ms:g} ms:")
    results = {
        "before (append under the lock)": run(SpoolUnderLock, "before"),
        "after (append outside the lock)": run(InfluxWriter, "after"),
    }
    print(f"  {'':34s}{'calls':>7s}{'p50 ms':>9s}{'p90 ms':>9s}{'p99 ms':>9s}{'max ms':>9s}  spooled/dropped")
    for label, (values, spooled, dropped) in results.items():
        print(
            f"  {label:34s}{len(values):7d}{pct(values, 0.5):9.3f}{pct(values, 0.9):9.3f}"
            f"{pct(values, 0.99):9.3f}{max(values) * 1000:9.3f}  {spooled}/{dropped}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None, help="where to put the spools (a real disk)")
    parser.add_argument("--open-mb", type=int, default=128)
    parser.add_argument("--influx", action="store_true", help="also benchmark InfluxWriter (testbed)")
    parser.add_argument(
        "--fsync-delay-ms",
        type=float,
        default=None,
        help="only the submit() latency on a disk whose fsync takes this much longer (replay mode)",
    )
    args = parser.parse_args()
    configure("error")
    root = Path(tempfile.mkdtemp(prefix="bench-spool-", dir=args.dir))
    try:
        if args.fsync_delay_ms is not None:
            bench_submit_latency(root, args.fsync_delay_ms)
            return
        print(f"line: {len(point(1).to_line())} bytes; spools in {root}")
        bench_append(root)
        bench_open_and_drain(root, args.open_mb)
        if args.influx:
            bench_influx(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
