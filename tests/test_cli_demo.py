"""`ecoflow-collector demo`, the README's first command, as a newcomer runs it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def run_demo(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "collector", "demo", "--rate", "4", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_demo_fills_a_private_influxdb_and_reports_what_it_collected(tmp_path: Path) -> None:
    result = run_demo(tmp_path, "--duration", "8", "--state-dir", str(tmp_path / "demo-state"))
    out = result.stdout
    assert "writing to a private InfluxDB" in out
    done = re.search(r"done: (\d+) MQTT messages, (\d+) HTTP polls, (\d+) points written", out)
    assert done is not None, out
    messages, polls, points = (int(g) for g in done.groups())
    assert messages > 0 and polls >= 2 and points > messages
    # the closing query read the summary of both simulated devices back from InfluxDB
    assert re.search(r"PowerStream-\d+: SoC [\d.]+ %", out), out
    assert re.search(r"DELTA Pro-\d+: SoC [\d.]+ %", out), out
    # the energy report, through `report`'s code from InfluxDB: a row per device for today
    report = out.split("energy report (the same as `ecoflow-collector report --by day`):\n", 1)[1]
    assert re.search(r"^PowerStream-\d+ +HW51\w+ +\d{4}-\d\d-\d\d +[\d.]+", report, re.M), out
    assert re.search(r"^DELTA Pro-\d+ +DCABZ\w+ +\d{4}-\d\d-\d\d +[\d.]+", report, re.M), out
    assert_energy_matches_the_simulation(out)
    assert "Traceback" not in result.stderr


def assert_energy_matches_the_simulation(out: str) -> None:
    """Every flow with energy collected within 2 % of what the simulated devices produced."""
    check = out.split("energy check against the simulated devices (Wh):\n", 1)[1]
    rows = re.findall(r"^(.+?) +(\w+) +([\d.]+) +([\d.]+) +(\S+ %|-)$", check, re.M)
    assert {(device.split("-")[0], flow) for device, flow, *_ in rows} >= {
        ("PowerStream", "pv_input"),
        ("DELTA Pro", "output"),
    }, out
    compared = 0
    for _device, _flow, collected, simulated, _diff in rows:
        if float(simulated) >= 0.05:  # printed with 3 decimals: 0.0005 Wh of rounding
            assert abs(float(collected) - float(simulated)) <= 0.02 * float(simulated) + 0.001, out
            compared += 1
    assert compared >= 2, out  # the output of both devices at least (solar only by day)


def test_demo_without_influxdb_writes_line_protocol_to_a_file(tmp_path: Path) -> None:
    result = run_demo(
        tmp_path, "--duration", "5", "--influx-url", "http://127.0.0.1:9", "--state-dir", str(tmp_path / "s")
    )
    lines = (tmp_path / "s" / "points.lp").read_text().splitlines()
    assert "writing a line-protocol file instead" in result.stdout
    assert any(line.startswith("powerstream,") for line in lines)
    assert any(line.startswith("delta_pro,") for line in lines)
    assert any(line.startswith("ecoflow_energy,") for line in lines)
    assert "energy collected (the counters in memory; no InfluxDB to report from):" in result.stdout
    assert_energy_matches_the_simulation(result.stdout)
