"""docker-compose.yml, the Dockerfile and docker/, checked without a Docker engine (there is none here):

- the compose file parses; every ${VAR} it uses is in .env.example (and nothing there is unused);
- every image is either built from this repository (its context and Dockerfile exist) or a pinned
  public image; every mounted path exists; every named volume is declared; profiles hang together;
- the collector services' environments, filled from .env.example, are valid collector settings, and
  the demo simulator's command line is valid for `ecoflow-collector simulate` with the keys the demo
  collector and the demo broker use;
- the Dockerfile copies only what exists and .dockerignore lets through, runs as a non-root user and
  checks /healthz on the port the collector serves it on;
- the demo profile works: its broker script, the simulator command and the collector environment,
  started here as plain processes (service names mapped to 127.0.0.1), fill a real InfluxDB and the
  image's health check reports healthy.
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.cli import build_parser
from collector.config import ENV_PREFIX, ConfigError, load_settings
from collector.testbed import InfluxServer
from collector.testbed.ports import free_port
from tests.test_daemon import wait_for

try:
    import yaml
except ImportError:  # pragma: no cover - the test extra installs it
    yaml = None

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
GRAFANA_VERSION = re.compile(r"grafana/grafana:(\d+\.\d+\.\d+)")
VAR = re.compile(r"(?<!\$)\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def load_compose() -> dict[str, Any]:
    if yaml is None:
        pytest.fail("PyYAML is missing: pip install -e '.[test]'", pytrace=False)
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    return data


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, $$ -> $."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            if current is None or (op == ":-" and current == ""):
                return arg
            return current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise AssertionError(f"required variable {name}: {arg}")
            return current
        return current or ""

    return VAR.sub(one, value).replace("$$", "$")


def services() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = load_compose()["services"]
    return out


def test_every_variable_of_the_compose_file_is_in_env_example() -> None:
    lines = COMPOSE.read_text(encoding="utf-8").splitlines()
    text = "\n".join(line for line in lines if not line.lstrip().startswith("#"))
    used = {m.group(1) for m in VAR.finditer(text)}
    assert not re.search(r"(?<!\$)\$(?!\{|\$)\w", text.replace("$$", "")), "use ${VAR}, not $VAR"
    example = env_example()
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    assert set(example) <= used, f"in .env.example but unused: {sorted(set(example) - used)}"
    # the filled-in file interpolates (every required variable has a value)
    resolved = interpolate(load_compose(), example)
    assert resolved["services"]["influxdb"]["environment"]["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert ".env" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()


def test_images_are_built_here_or_pinned_and_the_versions_match_the_checks() -> None:
    for name, service in services().items():
        if "build" in service:
            context = ROOT / service["build"]["context"]
            assert context.is_dir(), f"{name}: no build context {context}"
            assert (context / service["build"].get("dockerfile", "Dockerfile")).is_file(), name
            assert service["image"] == "ecoflow-collector:local"
            continue
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: pin the image tag, not {image!r}"
    images = {s["image"] for s in services().values()}
    assert "influxdb:2.7" in images
    grafana = next(GRAFANA_VERSION.fullmatch(i) for i in images if i.startswith("grafana/"))
    assert grafana, "pin an exact Grafana version"
    check = (ROOT / "grafana" / "check" / "package.json").read_text(encoding="utf-8")
    assert f'"@grafana/schema": "{grafana.group(1)}"' in check, "grafana/check must pin the same Grafana"


def test_mounted_paths_exist_and_named_volumes_are_declared() -> None:
    compose = load_compose()
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            assert target.startswith("/"), f"{name}: {volume}"
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name}: mounted path {source} does not exist"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
    init = ROOT / "docker" / "influxdb" / "init-dbrp.sh"
    mounts = compose["services"]["influxdb"]["volumes"]
    (mount,) = [m for m in mounts if m.startswith("./docker/influxdb/init-dbrp.sh:")]
    assert re.fullmatch(r"\./docker/influxdb/init-dbrp\.sh:/docker-entrypoint-initdb\.d/[\w-]+\.sh:ro", mount)
    # the image runs only executable *.sh files there (run-parts), after `influx setup`
    assert os.access(init, os.X_OK)
    text = init.read_text(encoding="utf-8")
    assert "influx v1 dbrp create" in text and "DOCKER_INFLUXDB_INIT_BUCKET_ID" in text
    for script in (init, ROOT / "docker" / "mosquitto" / "demo.sh", ROOT / "docker" / "entrypoint.sh"):
        shell = "bash" if text.startswith("#!/bin/bash") and script == init else "sh"
        subprocess.run([shell, "-n", str(script)], check=True)


def test_profiles_and_dependencies_hang_together() -> None:
    compose = services()
    profiles = {name: set(s.get("profiles", [])) for name, s in compose.items()}
    assert profiles["influxdb"] == profiles["grafana"] == set()
    assert {n for n, p in profiles.items() if "demo" in p} == {"mosquitto", "simulator", "collector-demo"}
    assert {n for n, p in profiles.items() if "cloud" in p} == {"collector"}
    for name, service in compose.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in compose, f"{name} depends on unknown {dependency}"
            assert profiles[dependency] <= profiles[name], (
                f"{name} depends on {dependency} of another profile"
            )
    for name in ("collector", "collector-demo"):
        assert compose[name]["depends_on"]["influxdb"] == {"condition": "service_healthy"}
        assert any(v.endswith(":/var/lib/ecoflow-collector") for v in compose[name]["volumes"])


def collector_env(service: str, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The service's environment as the container sees it: the image's ENV, then compose's values
    filled from .env.example, then empty values dropped (docker/entrypoint.sh)."""
    env = {
        **dockerfile_env(),
        **interpolate(services()[service]["environment"], {**env_example(), **(overrides or {})}),
    }
    return {k: str(v) for k, v in env.items() if not (k.startswith(ENV_PREFIX) and str(v) == "")}


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    final = text.split("\nFROM ")[-1]
    block = re.search(r"^ENV (.*?)(?:\n(?=\S))", final, flags=re.M | re.S)
    assert block
    pairs = re.findall(r"(\w+)=(\S+)", block.group(1).replace("\\\n", " "))
    return dict(pairs)


@pytest.mark.parametrize("service", ["collector", "collector-demo"])
def test_the_collector_environments_are_valid_settings(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    env = collector_env(service, {"ECOFLOW_DEVICES": '[{"sn": "HW51ABCDEF123456", "name": "Balcony"}]'})
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    try:
        settings = load_settings(None)
    except ConfigError as exc:
        pytest.fail(f"{service}: {exc}")
    assert settings.influxdb.url == "http://influxdb:8086"
    assert settings.influxdb.bucket == env_example()["INFLUXDB_BUCKET"]
    assert settings.influxdb.token.get_secret_value() == env_example()["INFLUXDB_TOKEN"]
    assert settings.collector.healthz_port == 8080
    assert str(settings.collector.state_dir) == "/var/lib/ecoflow-collector"
    if service == "collector":
        assert settings.ecoflow.api_url == env_example()["ECOFLOW_API_URL"]
        assert settings.ecoflow.access_key is None  # blank in .env.example: "not configured", not ""
        assert [d.sn for d in settings.devices] == ["HW51ABCDEF123456"]
    else:
        assert settings.ecoflow.api_url == "http://simulator:8080"


def simulator_args(overrides: dict[str, str] | None = None) -> list[str]:
    command: list[str] = interpolate(
        services()["simulator"]["command"], {**env_example(), **(overrides or {})}
    )
    return command


def test_the_demo_simulator_hands_out_what_the_demo_collector_and_broker_use() -> None:
    example = env_example()
    args = build_parser().parse_args(simulator_args())
    assert args.command == "simulate"
    assert (args.host, args.port, args.mqtt_host, args.mqtt_port) == ("0.0.0.0", 8080, "mosquitto", 1883)
    assert not args.tls
    demo = services()["collector-demo"]["environment"]
    env = interpolate(demo, example)
    assert env["ECOFLOW_COLLECTOR_ECOFLOW__API_URL"] == f"http://simulator:{args.port}"
    assert env["ECOFLOW_COLLECTOR_ECOFLOW__ACCESS_KEY"] == args.access_key == example["DEMO_ACCESS_KEY"]
    assert env["ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY"] == args.secret_key == example["DEMO_SECRET_KEY"]
    broker = interpolate(services()["mosquitto"]["environment"], example)
    assert broker == {"DEMO_MQTT_USER": args.cert_account, "DEMO_MQTT_PASSWORD": args.cert_password}
    assert args.cert_account == example["DEMO_MQTT_USER"]
    assert services()["mosquitto"]["entrypoint"][-1] == "/demo/mosquitto-demo.sh"
    assert "./docker/mosquitto/demo.sh:/demo/mosquitto-demo.sh:ro" in services()["mosquitto"]["volumes"]


def dockerignore_allows(path: str) -> bool:
    """.dockerignore semantics: the last pattern matching the path or one of its parents decides."""
    allowed = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").rstrip("/")
        if any(
            fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.replace("**/", "")) for p in prefixes
        ):
            allowed = negate
    return allowed


def test_the_dockerfile_copies_what_exists_runs_as_non_root_and_checks_healthz() -> None:
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    stages = re.findall(r"^FROM (\S+)", text, flags=re.M)
    assert stages and all(s.startswith("python:3.11-slim") for s in stages)
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, flags=re.M):
        for item in source.split():
            path = ROOT / item
            assert path.exists(), f"COPY {item}: no such file"
            files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            for file in files:
                rel = file.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert dockerignore_allows(rel), f"COPY {item}: .dockerignore excludes {rel}"
    assert not dockerignore_allows("tests/test_compose.py") and not dockerignore_allows(".env")
    assert dockerignore_allows("collector/catalog/products/powerstream.toml")
    user = re.findall(r"^USER (\S+)", text, flags=re.M)
    assert user and user[-1] not in ("root", "0"), "the image must not run as root"
    assert re.search(r"^HEALTHCHECK .*\n?.*ecoflow-healthcheck\.py", text, flags=re.M)
    assert dockerfile_env()["ECOFLOW_COLLECTOR_COLLECTOR__HEALTHZ_PORT"] == "8080"
    assert re.search(r"^EXPOSE 8080$", text, flags=re.M)
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/ecoflow-entrypoint"\]$', text, flags=re.M)
    assert re.search(r'^CMD \["run"\]$', text, flags=re.M)


# ------------------------------------------------------------------------------------ the demo, run here
class Processes:
    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.started: list[tuple[str, subprocess.Popen[bytes]]] = []

    def start(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.started.append((name, proc))
        return proc

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(encoding="utf-8", errors="replace")[-3000:]

    def stop(self) -> None:
        for _name, proc in reversed(self.started):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for _name, proc in reversed(self.started):
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def port_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), 0.5).close()
    except OSError:
        return False
    return True


def test_the_demo_profile_fills_influxdb_and_reports_healthy(
    processes: Processes, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    """docker compose --profile demo, without Docker: the same scripts, command line and environment,
    with the service names mapped to local ports."""
    example = env_example()
    base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    mqtt_port, sim_port, health_port = free_port(), free_port(), free_port()
    broker_dir = Path("/tmp") / f"ecoflow-demo-mqtt-{uuid.uuid4().hex[:8]}"  # readable by the mosquitto user
    broker_env = {
        **base,
        **interpolate(services()["mosquitto"]["environment"], example),
        "DEMO_MQTT_PORT": str(mqtt_port),
        "DEMO_MQTT_BIND": "127.0.0.1",
        "DEMO_MQTT_DIR": str(broker_dir),
    }
    healthcheck = [sys.executable, str(ROOT / "docker" / "healthcheck.py")]
    health_env = {**base, "ECOFLOW_COLLECTOR_COLLECTOR__HEALTHZ_PORT": str(health_port)}
    try:
        broker = processes.start(
            "mosquitto", ["sh", str(ROOT / "docker" / "mosquitto" / "demo.sh")], broker_env
        )
        wait_for(lambda: port_open(mqtt_port) or broker.poll() is not None, timeout=15, what="demo broker")
        assert broker.poll() is None, processes.log("mosquitto")

        replaced = {
            "--host=0.0.0.0": "--host=127.0.0.1",
            "--port=8080": f"--port={sim_port}",
            "--mqtt-host=mosquitto": "--mqtt-host=127.0.0.1",
            "--mqtt-port=1883": f"--mqtt-port={mqtt_port}",
        }
        args = [replaced.get(a, a) for a in simulator_args()]
        assert len([a for a in args if a in replaced.values()]) == 4
        simulator = processes.start("simulator", [sys.executable, "-m", "collector", *args], base)
        wait_for(lambda: port_open(sim_port) or simulator.poll() is not None, timeout=20, what="simulator")
        assert simulator.poll() is None, processes.log("simulator")

        env = collector_env("collector-demo")
        assert env["ECOFLOW_COLLECTOR_ECOFLOW__API_URL"] == "http://simulator:8080"
        env.update(
            {
                "ECOFLOW_COLLECTOR_ECOFLOW__API_URL": f"http://127.0.0.1:{sim_port}",
                "ECOFLOW_COLLECTOR_INFLUXDB__URL": influx_server.url,
                "ECOFLOW_COLLECTOR_INFLUXDB__BUCKET": influx_db,
                "ECOFLOW_COLLECTOR_COLLECTOR__STATE_DIR": str(tmp_path / "state"),
                "ECOFLOW_COLLECTOR_COLLECTOR__HEALTHZ_PORT": str(health_port),
                "ECOFLOW_COLLECTOR_DEVICES": "",  # blank in .env: the entry point drops it
            }
        )
        collector = processes.start(
            "collector", ["sh", str(ROOT / "docker" / "entrypoint.sh"), "run"], {**base, **env}
        )

        def stored() -> bool:
            assert collector.poll() is None, processes.log("collector")
            return all(
                influx_server.rows(influx_db, f'SELECT count(*) FROM "{m}"')
                for m in ("powerstream", "delta_pro", "ecoflow_summary")
            )

        wait_for(stored, timeout=30, what="both simulated products in InfluxDB")

        def healthy() -> bool:
            return (
                subprocess.run(healthcheck, env=health_env, capture_output=True, timeout=10).returncode == 0
            )

        wait_for(healthy, timeout=20, what="the image's health check to pass")
        result = subprocess.run(healthcheck, env=health_env, capture_output=True, text=True, timeout=10)
        assert '"healthy": true' in result.stdout
        # JSON logs (the image sets ECOFLOW_COLLECTOR_LOGGING__FORMAT=json), and no secret in them
        log = processes.log("collector")
        assert '"collector.started"' in log, log
        assert example["DEMO_SECRET_KEY"] not in log
    finally:
        processes.stop()
        shutil.rmtree(broker_dir, ignore_errors=True)
    # a stopped health server: the check fails
    assert subprocess.run(healthcheck, env=health_env, capture_output=True, timeout=10).returncode == 1


def test_grafana_reads_the_alerting_provisioning_with_every_variable_it_names() -> None:
    """The provisioning mount covers /etc/grafana/provisioning/alerting (rules, contact point, policies,
    templates) and Grafana's environment has every ${VAR} those files and the optional contact points
    name, filled from .env.example with usable values."""
    grafana = services()["grafana"]
    mounts = [m.split(":") for m in grafana["volumes"]]
    (source,) = [s for s, target, *_ in mounts if target == "/etc/grafana/provisioning"]
    alerting = ROOT / source / "alerting"
    assert sorted(p.name for p in alerting.iterdir()) == [
        "contact-points.yaml",
        "policies.yaml",
        "rules.yaml",
        "templates.yaml",
    ]
    files = [*(ROOT / source).rglob("*.yaml"), *(ROOT / "grafana" / "alerting-extras").glob("*.yaml")]
    named = set()
    for path in files:
        text = "\n".join(
            line
            for line in path.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("#")
        )
        named |= set(re.findall(r"\$\{(\w+)\}", text))
    env = grafana["environment"]
    assert {"ALERT_WEBHOOK_URL", "ALERT_DEVICE_OFFLINE_FOR", "ALERT_TELEGRAM_BOT_TOKEN"} <= named
    assert named <= set(env), f"not passed to Grafana: {sorted(named - set(env))}"
    example = env_example()
    resolved = interpolate(env, example)
    assert re.fullmatch(r"https?://\S+", resolved["ALERT_WEBHOOK_URL"])
    assert (
        interpolate(env, {**example, "ALERT_WEBHOOK_URL": "https://hooks.example/x"})["ALERT_WEBHOOK_URL"]
        == "https://hooks.example/x"
    )
    durations = sorted(n for n in named if n.endswith("_FOR"))
    assert len(durations) == 8
    for name in durations:
        # Grafana's duration syntax; .env.example shows the same default compose falls back to
        assert re.fullmatch(r"\d+(ms|s|m|h|d)", resolved[name]), name
        assert env[name] == f"${{{name}:-{example[name]}}}", name
    for name in ("ALERT_TELEGRAM_BOT_TOKEN", "ALERT_TELEGRAM_CHAT_ID", "ALERT_EMAIL_ADDRESSES"):
        assert env[name] == f"${{{name}:-}}" and example[name] == ""
    assert resolved["GF_SMTP_ENABLED"] == "false"
