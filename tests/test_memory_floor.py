"""bench/memory.py's floor: exactly what the modules `run` loads import from the fixed packages,
and nothing of the collector (docs/benchmarks.md, "Memory and idle cost")."""

from __future__ import annotations

import json
import subprocess
import sys

from bench.memory import FIXED_PACKAGES, FLOOR_IMPORTS, ROOT, run_path_imports, run_path_modules


def _modules_after(code: str) -> set[str]:
    """sys.modules of a fresh interpreter (in the repository) after running `code`."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    return set(json.loads(out.splitlines()[-1]))


def test_the_floor_lists_what_the_run_paths_modules_import_from_the_fixed_packages() -> None:
    assert run_path_imports() == FLOOR_IMPORTS
    for statement in FLOOR_IMPORTS:
        module = statement.split()[1]
        assert module.split(".")[0] in FIXED_PACKAGES, statement


def test_the_run_path_is_the_run_commands_modules_only() -> None:
    modules = run_path_modules()
    assert {"collector.cli.run", "collector.config", "collector.sink.influx", "collector.daemon"} <= modules
    assert not any(m.startswith(("collector.simulator", "collector.testbed")) for m in modules)
    assert not {"collector.cli.simulate", "collector.cli.history", "collector.history.report"} & modules


def test_the_floor_loads_nothing_of_the_collector_and_nothing_its_run_path_does_not() -> None:
    floor = _modules_after("\n".join(FLOOR_IMPORTS))
    loaded = sorted(m for m in run_path_modules() if not m.endswith(".__main__"))  # that one runs main()
    run = _modules_after("\n".join(f"import {m}" for m in loaded))
    assert not any(m == "collector" or m.startswith("collector.") for m in floor)
    assert floor - run == set()
    assert "pydantic_settings" not in run  # the collector reads its environment itself
