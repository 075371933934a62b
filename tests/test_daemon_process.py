"""`ecoflow-collector run` as a separate process, as users run it: signals, /healthz, InfluxDB
outages, and `kill -9` in the middle of a spool replay."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from collector.simulator.server import LocalCloud
from collector.testbed import InfluxServer, MosquittoServer
from collector.testbed.ports import free_port
from tests.test_daemon import publisher_of, wait_for


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    lines: list[str] = []
    for section, body in settings.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items() if v is not None]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


class CollectorProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "collector", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


@pytest.fixture
def fault_influx() -> Iterator[InfluxServer]:
    """An InfluxDB of this test's own, so killing it disturbs no other test."""
    with InfluxServer() as server:
        server.create_database("ecoflow")
        yield server


@pytest.fixture
def broker() -> Iterator[MosquittoServer]:
    with MosquittoServer() as server:
        yield server


def config_for(
    cloud: LocalCloud, influx: InfluxServer, tmp_path: Path, batch_size: int = 20, **collector: Any
) -> tuple[Path, int]:
    port = free_port()
    settings = cloud.collector_settings()
    settings["influxdb"] = {
        "url": influx.url,
        "bucket": "ecoflow",
        "token": "t",
        "batch_size": batch_size,
        "flush_interval_s": 0.2,
        "timeout_s": 2,
    }
    settings["collector"] = {
        "state_dir": str(tmp_path / "state"),
        "healthz_port": port,
        "quota_all_interval_s": 3600,
        "stale_after_s": 3600,
        "offline_after_s": 7200,
        **collector,
    }
    settings["logging"] = {"level": "info", "format": "json"}
    return write_config(tmp_path / "collector.toml", settings), port


def device_rows(influx: InfluxServer, device: Any) -> list[dict[str, Any]]:
    try:
        return influx.rows(
            "ecoflow", f"SELECT * FROM \"{device.product_slug}\" WHERE sn = '{device.sn}'", epoch="ms"
        )
    except Exception:
        return []


@contextmanager
def seeded_then_influx_killed(
    cloud: LocalCloud, influx: InfluxServer, tmp_path: Path, batch_size: int = 20
) -> Iterator[tuple[CollectorProcess, int, Path]]:
    """A collector process that connected and seeded every device, with InfluxDB killed after."""
    config, port = config_for(cloud, influx, tmp_path, batch_size=batch_size)
    process = CollectorProcess(config, tmp_path / "collector.log")
    process.start()
    try:
        wait_for(lambda: health(port)[1].get("mqtt_connected"), timeout=30, what="MQTT connected")
        wait_for(lambda: all(device_rows(influx, d) for d in cloud.devices), what="start-up seed")
        influx.kill()
        yield process, port, config
    finally:
        process.stop()


def rows_reach(influx: InfluxServer, device: Any, count: int, *, exactly: bool = False) -> bool:
    found = len(device_rows(influx, device))
    return found == count if exactly else found >= count


def published(cloud: LocalCloud, sn: str) -> int:
    return sum(1 for r in publisher_of(cloud).records if r.sn == sn and r.kind == "quota")


def test_run_serves_healthz_and_stops_cleanly_on_sigterm(
    broker: MosquittoServer, influx_server: InfluxServer, tmp_path: Path
) -> None:
    influx_server.create_database("ecoflow")
    with LocalCloud("powerstream=1,delta_pro=1", mosquitto=broker, publish_rate=4) as cloud:
        config, port = config_for(cloud, influx_server, tmp_path)
        process = CollectorProcess(config, tmp_path / "collector.log")
        process.start()
        try:
            _, detail = wait_for(
                lambda: (h := health(port))[0] == 200 and h[1]["mqtt_connected"] and h,
                timeout=30,
                what="healthy",
            )
            assert detail["devices"] == 2 and detail["writer_stuck"] is False
            wait_for(
                lambda: all(device_rows(influx_server, d) for d in cloud.devices), what="data in InfluxDB"
            )
            # a second instance on the same state directory is refused, and says why
            second = subprocess.run(
                [sys.executable, "-m", "collector", "run", "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=30,
            )
            assert second.returncode == 2 and "another collector" in second.stderr
            started = time.monotonic()
            process.signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
            assert time.monotonic() - started < 10
        finally:
            process.stop()
    events = [
        json.loads(line)
        for line in (tmp_path / "collector.log").read_text().splitlines()
        if line.startswith("{")
    ]
    names = [e["event"] for e in events]
    assert "collector.signal" in names and names[-1] == "collector.stopped"
    text = (tmp_path / "collector.log").read_text()
    assert cloud.account.secret_key not in text and cloud.account.certificate_password not in text
    assert "Traceback" not in text


def test_influxdb_outage_loses_no_point_and_duplicates_none(
    broker: MosquittoServer, fault_influx: InfluxServer, tmp_path: Path
) -> None:
    with (
        LocalCloud("powerstream=1,delta_pro=1", mosquitto=broker, publish_rate=None) as cloud,
        seeded_then_influx_killed(cloud, fault_influx, tmp_path) as (_, port, _config),
    ):
        for _ in range(40):
            for device in cloud.devices:
                publisher_of(cloud).publish_report(device)
            time.sleep(0.02)
        assert publisher_of(cloud).wait_acked(10)
        wait_for(lambda: (health(port)[1].get("spool_points") or 0) >= 80, what="points in the spool")
        fault_influx.restart()
        for device in cloud.devices:  # seed + every published report, each exactly once
            wait_for(
                partial(rows_reach, fault_influx, device, 1 + published(cloud, device.sn), exactly=True),
                timeout=60,
                what=f"all points of {device.sn}",
            )
        wait_for(lambda: health(port)[1].get("spool_points") == 0, what="spool drained")
        time.sleep(1)
        for device in cloud.devices:
            assert len(device_rows(fault_influx, device)) == 1 + published(cloud, device.sn)


def test_kill_9_during_spool_replay_loses_nothing(
    broker: MosquittoServer, fault_influx: InfluxServer, tmp_path: Path
) -> None:
    # one point per write request: the replay takes long enough to be interrupted in the middle
    with (
        LocalCloud("powerstream=2,delta_pro=2", mosquitto=broker, publish_rate=None) as cloud,
        seeded_then_influx_killed(cloud, fault_influx, tmp_path, batch_size=1) as (process, port, config),
    ):
        for _ in range(150):
            for device in cloud.devices:
                publisher_of(cloud).publish_report(device)
        assert publisher_of(cloud).wait_acked(20)
        expected = {d.sn: 1 + published(cloud, d.sn) for d in cloud.devices}
        total = sum(expected.values())
        wait_for(
            lambda: (health(port)[1].get("spool_points") or 0) >= total - len(expected),
            timeout=30,
            what="every report spooled",
        )
        fault_influx.restart()

        def landed() -> int:
            return sum(len(device_rows(fault_influx, d)) for d in cloud.devices)

        wait_for(lambda: landed() > len(expected) + 20, timeout=30, what="the replay under way")
        process.signal(signal.SIGKILL)
        process.wait(10)
        assert landed() < total, "the replay finished before the kill: the test proves nothing"
        restarted = CollectorProcess(config, tmp_path / "collector2.log")
        restarted.start()
        try:
            for device in cloud.devices:
                wait_for(
                    partial(rows_reach, fault_influx, device, expected[device.sn]),
                    timeout=60,
                    what=f"all points of {device.sn}",
                )
            wait_for(lambda: health(port)[1].get("spool_points") == 0, what="spool drained")
        finally:
            restarted.stop()
        for device in cloud.devices:
            # the restart seeds each device once more over HTTP: exactly one extra point
            assert len(device_rows(fault_influx, device)) == expected[device.sn] + 1


def test_check_reports_each_dependency(
    broker: MosquittoServer, influx_server: InfluxServer, tmp_path: Path
) -> None:
    influx_server.create_database("ecoflow")
    with LocalCloud("powerstream=1", mosquitto=broker, publish_rate=None) as cloud:
        config, _ = config_for(cloud, influx_server, tmp_path)
        good = subprocess.run(
            [sys.executable, "-m", "collector", "check", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert good.returncode == 0, good.stdout + good.stderr
        lines = good.stdout.splitlines()
        assert [line.split()[0] for line in lines] == ["ok"] * 6
        # one quota/all per configured device: the share of its keys the configured product knows
        device = cloud.devices[0]
        assert lines[4].startswith(f"ok   device {device.sn} ({device.device_name}): ")
        assert "% of" in lines[4] and "keys known to powerstream" in lines[4]
        env = {
            **os.environ,
            "ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY": "wrong-secret",
            "ECOFLOW_COLLECTOR_INFLUXDB__BUCKET": "no_such_db",
        }
        bad = subprocess.run(
            [sys.executable, "-m", "collector", "check", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert bad.returncode == 1
        assert "FAIL ecoflow api" in bad.stdout and "signature rejected" in bad.stdout
        assert "FAIL influxdb" in bad.stdout and "no_such_db" in bad.stdout
        assert "wrong-secret" not in bad.stdout + bad.stderr
