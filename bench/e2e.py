"""End-to-end benchmark: simulated devices -> Mosquitto -> the collector (a separate process) ->
InfluxDB, measured from the outside.

    python3 bench/e2e.py [--devices 10,1000,10000] [--rates 5000,10000,0] [--seconds 20]
                         [--generators 3] [--workers 2] [--accounts 4] [--no-gzip] [--plain]
                         [--baseline DIR]

``--workers N`` runs the collector with ``[collector] workers = N`` (a supervisor and N worker
processes; its CPU is the sum of all of them); ``--accounts K`` spreads the N devices over K
EcoFlow accounts of the local cloud (the collector gets K ``[[accounts]]``); ``--baseline DIR``
runs a second collector from another source tree (e.g. ``git archive <commit>`` unpacked in DIR)
at the same time, subscribed to the same reports and writing into its own database, so CPU per
report before and after a change is measured side by side under the same load (the VM's speed
drifts; compare ratios, not rates across runs). Beside each row: CPU per report and, where the
row is one of the floors' cases, whether the floor is met.

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
import itertools
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
    refs: list[tuple[DeviceRef, str, str]],
    host: str,
    port: int,
    commands: Any,
    results: Any,
    samples: Any,
) -> None:
    """One load-generator process: builds its devices' report pools (one MQTT connection per
    account: `refs` are (device, certificate account, password)), then runs phases on command."""
    publishers: dict[str, RawPublisher] = {}
    pools: list[tuple[ReportPool, RawPublisher]] = []
    for ref, account, password in refs:
        mqtt = publishers.get(account)
        if mqtt is None:
            mqtt = publishers[account] = RawPublisher(
                host, port, account, password, f"bench-gen-{index}-{len(publishers)}-{time.time_ns() % 10**9}"
            )
            mqtt.connect()
        pools.append((ReportPool(ref, account, seed=index), mqtt))
    results.put(("ready", index))
    while True:
        try:
            command = commands.get(timeout=10)
        except queue.Empty:  # between phases: keep the sessions alive (MQTT keepalive 60 s)
            for mqtt in publishers.values():
                mqtt.ping_if_idle()
            continue
        if command is None:
            break
        rate, seconds = command
        results.put(("done", index, _phase(list(publishers.values()), pools, rate, seconds, samples)))
    for mqtt in publishers.values():
        mqtt.close()


def _phase(
    publishers: list[RawPublisher],
    pools: list[tuple[ReportPool, RawPublisher]],
    rate: float,
    seconds: float,
    samples: Any,
) -> dict[str, Any]:
    before = {pool.sn: pool.count for pool, _ in pools}
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
        batches: dict[int, list[tuple[bytes, bytes]]] = {}
        for _ in range(due):
            pool, mqtt = pools[position % n]
            position += 1
            payload, count = pool.next(t_us)
            fields += count
            batches.setdefault(id(mqtt), []).append((pool.topic, payload))
            sent += 1
            if sent % sample_every == 0:
                samples.put((pool.product, pool.sn, pool.count, t_us))
        for mqtt in publishers:
            batch = batches.get(id(mqtt))
            if batch:
                mqtt.publish(batch)
    last_ns = time.time_ns()
    last_us = t_us if sent else 0
    acked = all([mqtt.wait_acked(60) for mqtt in publishers])
    return {
        "sent": sent,
        "fields": fields,
        "first_ns": first_ns,
        "last_ns": last_ns,
        "last_us": last_us,
        "acked": acked,
        "published": {pool.sn: pool.count - before[pool.sn] for pool, _ in pools},
    }


# ----------------------------------------------------------------------------- latency probe


class LatencyProbe:
    """Polls InfluxDB for sampled reports; a sample's latency is first-seen time - publish time
    (in each database: the collector's, and the baseline's when there is one)."""

    def __init__(self, influx: InfluxServer, samples: Any, dbs: list[str]) -> None:
        self.influx = influx
        self.samples = samples
        self.dbs = dbs
        self.latencies = {db: Percentiles() for db in dbs}
        self.outstanding: dict[str, list[tuple[str, str, int, int]]] = {db: [] for db in dbs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latency-probe", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def reset(self) -> dict[str, Percentiles]:
        done, self.latencies = self.latencies, {db: Percentiles() for db in self.dbs}
        return done

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                while True:
                    sample = self.samples.get_nowait()
                    for db in self.dbs:
                        self.outstanding[db].append(sample)
            except queue.Empty:
                pass
            for db in self.dbs:
                if self.outstanding[db]:
                    self._poll(db)
            self._stop.wait(PROBE_INTERVAL_S)

    def _poll(self, db: str) -> None:
        wanted: dict[tuple[str, str], int] = {}  # (product, sn) -> earliest publish time (us)
        for product, sn, _, t_us in self.outstanding[db]:
            key = (product, sn)
            wanted[key] = min(wanted.get(key, t_us), t_us)
        keys = list(wanted)
        statements = [
            f'SELECT MAX("{marker_field(p)[0]}") FROM "{p}" WHERE "sn" = \'{sn}\' '
            f"AND time >= {wanted[(p, sn)] // 1000 - 2000}ms"
            for p, sn in keys
        ]
        try:
            answer = self.influx.query(db, "; ".join(statements), epoch="ms", timeout=10)
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
        for sample in self.outstanding[db]:
            product, sn, seq, t_us = sample
            if highest.get((product, sn), 0) >= seq:
                self.latencies[db].values.append((seen_ns / 1000 - t_us) / 1e6)
            else:
                still.append(sample)
        self.outstanding[db] = still


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
    label: str = ""  # "" = the collector under test, "baseline" = the --baseline collector
    accounts: int = 1
    workers: int = 1

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


@dataclass
class Collector:
    """One collector under measurement (its process tree) and the database it writes."""

    label: str
    process: CollectorProcess
    db: str
    port: int
    workers: int


def run_devices(count: int, args: argparse.Namespace, workdir: Path) -> tuple[list[Row], dict[str, Any]]:
    accounts = max(1, min(args.accounts, count))
    per_account = count // accounts
    half = per_account // 2
    spec = f"powerstream={per_account - half},delta_pro={half}" if half else "powerstream=1"
    info: dict[str, Any] = {}
    ctx = multiprocessing.get_context("spawn")
    with (
        MosquittoServer() as broker,
        InfluxServer() as influx,
        LocalCloud(spec, accounts=accounts, mosquitto=broker, publish_rate=None) as cloud,
    ):
        devices = cloud.devices
        count = len(devices)
        collectors: list[Collector] = []
        runs = [("", None, DB, args.workers)]
        if args.baseline is not None:  # the baseline knows nothing of workers: one process
            runs.append(("baseline", args.baseline, DB + "_base", 1))
        for label, source, db, workers in runs:
            influx.create_database(db)
            port = free_port()
            influxdb: dict[str, Any] = {}
            if args.no_gzip:
                influxdb["gzip"] = False
            mqtt: dict[str, Any] = {}
            if args.plain:
                mqtt = {"tls": False, "port": broker.port, "host": broker.host}
            name = f"{label or 'collector'}-{count}"
            config = collector_config(
                workdir / f"{name}.toml",
                cloud,
                influx,
                db,
                workdir / f"state-{name}",
                healthz_port=port,
                influxdb=influxdb,
                mqtt=mqtt,
                accounts=accounts > 1,
                quota_all_interval_s=86_400,
                stale_after_s=86_400,
                offline_after_s=172_800,  # must exceed stale_after_s (config validation)
                status_interval_s=3600,
                **({"workers": workers} if workers > 1 else {}),
            )
            log_path = workdir / f"{name}.log"
            log_path.unlink(missing_ok=True)
            collectors.append(
                Collector(label, CollectorProcess(config, log_path, source=source), db, port, workers)
            )

        # generators first: building their report pools overlaps the collector's start-up seeding
        owner = {d.sn: a for a in cloud.accounts for d in a.devices.values()}
        refs = [
            (DeviceRef.of(d), owner[d.sn].certificate_account, owner[d.sn].certificate_password)
            for d in devices
        ]
        generators = min(args.generators, count)
        commands = [ctx.Queue() for _ in range(generators)]
        results = ctx.Queue()
        samples = ctx.Queue()
        procs = [
            ctx.Process(
                target=generator,
                args=(i, refs[i::generators], broker.host, broker.port, commands[i], results, samples),
                daemon=True,
            )
            for i in range(generators)
        ]
        for proc in procs:
            proc.start()
        started = time.monotonic()
        for collector in collectors:
            collector.process.start()
        rows: list[Row] = []
        probe = LatencyProbe(influx, samples, [c.db for c in collectors])
        try:
            for collector in collectors:
                wait_for(
                    lambda c=collector: (
                        (h := health(c.port))[1].get("devices") == count and h[1].get("mqtt_connected")
                    ),
                    timeout=600,
                    what=f"the {collector.label or 'collector'}'s start-up (every device, MQTT connected)",
                    interval=0.5,
                )
            wait_for(  # the start-up seed: one quota/all per device and collector
                lambda: cloud.cloud.counts["/iot-open/sign/device/quota/all"] >= count * len(collectors),
                timeout=900,
                what="the start-up seed",
                interval=0.5,
            )
            info["startup_s"] = time.monotonic() - started
            info["after_start"] = collectors[0].process.sample()
            for _ in range(generators):
                kind, _index = results.get(timeout=600)
                assert kind == "ready"
            products = {d.sn: d.product_slug for d in devices}
            pids = {
                "mosquitto": [broker.pid or 0],
                "influxd": [influx.influxd_pid or 0, influx.nginx_pid or 0],
                "generators": [p.pid or 0 for p in procs],
                "bench": [os.getpid()],
            }
            # let the seed be written and indexed (10,000 new series keep InfluxDB busy for a while):
            # the phases measure the steady state, not the start-up
            info["settle_s"] = settle(pids["influxd"])
            probe.start()
            for rate in args.rates:
                phase = run_phase(
                    count, rate, args, collectors, influx, commands, results, probe, products, pids
                )
                for row in phase:
                    row.accounts = accounts
                    print_row(row, args.drain_limit, flush=True)
                if len(phase) == 2:
                    print(f"        {ratio_line(phase[0], phase[1])}", flush=True)
                rows += phase
                time.sleep(2)
            info["health"] = health(collectors[0].port)[1]
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
            for collector in collectors:
                if collector.process.running():
                    collector.process.terminate(30)
        text = "".join(c.process.log.read_text(errors="replace") for c in collectors)
        info["tracebacks"] = text.count("Traceback")
        info["broker_drops"] = (
            broker.log_file.read_text(errors="replace").count("dropped") if broker.log_file.exists() else None
        )
    return rows, info


def run_phase(
    count: int,
    rate: float,
    args: argparse.Namespace,
    collectors: list[Collector],
    influx: InfluxServer,
    commands: list[Any],
    results: Any,
    probe: LatencyProbe,
    products: dict[str, str],
    pids: dict[str, list[int]],
) -> list[Row]:
    before = {c.label: c.process.sample() for c in collectors}
    assert all(before.values()), "a collector died"
    trees = {c.label or "collector": c.process.pids() for c in collectors}
    meter = CpuMeter({**{name: tree for name, tree in trees.items()}, **pids})
    probe.reset()
    generators = len(commands)
    for q in commands:
        q.put((rate / generators, args.seconds))
    profiler = None
    if args.profile is not None:
        name = f"profile-{count}-{'max' if rate == 0 else int(rate)}"
        profiler = start_profile(
            trees["collector"][-1], args.profile / name, seconds=max(1.0, args.seconds - 2)
        )
    outcomes = []
    for _ in range(generators):
        kind, _index, outcome = results.get(timeout=args.seconds + 120)
        assert kind == "done"
        outcomes.append(outcome)
    busy = meter.shares()  # while publishing: the load the phase put on the machine
    sent = sum(o["sent"] for o in outcomes)
    fields = sum(o["fields"] for o in outcomes)
    first_ns = min(o["first_ns"] for o in outcomes)
    last_ns = max(o["last_ns"] for o in outcomes)
    first_us, last_us = first_ns // 1000 - 1, max(o["last_us"] for o in outcomes)

    def phase_counts(db: str) -> dict[str, MarkerCount]:
        return marker_counts_between(influx, db, set(products.values()), first_us, last_us)

    drains: dict[str, float | None] = {}
    afters = {}
    for collector in collectors:
        try:
            wait_for(
                lambda c=collector: sum(x.distinct for x in phase_counts(c.db).values()) >= sent,
                timeout=args.drain_wait,
                what="every report in InfluxDB",
                interval=0.1,
            )
            drains[collector.label] = time.time_ns() / 1e9 - last_ns / 1e9
        except AssertionError:
            drains[collector.label] = None
        afters[collector.label] = collector.process.sample() or before[collector.label]
    latencies = probe.reset()
    if profiler is not None:
        profiler.wait(60)
    rows = []
    seconds = (last_ns - first_ns) / 1e9
    for collector in collectors:
        # this phase's reports only (by their publish time): found once, found twice, missing
        phase = phase_counts(collector.db)
        stored = sum(c.distinct for c in phase.values())
        dup = sum(c.count - c.distinct for c in phase.values())
        lost = sent - stored
        start, after = before[collector.label], afters[collector.label]
        assert start is not None and after is not None
        latency = latencies[collector.db]
        rows.append(
            Row(
                devices=count,
                target=rate,
                published=sent,
                seconds=seconds,
                fields=fields,
                lost=lost,
                duplicates=dup,
                drain_s=drains[collector.label],
                p50=latency.at(0.5),
                p95=latency.at(0.95),
                p99=latency.at(0.99),
                samples=len(latency.values),
                cpu_per_1k=(after.cpu_s - start.cpu_s) / max(sent - lost, 1) * 1000,
                cpu_share=busy[collector.label or "collector"],
                hwm_mb=after.hwm_kb / 1024,
                rss_mb=after.rss_kb / 1024,
                shares=busy,
                label=collector.label,
                workers=collector.workers,
            )
        )
    return rows


def settle(influxd: list[int], quiet: float = 0.15, timeout: float = 180.0) -> float:
    """Wait (at least 2 s) until InfluxDB uses less than `quiet` of a core over 2 s; the seconds waited."""
    started = time.monotonic()
    time.sleep(2)
    while time.monotonic() - started < timeout:
        meter = CpuMeter({"influxd": influxd})
        time.sleep(2)
        if meter.shares()["influxd"] < quiet:
            break
    return time.monotonic() - started


def ratio_line(row: Row, base: Row) -> str:
    return (
        f"side by side: CPU per report {row.cpu_per_1k:.3f} ms vs baseline {base.cpu_per_1k:.3f} ms = "
        f"{row.cpu_per_1k / max(base.cpu_per_1k, 1e-9):.2f}x"
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
    f"{'p50 s':>6} {'p95 s':>6} {'p99 s':>6} {'CPU ms/rep':>10} {'CPU %':>6} {'peak RSS MB':>11}  sustained"
)

# The floors (issue "Fleets"): 2 cores, broker and InfluxDB on the same machine
FLOOR_RATE = 5000.0  # reports/s sustained with zero loss, workers = 2, N = 1,000 over 4 accounts
FLOOR_P99_S = 2.0  # p99 publish-to-queryable at 2,500 reports/s, N = 10,000


def floor_note(row: Row, drain_limit: float) -> str:
    """Whether the row is one of the floors' cases, and whether it meets it."""
    if row.label:
        return ""
    if row.devices == 1000 and row.accounts == 4 and row.workers == 2 and row.target == FLOOR_RATE:
        met = row.sustained(drain_limit) and row.rate >= FLOOR_RATE * 0.99
        return f"floor >= {FLOOR_RATE:,.0f}/s sustained, zero loss: {'MET' if met else 'NOT MET'}"
    if row.devices == 10_000 and row.target == 2500:
        met = row.lost == 0 and row.p99 is not None and row.p99 < FLOOR_P99_S
        return f"floor p99 < {FLOOR_P99_S:g} s at 2,500/s: {'MET' if met else 'NOT MET'}"
    return ""


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def print_row(row: Row, drain_limit: float, flush: bool = False, cores: bool = True) -> None:
    target = "max" if row.target == 0 else f"{row.target:,.0f}"
    extra = [
        f"workers={row.workers}" if row.workers > 1 else "",
        f"accounts={row.accounts}" if row.accounts > 1 else "",
    ]
    extra += [row.label, floor_note(row, drain_limit)]
    print(
        f"{row.devices:>7,} {target:>9} {row.rate:>8,.0f} {row.fields / row.seconds:>9,.0f} {row.lost:>5} "
        f"{row.duplicates:>4} {fmt(row.drain_s):>7} {fmt(row.p50):>6} {fmt(row.p95):>6} {fmt(row.p99):>6} "
        f"{row.cpu_per_1k:>10.3f} {row.cpu_share * 100:>6.0f} {row.hwm_mb:>11.0f}  "
        f"{'yes' if row.sustained(drain_limit) else 'no':<3}  " + "  ".join(e for e in extra if e),
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
    parser.add_argument("--generators", type=int, default=3, help="load-generator processes")
    parser.add_argument("--workers", type=int, default=1, help="the collector's [collector] workers")
    parser.add_argument(
        "--accounts", type=int, default=1, help="EcoFlow accounts the devices are spread over"
    )
    parser.add_argument(
        "--baseline", type=Path, default=None, help="also run the collector of this source tree, side by side"
    )
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
            f"N={count:,}: start-up (seed over HTTP + subscribe) {info['startup_s']:.1f} s, InfluxDB settled "
            f"{info['settle_s']:.0f} s later, RSS after start-up "
            f"{(start.rss_kb / 1024) if start else 0:.0f} MB; tracebacks in the log: {info['tracebacks']}; "
            f"broker 'dropped' log lines: {info['broker_drops']}"
        )
    print()
    print(HEADER)
    for row in all_rows:
        print_row(row, args.drain_limit, cores=False)
    pairs = [(a, b) for a, b in itertools.pairwise(all_rows) if not a.label and b.label]
    for row, base in pairs:
        target = "max" if row.target == 0 else f"{row.target:,.0f}/s"
        print(f"N={row.devices:,} {target}: {ratio_line(row, base)}")
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
