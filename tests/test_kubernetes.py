"""deploy/kubernetes/: the manifests validate against Kubernetes' schemas (kubernetes-validate, strict),
agree with the collector (config, secrets, probes, shard count), and `shard = "auto"` gives a
replica that is removed and added again exactly its share of the devices back."""

from __future__ import annotations

import json
import os
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bench._harness import CollectorProcess, collector_config, health, wait_for
from collector.cli import UsageError
from collector.cli.run import SHARD_COUNT_VARIABLE, parse_shard
from collector.config import ENV_PREFIX, load_settings
from collector.daemon import shard_of
from collector.health import HealthServer
from collector.simulator.server import LocalCloud
from collector.testbed import InfluxServer, MosquittoServer
from collector.testbed.ports import free_port

FOLDER = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.31.0"


def documents() -> dict[str, dict[str, Any]]:
    """kind -> the resource, from every manifest the kustomization lists."""
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for document in yaml.safe_load_all((FOLDER / name).read_text()):
            out[document["kind"]] = document
    return out


def test_the_kustomization_lists_every_manifest_of_the_folder() -> None:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    files = {p.name for p in FOLDER.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert set(documents()) == {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Service",
        "StatefulSet",
        "PodDisruptionBudget",
    }


@pytest.mark.parametrize(
    "kind", ["Namespace", "ConfigMap", "Secret", "Service", "StatefulSet", "PodDisruptionBudget"]
)
def test_every_manifest_validates_against_the_kubernetes_schema(kind: str) -> None:
    resource = documents()[kind]
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)  # raises when invalid


def test_the_validator_refuses_a_broken_statefulset() -> None:
    """The check above can fail: a typo in a field name is an error under strict validation."""
    broken = json.loads(json.dumps(documents()["StatefulSet"]))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def _container() -> dict[str, Any]:
    container: dict[str, Any] = documents()["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]
    return container


def test_the_config_map_and_the_secret_make_a_valid_collector_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = documents()
    config = tmp_path / "collector.toml"
    config.write_text(docs["ConfigMap"]["data"]["collector.toml"])
    for key in list(os.environ):
        if key.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for name, value in docs["Secret"]["stringData"].items():
        assert name.startswith(ENV_PREFIX)
        monkeypatch.setenv(name, value)
    settings = load_settings(config)
    assert settings.ecoflow.access_key is not None
    assert settings.ecoflow.access_key.get_secret_value() == "change-me"
    assert settings.influxdb.token.get_secret_value() == "change-me"
    assert settings.collector.shard == "auto"
    assert settings.collector.healthz_host == "0.0.0.0"
    # the probes ask the port the config serves, the state dir is the volume
    container = _container()
    assert container["ports"] == [{"name": "healthz", "containerPort": settings.collector.healthz_port}]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == str(settings.collector.state_dir)
    assert container["args"] == ["run", "--config", f"{mounts['config']}/collector.toml"]


def test_the_shard_count_is_the_replica_count() -> None:
    statefulset = documents()["StatefulSet"]
    env = {e["name"]: e for e in _container()["env"]}
    assert int(env[SHARD_COUNT_VARIABLE]["value"]) == statefulset["spec"]["replicas"]
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    claim = statefulset["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "state"  # one volume per replica: its client id and spool


def test_the_probes_ask_what_the_health_server_serves() -> None:
    probes = {kind: _container()[kind]["httpGet"]["path"] for kind in ("readinessProbe", "livenessProbe")}
    assert probes == {"readinessProbe": "/healthz", "livenessProbe": "/livez"}
    server = HealthServer(0, lambda: (False, {"why": "no data"}))
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + probes["livenessProbe"], timeout=5) as answer:
            assert answer.status == 200  # alive although not delivering: no restart for it
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + probes["readinessProbe"], timeout=5)
        assert refused.value.code == 503
        refused.value.close()
    finally:
        server.stop()


def test_the_configmap_toml_parses() -> None:
    tomllib.loads(documents()["ConfigMap"]["data"]["collector.toml"])


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"POD_NAME": "ecoflow-collector-0", SHARD_COUNT_VARIABLE: "3"}, (0, 3)),
        ({"POD_NAME": "ecoflow-collector-2", SHARD_COUNT_VARIABLE: "3"}, (2, 3)),
        ({"HOSTNAME": "ecoflow-collector-11", SHARD_COUNT_VARIABLE: "12"}, (11, 12)),
        ({"POD_NAME": "a-1", "HOSTNAME": "b-0", SHARD_COUNT_VARIABLE: "2"}, (1, 2)),
    ],
)
def test_auto_shard_from_the_pod_name(environ: dict[str, str], expected: tuple[int, int]) -> None:
    assert parse_shard("auto", environ) == expected


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"POD_NAME": "collector", SHARD_COUNT_VARIABLE: "3"}, "does not end in -<ordinal>"),
        ({"POD_NAME": "ecoflow-collector-1"}, "needs ECOFLOW_COLLECTOR_SHARD_COUNT"),
        ({"POD_NAME": "ecoflow-collector-1", SHARD_COUNT_VARIABLE: "0"}, "at least 1; it is 0"),
        ({"POD_NAME": "ecoflow-collector-3", SHARD_COUNT_VARIABLE: "3"}, "ordinal 3 but"),
    ],
)
def test_auto_shard_errors_say_what_to_fix(environ: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_shard("auto", environ)


def test_a_replica_removed_and_added_again_takes_back_exactly_its_shard(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    replicas = 3
    with LocalCloud(
        "powerstream=5,delta_pro=5", mosquitto=mosquitto_server, publish_rate=None, seed=11
    ) as cloud:
        mine = sorted(d.sn for d in cloud.devices if shard_of(d.sn, replicas) == 1)
        assert 0 < len(mine) < len(cloud.devices)
        port = free_port()
        state = tmp_path / "pvc-ecoflow-collector-1"  # the replica's volume
        config = collector_config(
            tmp_path / "collector.toml",
            cloud,
            influx_server,
            influx_db,
            state,
            healthz_port=port,
            shard="auto",
            quota_all_interval_s=3600,
            stale_after_s=3600,
            offline_after_s=7200,
        )
        env = {"POD_NAME": "ecoflow-collector-1", SHARD_COUNT_VARIABLE: str(replicas)}
        client_ids = []
        for incarnation in range(2):  # the pod, then the same pod re-created on its volume
            replica = CollectorProcess(config, tmp_path / f"replica-{incarnation}.log", env=env)
            replica.start()
            try:
                detail = wait_for(
                    lambda: (h := health(port))[1].get("mqtt_connected") and h[1],
                    timeout=30,
                    what="connected",
                )
                assert detail["devices"] == len(mine)
                client_ids.append((state / "mqtt_client_id").read_text().strip())
                started = [e for e in replica.events() if e.get("event") == "collector.started"]
                assert started[-1]["shard"] == "2/3"
            finally:
                if incarnation == 0:
                    replica.kill()  # the replica is removed (no goodbye)
                else:
                    replica.terminate()
        assert client_ids[0] == client_ids[1]  # the same MQTT session id: no new EcoFlow client id burnt
        seeded = influx_server.rows(
            influx_db, 'SHOW TAG VALUES FROM "powerstream", "delta_pro" WITH KEY = "sn"'
        )
        assert sorted({row["value"] for row in seeded}) == mine  # its devices' seeds, and no other's
