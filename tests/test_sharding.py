"""Horizontal scale: three collector processes, `[collector] shard = "i/3"`, one account, one
InfluxDB. Every device is collected by exactly one of them: each stores its seed and every report
of its own devices once, and nothing of the others'."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from bench._harness import CollectorProcess, collector_config, health, wait_for
from collector.daemon import shard_of
from collector.simulator.server import LocalCloud
from collector.testbed import InfluxServer, MosquittoServer
from collector.testbed.ports import free_port
from tests.test_daemon import publisher_of

SHARDS = 3
REPORTS = 4


def rows(influx: InfluxServer, db: str, product: str, sn: str) -> int:
    found = influx.rows(db, f"SELECT * FROM \"{product}\" WHERE sn = '{sn}'", epoch="ms")
    return len(found)


def test_three_instances_collect_every_device_exactly_once(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with LocalCloud(
        "powerstream=6,delta_pro=6", mosquitto=mosquitto_server, publish_rate=None, seed=7
    ) as cloud:
        devices = cloud.devices
        share = Counter(shard_of(d.sn, SHARDS) for d in devices)
        assert len(share) == SHARDS, "every instance must have devices, or the test proves little"
        instances: list[tuple[CollectorProcess, int]] = []
        try:
            for index in range(SHARDS):
                port = free_port()
                config = collector_config(
                    tmp_path / f"collector-{index}.toml",
                    cloud,
                    influx_server,
                    influx_db,
                    tmp_path / f"state-{index}",  # each instance: its own lock and MQTT client id
                    healthz_port=port,
                    influxdb={"batch_size": 50, "flush_interval_s": 0.2},
                    shard=f"{index + 1}/{SHARDS}",
                    quota_all_interval_s=3600,
                    stale_after_s=3600,
                    offline_after_s=7200,
                )
                process = CollectorProcess(config, tmp_path / f"collector-{index}.log")
                process.start()
                instances.append((process, port))
            for index, (process, port) in enumerate(instances):
                detail = wait_for(
                    lambda p=port: (h := health(p))[1].get("mqtt_connected") and h[1],
                    timeout=30,
                    what=f"instance {index + 1} connected",
                )
                assert detail["devices"] == share[index]
                wait_for(
                    lambda p=process, n=share[index]: any(
                        e.get("event") == "mqtt.subscribed" and e.get("devices") == n for e in p.events()
                    ),
                    what=f"instance {index + 1} subscribed",
                )
            # the start-up seed: one point per device, from the one instance that owns it
            for device in devices:
                wait_for(
                    lambda d=device: rows(influx_server, influx_db, d.product_slug, d.sn) >= 1,
                    what=f"the seed of {device.sn}",
                )
            time.sleep(0.5)  # subscriptions are acknowledged by now (SUBACK precedes our publishes)
            for _ in range(REPORTS):
                for device in devices:
                    publisher_of(cloud).publish_report(device)
            assert publisher_of(cloud).wait_acked(20)

            def stored() -> dict[str, int]:
                return {d.sn: rows(influx_server, influx_db, d.product_slug, d.sn) for d in devices}

            wait_for(
                lambda: all(n >= 1 + REPORTS for n in stored().values()),
                timeout=30,
                what="every report stored",
            )
            time.sleep(1.5)  # a second instance writing the same device would show up by now
            assert stored() == {d.sn: 1 + REPORTS for d in devices}
            # each instance received exactly its own devices' reports (its telemetry point,
            # written at stop, tagged with its MQTT client id)
            client_ids = []
            for process, _ in instances:
                assert process.running()
                assert process.terminate(15) == 0
                client_ids.append(_client_id(process))
                assert "Traceback" not in process.log.read_text()
            assert len(set(client_ids)) == SHARDS  # one MQTT client id per instance (its state_dir)
            telemetry = influx_server.rows(
                influx_db,
                'SELECT LAST("messages_quota"), LAST("devices") FROM "ecoflow_collector" GROUP BY "instance"',
            )
            received = {row["instance"]: (row["last"], row["last_1"]) for row in telemetry}
            assert received == {client_ids[i]: (share[i] * REPORTS, share[i]) for i in range(SHARDS)}
        finally:
            for process, _ in instances:
                process.kill()


def _client_id(process: CollectorProcess) -> str:
    started = [e for e in process.events() if e.get("event") == "collector.started"]
    return str(started[-1]["client_id"])
