"""`ecoflow-collector`: one sub-command per module, each with `register(subparsers)`."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from collector.catalog import CatalogError
from collector.config import ConfigError
from collector.logs import configure

COMMAND_MODULES = (
    "collector.cli.decode",
    "collector.cli.schema",
    "collector.cli.api",
    "collector.cli.simulate",
    "collector.cli.run",
    "collector.cli.demo",
    "collector.cli.history",
)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last runs to the end of the line."""
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]
    widths[-1] = 0
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [list(header), *rows])


class UsageError(Exception):
    """A command was called with values it cannot use; exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ecoflow-collector",
        description="Collect EcoFlow device telemetry (IoT Open Platform) into InfluxDB.",
    )
    # no defaults here: `run` takes the config's [logging] unless these are given
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: warning")
    parser.add_argument("--log-format", choices=["console", "json"], help="default: console")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure(args.log_level or "warning", args.log_format or "console")
    try:
        status: int = args.handler(args)
    except (CatalogError, ConfigError, UsageError) as exc:
        print(f"ecoflow-collector {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status
