"""Shared fixtures: real servers from :mod:`collector.testbed` on free 127.0.0.1 ports.

- ``influx_server`` (session): InfluxDB 1.6.7 + the nginx ``/api/v2/write`` proxy, no token check.
  Give ``influx_server.url`` to influxdb-client (any token, any org).
- ``influx_db`` (function): a fresh, uniquely named database on ``influx_server``; dropped after.
- ``mosquitto_server`` (session): Mosquitto with plain + TLS listeners, password auth and the
  ``/open/{user}/#`` ACL; one user, ``MQTT_USER``/``MQTT_PASSWORD`` (also in ``.users``).

A missing server binary FAILS the tests that need it (no skip): run ``.ci/install-servers.sh``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import structlog

from collector.testbed import InfluxServer, MosquittoServer, ServerNotInstalledError, TestbedError

MQTT_USER = "open-testbed-user"
MQTT_PASSWORD = "testbed-password"

_S = TypeVar("_S", InfluxServer, MosquittoServer)


def _start(factory: Callable[[], _S]) -> _S:
    try:
        server = factory()
        server.start()
    except ServerNotInstalledError as exc:
        pytest.fail(f"{exc}", pytrace=False)
    except TestbedError as exc:
        pytest.fail(f"test server did not start: {exc}", pytrace=False)
    return server


@pytest.fixture(scope="session")
def influx_server() -> Iterator[InfluxServer]:
    server = _start(InfluxServer)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def influx_db(influx_server: InfluxServer) -> Iterator[str]:
    name = f"test_{uuid.uuid4().hex[:12]}"
    influx_server.create_database(name)
    try:
        yield name
    finally:
        if influx_server.influxd_running():
            influx_server.drop_database(name)


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[MosquittoServer]:
    server = _start(lambda: MosquittoServer(users={MQTT_USER: MQTT_PASSWORD}))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Commands under test configure structlog (level, renderer) for the whole process: undo that
    after each test, so the next one sees every event (capture_logs filters nothing by level)."""
    yield
    structlog.reset_defaults()
