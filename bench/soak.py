"""Soak: the collector (a separate process) runs against the local EcoFlow cloud while faults are
injected on a schedule; at the end it proves what survived.

    python3 bench/soak.py --minutes 2      # what CI runs (tests/test_soak.py)
    python3 bench/soak.py --minutes 240 --cycle-minutes 10 --sigkill-cycles 1
                                           # hours: the cycle repeats; one collector process
                                           # lives through all but the first, for its RSS trend

Load: ``--devices`` simulated devices (half PowerStream, half Delta Pro) publish quota reports at
``--rate`` messages/s over MQTT (QoS 1), each with the ``benchSeq``/``benchUs`` marker
(bench/_harness.py), so every report can be looked for in InfluxDB. A report counts as
*accepted* when the broker acknowledged it (PUBACK).

One fault cycle (``--cycle-minutes``; the whole run when shorter), at fractions of the cycle:

    0.07  SIGKILL of the collector, started again 2 s later
    0.18  the EcoFlow HTTP API answers 500 to the next 8 requests, 2 of them only after the
          client's timeout (CloudServer.faults); the collector polls every device periodically,
          its circuit breaker opens (60 s) and must close again
    0.28  InfluxDB killed (the collector spools), restarted at 0.40
    0.46  a burst of 200 malformed payloads on the devices' quota topics
    0.54  the broker killed, restarted at 0.60
    0.60  quiet to the end of the cycle

At the end: publishing stops, every accepted report must be in InfluxDB exactly once, the spool
drained, RSS flat, no traceback in the collector's logs. The one exception, and what it costs:
MQTT delivers nothing to a collector that is not connected (EcoFlow's sessions are clean), and
a SIGKILL loses what the collector had received but not yet written or spooled (at most
``flush_interval_s``). Reports published in those windows (from 1.5 s before a SIGKILL, or from
the broker's kill, until the collector is subscribed again) are counted apart: any of them that
arrived must still be stored exactly once, and the ones missing are reported (the collector
re-reads every device over HTTP after each reconnect and start, so its state is whole again).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import (
    CollectorProcess,
    DeviceRef,
    RawPublisher,
    ReportPool,
    collector_config,
    health,
    marker_values,
    wait_for,
)
from collector.logs import configure
from collector.simulator.server import LocalCloud
from collector.testbed import InfluxServer, MosquittoServer
from collector.testbed.ports import free_port

DB = "soak"
FLUSH_INTERVAL_S = 0.5
MALFORMED = 200
HTTP_FAILS = 8  # the client opens its circuit after 8 failed attempts in a row: one cool-down
HTTP_DELAYS = 2


@dataclass
class Window:
    """Reports published in [start, end] (wall clock, ns) may not reach the collector."""

    reason: str
    start_ns: int
    end_ns: int = 0


@dataclass
class SoakResult:
    seconds: float
    accepted: int = 0  # reports the broker acknowledged
    in_doubt: int = 0  # sent, then the connection dropped before their PUBACK
    guaranteed: int = 0  # accepted outside every window: each must be stored once
    lost: list[tuple[str, int]] = field(default_factory=list)  # (sn, benchSeq) of those missing
    duplicates: list[tuple[str, int]] = field(default_factory=list)  # stored more than once
    window_published: int = 0
    window_missing: int = 0
    windows: list[Window] = field(default_factory=list)
    spool_drained: bool = False
    final_health: dict[str, Any] = field(default_factory=dict)
    rss_mb: list[tuple[float, int, float]] = field(default_factory=list)  # (t s, incarnation, MB)
    rss_growth_mb: float = 0.0  # median of the last tenth minus that of the settled start
    rss_slope_mb_per_h: float = 0.0
    tracebacks: int = 0
    rejected_malformed: list[int] = field(default_factory=list)  # per burst, as the collector counted
    collector_restarts: int = 0
    http_faults_injected: int = 0
    http_faults_served: int = 0
    http_recovered: bool = False  # a quota/all answered after the last fault
    exit_code: int | None = None
    log: list[str] = field(default_factory=list)

    def summary(self) -> str:
        windows = ", ".join(f"{w.reason} {(w.end_ns - w.start_ns) / 1e9:.1f} s" for w in self.windows)
        return "\n".join(
            [
                f"soak of {self.seconds:.0f} s: {self.accepted:,} reports accepted by the broker "
                f"({self.in_doubt} in doubt at a broker kill)",
                f"  outside the fault windows: {self.guaranteed:,}, lost {len(self.lost)}, "
                f"duplicated {len(self.duplicates)}",
                f"  inside the windows ({windows}): {self.window_published} published, "
                f"{self.window_missing} not stored",
                f"  spool drained: {self.spool_drained}; tracebacks in the logs: {self.tracebacks}; "
                f"collector exit code at the end: {self.exit_code}",
                f"  malformed payloads: {MALFORMED} a burst, rejected: {self.rejected_malformed}; "
                f"HTTP 500s served {self.http_faults_served} of {self.http_faults_injected}, quota/all "
                f"answered after them: {self.http_recovered}; SIGKILL restarts: {self.collector_restarts}",
                f"  RSS: {self.rss_mb[0][2] if self.rss_mb else 0:.0f} MB at first sample, "
                f"{max((m for _, _, m in self.rss_mb), default=0):.0f} MB peak, growth over the last "
                f"incarnation {self.rss_growth_mb:+.1f} MB (slope {self.rss_slope_mb_per_h:+.1f} MB/h)",
            ]
        )


class Load:
    """Publishes reports round-robin at `rate`/s on a thread; reconnects after a broker kill."""

    def __init__(
        self, pools: list[ReportPool], host: str, port: int, user: str, password: str, rate: float
    ) -> None:
        self.pools = pools
        self.host, self.port, self.user, self.password = host, port, user, password
        self.rate = rate
        self.sent: list[tuple[str, int, int]] = []  # (sn, benchSeq, publish time ns), in send order
        self.doubt: set[int] = set()  # indexes into `sent` of reports never acknowledged
        self.connections = 0
        self._raw: list[tuple[bytes, bytes]] = []  # other payloads to send (malformed ones)
        self._raw_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-load", daemon=True)
        self._mqtt: RawPublisher | None = None
        self._reports: list[int] = []  # per message of the current connection: index in `sent`, or -1

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._mqtt is not None:
            self._mqtt.wait_acked(10)
            self._settle(self._mqtt)
            self._mqtt.close()

    def send_raw(self, messages: list[tuple[bytes, bytes]]) -> None:
        """Other payloads (malformed ones), sent by the load thread; not recorded as reports."""
        with self._raw_lock:
            self._raw += messages

    def _settle(self, mqtt: RawPublisher) -> None:
        """After a connection ends: its last `sent - acked` messages were never acknowledged (the
        broker acknowledges in order)."""
        unacked = mqtt.sent - mqtt.acked
        for index in self._reports[len(self._reports) - unacked :] if unacked else []:
            if index >= 0:
                self.doubt.add(index)
        self._reports = []

    def _connect(self) -> RawPublisher | None:
        mqtt = RawPublisher(
            self.host, self.port, self.user, self.password, f"soak-load-{self.connections}", window=2000
        )
        try:
            mqtt.connect(timeout=2)
        except OSError:
            return None
        self.connections += 1
        return mqtt

    def _run(self) -> None:
        started = time.monotonic()
        done = 0
        position = 0
        while not self._stop.is_set():
            if self._mqtt is None or not self._mqtt.connected:
                if self._mqtt is not None:
                    self._settle(self._mqtt)
                    self._mqtt.close()
                self._mqtt = self._connect()
                if self._mqtt is None:
                    self._stop.wait(0.2)
                    continue
            with self._raw_lock:
                raw, self._raw = self._raw, []
            due = int((time.monotonic() - started) * self.rate) - done
            if due <= 0 and not raw:
                self._mqtt.ping_if_idle()
                self._stop.wait(0.01)
                continue
            t_ns = time.time_ns()
            batch = list(raw)
            indexes = [-1] * len(raw)
            for _ in range(min(max(due, 0), 200)):
                pool = self.pools[position % len(self.pools)]
                position += 1
                payload, _ = pool.next(t_ns // 1000)
                batch.append((pool.topic, payload))
                indexes.append(len(self.sent))
                self.sent.append((pool.sn, pool.count, t_ns))
            before = self._mqtt.sent
            try:
                self._mqtt.publish(batch)
            except ConnectionError:
                if self._mqtt.sent == before:  # refused before anything was written: never sent
                    for index in reversed(indexes):
                        if index >= 0:
                            sn, seq, _ = self.sent.pop()
                            next(p for p in self.pools if p.sn == sn).count = seq - 1
                    continue
            self._reports += indexes
            done += len(batch) - len(raw)


def run_soak(
    minutes: float,
    workdir: Path,
    *,
    devices: int = 40,
    rate: float = 100.0,
    cycle_minutes: float | None = None,
    sigkill_cycles: int | None = None,
    seed: int = 1,
    echo: bool = True,
) -> SoakResult:
    total_s = minutes * 60
    cycle_s = min(total_s, (cycle_minutes or minutes) * 60)
    result = SoakResult(seconds=total_s)

    def say(text: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {text}"
        result.log.append(line)
        if echo:
            print(line, flush=True)

    rng = random.Random(seed)
    half = devices // 2
    with (
        MosquittoServer() as broker,
        InfluxServer() as influx,
        LocalCloud(
            f"powerstream={devices - half},delta_pro={half}", mosquitto=broker, publish_rate=None, seed=seed
        ) as cloud,
    ):
        influx.create_database(DB)
        port = free_port()
        config = collector_config(
            workdir / "collector.toml",
            cloud,
            influx,
            DB,
            workdir / "state",
            healthz_port=port,
            influxdb={"batch_size": 1000, "flush_interval_s": FLUSH_INTERVAL_S, "timeout_s": 2},
            stale_after_s=10,
            offline_after_s=600,
            quota_all_interval_s=max(20.0, cycle_s / 6),
            telemetry_interval_s=5,
            status_interval_s=60,
        )
        incarnations: list[CollectorProcess] = []
        started_ms = [0]  # when the running collector process was started

        def start_collector() -> CollectorProcess:
            started_ms[0] = time.time_ns() // 1_000_000
            process = CollectorProcess(config, workdir / f"collector-{len(incarnations)}.log")
            process.start()
            incarnations.append(process)
            return process

        def subscriptions(process: CollectorProcess) -> int:
            return sum(1 for e in process.events() if e.get("event") == "mqtt.subscribed")

        account = cloud.account
        pools = [
            ReportPool(DeviceRef.of(d), account.certificate_account, size=40, seed=seed)
            for d in cloud.devices
        ]
        process = start_collector()
        wait_for(lambda: subscriptions(process) > 0, timeout=60, what="the collector subscribed")
        load = Load(
            pools, broker.host, broker.port, account.certificate_account, account.certificate_password, rate
        )
        started = time.monotonic()
        stop_sampling = threading.Event()

        def sample_rss() -> None:
            while not stop_sampling.wait(2.0):
                current = incarnations[-1]
                sample = current.sample()
                if sample is not None:
                    result.rss_mb.append(
                        (time.monotonic() - started, len(incarnations), sample.rss_kb / 1024)
                    )

        sampler = threading.Thread(target=sample_rss, name="rss", daemon=True)
        load.start()
        sampler.start()
        say(
            f"load: {devices} devices, {rate:g} reports/s; collector pid {process.pid}; cycle {cycle_s:.0f} s"
        )

        def at(cycle_start: float, fraction: float) -> None:
            delay = cycle_start + fraction * cycle_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)

        def rejected_since(time_ms: int, until_ms: int | None = None) -> int:
            """The collector's count of malformed payloads (its telemetry, every 5 s; a counter of
            the running process) at its highest since `time_ms` (and before `until_ms`)."""
            until = f" AND time < {until_ms}ms" if until_ms is not None else ""
            query = (
                f'SELECT MAX("rejected_malformed") FROM "ecoflow_collector" WHERE time >= {time_ms}ms{until}'
            )
            try:
                found = influx.rows(DB, query, epoch="ms")
            except Exception:
                return 0
            return int(found[0]["max"] or 0) if found else 0

        def malformed_burst() -> None:
            bad = [
                b"{not json",
                b"[1, 2, 3]",
                b'{"cmdId": "x", "cmdFunc": {}, "param": 5}',
                b"\xff\xfe",
                b'{"params": {"a": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}}',
            ]
            messages = [(rng.choice(pools).topic, rng.choice(bad)) for _ in range(MALFORMED)]
            load.send_raw(messages)

        def sigkill() -> None:
            window = Window("SIGKILL", time.time_ns() - int((FLUSH_INTERVAL_S + 1.0) * 1e9))
            incarnations[-1].kill()
            say("collector SIGKILLed")
            time.sleep(2)
            process = start_collector()
            result.collector_restarts += 1
            wait_for(
                lambda: subscriptions(process) > 0, timeout=60, what="the restarted collector subscribed"
            )
            time.sleep(1)
            window.end_ns = time.time_ns()
            result.windows.append(window)
            say(f"collector restarted (pid {process.pid}) and subscribed")

        cycle_start = started
        cycle = 0
        try:
            while cycle_start + cycle_s <= started + total_s + 1:
                cycle += 1
                at(cycle_start, 0.07)
                if sigkill_cycles is None or cycle <= sigkill_cycles:  # else one incarnation: RSS trend
                    sigkill()

                at(cycle_start, 0.18)
                cloud.cloud.faults.fail_next(HTTP_FAILS, 500)
                cloud.cloud.faults.delay_next(HTTP_DELAYS, 12.0)  # the collector's timeout is 10 s
                result.http_faults_injected += HTTP_FAILS
                say(f"HTTP API: the next {HTTP_FAILS} requests answer 500, {HTTP_DELAYS} of them late")

                at(cycle_start, 0.28)
                influx.kill()
                say("InfluxDB killed")
                at(cycle_start, 0.40)
                influx.restart()
                say("InfluxDB restarted")

                at(cycle_start, 0.46)
                burst_ms = time.time_ns() // 1_000_000
                before = rejected_since(started_ms[0], burst_ms)
                malformed_burst()
                with contextlib.suppress(AssertionError):
                    wait_for(
                        lambda t=burst_ms, b=before: rejected_since(t) - b >= MALFORMED,
                        timeout=30,  # the telemetry may queue behind a spool replay
                        what="rejections counted",
                    )
                result.rejected_malformed.append(rejected_since(burst_ms) - before)
                say(f"{MALFORMED} malformed payloads sent; rejected: {result.rejected_malformed[-1]}")

                at(cycle_start, 0.54)
                process = incarnations[-1]
                count = subscriptions(process)
                window = Window("broker", time.time_ns())
                broker.kill()
                say("broker killed")
                at(cycle_start, 0.60)
                broker.restart()
                wait_for(
                    lambda p=process, c=count: subscriptions(p) > c,
                    timeout=60,
                    what="the collector resubscribed",
                )
                time.sleep(1)
                window.end_ns = time.time_ns()
                result.windows.append(window)
                say("broker restarted; collector subscribed again")
                cycle_start += cycle_s
                if cycle_start + cycle_s > started + total_s + 1:
                    break
            at(started, total_s / cycle_s)  # the rest of the run: quiet
        finally:
            load.stop()
            stop_sampling.set()
        say(f"publishing stopped: {len(load.sent):,} reports sent")

        # ---------------------------------------------------------------- the proof
        process = incarnations[-1]
        accepted = [(i, m) for i, m in enumerate(load.sent) if i not in load.doubt]
        result.accepted = len(accepted)
        result.in_doubt = len(load.doubt)
        in_window = [False] * len(load.sent)
        for index, (_, _, t_ns) in enumerate(load.sent):
            in_window[index] = any(w.start_ns <= t_ns <= w.end_ns for w in result.windows)
        guaranteed = {(sn, seq) for i, (sn, seq, _) in accepted if not in_window[i]}
        windowed = {(sn, seq) for i, (sn, seq, _) in enumerate(load.sent) if in_window[i]}
        result.guaranteed = len(guaranteed)
        products = {d.product_slug for d in cloud.devices}

        def stored() -> dict[tuple[str, int], int]:
            counts: dict[tuple[str, int], int] = {}
            for sn, values in marker_values(influx, DB, products).items():
                for seq in values:
                    counts[(sn, seq)] = counts.get((sn, seq), 0) + 1
            return counts

        with contextlib.suppress(AssertionError):  # what is missing then is reported below
            wait_for(
                lambda: guaranteed <= stored().keys(), timeout=120, what="every accepted report", interval=1
            )
        try:
            wait_for(lambda p=port: health(p)[1].get("spool_points") == 0, timeout=60, what="spool drained")
            result.spool_drained = True
        except AssertionError:
            result.spool_drained = False
        time.sleep(FLUSH_INTERVAL_S * 2 + 1)
        found = stored()
        result.lost = sorted(guaranteed - found.keys())
        result.duplicates = sorted(key for key, n in found.items() if n > 1)
        result.window_published = len(windowed)
        result.window_missing = len(windowed - found.keys())
        result.final_health = health(port)[1]

        def http_recovered() -> bool:
            requests = list(cloud.cloud.requests)
            faulted = [i for i, r in enumerate(requests) if r.reason == "injected fault"]
            return len(faulted) >= result.http_faults_injected and any(
                r.path.endswith("/quota/all") and r.code == "0" for r in requests[faulted[-1] + 1 :]
            )

        with contextlib.suppress(AssertionError):  # the breaker's cooldown is 60 s; polls follow
            wait_for(http_recovered, timeout=90, what="quota/all answered after the HTTP faults", interval=1)
        requests = list(cloud.cloud.requests)
        faulted = [i for i, r in enumerate(requests) if r.reason == "injected fault"]
        result.http_faults_served = len(faulted)
        result.http_recovered = bool(faulted) and any(
            r.path.endswith("/quota/all") and r.code == "0" for r in requests[faulted[-1] + 1 :]
        )
        result.exit_code = process.terminate(20)
        result.tracebacks = sum(p.log.read_text(errors="replace").count("Traceback") for p in incarnations)
        _rss_trend(result, incarnations_started=len(incarnations))
        say("\n" + result.summary())
    return result


def _rss_trend(result: SoakResult, incarnations_started: int) -> None:
    """Growth over the last incarnation once settled (from 20 s after its start, or its first
    third): median of its last tenth minus median of its first settled tenth, and the slope."""
    last = [(t, mb) for t, inc, mb in result.rss_mb if inc == incarnations_started]
    if len(last) < 10:
        return
    t0 = last[0][0]
    settled = [(t, mb) for t, mb in last if t - t0 >= min(20.0, (last[-1][0] - t0) / 3)]
    if len(settled) < 10:
        return
    tenth = max(3, len(settled) // 10)

    def median(values: list[float]) -> float:
        ordered = sorted(values)
        return ordered[len(ordered) // 2]

    result.rss_growth_mb = median([mb for _, mb in settled[-tenth:]]) - median(
        [mb for _, mb in settled[:tenth]]
    )
    n = len(settled)
    mean_t = sum(t for t, _ in settled) / n
    mean_m = sum(mb for _, mb in settled) / n
    var = sum((t - mean_t) ** 2 for t, _ in settled)
    slope_per_s = sum((t - mean_t) * (mb - mean_m) for t, mb in settled) / var if var else 0.0
    result.rss_slope_mb_per_h = slope_per_s * 3600


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument(
        "--cycle-minutes", type=float, default=None, help="fault cycle (default: the whole run)"
    )
    parser.add_argument(
        "--sigkill-cycles", type=int, default=None, help="SIGKILL only in the first K cycles (default: all)"
    )
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--rate", type=float, default=100.0, help="reports/s over all devices")
    parser.add_argument("--dir", type=Path, default=None, help="keep configs and logs here")
    args = parser.parse_args()
    configure("warning", "console")
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="bench-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(" ".join(["python3", "bench/soak.py", *sys.argv[1:]]), flush=True)
    result = run_soak(
        args.minutes,
        workdir,
        devices=args.devices,
        rate=args.rate,
        cycle_minutes=args.cycle_minutes,
        sigkill_cycles=args.sigkill_cycles,
    )
    ok = (
        not result.lost
        and not result.duplicates
        and result.spool_drained
        and result.tracebacks == 0
        and result.exit_code == 0
    )
    print(f"logs: {workdir}\n{'PASS' if ok else 'FAIL'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
