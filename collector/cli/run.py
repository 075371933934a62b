"""`run` (the daemon) and `check` (probe every dependency and say precisely what is wrong)."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from collector.api.client import EcoflowClient
from collector.api.errors import ApiError
from collector.catalog import default_catalog
from collector.cli import UsageError
from collector.config import ConfigError, Settings, load_settings
from collector.daemon import Collector
from collector.health import HealthServer
from collector.history.energy import influx_restorer
from collector.history.influxql import InfluxQL
from collector.history.rollup import RollupJob
from collector.logs import configure
from collector.sink.influx import InfluxWriter
from collector.statedir import StateDir, StateDirError

log = structlog.get_logger("collector.run")


def register(commands: Any) -> None:
    run_parser: argparse.ArgumentParser = commands.add_parser(
        "run", help="run the collector daemon (MQTT + HTTP fallback -> InfluxDB)"
    )
    run_parser.add_argument("--config", type=Path, help="TOML config file (environment overrides it)")
    run_parser.set_defaults(handler=run)
    check_parser: argparse.ArgumentParser = commands.add_parser(
        "check", help="validate the config and probe the EcoFlow API, MQTT and InfluxDB"
    )
    check_parser.add_argument("--config", type=Path, help="TOML config file (environment overrides it)")
    check_parser.add_argument("--timeout", type=float, default=10.0, help="seconds per probe")
    check_parser.set_defaults(handler=check)


SHARD_COUNT_VARIABLE = "ECOFLOW_COLLECTOR_SHARD_COUNT"
_ORDINAL = re.compile(r"-(\d+)$")


def parse_shard(text: str | None, environ: Mapping[str, str] = os.environ) -> tuple[int, int] | None:
    """`[collector] shard` as (index from 0, count); "auto" reads a StatefulSet pod's ordinal from
    its name (`POD_NAME`, else `HOSTNAME`: `ecoflow-collector-2` is the third of N) and N from
    `ECOFLOW_COLLECTOR_SHARD_COUNT`, so a replica that is removed and added again (same name, same
    volume) takes back exactly its share."""
    if text is None:
        return None
    if text == "auto":
        name = environ.get("POD_NAME") or environ.get("HOSTNAME") or ""
        ordinal = _ORDINAL.search(name)
        if ordinal is None:
            raise UsageError(
                f'[collector] shard = "auto": the pod name {name!r} (POD_NAME or HOSTNAME) does not end in '
                "-<ordinal>, as a StatefulSet's pods do"
            )
        count_text = environ.get(SHARD_COUNT_VARIABLE, "")
        if not count_text.isdigit() or int(count_text) < 1:
            raise UsageError(
                f'[collector] shard = "auto" needs {SHARD_COUNT_VARIABLE} (the number of replicas), '
                f"a whole number of at least 1; it is {count_text or 'not set'}"
            )
        index, count = int(ordinal.group(1)), int(count_text)
        if index >= count:
            raise UsageError(
                f"pod {name} has ordinal {index} but {SHARD_COUNT_VARIABLE} is {count}: "
                "set it to the StatefulSet's replicas"
            )
        return index, count
    index, count = (int(part) for part in text.split("/"))
    if not 1 <= index <= count:
        raise UsageError(f"[collector] shard {text!r}: the first number must be 1..{count}")
    return index - 1, count


def run(args: argparse.Namespace) -> int:
    """The daemon. Returns only on a usage error: after a signal it stops and ends the process."""
    settings = load_settings(args.config)
    configure(args.log_level or settings.logging.level, args.log_format or settings.logging.format)
    catalog = default_catalog()  # an invalid catalog stops the start here
    try:
        state_dir = StateDir(settings.collector.state_dir)
        state_dir.lock()
        client_id = state_dir.client_id(settings.mqtt.client_id)
    except (StateDirError, OSError) as exc:
        raise UsageError(str(exc)) from None
    client = EcoflowClient.from_settings(settings.ecoflow)
    health = None
    host, port = settings.collector.healthz_host, settings.collector.healthz_port
    if port is not None:
        try:
            health = HealthServer(port, lambda: collector.health(), host=host)
        except OSError as exc:
            raise UsageError(f"healthz on {host}:{port}: {exc.strerror}") from None
    sink = InfluxWriter.from_settings(settings)
    history = InfluxQL.from_settings(settings.influxdb)
    rollups = RollupJob(settings, client=history)
    collector = Collector(
        settings,
        catalog,
        client,
        sink,
        client_id=client_id,
        shard=parse_shard(settings.collector.shard),
        energy_restore=influx_restorer(history, settings.influxdb.bucket),
        rollup_job=rollups.run,
    )
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("collector.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if health is not None:
        health.start()
        log.info("healthz.listening", host=settings.collector.healthz_host, port=health.port)
    try:
        collector.start()
        stop.wait()
    finally:
        collector.stop(timeout=8.0)
        if health is not None:
            health.stop()
        client.close()
        history.close()
        state_dir.unlock()
    # Everything accepted is now in InfluxDB or the spool. A scheduler job may still be waiting on
    # an HTTP call to an unreachable cloud: do not let interpreter shutdown wait for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _report(name: str, ok: bool, detail: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return ok


def check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    source = args.config or "environment"
    _report("config", True, f"{source} is valid ({len(settings.devices)} devices configured)")
    catalog = default_catalog()
    _report("catalog", True, f"{len(catalog.products)} products: {', '.join(sorted(catalog.products))}")
    results = [_check_api(settings), _check_influx(settings, args.timeout)]
    return 0 if all(results) else 1


def _check_api(settings: Settings) -> bool:
    from collector.sources.mqtt import probe_broker

    try:
        client = EcoflowClient.from_settings(settings.ecoflow)
    except ConfigError as exc:
        return _report("ecoflow api", False, str(exc))
    with client:
        try:
            devices = client.device_list()
        except ApiError as exc:
            return _report("ecoflow api", False, f"{settings.ecoflow.api_url}: {exc}")
        _report("ecoflow api", True, f"{settings.ecoflow.api_url}: {len(devices)} devices on the account")
        collector = Collector(settings, default_catalog(), client, _NullSink(), client_id="check")
        try:
            credentials = collector.mqtt_credentials()
        except ApiError as exc:
            return _report("mqtt", False, f"certification failed: {exc}")
    try:  # the daemon's id would kick a running daemon off the broker: a stable id of its own
        probe_id = StateDir(settings.collector.state_dir).client_id(settings.mqtt.client_id) + "-check"
    except (StateDirError, OSError) as exc:
        return _report("mqtt", False, f"state_dir: {exc}")
    problem = probe_broker(credentials, probe_id, timeout_s=settings.ecoflow.timeout_s)
    where = f"{credentials.host}:{credentials.port} as {credentials.username}"
    return _report("mqtt", problem is None, f"{where}: {problem or 'connected'}")


def _check_influx(settings: Settings, timeout_s: float) -> bool:
    problem = InfluxWriter.probe(settings, timeout_s)
    i = settings.influxdb
    return _report("influxdb", problem is None, f"{i.url} bucket {i.bucket}: {problem or 'writable'}")


class _NullSink:
    """`check` builds a Collector only to resolve MQTT credentials: nothing is written."""

    def submit(self, points: list[Any]) -> None:
        return None

    def close(self, timeout: float) -> None:
        return None

    def stats(self) -> dict[str, Any]:
        return {}

    def stuck(self) -> bool:
        return False
