"""`ecoflow-collector`: sub-commands grouped in modules, each with `register(subparsers)`.

Only the module of the command given is imported (COMMANDS): `run` does not load the simulator,
the testbed or the history commands. `--help`, no command or one COMMANDS does not name (argparse
then says what is wrong) registers every module.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Final

from collector.catalog import CatalogError
from collector.config import ConfigError
from collector.logs import configure

# command -> the module whose `register` adds it (tests/test_cli_commands.py holds this to the modules)
COMMANDS: Final[dict[str, str]] = {
    "decode": "collector.cli.decode",
    "schema": "collector.cli.schema",
    "devices": "collector.cli.api",
    "quota": "collector.cli.api",
    "get": "collector.cli.api",
    "set": "collector.cli.api",
    "settings": "collector.cli.api",
    "simulate": "collector.cli.simulate",
    "run": "collector.cli.run",
    "check": "collector.cli.run",
    "demo": "collector.cli.demo",
    "rollup": "collector.cli.history",
    "report": "collector.cli.history",
    "export": "collector.cli.history",
}
COMMAND_MODULES: Final = tuple(dict.fromkeys(COMMANDS.values()))  # in the order `--help` lists them
_GLOBAL_OPTIONS_WITH_VALUE: Final = ("--log-level", "--log-format")


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to their widest cell; the last runs to the end of the line."""
    widths = [max([len(header[i])] + [len(row[i]) for row in rows]) for i in range(len(header))]
    widths[-1] = 0
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    return "\n".join(fmt.format(*row).rstrip() for row in [list(header), *rows])


class UsageError(Exception):
    """A command was called with values it cannot use; exit status 2."""


def command_of(argv: Sequence[str]) -> str | None:
    """The command `argv` names (its first word that is no global option or value), else None
    (also when `--help` comes before it: the help lists every command)."""
    words = iter(argv)
    for word in words:
        if word in _GLOBAL_OPTIONS_WITH_VALUE:
            next(words, None)
        elif word in ("-h", "--help"):
            return None
        elif word == "--" or not word.startswith("-"):
            return next(words, None) if word == "--" else word
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command, or (given the arguments) only of the module of their command."""
    parser = argparse.ArgumentParser(
        prog="ecoflow-collector",
        description="Collect EcoFlow device telemetry (IoT Open Platform) into InfluxDB.",
    )
    # no defaults here: `run` takes the config's [logging] unless these are given
    parser.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="default: warning")
    parser.add_argument("--log-format", choices=["console", "json"], help="default: console")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    command = command_of(argv) if argv is not None else None
    modules = (COMMANDS[command],) if command in COMMANDS else COMMAND_MODULES
    for name in modules:
        importlib.import_module(name).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser(argv).parse_args(argv)
    configure(args.log_level or "warning", args.log_format or "console")
    try:
        status: int = args.handler(args)
    except (CatalogError, ConfigError, UsageError) as exc:
        print(f"ecoflow-collector {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return status
