"""A collector stopped while HTTP polls are in flight leaves no thread and no socket behind: the
poll workers are joined (within a bound) before the API client is closed, and the local cloud ends
its kept-alive connections (and their handler threads) at its stop.

pytest's ``filterwarnings = error`` turns an unclosed socket's ResourceWarning, raised when the
socket is collected, into an unraisable exception at whatever moment the collector runs (often the
session's end). Here the warnings are recorded after ``gc.collect()``, so a leak fails this test."""

from __future__ import annotations

import gc
import threading
import time
import warnings
from pathlib import Path

from collector.api.client import EcoflowClient, RequestBudget
from collector.catalog import default_catalog
from collector.daemon import Collector
from collector.simulator.server import LocalCloud
from collector.sink.influx import InfluxWriter
from collector.testbed import InfluxServer, MosquittoServer
from tests.test_daemon import make_settings, wait_for

QUOTA_ALL = "/iot-open/sign/device/quota/all"


def _threads(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix) and t.is_alive()]


def _cycle(mosquitto: MosquittoServer, influx: InfluxServer, db: str, state_dir: Path) -> None:
    """Start a collector, stop it while two polls are in flight, close the client and the cloud."""
    with LocalCloud("powerstream=2", mosquitto=mosquitto, publish_rate=None) as cloud:
        settings = make_settings(cloud, influx, db, state_dir)
        client = EcoflowClient.from_settings(settings.ecoflow, budget=RequestBudget())
        sink = InfluxWriter.from_settings(settings)
        collector = Collector(settings, default_catalog(), client, sink, client_id="stop-leaks")
        collector.start()
        wait_for(lambda: collector.mqtt.connected, what="MQTT connection")
        wait_for(lambda: collector.poller.pending() == 0, what="the start-up polls")
        before = cloud.cloud.counts[QUOTA_ALL]
        cloud.cloud.faults.delay_next(2, seconds=1.0)
        assert collector.seed_all("test") == 2
        wait_for(lambda: cloud.cloud.counts[QUOTA_ALL] >= before + 2, what="both polls in flight")
        collector.stop(timeout=8)
        # the workers ended with their calls: nothing uses the client after it is closed
        assert _threads("poll-") == []
        client.close()
        assert collector.polls["test"] == 2
    assert cloud.cloud.clients_gone == 0


def test_stop_with_polls_in_flight_leaves_no_thread_and_no_socket(
    mosquitto_server: MosquittoServer, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        _cycle(mosquitto_server, influx_server, influx_db, tmp_path)
        time.sleep(0.2)
        gc.collect()
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not unclosed, unclosed
