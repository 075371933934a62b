"""Shared fixtures: real servers from :mod:`collector.testbed` on free 127.0.0.1 ports.

- ``influx_server`` (session): InfluxDB 1.6.7 + the nginx ``/api/v2/write`` proxy, no token check.
  Give ``influx_server.url`` to influxdb-client (any token, any org).
- ``influx_db`` (function): a fresh, uniquely named database on ``influx_server``; dropped after.
- ``mosquitto_server`` (session): Mosquitto with plain + TLS listeners, password auth and the
  ``/open/{user}/#`` ACL; one user, ``MQTT_USER``/``MQTT_PASSWORD`` (also in ``.users``).

A missing server binary FAILS the tests that need it (no skip): run ``.ci/install-servers.sh``.

Logging: every structlog event becomes a stdlib log record of its logger (``collector.*``), which
pytest captures and shows with a failing test's report; nothing is printed to the terminal.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
import structlog

from collector.logs import StderrHandler
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


@pytest.fixture()
def no_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ECOFLOW_COLLECTOR_* variable of the developer's environment reaches the test's config."""
    for key in list(os.environ):
        if key.upper().startswith("ECOFLOW_COLLECTOR_"):
            monkeypatch.delenv(key)


@pytest.fixture(scope="session")
def mosquitto_server() -> Iterator[MosquittoServer]:
    server = _start(lambda: MosquittoServer(users={MQTT_USER: MQTT_PASSWORD}))
    try:
        yield server
    finally:
        server.stop()


def _log_to_records() -> None:
    """structlog events as stdlib records (all levels): pytest's log capture takes them, where
    structlog's default would print them to stdout (past pytest's capture, from threads a test left)."""
    structlog.reset_defaults()
    structlog.configure(
        processors=[structlog.contextvars.merge_contextvars, structlog.dev.ConsoleRenderer(colors=False)],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    collector = logging.getLogger("collector")
    collector.setLevel(logging.DEBUG)
    if not collector.handlers:  # a handler of its own: stdlib's last resort never prints them
        collector.addHandler(logging.NullHandler())


def pytest_configure(config: pytest.Config) -> None:
    _log_to_records()


@pytest.fixture(autouse=True)
def _fresh_logging() -> Iterator[None]:
    """Commands under test call `collector.logs.configure()` (structlog level and renderer, a stderr
    handler on the root logger) for the whole process: undo that after each test, so the next one
    sees every event (capture_logs filters nothing by level) and nothing reaches the terminal."""
    root = logging.getLogger()
    level, excepthook = root.level, threading.excepthook
    yield
    for handler in root.handlers[:]:
        if isinstance(handler, StderrHandler):
            root.removeHandler(handler)
    root.setLevel(level)
    threading.excepthook = excepthook  # pytest's, which turns a thread's exception into a failure
    _log_to_records()
