"""`[collector] workers = N`: one supervisor, N worker processes (collector/supervisor.py).

Real Mosquitto, InfluxDB and the local EcoFlow cloud; the collector runs as `python -m collector
run` exactly as deployed. What is checked: every device is collected by exactly one worker (each
stores every report once); each worker keeps its own client ids; one /healthz aggregates the
workers (503 naming a worker that is down, 200 once it is back); a SIGKILLed worker is restarted
and its devices' new reports are stored; what a worker had spooled when it was killed reaches
InfluxDB exactly once; SIGTERM ends the supervisor and every worker within 10 s.
"""

from __future__ import annotations

import os
import signal
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench._harness import CollectorProcess, child_pids, collector_config, health, wait_for
from collector.cli.run import parse_shard
from collector.config import AccountSettings, EcoflowSection, MqttSection
from collector.daemon import shard_of
from collector.simulator.devices import SimDevice
from collector.simulator.server import LocalCloud
from collector.supervisor import (
    adopt_single_process_state,
    describe_exit,
    worker_client_id,
    worker_shard,
    worker_state_dir,
)
from collector.testbed import InfluxServer, MosquittoServer
from collector.testbed.ports import free_port
from tests.test_daemon import publisher_of

WORKERS = 2
DB = "ecoflow"


# --- the partition ------------------------------------------------------------------------------


@pytest.mark.parametrize("outer", [None, (0, 1), (0, 3), (1, 3), (2, 3)])
def test_workers_split_exactly_the_instances_devices(outer: tuple[int, int] | None) -> None:
    serials = [f"HW51ZEH4SF{n:06d}" for n in range(3000)]
    for workers in (1, 2, 3, 4):
        owners: Counter[str] = Counter()
        for j in range(workers):
            index, count = worker_shard(j, workers, outer)
            owners.update(sn for sn in serials if shard_of(sn, count) == index)
        instance = outer or (0, 1)
        mine = {sn for sn in serials if shard_of(sn, instance[1]) == instance[0]}
        # the workers of an instance share out exactly what the instance has without workers
        assert set(owners) == mine and set(owners.values()) == {1}


def test_every_device_of_every_instance_has_exactly_one_worker() -> None:
    serials = [f"DCABZ{n:07d}" for n in range(2000)]
    owners: Counter[str] = Counter()
    for i in range(3):
        for j in range(WORKERS):
            index, count = worker_shard(j, WORKERS, (i, 3))
            owners.update(sn for sn in serials if shard_of(sn, count) == index)
    assert set(owners) == set(serials) and set(owners.values()) == {1}
    assert parse_shard("2/3") == (1, 3)


def test_client_ids_and_state_of_a_single_process_install_are_taken_over(tmp_path: Path) -> None:
    assert worker_client_id(None, 1) is None
    assert worker_client_id("site", 0) == "site" and worker_client_id("site", 1) == "site-w1"
    (tmp_path / "mqtt_client_id").write_text("ecoflow-collector-0011223344556677\n")
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "segment").write_bytes(b"x")
    (tmp_path / "energy.json").write_text('{"version": 1, "devices": {}}')
    account = AccountSettings("default", EcoflowSection(), MqttSection())
    taken = adopt_single_process_state(tmp_path, 2, [account])
    assert sorted(taken) == ["energy.json", "mqtt_client_id", "spool"]
    first = worker_state_dir(tmp_path, 0)
    assert (first / "mqtt_client_id").read_text().strip() == "ecoflow-collector-0011223344556677"
    assert (first / "spool" / "segment").read_bytes() == b"x" and not (tmp_path / "spool").exists()
    assert (worker_state_dir(tmp_path, 1) / "energy.json").exists() and not (
        tmp_path / "energy.json"
    ).exists()
    assert adopt_single_process_state(tmp_path, 2, [account]) == []  # the second start takes nothing
    assert describe_exit(-9) == {"signal": "SIGKILL"} and describe_exit(3) == {"exit_code": 3}


# --- the processes ------------------------------------------------------------------------------


@pytest.fixture
def fault_influx() -> Iterator[InfluxServer]:
    """An InfluxDB of this test's own, so stopping it disturbs no other test."""
    with InfluxServer() as server:
        server.create_database(DB)
        yield server


def device_rows(influx: InfluxServer, device: SimDevice) -> int:
    query = f"SELECT * FROM \"{device.product_slug}\" WHERE sn = '{device.sn}'"
    return len(influx.rows(DB, query, epoch="ms"))


def start_workers(
    cloud: LocalCloud, influx: InfluxServer, tmp_path: Path, **influxdb: Any
) -> tuple[CollectorProcess, int]:
    port = free_port()
    config = collector_config(
        tmp_path / "collector.toml",
        cloud,
        influx,
        DB,
        tmp_path / "state",
        healthz_port=port,
        influxdb={"batch_size": 50, "flush_interval_s": 0.2, **influxdb},
        accounts=True,
        workers=WORKERS,
        quota_all_interval_s=3600,
        stale_after_s=3600,
        offline_after_s=7200,
    )
    process = CollectorProcess(config, tmp_path / "collector.log")
    process.start()
    return process, port


def share(cloud: LocalCloud) -> Counter[int]:
    return Counter(shard_of(d.sn, WORKERS) for d in cloud.devices)


def healthy_with(port: int, devices: int) -> Any:
    status, detail = health(port)
    return status == 200 and detail.get("devices") == devices and detail.get("mqtt_connected") and detail


def worker_pid(port: int, worker: int) -> int:
    return int(health(port)[1]["workers"][str(worker)]["pid"])


def events(process: CollectorProcess, name: str) -> list[dict[str, Any]]:
    return [e for e in process.events() if e.get("event") == name]


def publish_all(cloud: LocalCloud, devices: list[SimDevice], reports: int) -> None:
    for _ in range(reports):
        for device in devices:
            publisher_of(cloud).publish_report(device)
    assert publisher_of(cloud).wait_acked(20)


def test_workers_share_the_devices_restart_and_stop_together(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, tmp_path: Path
) -> None:
    influx_server.create_database(DB)
    with LocalCloud(
        "powerstream=2,delta_pro=2", accounts=2, mosquitto=mosquitto_server, publish_rate=None, seed=3
    ) as cloud:
        devices = cloud.devices
        shares = share(cloud)
        assert len(shares) == WORKERS and min(shares.values()) >= 2, "each worker must have devices"
        process, port = start_workers(cloud, influx_server, tmp_path)
        try:
            detail = wait_for(
                lambda: healthy_with(port, len(devices)), timeout=60, what="both workers healthy"
            )
            assert detail["workers_failing"] == [] and detail["mqtt_connected"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/livez", timeout=5) as livez:
                assert livez.status == 200  # the supervisor answers /livez itself
            for j in range(WORKERS):
                worker = detail["workers"][str(j)]
                assert worker["devices"] == shares[j] and worker["shard"] == f"{j + 1}/{WORKERS}"
                # each worker its own client id per account, kept in its own state folder
                assert set(worker["accounts"]) == {"a0", "a1"}
            ids = [a["client_id"] for w in detail["workers"].values() for a in w["accounts"].values()]
            assert len(set(ids)) == 2 * WORKERS
            for device in devices:  # the start-up seed, from the one worker that owns the device
                wait_for(lambda d=device: device_rows(influx_server, d) >= 1, what=f"the seed of {device.sn}")
            publish_all(cloud, devices, 3)
            for device in devices:  # seed + 3 reports, each exactly once: one worker per device
                wait_for(lambda d=device: device_rows(influx_server, d) >= 4, what=f"reports of {device.sn}")
            # a worker SIGKILLed: /healthz names it, the supervisor restarts it with the same ids
            killed = worker_pid(port, 1)
            os.kill(killed, signal.SIGKILL)
            _, down = wait_for(
                lambda: (h := health(port))[0] == 503 and h, timeout=30, what="/healthz 503 naming worker 1"
            )
            assert down["workers_failing"] == ["1"] and "worker 1" in down["problem"]
            wait_for(lambda: healthy_with(port, len(devices)), timeout=60, what="worker 1 back")
            exited = events(process, "supervisor.worker_exited")
            assert [(e["worker"], e["pid"], e["signal"]) for e in exited] == [(1, killed, "SIGKILL")]
            assert [e["worker"] for e in events(process, "supervisor.worker_restarted")] == [1]
            again = health(port)[1]
            assert sorted(
                a["client_id"] for w in again["workers"].values() for a in w["accounts"].values()
            ) == sorted(ids)
            assert again["workers"]["1"]["restarts"] == 1 and again["workers"]["1"]["pid"] != killed
            # its devices are back: their new reports stored (the restart seeded them once more)
            mine = [d for d in devices if shard_of(d.sn, WORKERS) == 1]
            for device in mine:
                wait_for(lambda d=device: device_rows(influx_server, d) >= 5, what=f"re-seed of {device.sn}")
            publish_all(cloud, devices, 2)
            for device in devices:
                expected = 4 + 2 + (1 if device in mine else 0)
                wait_for(
                    lambda d=device, n=expected: device_rows(influx_server, d) >= n,
                    timeout=30,
                    what=f"new reports of {device.sn}",
                )
            workers = child_pids(process.pid)
            assert len(workers) == WORKERS
            process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert process.process.wait(10) == 0  # type: ignore[union-attr]  # the 10 s promise
            assert [pid for pid in workers if Path(f"/proc/{pid}").exists()] == []
        finally:
            process.kill()
        for device in devices:  # exactly once: no device was collected by two workers
            expected = 6 + (1 if shard_of(device.sn, WORKERS) == 1 else 0)
            assert device_rows(influx_server, device) == expected, device.sn
        stopped = events(process, "collector.stopped")
        assert sorted(e["worker"] for e in stopped) == list(range(WORKERS))
        assert events(process, "supervisor.stopped")[0]["status"] == 0
        influx_server.drop_database(DB)


def test_a_killed_workers_spool_reaches_influxdb_exactly_once(
    mosquitto_server: MosquittoServer, fault_influx: InfluxServer, tmp_path: Path
) -> None:
    with LocalCloud(
        "powerstream=2,delta_pro=2", accounts=2, mosquitto=mosquitto_server, publish_rate=None, seed=3
    ) as cloud:
        devices = cloud.devices
        process, port = start_workers(cloud, fault_influx, tmp_path)
        try:
            wait_for(lambda: healthy_with(port, len(devices)), timeout=60, what="both workers healthy")
            for device in devices:
                wait_for(lambda d=device: device_rows(fault_influx, d) >= 1, what=f"the seed of {device.sn}")
            fault_influx.kill()  # InfluxDB down: the workers spool
            reports = 20
            publish_all(cloud, devices, reports)
            mine = [d for d in devices if shard_of(d.sn, WORKERS) == 1]

            def spooled() -> int:
                return int(health(port)[1]["workers"]["1"].get("spool_points") or 0)

            # every report worker 1 accepted is in its spool: a device point and a summary point each
            wait_for(
                lambda: spooled() >= 2 * reports * len(mine), timeout=30, what="worker 1's reports spooled"
            )
            before = spooled()
            killed = worker_pid(port, 1)
            os.kill(killed, signal.SIGKILL)
            wait_for(
                lambda: (w := health(port)[1]["workers"]["1"]).get("restarts") == 1 and w.get("running"),
                timeout=30,
                what="worker 1 restarted",
            )
            # the fresh worker found its spool (and spools its start-up seed behind it)
            wait_for(lambda: spooled() >= before, timeout=30, what="the restarted worker's spool")
            fault_influx.restart()
            for device in devices:
                # seed + every report, exactly once; worker 1's devices were seeded again at its restart
                expected = 1 + reports + (1 if device in mine else 0)
                wait_for(
                    lambda d=device, n=expected: device_rows(fault_influx, d) >= n,
                    timeout=60,
                    what=f"all points of {device.sn}",
                )
            wait_for(lambda: health(port)[1].get("spool_points") == 0, timeout=30, what="spools drained")
            process.process.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
            assert process.process.wait(10) == 0  # type: ignore[union-attr]
        finally:
            process.kill()
        for device in devices:
            expected = 1 + reports + (1 if device in mine else 0)
            assert device_rows(fault_influx, device) == expected, device.sn
