"""`decode`: one raw payload in, the line protocol the daemon would write for it out."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from collector.catalog import default_catalog
from collector.cli import UsageError
from collector.decoding import PayloadError, TopicKind
from collector.pipeline import Pipeline
from collector.points import Device, to_lines


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "decode",
        help="print the line protocol the daemon writes for one raw payload",
        description="Read one payload (MQTT quota/status message or HTTP quota/all answer) and print "
        "the InfluxDB line protocol the daemon would write for it.",
    )
    parser.add_argument(
        "--product", required=True, help="catalog slug (powerstream, delta_pro) or product name"
    )
    parser.add_argument("--sn", required=True, help="device serial number")
    parser.add_argument("--name", help="device name tag (default: the serial)")
    parser.add_argument("--topic", choices=[k.value for k in TopicKind], help="MQTT topic kind, if known")
    parser.add_argument("--time-ms", type=int, help="timestamp to write (default: now)")
    parser.add_argument("file", nargs="?", default="-", help="payload file, or - for standard input")
    parser.set_defaults(handler=run)


def _read(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {source}: {exc.strerror}") from None


def run(args: argparse.Namespace) -> int:
    device = Device.resolve(default_catalog(), args.sn, args.name, args.product)
    time_ms = args.time_ms if args.time_ms is not None else time.time_ns() // 1_000_000
    topic = TopicKind(args.topic) if args.topic else None
    try:
        _, points = Pipeline().process(device, _read(args.file), topic, time_ms)
    except PayloadError as exc:
        print(f"ecoflow-collector decode: {exc}", file=sys.stderr)
        return 2
    lines = to_lines(points)
    if lines:
        print(lines)
    return 0
