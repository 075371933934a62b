"""Memory and idle cost: per-device state at a fleet's size, RSS and CPU of an idle collector.

    python3 bench/memory.py [--devices 10000] [--idle-seconds 60] [--skip-process]

1. Per-device state (tracemalloc): N simulated devices of every simulated product, registered in a
   `Registry` (Device, DeviceState, FieldMemory), then each fed one full report per message of its
   product through `Pipeline.process` with its memory, as the daemon feeds them. Prints bytes per
   device before the first report and after the full reports (the latter includes what the
   pipeline caches per product: plans, resolved keys, number memo; shared, not per device).
2. RSS after start-up of `python -m collector run` with 2 devices against the local EcoFlow cloud
   (TLS Mosquitto, private InfluxDB), `--runs` times, beside two floors, each a bare interpreter
   that imported the fixed packages (FIXED_PACKAGES) and nothing of the collector:
   - bare: `import paho.mqtt.client, influxdb_client, apscheduler, structlog, pydantic`
     (`import pydantic` is lazy: it loads no model machinery);
   - run path (the target's floor): exactly the import statements of those packages in the
     modules `run` loads (FLOOR_IMPORTS; `run_path_imports()` derives them from the source and
     tests/test_memory_floor.py holds the two equal), e.g. `from pydantic import BaseModel, ...`.
3. Its idle CPU over `--idle-seconds` (the cloud's devices publish nothing meanwhile): utime +
   stime from /proc, as a share of one core.
"""

from __future__ import annotations

import argparse
import ast
import compileall
import gc
import os
import random
import shutil
import statistics
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

ROOT = Path(__file__).resolve().parent.parent
# the packages the collector is built on (pyproject's dependencies but orjson and urllib3: orjson is
# the collector's own choice for speed, urllib3 comes with influxdb-client)
FIXED_PACKAGES = ("paho", "influxdb_client", "apscheduler", "structlog", "pydantic")
BARE_FLOOR = "import paho.mqtt.client, influxdb_client, apscheduler, structlog, pydantic"
# What the modules of `run` import from FIXED_PACKAGES, one statement per module imported from
# (run_path_imports(); tests/test_memory_floor.py holds this list to the source).
FLOOR_IMPORTS = (
    "from apscheduler.schedulers.background import BackgroundScheduler",
    "from influxdb_client.client.influxdb_client import InfluxDBClient",
    "from influxdb_client.client.write_api import SYNCHRONOUS",
    "from influxdb_client.domain.write_precision import WritePrecision",
    "from influxdb_client.rest import ApiException",
    "import paho.mqtt",
    "import paho.mqtt.client",
    "from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode",
    "from paho.mqtt.exception import MalformedPacket",
    "from paho.mqtt.reasoncodes import ReasonCode",
    "from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, ValidationError, "
    "field_validator, model_validator",
    "import structlog",
)
# where `python -m collector run` starts: the entry point and the command's module (collector.cli
# imports it by name, COMMANDS)
RUN_ROOTS = ("collector.__main__", "collector.cli.run")


def _module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """(module, names imported from it; () for `import module`) of every absolute import
    statement of a file (the collector has no relative ones), at module level or in a function."""
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(alias.name, ()) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.module, tuple(alias.name for alias in node.names)))
    return found


def run_path_modules(roots: tuple[str, ...] = RUN_ROOTS) -> set[str]:
    """The collector's modules reachable from `roots` by the imports in their source (function-level
    ones included: this may name a module `run` loads late, never one it cannot load)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        if "." in name:
            todo.append(name.rpartition(".")[0])  # importing a module runs its package's first
        for module, names in _imports(path):
            if module.split(".")[0] == "collector":
                todo += [module, *(f"{module}.{n}" for n in names)]  # names may be submodules
    return seen


def run_path_imports(roots: tuple[str, ...] = RUN_ROOTS) -> tuple[str, ...]:
    """The import statements of FIXED_PACKAGES in `run_path_modules()`, one per module imported
    (`import m` and/or `from m import a, b`, names merged over the collector's modules), by module."""
    plain: set[str] = set()
    names: dict[str, set[str]] = {}
    for name in run_path_modules(roots):
        path = _module_file(name)
        assert path is not None
        for module, imported in _imports(path):
            if module.split(".")[0] not in FIXED_PACKAGES:
                continue
            if imported:
                names.setdefault(module, set()).update(imported)
            else:
                plain.add(module)
    statements = [(m, f"import {m}") for m in plain]
    statements += [(m, f"from {m} import {', '.join(sorted(n))}") for m, n in names.items()]
    return tuple(text for _module, text in sorted(statements))


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


def floor_rss_kb(statements: str, runs: int = 3) -> int:
    """Median RSS of a bare interpreter (`python -c`, as `python -m collector` starts, no site
    customisation of ours) that ran these import statements, and asserts it loaded nothing of
    the collector."""
    code = (
        f"{statements}\nimport sys\n"
        "assert not any(m == 'collector' or m.startswith('collector.') for m in sys.modules)\n"
        "print(open('/proc/self/status').read())"
    )
    rss = []
    for _ in range(runs):
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd="/"
        ).stdout
        rss.append(next(int(line.split()[1]) for line in out.splitlines() if line.startswith("VmRSS:")))
    return int(statistics.median(rss))


def compiled_copy(source: Path, target: Path) -> Path:
    """A copy of `source`'s collector package with its bytecode compiled, as `pip install` leaves
    it (and as the fixed packages are in site-packages): a run from a source tree under
    PYTHONDONTWRITEBYTECODE=1 compiles every module at each start, and that parsing leaves
    ~1.5 MB of RSS behind. Returns the directory to put on PYTHONPATH."""
    shutil.copytree(source / "collector", target / "collector", ignore=shutil.ignore_patterns("__pycache__"))
    if not compileall.compile_dir(target / "collector", quiet=1):
        raise RuntimeError(f"compiling {target / 'collector'} failed")
    return target


def collector_process(
    idle_seconds: float, workdir: Path, source: Path | None = None
) -> tuple[int, float, float, int]:
    """(RSS kB after start-up, idle CPU share of one core, seconds measured, threads) with 2 devices;
    `source`: run the collector package of that directory (default: this tree's)."""
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
        process = CollectorProcess(config, workdir / "collector.log", source=source)
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
            threads = len(os.listdir(f"/proc/{process.pid}/task"))
            started = time.monotonic()
            time.sleep(idle_seconds)
            last = process.sample()
            elapsed = time.monotonic() - started
            assert last is not None
            return first.rss_kb, (last.cpu_s - first.cpu_s) / elapsed, elapsed, threads
        finally:
            process.terminate()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--skip-process", action="store_true", help="only the per-device state")
    parser.add_argument("--runs", type=int, default=3, help="collector processes measured (RSS varies)")
    parser.add_argument(
        "--source", type=Path, default=ROOT, help="the tree whose collector package runs (a baseline)"
    )
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
    derived = run_path_imports()
    if derived != FLOOR_IMPORTS:
        print("warning: FLOOR_IMPORTS differs from the run path's imports; measuring the derived ones")
    bare = floor_rss_kb(BARE_FLOOR)
    floor = floor_rss_kb("\n".join(derived))
    print(f"floor, bare ({BARE_FLOOR}): {bare / 1024:.1f} MB")
    print(f"floor, the run path's imports of {', '.join(FIXED_PACKAGES)} ({len(derived)} statements):")
    for statement in derived:
        print(f"    {statement}")
    print(f"  = {floor / 1024:.1f} MB")
    bytecode = "no bytecode written" if sys.dont_write_bytecode else "bytecode as the interpreter writes it"
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        compiled = compiled_copy(args.source.resolve(), Path(tmp) / "compiled")
        variants = [
            (f"from {args.source} ({bytecode})", args.source.resolve()),
            ("installed (its bytecode compiled, as pip install does)", compiled),
        ]
        for label, source in variants:
            results = []
            for run in range(args.runs):
                workdir = Path(tmp) / f"run-{run}"
                workdir.mkdir()
                results.append(collector_process(args.idle_seconds, workdir, source))
                shutil.rmtree(workdir)
            rss = [r[0] for r in results]
            median = statistics.median(rss)
            runs = ", ".join(f"{kb / 1024:.1f}" for kb in rss)
            print(f"RSS after start-up, 2 devices, collector {label}:")
            print(f"  {median / 1024:.1f} MB (median of {len(rss)} runs: {runs})")
            print(f"  collector - floor:      {(median - floor) / 1024:.1f} MB (target: <= 10 MB)")
            print(f"  collector - bare floor: {(median - bare) / 1024:.1f} MB")
            print(f"  threads (tasks of the process): {', '.join(str(r[3]) for r in results)}")
            cpu, elapsed = statistics.median(r[1] for r in results), results[0][2]
            print(f"  idle CPU over {elapsed:.0f} s: {cpu * 100:.2f} % of a core (median)")


if __name__ == "__main__":
    main()
