"""`demo`: the whole product with no EcoFlow account.

It starts the project's local EcoFlow cloud (signature-checking HTTP API + simulated PowerStream and
Delta Pro publishing over a private Mosquitto with TLS and password auth), runs the collector
against it exactly as `run` would against the real cloud, and writes to InfluxDB: the URL given,
else a private InfluxDB it starts (when the `influxd` binary is installed), else a line-protocol file.
"""

from __future__ import annotations

import argparse
import json
import signal
import threading
import urllib.parse
import urllib.request
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from collector.api.client import EcoflowClient
from collector.catalog import default_catalog
from collector.cli import UsageError, table
from collector.config import Settings, settings_from_values
from collector.daemon import Collector, wall_clock_ms
from collector.history.energy import COUNTERS
from collector.history.report import format_table, report_from_settings
from collector.simulator.clock import ScaledClock, wall_clock
from collector.simulator.devices import DEVICES_HELP, SimDevice
from collector.simulator.server import LocalCloud
from collector.sink import Sink
from collector.sink.influx import InfluxWriter
from collector.sink.linefile import LineFileSink
from collector.statedir import StateDir
from collector.testbed import InfluxServer, MosquittoServer, ServerNotInstalledError

SUMMARY_QUERY = (
    'SELECT last("soc_percent") AS soc, last("input_w") AS input_w, last("output_w") AS output_w '
    'FROM "ecoflow_summary" GROUP BY "name"'
)


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "demo",
        help="run the collector against the project's local EcoFlow cloud (no account needed)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", default="powerstream=1,delta_pro=1", help=DEVICES_HELP)
    parser.add_argument("--influx-url", help="write here (InfluxDB 1.8+/2.x/3.x write API) instead")
    parser.add_argument("--influx-token", default="", help="token for --influx-url")
    parser.add_argument("--bucket", default="ecoflow", help="bucket (or 1.x database) to write to")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run; 0 = until Ctrl-C")
    parser.add_argument("--rate", type=float, default=2.0, help="simulated reports per second, all devices")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--state-dir", type=Path, default=Path("demo-state"), help="spool, client id, data")
    parser.set_defaults(handler=run)


def _query(url: str, token: str, db: str, influxql: str) -> list[dict[str, Any]]:
    """Rows of an InfluxQL query over the /query API (1.x, and 2.x/3.x v1-compatible)."""
    params = urllib.parse.urlencode({"db": db, "q": influxql})
    request = urllib.request.Request(f"{url.rstrip('/')}/query?{params}")
    if token:
        request.add_header("Authorization", f"Token {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        result = json.loads(answer.read())["results"][0]
    return [
        {"tags": series.get("tags", {}), **dict(zip(series["columns"], values, strict=True))}
        for series in result.get("series", [])
        for values in series["values"]
    ]


def _wait(duration: float) -> None:
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    stop.wait(duration if duration > 0 else None)


def run(args: argparse.Namespace) -> int:
    if args.speed <= 0 or args.rate <= 0:
        raise UsageError("--speed and --rate must be positive")
    state = args.state_dir.resolve()
    StateDir(state)
    with ExitStack() as stack:
        try:
            broker = stack.enter_context(MosquittoServer())
        except ServerNotInstalledError as exc:
            raise UsageError(f"{exc}") from None
        clock = ScaledClock(args.speed) if args.speed != 1.0 else wall_clock
        cloud = stack.enter_context(
            LocalCloud(args.devices, mosquitto=broker, publish_rate=args.rate, clock=clock)
        )
        url, token, where = args.influx_url, args.influx_token, ""
        if url is None:
            try:
                server = InfluxServer(workdir=state / "influxdb")
                stack.enter_context(server)
                server.create_database(args.bucket)
                url, where = server.url, f"a private InfluxDB 1.6 the demo started ({server.url})"
            except ServerNotInstalledError:
                url = None
        settings_data: dict[str, Any] = cloud.collector_settings()
        # a demo's devices report every few seconds: short timings show the fallback at work
        settings_data["mqtt"] = {**settings_data.get("mqtt", {}), "watchdog_s": 60}
        settings_data["collector"] = {
            "state_dir": str(state / "collector"),
            "stale_after_s": 30,
            "offline_after_s": 120,
        }
        sink: Sink
        if url is not None:
            settings_data["influxdb"] = {"url": url, "token": token, "bucket": args.bucket}
            settings = settings_from_values(settings_data)
            problem = InfluxWriter.probe(settings, 5.0)
            if problem is None:
                sink = InfluxWriter.from_settings(settings)
                where = where or f"InfluxDB at {url}, bucket {args.bucket}"
            else:
                print(f"InfluxDB at {url} is not usable ({problem}); writing a line-protocol file instead")
                url = None
        if url is None:
            settings = settings_from_values(settings_data)
            line_file = state / "points.lp"
            sink = LineFileSink(line_file)
            where = f"the line-protocol file {line_file}"
        client = stack.enter_context(EcoflowClient.from_settings(settings.ecoflow))
        # sped up, the collector keeps the simulated time too: its energy counters integrate over it
        clock_ms = wall_clock_ms if args.speed == 1.0 else lambda: int(clock() * 1000)
        collector = Collector(
            settings, default_catalog(), client, sink, client_id="ecoflow-collector-demo", clock_ms=clock_ms
        )
        started_s = clock()
        simulated_at_start = {device.sn: device.energy_totals() for device in cloud.devices}
        collector.start()
        print(f"local EcoFlow cloud: {cloud.url} with {len(cloud.devices)} simulated devices:")
        for device in cloud.devices:
            print(f"  {device.sn}  {device.device_name}  ({device.product_slug})")
        print(f"MQTT broker: mqtts://{broker.host}:{broker.tls_port} (TLS, password auth)")
        print(f"writing to {where}")
        if url is not None:
            query = f"--data-urlencode 'db={args.bucket}' --data-urlencode 'q={SUMMARY_QUERY}'"
            print(f"try, while it runs: curl -G '{url}/query' {query}")
        run_for = f"for {args.duration:g} s" if args.duration > 0 else "until Ctrl-C"
        print(f"collecting {run_for} ...", flush=True)
        try:
            _wait(args.duration)
        finally:
            collector.stop(timeout=8.0)
        stats = sink.stats()
        received = sum(collector.mqtt.messages.values())
        print(
            f"done: {received} MQTT messages, {sum(collector.polls.values())} HTTP polls, "
            f"{stats.points_written} points written"
        )
        if url is not None:
            for row in _query(url, token, args.bucket, SUMMARY_QUERY):
                print(
                    f"  {row['tags'].get('name')}: SoC {row['soc']} %, in {row['input_w']} W, "
                    f"out {row['output_w']} W"
                )
        collected = _collected_wh(settings, collector, started_s, clock(), stored=url is not None)
        _print_energy_check(cloud.devices, collector, simulated_at_start, collected)
    return 0


def _collected_wh(
    settings: Settings, collector: Collector, start_s: float, end_s: float, *, stored: bool
) -> dict[str, dict[str, float]]:
    """Wh per device and flow: from InfluxDB through `report` (printed), else the counters in memory."""
    if not stored:
        print("energy collected (the counters in memory; no InfluxDB to report from):")
        return collector.energy.snapshot()
    rows = report_from_settings(
        settings,
        start=datetime.fromtimestamp(start_s, UTC),
        end=datetime.fromtimestamp(end_s, UTC),
        now=datetime.fromtimestamp(end_s, UTC),
    )
    print("energy report (the same as `ecoflow-collector report --by day`):")
    print(format_table(rows))
    totals: dict[str, dict[str, float]] = {}
    for row in rows:
        device = totals.setdefault(row.sn, dict.fromkeys(COUNTERS, 0.0))
        for name in COUNTERS:
            device[name] += getattr(row, name.removesuffix("_wh") + "_kwh") * 1000.0
    return totals


def _print_energy_check(
    devices: list[SimDevice],
    collector: Collector,
    at_start: dict[str, dict[str, float]],
    collected: dict[str, dict[str, float]],
) -> None:
    """Collected energy beside what the simulated devices' reported powers carried over the same
    span (from the collector's first data to the last it integrated)."""
    rows = []
    for device in devices:
        span = collector.energy.span(device.sn)
        if span is None or device.sn not in collected:
            continue
        try:
            begin = device.energy_totals(at=span[0] / 1000)
        except ValueError:  # a long run: the meter keeps only its last steps
            begin = at_start[device.sn]
        at_end = device.energy_totals(at=span[1] / 1000)
        for name in COUNTERS:
            truth = at_end[name] - begin[name]
            got = collected[device.sn][name]
            diff = f"{100 * (got - truth) / truth:+.1f} %" if truth >= 0.05 else "-"
            rows.append([device.device_name, name.removesuffix("_wh"), f"{got:.3f}", f"{truth:.3f}", diff])
    print("energy check against the simulated devices (Wh):")
    print(table(["device", "flow", "collected", "simulated", "difference"], rows))
