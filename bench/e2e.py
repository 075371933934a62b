"""End-to-end benchmark: simulated devices -> Mosquitto -> the collector (a separate process) ->
InfluxDB, measured from the outside.

    python3 bench/e2e.py [--devices 10,1000,10000] [--rates 5000,10000,0] [--seconds 20]
                         [--workers 3] [--no-gzip] [--plain]

For each device count N (half PowerStream, half Delta Pro) it starts a private Mosquitto (TLS
and password auth, as the testbed runs it), a private InfluxDB, the local EcoFlow cloud with N
simulated devices (the collector seeds them over its signed HTTP API at start-up) and
``python -m collector run``. Then, for each rate (messages/s; 0 = as fast as the broker takes
them), load-generator processes publish the devices' quota reports for ``--seconds``: a full
report every 20th message and incremental reports of up to 6 changed keys between them, in the
simulator's exact wire shapes, each with a marker (``benchSeq``, ``benchUs``) appended to its
values. The generators use a plain-TCP MQTT client that sends pre-built QoS 1 packets in bulk
(paho tops out near 4,000 messages/s per process here); the collector connects over TLS.

What is measured, per rate:

- loss: per device, COUNT / COUNT(DISTINCT) / MIN / MAX of ``benchSeq`` in InfluxDB must be
  n / n / 1 / n for the n reports published (every report stored exactly once);
- sustained rate: messages (and device fields) published per second over the phase, when every
  one of them was found in InfluxDB and the backlog drained within ``--drain-limit`` seconds
  after publishing stopped (``drain`` column: time from the last publish until every report is
  queryable);
- publish-to-queryable latency: each generator marks about 10 reports a second as samples and
  sends (serial, benchSeq, publish time) to this process; a probe polls InfluxDB every 20 ms
  with one multi-statement query (``MAX(benchSeq)`` per sampled device since its publish time)
  and takes the first poll that sees a sample's benchSeq as its queryable time. The figures
  include up to one poll interval plus one query round trip (a few ms);
- collector CPU seconds per 1,000 messages it stored (utime + stime of the process from
  /proc/PID/stat over the phase, up to the end of its drain), its peak RSS (VmHWM of
  /proc/PID/status), and the cores each process (and everything else on the machine) used
  while the generators were publishing (`CPU %` is the collector's share of one core).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    CollectorProcess,
    CpuMeter,
    DeviceRef,
    MarkerCount,
    Percentiles,
    RawPublisher,
    ReportPool,
    collector_config,
    health,
    marker_counts_between,
    marker_field,
    wait_for,
)
from collector.logs import configure
from collector.simulator.server import LocalCloud
from collector.testbed import InfluxServer, MosquittoServer
from collector.testbed.ports import free_port

DB = "bench"
SAMPLES_PER_S = 10  # latency samples per second and generator
PROBE_INTERVAL_S = 0.02


# ----------------------------------------------------------------------------- generator processes


def generator(
    index: int,
    refs: list[DeviceRef],
    account: str,
    password: str,
    host: str,
    port: int,
    commands: Any,
    results: Any,
    samples: Any,
) -> None:
    """One load-generator process: builds its devices' report pools, then runs phases on command."""
    pools = [ReportPool(ref, account, seed=index) for ref in refs]
    mqtt = RawPublisher(host, port, account, password, f"bench-gen-{index}-{time.time_ns() % 10**9}")
    mqtt.connect()
    results.put(("ready", index))
    while True:
        command = commands.get()
        if command is None:
            break
        rate, seconds = command
        results.put(("done", index, _phase(mqtt, pools, rate, seconds, samples)))
    mqtt.close()


def _phase(
    mqtt: RawPublisher, pools: list[ReportPool], rate: float, seconds: float, samples: Any
) -> dict[str, Any]:
    before = {pool.sn: pool.count for pool in pools}
    sample_every = max(1, int((rate or 20_000) / SAMPLES_PER_S))
    sent = fields = 0
    started = time.monotonic()
    first_ns = time.time_ns()
    deadline = started + seconds
    n = len(pools)
    t_us = 0
    position = 0
    while True:
        now = time.monotonic()
        if now >= deadline:
            break
        due = int((now - started) * rate) - sent if rate > 0 else 500
        if due <= 0:
            time.sleep(min(0.01, started + (sent + 1) / rate - now))
            continue
        due = min(due, 500)
        t_us = time.time_ns() // 1000
        batch = []
        for _ in range(due):
            pool = pools[position % n]
            position += 1
            payload, count = pool.next(t_us)
            fields += count
            batch.append((pool.topic, payload))
            sent += 1
            if sent % sample_every == 0:
                samples.put((pool.product, pool.sn, pool.count, t_us))
        mqtt.publish(batch)
    last_ns = time.time_ns()
    last_us = t_us if sent else 0
    acked = mqtt.wait_acked(60)
    return {
        "sent": sent,
        "fields": fields,
        "first_ns": first_ns,
        "last_ns": last_ns,
        "last_us": last_us,
        "acked": acked,
        "published": {pool.sn: pool.count - before[pool.sn] for pool in pools},
    }


# ----------------------------------------------------------------------------- latency probe


class LatencyProbe:
    """Polls InfluxDB for sampled reports; a sample's latency is first-seen time - publish time."""

    def __init__(self, influx: InfluxServer, samples: Any) -> None:
        self.influx = influx
        self.samples = samples
        self.latencies = Percentiles()
        self.outstanding: list[tuple[str, str, int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def reset(self) -> Percentiles:
        done, self.latencies = self.latencies, Percentiles()
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while True:
                    self.outstanding.append(self.samples.get_nowait())
            except queue.Empty:
                pass
            if self.outstanding:
                self._poll()
            self._stop.wait(PROBE_INTERVAL_S)

    def _poll(self) -> None:
        wanted: dict[tuple[str, str], int] = {}  # (product, sn) -> earliest publish time (us)
        for product, sn, _, t_us in self.outstanding:
            key = (product, sn)
            wanted[key] = min(wanted.get(key, t_us), t_us)
        keys = list(wanted)
        statements = [
            f'SELECT MAX("{marker_field(p)[0]}") FROM "{p}" WHERE "sn" = \'{sn}\' '
            f"AND time >= {wanted[(p, sn)] // 1000 - 2000}ms"
            for p, sn in keys
        ]
        try:
            answer = self.influx.query(DB, "; ".join(statements), epoch="ms", timeout=10)
        except Exception:
            return
        seen_ns = time.time_ns()
        highest: dict[tuple[str, str], int] = {}
        for result in answer.get("results", []):
            for series in result.get("series", []):
                value = series["values"][0][1]
                if value is not None:
                    highest[keys[result["statement_id"]]] = int(value)
        still = []
        for sample in self.outstanding:
            product, sn, seq, t_us = sample
            if highest.get((product, sn), 0) >= seq:
                self.latencies.values.append((seen_ns / 1000 - t_us) / 1e6)
            else:
                still.append(sample)
        self.outstanding = still


# ----------------------------------------------------------------------------- one device count


@dataclass
class Row:
    devices: int
    target: float
    published: int
    seconds: float
    fields: int
    lost: int
    duplicates: int
    drain_s: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    samples: int
    cpu_per_1k: float
    cpu_share: float
    hwm_mb: float
    rss_mb: float
    shares: dict[str, float]

    @property
    def rate(self) -> float:
        return self.published / self.seconds

    def sustained(self, drain_limit: float) -> bool:
        return (
            self.lost == 0
            and self.duplicates == 0
            and self.drain_s is not None
            and self.drain_s <= drain_limit
        )


def run_devices(count: int, args: argparse.Namespace, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    half = count // 2
    spec = f"powerstream={count - half},delta_pro={half}" if half else "powerstream=1"
    info: dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    with (
        MosquittoServer() as broker,
        InfluxServer() as influx,
        LocalCloud(spec, mosquitto=broker, publish_rate=None) as cloud,
    ):
        influx.create_database(DB)
        devices = cloud.devices
        port = free_port()
        influxdb: dict[str, Any] = {}
        if args.no_gzip:
            influxdb["gzip"] = False
        mqtt: dict[str, Any] = {}
        if args.plain:
            mqtt = {"tls": False, "port": broker.port, "host": broker.host}
        config = collector_config(
            workdir / f"collector-{count}.toml",
            cloud,
            influx,
            DB,
            workdir / f"state-{count}",
            healthz_port=port,
            influxdb=influxdb,
            mqtt=mqtt,
            quota_all_interval_s=86_400,
            stale_after_s=86_400,
            offline_after_s=172_800,  # must exceed stale_after_s (config validation)
            status_interval_s=3600,
        )
        log_path = workdir / f"collector-{count}.log"
        log_path.unlink(missing_ok=True)
        process = CollectorProcess(config, log_path)

        # generators first: building their report pools overlaps the collector's start-up seeding
        refs = [DeviceRef.of(d) for d in devices]
        workers = min(args.workers, count)
        commands = [ctx.Queue() for _ in range(workers)]
        results = ctx.Queue()
        samples = ctx.Queue()
        account = cloud.account
        procs = [
            ctx.Process(
                target=generator,
                args=(
                    i,
                    refs[i::workers],
                    account.certificate_account,
                    account.certificate_password,
                    broker.host,
                    broker.port,
                    commands[i],
                    results,
                    samples,
                ),
                daemon=True,
            )
            for i in range(workers)
        ]
        for proc in procs:
            proc.start()
        started = time.monotonic()
        process.start()
        rows: list[Row] = []
        probe = LatencyProbe(influx, samples)
        try:
            wait_for(
                lambda: any(
                    e.get("event") == "mqtt.subscribed" and e.get("devices") == count
                    for e in process.events()
                ),
                timeout=600,
                what="the collector's start-up (seed + subscribe)",
                interval=0.5,
            )
            wait_for(  # the start-up seed: one quota/all per device, on the collector's poll workers
                lambda: cloud.cloud.counts["/iot-open/sign/device/quota/all"] >= count,
                timeout=900,
                what="the start-up seed",
                interval=0.5,
            )
            info["startup_s"] = time.monotonic() - started
            info["after_start"] = process.sample()
            for _ in range(workers):
                kind, _index = results.get(timeout=600)
                assert kind == "ready"
            time.sleep(2)  # let the seed's points be written
            probe.start()
            published: dict[str, int] = {d.sn: 0 for d in devices}
            products = {d.sn: d.product_slug for d in devices}
            pids = {
                "collector": [process.pid],
                "mosquitto": [broker.pid or 0],
                "influxd": [influx.influxd_pid or 0, influx.nginx_pid or 0],
                "generators": [p.pid or 0 for p in procs],
                "bench": [os.getpid()],
            }
            for rate in args.rates:
                rows.append(
                    run_phase(
                        count,
                        rate,
                        args,
                        process,
                        influx,
                        commands,
                        results,
                        probe,
                        published,
                        products,
                        pids,
                    )
                )
                print_row(rows[-1], args.drain_limit, flush=True)
                time.sleep(2)
            info["health"] = health(port)[1]
        finally:
            probe.stop()
            for q in commands:
                q.put(None)
            for proc in procs:
                proc.join(10)
                if proc.is_alive():
                    proc.kill()
            for q in [*commands, results, samples]:
                q.close()
                q.cancel_join_thread()
            process.terminate(30) if process.running() else None
        text = log_path.read_text(errors="replace")
        info["tracebacks"] = text.count("Traceback")
        info["broker_drops"] = (
            broker.log_file.read_text(errors="replace").count("dropped") if broker.log_file.exists() else None
        )
    return rows, info


def run_phase(
    count: int,
    rate: float,
    args: argparse.Namespace,
    process: CollectorProcess,
    influx: InfluxServer,
    commands: list[Any],
    results: Any,
    probe: LatencyProbe,
    published: dict[str, int],
    products: dict[str, str],
    pids: dict[str, list[int]],
) -> Row:
    before = process.sample()
    assert before is not None, "the collector died"
    meter = CpuMeter(pids)
    probe.reset()
    workers = len(commands)
    for q in commands:
        q.put((rate / workers, args.seconds))
    profiler = None
    if args.profile is not None:
        name = f"profile-{count}-{'max' if rate == 0 else int(rate)}"
        profiler = start_profile(process.pid, args.profile / name, seconds=max(1.0, args.seconds - 2))
    outcomes = []
    for _ in range(workers):
        kind, _index, outcome = results.get(timeout=args.seconds + 120)
        assert kind == "done"
        outcomes.append(outcome)
    busy = meter.shares()  # while publishing: the load the phase put on the machine
    sent = sum(o["sent"] for o in outcomes)
    fields = sum(o["fields"] for o in outcomes)
    first_ns = min(o["first_ns"] for o in outcomes)
    last_ns = max(o["last_ns"] for o in outcomes)
    for o in outcomes:
        for sn, n in o["published"].items():
            published[sn] += n

    first_us, last_us = first_ns // 1000 - 1, max(o["last_us"] for o in outcomes)

    def phase_counts() -> dict[str, MarkerCount]:
        return marker_counts_between(influx, DB, set(products.values()), first_us, last_us)

    drain: float | None = None
    try:
        wait_for(
            lambda: sum(c.distinct for c in phase_counts().values()) >= sent,
            timeout=args.drain_wait,
            what="every report in InfluxDB",
            interval=0.1,
        )
        drain = time.time_ns() / 1e9 - last_ns / 1e9
    except AssertionError:
        pass
    after = process.sample() or before
    latencies = probe.reset()
    if profiler is not None:
        profiler.wait(60)
    # this phase's reports only (by their publish time): found once, found twice, missing
    phase = phase_counts()
    stored = sum(c.distinct for c in phase.values())
    dup = sum(c.count - c.distinct for c in phase.values())
    lost = sent - stored
    seconds = (last_ns - first_ns) / 1e9
    return Row(
        devices=count,
        target=rate,
        published=sent,
        seconds=seconds,
        fields=fields,
        lost=lost,
        duplicates=dup,
        drain_s=drain,
        p50=latencies.at(0.5),
        p95=latencies.at(0.95),
        p99=latencies.at(0.99),
        samples=len(latencies.values),
        cpu_per_1k=(after.cpu_s - before.cpu_s) / max(sent - lost, 1) * 1000,
        cpu_share=busy["collector"],
        hwm_mb=after.hwm_kb / 1024,
        rss_mb=after.rss_kb / 1024,
        shares=busy,
    )


def start_profile(pid: int, out: Path, seconds: float) -> subprocess.Popen[bytes]:
    """py-spy (pip install py-spy) samples the collector 100 times a second into `out`.txt:
    collapsed stacks of every thread while it runs (`python3 bench/_harness.py FILE` summarises
    it; flamegraph.pl or speedscope draw it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [
            *("py-spy", "record", "-o", f"{out}.txt", "--format", "raw", "--pid", str(pid)),
            *("--duration", str(int(seconds)), "--rate", "100", "--threads"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


HEADER = (
    f"{'devices':>7} {'target/s':>9} {'msgs/s':>8} {'fields/s':>9} {'lost':>5} {'dup':>4} {'drain s':>7} "
    f"{'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'CPU s/1k':>8} {'CPU %':>6} {'peak RSS MB':>11}  sustained"
)


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_row(row: Row, drain_limit: float, flush: bool = False, cores: bool = True) -> None:
    target = "max" if row.target == 0 else f"{row.target:,.0f}"
    print(
        f"{row.devices:>7,} {target:>9} {row.rate:>8,.0f} {row.fields / row.seconds:>9,.0f} {row.lost:>5} "
        f"{row.duplicates:>4} {fmt(row.drain_s):>7} {fmt(row.p50):>6} {fmt(row.p95):>6} {fmt(row.p99):>6} "
        f"{row.cpu_per_1k:>8.3f} {row.cpu_share * 100:>6.0f} {row.hwm_mb:>11.0f}  "
        f"{'yes' if row.sustained(drain_limit) else 'no'}",
        flush=flush,
    )
    if cores:
        print("        cores used: " + ", ".join(f"{k} {v:.2f}" for k, v in row.shares.items()), flush=flush)


def main() -> None:
    # SIGTERM ends the run through its finally blocks (servers, collector and generators stopped)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", default="10,1000,10000", help="device counts, comma-separated")
    parser.add_argument(
        "--rates", default="5000,10000,0", help="messages/s per phase (0 = as fast as possible)"
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="publishing time per phase")
    parser.add_argument("--workers", type=int, default=3, help="load-generator processes")
    parser.add_argument("--drain-limit", type=float, default=3.0, help="max drain s for 'sustained'")
    parser.add_argument("--drain-wait", type=float, default=60.0, help="how long to wait for stragglers")
    parser.add_argument(
        "--no-gzip", action="store_true", help="collector writes without gzip ([influxdb] gzip)"
    )
    parser.add_argument("--plain", action="store_true", help="collector's MQTT without TLS")
    parser.add_argument("--dir", type=Path, default=None, help="keep configs and logs here")
    parser.add_argument("--profile", type=Path, default=None, help="py-spy the collector into this folder")
    args = parser.parse_args()
    args.rates = [float(r) for r in args.rates.split(",")]
    configure("warning", "console")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench-e2e-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(" ".join(["python3", "bench/e2e.py", *sys.argv[1:]]))
    print(HEADER, flush=True)
    all_rows: list[Row] = []
    notes = []
    for count in (int(c) for c in args.devices.split(",")):
        rows, info = run_devices(count, args, workdir)
        all_rows += rows
        start = info.get("after_start")
        notes.append(
            f"N={count:,}: start-up (seed over HTTP + subscribe) {info['startup_s']:.1f} s, RSS after it "
            f"{(start.rss_kb / 1024) if start else 0:.0f} MB; tracebacks in the log: {info['tracebacks']}; "
            f"broker 'dropped' log lines: {info['broker_drops']}"
        )
    print()
    print(HEADER)
    for row in all_rows:
        print_row(row, args.drain_limit, cores=False)
    print("cores used during each phase (2 = the whole machine; 'other' = processes not of this benchmark):")
    for row in all_rows:
        print(
            f"  N={row.devices:,} {'max' if row.target == 0 else int(row.target)}/s: "
            + ", ".join(f"{k} {v:.2f}" for k, v in row.shares.items())
        )
    for note in notes:
        print(note)
    print(f"logs and configs: {workdir}")


if __name__ == "__main__":
    main()
