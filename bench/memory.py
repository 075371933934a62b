"""Memory and idle cost: per-device state at a fleet's size, RSS and CPU of an idle collector.

    python3 bench/memory.py [--devices 10000] [--idle-seconds 60] [--skip-process]

1. Per-device state (tracemalloc): N simulated devices of every simulated product, registered in a
   `Registry` (Device, DeviceState, FieldMemory), then each fed one full report per message of its
   product through `Pipeline.process` with its memory, as the daemon feeds them. Prints bytes per
   device before the first report and after the full reports (the latter includes what the
   pipeline caches per product: plans, resolved keys, number memo; shared, not per device).
2. RSS after start-up of `python -m collector run` with 2 devices against the local EcoFlow cloud
   (TLS Mosquitto, private InfluxDB), beside the floor: a bare interpreter importing the packages
   the collector needs (paho.mqtt.client, influxdb_client, apscheduler, structlog, pydantic).
3. Its idle CPU over `--idle-seconds` (the cloud's devices publish nothing meanwhile): utime +
   stime from /proc, as a share of one core.
"""

from __future__ import annotations

import argparse
import gc
import random
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._harness import CollectorProcess, collector_config, wait_for
from collector.catalog import default_catalog
from collector.decoding import TopicKind
from collector.logs import configure
from collector.pipeline import Pipeline
from collector.points import Device
from collector.simulator.clock import wall_clock
from collector.simulator.devices import PRODUCTS, make_devices
from collector.simulator.publisher import report_payloads
from collector.state import Registry

FLOOR_IMPORTS = "import paho.mqtt.client, influxdb_client, apscheduler, structlog, pydantic"


def per_device_state(count: int) -> tuple[float, float, int]:
    """(bytes per device before the first report, after full reports, messages fed)."""
    catalog = default_catalog()
    rng = random.Random(7)
    slugs = sorted(PRODUCTS)
    per = count // len(slugs)
    specs = ",".join(f"{slug}={per + (1 if i < count % len(slugs) else 0)}" for i, slug in enumerate(slugs))
    sims = make_devices(specs, clock=wall_clock, rng=rng, catalog=catalog)
    # the full reports, as bytes, made before measuring: input, not state
    payloads = [
        [orjson.dumps(payload) for payload, _keys in report_payloads(sim, sim.full_report(), rng)]
        for sim in sims
    ]
    devices = [(sim.sn, sim.device_name, sim.product_slug) for sim in sims]
    del sims
    pipeline = Pipeline()
    gc.collect()
    tracemalloc.start()
    base, _ = tracemalloc.get_traced_memory()
    registry = Registry()
    for sn, name, slug in devices:
        registry.add(Device.resolve(catalog, sn, name, slug))
    gc.collect()
    registered, _ = tracemalloc.get_traced_memory()
    messages = 0
    for (sn, _name, _slug), reports in zip(devices, payloads, strict=True):
        state = registry.devices[sn]
        for payload in reports:
            pipeline.process(state.device, payload, TopicKind.QUOTA, 1_700_000_000_000, state.memory)
            messages += 1
    gc.collect()
    fed, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return (registered - base) / count, (fed - base) / count, messages


def floor_rss_kb() -> int:
    """RSS of a bare interpreter that imported the collector's fixed packages."""
    code = f"{FLOOR_IMPORTS}\nimport sys\nprint(open('/proc/self/status').read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return next(int(line.split()[1]) for line in out.splitlines() if line.startswith("VmRSS:"))


def collector_process(idle_seconds: float, workdir: Path) -> tuple[int, float, float]:
    """(RSS kB after start-up, idle CPU share of one core, seconds measured) with 2 devices."""
    from collector.simulator.server import LocalCloud
    from collector.testbed import InfluxServer, MosquittoServer
    from collector.testbed.ports import free_port

    with (
        MosquittoServer() as broker,
        InfluxServer() as influx,
        LocalCloud("powerstream=1,delta_pro=1", mosquitto=broker, publish_rate=None) as cloud,
    ):
        influx.create_database("bench")
        config = collector_config(
            workdir / "collector.toml", cloud, influx, "bench", workdir / "state", healthz_port=free_port()
        )
        process = CollectorProcess(config, workdir / "collector.log")
        process.start()
        try:
            wait_for(
                lambda: any(e.get("event") == "mqtt.subscribed" for e in process.events()),
                timeout=120,
                what="the collector's start-up",
                interval=0.2,
            )
            wait_for(
                lambda: cloud.cloud.counts["/iot-open/sign/device/quota/all"] >= 2,
                timeout=120,
                what="the start-up seed",
                interval=0.2,
            )
            time.sleep(3)  # let the first writes and scheduled jobs settle
            first = process.sample()
            assert first is not None
            started = time.monotonic()
            time.sleep(idle_seconds)
            last = process.sample()
            elapsed = time.monotonic() - started
            assert last is not None
            return first.rss_kb, (last.cpu_s - first.cpu_s) / elapsed, elapsed
        finally:
            process.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--skip-process", action="store_true", help="only the per-device state")
    args = parser.parse_args()
    configure("warning")
    before, after, messages = per_device_state(args.devices)
    print(
        f"per-device state, {args.devices:,} devices of {len(PRODUCTS)} products ({messages:,} full reports):"
    )
    print(f"  before the first report: {before:,.0f} bytes/device")
    print(f"  after full reports:      {after:,.0f} bytes/device (with the pipeline's per-product caches)")
    if args.skip_process:
        return
    floor = floor_rss_kb()
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        rss, cpu, elapsed = collector_process(args.idle_seconds, Path(tmp))
    print(
        f"RSS after start-up, 2 devices: {rss / 1024:.1f} MB; floor ({FLOOR_IMPORTS}): {floor / 1024:.1f} MB"
    )
    print(f"  collector - floor: {(rss - floor) / 1024:.1f} MB")
    print(f"idle CPU, 2 devices, over {elapsed:.0f} s: {cpu * 100:.2f} % of a core")


if __name__ == "__main__":
    main()
