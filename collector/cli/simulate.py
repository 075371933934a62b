"""`simulate`: run the local EcoFlow cloud (HTTP API + simulated devices + MQTT reports) until stopped."""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from collector.cli import UsageError
from collector.config import ENV_PREFIX, REGIONS
from collector.simulator.broker import BrokerInfo
from collector.simulator.clock import ScaledClock, wall_clock
from collector.simulator.devices import DEVICES_HELP, parse_device_specs
from collector.simulator.publisher import PublisherError
from collector.simulator.server import LocalCloud

log = structlog.get_logger("collector.simulate")


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "simulate",
        help="run a local EcoFlow cloud with simulated devices (for tests and demos)",
        description="Serve EcoFlow's signed Open API on HTTP and publish simulated device reports to an "
        "MQTT broker, until SIGINT/SIGTERM. Prints the collector settings that point at it.",
    )
    parser.add_argument("--devices", default="powerstream=1,delta_pro=1", help=f"per account: {DEVICES_HELP}")
    parser.add_argument("--accounts", type=int, default=1, help="number of developer accounts")
    parser.add_argument(
        "--region", default="europe", choices=sorted(REGIONS), help="region this cloud serves"
    )
    parser.add_argument("--host", default="127.0.0.1", help="HTTP address to listen on")
    parser.add_argument("--port", type=int, default=0, help="HTTP port (0 = any free port)")
    parser.add_argument("--mqtt-host", help="broker the devices publish to (none: HTTP only)")
    parser.add_argument("--mqtt-port", type=int, help="broker port (default 8883 with --tls, else 1883)")
    parser.add_argument("--tls", action="store_true", help="connect to the broker with TLS (mqtts)")
    parser.add_argument("--ca-file", type=Path, help="CA certificate of the broker (with --tls)")
    parser.add_argument("--access-key", help="access key of the first account (default: made up)")
    parser.add_argument("--secret-key", help="secret key of the first account (default: made up)")
    parser.add_argument("--cert-account", help="MQTT user of the first account (default: made up)")
    parser.add_argument("--cert-password", help="MQTT password of the first account (default: made up)")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="MQTT reports per second, all devices (0 = max)"
    )
    parser.add_argument("--full-every", type=int, default=20, help="every Nth report of a device is full")
    parser.add_argument("--speed", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--seed", type=int, default=0, help="seed of everything random")
    parser.add_argument("--count", type=int, help="publish this many reports, print the rate, exit")
    parser.add_argument("--duration", type=float, help="publish for this many seconds, print the rate, exit")
    parser.set_defaults(handler=run)


def _broker(args: argparse.Namespace) -> BrokerInfo | None:
    if args.mqtt_host is None:
        if args.tls or args.ca_file or args.mqtt_port:
            raise UsageError("--tls, --ca-file and --mqtt-port need --mqtt-host")
        return None
    if args.ca_file is not None and not args.ca_file.is_file():
        raise UsageError(f"--ca-file {args.ca_file}: no such file")
    port = args.mqtt_port or (8883 if args.tls else 1883)
    return BrokerInfo(args.mqtt_host, port, args.tls, args.ca_file)


def _collector_env(settings: dict[str, Any]) -> str:
    """The collector's environment variables for these settings, as one shell-ready line."""
    pairs = [
        (
            f"{ENV_PREFIX}{section.upper()}__{key.upper()}",
            str(value).lower() if isinstance(value, bool) else str(value),
        )
        for section in ("ecoflow", "mqtt")
        for key, value in settings.get(section, {}).items()
    ]
    pairs.append((f"{ENV_PREFIX}DEVICES", json.dumps(settings["devices"], separators=(",", ":"))))
    return " ".join(f"{name}={shlex.quote(value)}" for name, value in pairs)


def run(args: argparse.Namespace) -> int:
    if args.speed <= 0:
        raise UsageError("--speed must be positive")
    if args.rate < 0:
        raise UsageError("--rate cannot be negative")
    bounded = args.count is not None or args.duration is not None
    if bounded and args.mqtt_host is None:
        raise UsageError("--count and --duration need --mqtt-host")
    try:
        specs = parse_device_specs(args.devices)
    except ValueError as exc:
        raise UsageError(f"--devices: {exc}") from None
    try:
        cloud = LocalCloud(
            specs,
            accounts=args.accounts,
            region=args.region,
            clock=ScaledClock(args.speed) if args.speed != 1.0 else wall_clock,
            seed=args.seed,
            broker=_broker(args),
            access_key=args.access_key,
            secret_key=args.secret_key,
            certificate_account=args.cert_account,
            certificate_password=args.cert_password,
            host=args.host,
            port=args.port,
            publish_rate=None if bounded else args.rate,
            full_every=args.full_every,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("simulate.signal", signal=signal.Signals(signum).name)
        stop.set()
        if cloud.publisher is not None:
            cloud.publisher.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        cloud.start()
    except (PublisherError, OSError) as exc:
        log.error("simulate.start_failed", error=str(exc))
        return 1
    try:
        settings = cloud.collector_settings()
        # This is the command's output, so it is logged above the default level. The keys are the
        # simulator's own (made up, or given on the command line to be handed out): printing
        # them is the point, hence field names that the secret redaction does not blank.
        log.warning(
            "simulate.ready",
            api_url=cloud.url,
            region=cloud.region,
            broker=f"{cloud.broker.protocol}://{cloud.broker.host}:{cloud.broker.port}"
            if cloud.broker
            else None,
            collector_env=_collector_env(settings),
        )
        for account in cloud.accounts:
            log.warning(
                "simulate.account",
                api_keys=f"{account.access_key}:{account.secret_key}",
                mqtt_login=f"{account.certificate_account}:{account.certificate_password}",
                devices=" ".join(f"{d.sn}({d.product_slug})" for d in account.devices.values()),
            )
        if bounded:
            _publish_bounded(cloud, args)
        else:
            stop.wait()
    finally:
        cloud.stop()
    return 0


def _publish_bounded(cloud: LocalCloud, args: argparse.Namespace) -> None:
    """A benchmark run: publish `--count` reports or for `--duration` seconds, report the rate."""
    publisher = cloud.publisher
    assert publisher is not None  # checked with the arguments
    started = time.monotonic()
    sent = publisher.run(count=args.count, duration=args.duration, rate=args.rate)
    acknowledged = publisher.wait_acked(timeout=60.0)
    seconds = time.monotonic() - started
    log.warning(
        "simulate.published",
        reports=sent,
        seconds=round(seconds, 2),
        per_second=round(sent / seconds) if seconds > 0 else None,
        all_acknowledged=acknowledged,
    )
