"""`run` (the daemon) and `check` (probe every dependency and say precisely what is wrong)."""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from collector.account import open_client
from collector.api.client import EcoflowClient, RequestBudget
from collector.api.errors import ApiError, DeviceReadDenied
from collector.api.models import DeviceInfo
from collector.catalog import Catalog, default_catalog
from collector.cli import UsageError
from collector.config import AccountSettings, ConfigError, Settings, load_settings
from collector.daemon import Collector
from collector.decoding import PayloadError
from collector.diagnose import describe, key_match
from collector.health import HealthCheck, HealthServer
from collector.history.energy import influx_restorer
from collector.history.influxql import InfluxQL
from collector.history.rollup import RollupJob
from collector.logs import configure
from collector.sink.influx import InfluxWriter
from collector.sources.credentials import mqtt_credentials
from collector.sources.http import refusal_message
from collector.statedir import StateDir, StateDirError
from collector.supervisor import Supervisor, worker_client_id

log = structlog.get_logger("collector.run")


def register(commands: Any) -> None:
    run_parser: argparse.ArgumentParser = commands.add_parser(
        "run", help="run the collector daemon (MQTT + HTTP fallback -> InfluxDB)"
    )
    run_parser.add_argument("--config", type=Path, help="TOML config file (environment overrides it)")
    # set by the supervisor of `[collector] workers = N` (collector/supervisor.py) for its workers
    run_parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
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


def _tag_worker(worker: int) -> None:
    """Every log line of a worker process carries `worker=<j>` (threads included)."""

    def add_worker(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        event.setdefault("worker", worker)
        return event

    processors = list(structlog.get_config()["processors"])
    structlog.configure(processors=[add_worker, *processors])
    for handler in logging.getLogger().handlers:
        formatter = handler.formatter
        if isinstance(formatter, structlog.stdlib.ProcessorFormatter):
            formatter.foreign_pre_chain = [add_worker, *(formatter.foreign_pre_chain or [])]


def run(args: argparse.Namespace) -> int:
    """The daemon. Returns only on a usage error: after a signal it stops and ends the process."""
    settings = load_settings(args.config)
    configure(args.log_level or settings.logging.level, args.log_format or settings.logging.format)
    worker: int | None = getattr(args, "worker", None)
    if worker is None and settings.collector.workers > 1:
        return supervise(args, settings)
    if worker is not None:
        _tag_worker(worker)
    catalog = default_catalog()  # an invalid catalog stops the start here
    accounts = settings.account_settings()
    try:
        state_dir = StateDir(settings.collector.state_dir)
        state_dir.lock()
        # one persisted id per account (EcoFlow allows about 10 a day per account); a worker keeps
        # its own in its own state_dir, and a configured id gets the worker's suffix
        client_ids = {
            a.name: state_dir.client_id(worker_client_id(a.mqtt.client_id, worker or 0), a.name)
            for a in accounts
        }
    except (StateDirError, OSError) as exc:
        raise UsageError(str(exc)) from None
    # each account its own retry budget and circuit breaker: one failing never stalls another
    clients = {a.name: open_client(a, budget=RequestBudget()) for a in accounts}
    health = _health_server(settings, lambda: collector.health())
    sink = InfluxWriter.from_settings(settings)
    history = InfluxQL.from_settings(settings.influxdb)
    rollups = RollupJob(settings, client=history)
    collector = Collector(
        settings,
        catalog,
        clients,
        sink,
        client_id=client_ids,
        shard=parse_shard(settings.collector.shard),
        energy_restore=influx_restorer(history, settings.influxdb.bucket),
        rollup_job=rollups.run if not worker else None,  # one rollup job: the process, or worker 0
    )
    stop = _stop_on_signals()
    _start_health(health)
    try:
        collector.start()
        stop.wait()
    finally:
        collector.stop(timeout=8.0)
        if health is not None:
            health.stop()
        for client in clients.values():
            client.close()
        history.close()
        state_dir.unlock()
    # Everything accepted is now in InfluxDB or the spool. A scheduler job may still be waiting on
    # an HTTP call to an unreachable cloud: do not let interpreter shutdown wait for it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _health_server(settings: Settings, check: HealthCheck) -> HealthServer | None:
    """The /healthz server of `[collector] healthz_port` (None when unset), not yet started."""
    host, port = settings.collector.healthz_host, settings.collector.healthz_port
    if port is None:
        return None
    try:
        return HealthServer(port, check, host=host)
    except OSError as exc:
        raise UsageError(f"healthz on {host}:{port}: {exc.strerror}") from None


def _start_health(health: HealthServer | None) -> None:
    if health is not None:
        health.start()
        log.info("healthz.listening", host=health.host, port=health.port)


def _stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT (logged once each)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("collector.signal", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop


def supervise(args: argparse.Namespace, settings: Settings) -> int:
    """`[collector] workers = N` (N > 1): start N workers, serve the one /healthz, restart the
    workers that die, and stop them all on SIGTERM/SIGINT (collector/supervisor.py)."""
    outer = parse_shard(settings.collector.shard)
    try:
        state_dir = StateDir(settings.collector.state_dir)
        state_dir.lock()  # one supervisor per state_dir (each worker locks its own sub-folder)
    except (StateDirError, OSError) as exc:
        raise UsageError(str(exc)) from None
    log_args = [f"--log-level={args.log_level}"] if args.log_level else []
    log_args += [f"--log-format={args.log_format}"] if args.log_format else []
    supervisor = Supervisor(settings, args.config, outer, log_args=log_args)
    health = _health_server(settings, supervisor.health)
    stop = _stop_on_signals()
    _start_health(health)
    status = 0
    try:
        supervisor.start()
        stop.wait()
    finally:
        status = supervisor.stop()
        if health is not None:
            health.stop()
        state_dir.unlock()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _report(name: str, ok: bool, detail: str) -> bool:
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    return ok


def _warn(name: str, detail: str) -> bool:
    """Something to fix that does not stop collection (the exit status stays 0)."""
    print(f"warn {name}: {detail}")
    return True


def check(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    source = args.config or "environment"
    accounts = settings.account_settings()
    devices = sum(len(a.devices) for a in accounts)
    _report("config", True, f"{source} is valid ({devices} devices configured)")
    catalog = default_catalog()
    _report("catalog", True, f"{len(catalog.products)} products: {', '.join(sorted(catalog.products))}")
    results = [_check_account(settings, account, catalog, len(accounts) > 1) for account in accounts]
    results.append(_check_influx(settings, args.timeout))
    return 0 if all(results) else 1


MAX_CHECKED_DEVICES = 50  # one quota/all each


def _check_account(settings: Settings, account: AccountSettings, catalog: Catalog, named: bool) -> bool:
    """The account's API (device list), MQTT (certification and a login), and its devices. With
    several accounts every line names the account (`ecoflow api [home]`)."""
    suffix = f" [{account.name}]" if named else ""
    try:
        client = open_client(account, budget=RequestBudget())
    except ConfigError as exc:
        return _report("ecoflow api" + suffix, False, str(exc))
    url = account.ecoflow.api_url
    with client:
        try:
            listed = client.device_list()
        except ApiError as exc:
            return _report("ecoflow api" + suffix, False, f"{url}: {exc}")
        _report("ecoflow api" + suffix, True, f"{url}: {len(listed)} devices on the account")
        mqtt_ok = _check_mqtt(settings, account, client, suffix)
        return _check_devices(account, catalog, client, listed) and mqtt_ok


def _check_mqtt(settings: Settings, account: AccountSettings, client: EcoflowClient, suffix: str) -> bool:
    from collector.sources.mqtt import probe_broker

    try:
        credentials = mqtt_credentials(account.mqtt, client.certification)
    except ApiError as exc:
        return _report("mqtt" + suffix, False, f"certification failed: {exc}")
    try:  # the daemon's id would kick a running daemon off the broker: a stable id of its own
        state_dir = StateDir(settings.collector.state_dir)
        probe_id = state_dir.client_id(account.mqtt.client_id, account.name) + "-check"
    except (StateDirError, OSError) as exc:
        return _report("mqtt" + suffix, False, f"state_dir: {exc}")
    problem = probe_broker(credentials, probe_id, timeout_s=account.ecoflow.timeout_s)
    where = f"{credentials.host}:{credentials.port} as {credentials.username}"
    return _report("mqtt" + suffix, problem is None, f"{where}: {problem or 'connected'}")


def _check_devices(
    account: AccountSettings, catalog: Catalog, client: EcoflowClient, listed: list[DeviceInfo]
) -> bool:
    """One quota/all per device the daemon would collect (the configured ones, else the listed
    ones the account's include/exclude take): refused (1006), failing, or with keys of another
    product than the configured one."""
    if account.devices:
        wanted = [(d.sn, d.name, d.product) for d in account.devices if account.wants(d.sn)]
    else:
        wanted = [(i.sn, i.deviceName, i.productName) for i in listed if account.wants(i.sn)]
    ok = True
    for sn, name, configured in wanted[:MAX_CHECKED_DEVICES]:
        slug, product = catalog.identify(configured, sn)
        label = f"device {sn}" + (f" ({name})" if name and name != sn else "")
        try:
            data = client.quota_all(sn)
        except DeviceReadDenied:
            _warn(label, refusal_message(product.name if product is not None else slug))
            continue
        except ApiError as exc:
            ok = _report(label, False, f"quota/all: {exc}") and ok
            continue
        if not data:
            _report(label, True, f"{slug}: the cloud has no data for it (yet)")
            continue
        try:
            match = key_match(catalog, product, data)
        except PayloadError as exc:
            _warn(label, f"quota/all answer not usable: {exc}")
            continue
        line = describe(match, slug, catalog)
        _warn(label, line) if match.mismatch(slug) else _report(label, True, line)
    if len(wanted) > MAX_CHECKED_DEVICES:
        print(f"     ({len(wanted) - MAX_CHECKED_DEVICES} more devices not checked)")
    return ok


def _check_influx(settings: Settings, timeout_s: float) -> bool:
    problem = InfluxWriter.probe(settings, timeout_s)
    i = settings.influxdb
    return _report("influxdb", problem is None, f"{i.url} bucket {i.bucket}: {problem or 'writable'}")
