"""Logs an operator can leave on: a periodic `collector.summary`, one line per state change (not per
poll), and no per-run lines of APScheduler at info."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from apscheduler.schedulers.background import BackgroundScheduler
from structlog.testing import capture_logs

from collector.api.client import EcoflowClient, RequestBudget, RetryPolicy
from collector.catalog import default_catalog
from collector.config import settings_from_values
from collector.daemon import Collector
from collector.logs import configure
from collector.points import Point
from collector.simulator.server import LocalCloud
from collector.sink import SinkStats
from collector.testbed import MosquittoServer
from tests.test_daemon import account_client, publisher_of, wait_for

T0 = 1_780_000_000_000


class CountingSink:
    """Counts what it is given as written at once; spool figures are fixed, to see them passed on."""

    def __init__(self) -> None:
        self.points = 0
        self._lock = threading.Lock()

    def submit(self, points: list[Point]) -> None:
        with self._lock:
            self.points += len(points)

    def close(self, timeout: float) -> None:
        return None

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(points_written=self.points, spool_points=12, spool_bytes=3456)

    def stuck(self) -> bool:
        return False


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def make_collector(
    cloud: LocalCloud, tmp_path: Path, sink: CountingSink, clock: Clock, **client: Any
) -> tuple[Collector, EcoflowClient]:
    settings = settings_from_values(
        {**cloud.collector_settings(), "collector": {"state_dir": str(tmp_path / "state")}}
    )
    api = EcoflowClient.from_settings(settings.ecoflow, budget=RequestBudget(), **client)
    collector = Collector(
        settings, default_catalog(), api, sink, client_id=f"test-{time.time_ns()}", clock_ms=clock
    )
    return collector, api


@pytest.fixture
def cloud(mosquitto_server: MosquittoServer) -> Iterator[LocalCloud]:
    with LocalCloud("powerstream=1,delta_pro=1", mosquitto=mosquitto_server, publish_rate=None) as local:
        yield local


def test_summary_counts_since_the_last_one_and_in_total(
    cloud: LocalCloud, mosquitto_server: MosquittoServer, tmp_path: Path
) -> None:
    sink, clock = CountingSink(), Clock()
    collector, api = make_collector(cloud, tmp_path, sink, clock)
    powerstream, delta_pro = cloud.devices
    collector.start()
    try:
        wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
        wait_for(lambda: collector.polls["startup"] == 2, what="start-up seeding")
        for device in (powerstream, powerstream, powerstream, delta_pro, delta_pro):
            publisher_of(cloud).publish_report(device, full=True)
        wait_for(lambda: collector.mqtt.messages["quota"] == 5, what="5 quota reports")
        account = cloud.account
        intruder = account_client(
            mosquitto_server, account.certificate_account, account.certificate_password, "bad"
        )
        intruder.connect(mosquitto_server.host, mosquitto_server.tls_port)
        intruder.loop_start()
        try:
            topic = f"/open/{account.certificate_account}/{delta_pro.sn}/quota"
            intruder.publish(topic, b"{not json", qos=1).wait_for_publish(10)
            wait_for(lambda: sum(collector.rejects.counts.values()) == 1, what="the malformed payload")
        finally:
            intruder.disconnect()
            intruder.loop_stop()
        clock.now = T0 + 900_000
        with capture_logs() as first:
            collector.log_summary()
        written_first = sink.points
        publisher_of(cloud).publish_report(powerstream, full=True)
        wait_for(lambda: collector.mqtt.messages["quota"] == 7, what="one more quota report")
        clock.now = T0 + 1_500_000
        with capture_logs() as second:
            collector.log_summary()
        written_second = sink.points
    finally:
        collector.stop(timeout=5)
        api.close()
    assert written_first > 0 and written_second > written_first
    assert first == [
        {
            "event": "collector.summary",
            "log_level": "info",
            "period_s": 900,
            "messages": 6,
            "messages_quota": 6,
            "messages_status": 0,
            "messages_set_reply": 0,
            "points_written": written_first,
            "rejected": 1,
            "polls": 2,
            "messages_total": 6,
            "points_written_total": written_first,
            "rejected_total": 1,
            "polls_total": 2,
            "mqtt_connected": True,
            "devices_online": 2,
            "devices": 2,
            "spool_points": 12,
            "spool_bytes": 3456,
        }
    ]
    assert second == [
        {
            "event": "collector.summary",
            "log_level": "info",
            "period_s": 600,
            "messages": 1,
            "messages_quota": 1,
            "messages_status": 0,
            "messages_set_reply": 0,
            "points_written": written_second - written_first,
            "rejected": 0,
            "polls": 0,
            "messages_total": 7,
            "points_written_total": written_second,
            "rejected_total": 1,
            "polls_total": 2,
            "mqtt_connected": True,
            "devices_online": 2,
            "devices": 2,
            "spool_points": 12,
            "spool_bytes": 3456,
        }
    ]


def test_summary_is_a_scheduled_job_at_the_configured_interval(cloud: LocalCloud, tmp_path: Path) -> None:
    collector, api = make_collector(cloud, tmp_path, CountingSink(), Clock())
    collector.start()
    try:
        assert collector._scheduler is not None
        job = collector._scheduler.get_job("log_summary")
        assert job is not None and job.trigger.interval.total_seconds() == 900
    finally:
        collector.stop(timeout=5)
        api.close()


def test_failing_polls_log_one_warning_per_device_and_one_line_when_they_work_again(
    tmp_path: Path,
) -> None:
    with LocalCloud("powerstream=1", publish_rate=None) as cloud:
        collector, api = make_collector(
            cloud, tmp_path, CountingSink(), Clock(), retry=RetryPolicy(max_attempts=1)
        )
        try:
            (state,) = collector.add_devices(collector.configured_devices())
            cloud.cloud.faults.fail_next(3, status=503)
            with capture_logs() as logs:
                results = [collector.poll(state, "fallback") for _ in range(4)]
        finally:
            api.close()
    assert results == [False, False, False, True]
    polls = [(e["event"], e["log_level"]) for e in logs if e["event"].startswith("poll.")]
    assert polls == [
        ("poll.failed", "warning"),
        ("poll.failed", "debug"),
        ("poll.failed", "debug"),
        ("poll.recovered", "info"),
    ]
    assert [e["failed_polls"] for e in logs if e["event"] == "poll.recovered"] == [3]


def _run_jobs(fail: bool = False) -> None:
    """Three runs of a job (raising when `fail`) on a started APScheduler, then stop it."""
    runs = threading.Semaphore(0)

    def job() -> None:
        runs.release()
        if fail:
            raise RuntimeError("job failed on purpose")

    scheduler = BackgroundScheduler()
    scheduler.start()
    try:
        for n in range(3):
            scheduler.add_job(job, id=f"job{n}")  # no trigger: once, now
            assert runs.acquire(timeout=10)
    finally:
        scheduler.shutdown(wait=True)  # waits for the last run to finish (and log)


def _apscheduler(records: list[logging.LogRecord]) -> list[tuple[str, str]]:
    return [
        (r.levelname, r.getMessage().split(" (trigger")[0])
        for r in records
        if r.name.startswith("apscheduler")
    ]


def test_apscheduler_runs_are_silent_at_info_and_its_errors_stay(caplog: pytest.LogCaptureFixture) -> None:
    configure("info")
    _run_jobs()
    assert _apscheduler(caplog.records) == []
    caplog.clear()
    _run_jobs(fail=True)
    assert (
        _apscheduler(caplog.records)
        == [
            ("ERROR", 'Job "_run_jobs.<locals>.job'),
        ]
        * 3
    )


def test_apscheduler_runs_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    configure("debug")
    _run_jobs()
    running = [message for _, message in _apscheduler(caplog.records) if message.startswith("Running job")]
    assert len(running) == 3


def test_tests_route_structlog_events_to_log_records(caplog: pytest.LogCaptureFixture) -> None:
    """tests/conftest.py: events become records that pytest captures, never terminal output."""
    caplog.set_level(logging.DEBUG, logger="collector")
    structlog.get_logger("collector.test").info("test.event", answer=42)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("collector.test", "INFO", "test.event                     answer=42")
    ]
