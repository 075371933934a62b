"""The command table of collector/cli/__init__.py: each command is registered by the module it names,
and a command's arguments load only its module."""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys

import pytest

from collector.cli import COMMAND_MODULES, COMMANDS, build_parser, command_of


def _registered(module: str) -> list[str]:
    parser = argparse.ArgumentParser()
    commands = parser.add_subparsers(dest="command")
    importlib.import_module(module).register(commands)
    return list(commands.choices)


def test_every_module_registers_exactly_the_commands_the_table_names() -> None:
    for module in COMMAND_MODULES:
        assert _registered(module) == [c for c, m in COMMANDS.items() if m == module]


def test_the_full_parser_has_every_command() -> None:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(subparsers.choices) == list(COMMANDS)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["run", "--config", "x.toml"], "run"),
        (["--log-level", "debug", "run"], "run"),
        (["--log-level=debug", "--log-format", "json", "check"], "check"),
        (["--", "decode"], "decode"),
        (["--help"], None),
        (["-h", "run"], None),
        ([], None),
        (["--log-level", "info"], None),
    ],
)
def test_command_of(argv: list[str], command: str | None) -> None:
    assert command_of(argv) == command


@pytest.mark.parametrize("argv", [["run", "--config", "x.toml"], ["nonsense"], ["--log-level", "debug"]])
def test_a_parser_for_arguments_parses_them_as_the_full_parser(argv: list[str]) -> None:
    def outcome(parser: argparse.ArgumentParser) -> object:
        try:
            return {k: v for k, v in vars(parser.parse_args(argv)).items() if k != "handler"}
        except SystemExit as exc:
            return exc.code

    assert outcome(build_parser(argv)) == outcome(build_parser())


def test_run_loads_neither_the_simulator_nor_the_testbed_nor_the_other_commands() -> None:
    code = (
        "import sys\n"
        "from collector.cli import build_parser\n"
        "build_parser(['run', '--config', 'x.toml'])\n"
        "print(' '.join(m for m in sys.modules if m.startswith('collector.')))"
    )
    loaded = set(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    assert "collector.cli.run" in loaded
    unexpected = {
        "collector.cli.api",
        "collector.cli.decode",
        "collector.cli.demo",
        "collector.cli.history",
        "collector.cli.schema",
        "collector.cli.simulate",
        "collector.simulator",
        "collector.testbed",
        "collector.history.report",
        "collector.history.export",
    }
    assert loaded & unexpected == set()


def test_help_lists_every_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "collector", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in COMMANDS:
        assert command in out
