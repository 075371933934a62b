"""Sources: how device data arrives from one EcoFlow account. The contract is :class:`Source`.

- :mod:`collector.sources.mqtt`: :class:`~collector.sources.mqtt.MqttSource`, EcoFlow's broker
  pushing `/open/{account}/{sn}/quota|status|set_reply`;
- :mod:`collector.sources.http`: :class:`~collector.sources.http.HttpSource`, `quota/all` polls
  (start-up and reconnect seeding, the staleness fallback, the slow periodic poll, discovery);
- :mod:`collector.sources.credentials`: the MQTT login (config overrides + the certification answer).

What comes out of a source goes to :class:`collector.ingest.Ingest` (decode -> state -> points ->
sink), which is the same for every source and every account.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

__all__ = ["Source"]


class Source(Protocol):
    """One way device data arrives from one EcoFlow account.

    **What it delivers**: raw device data and nothing else, to the handler it was built with, one
    device at a time: an MQTT payload with its topic kind (:class:`~collector.sources.mqtt.MqttSource`),
    or a `quota/all` answer (:class:`~collector.sources.http.HttpSource`). Never points: decoding,
    device state, energy counters and the sink belong to the ingest. A handler must not block for
    long; one that raises is logged and the source goes on.

    **On which thread**: its own. MQTT delivers on paho's network thread, HTTP on its poll
    workers; the daemon's scheduler thread only asks it for work (``seed_all``, ``check_fallback``,
    the watchdog). Counters may be read from any thread at any time.

    **What it never does**: raise out of :meth:`start` or stop the process because the cloud, the
    broker or a key fails (it logs the failure once, keeps retrying with a backoff within its
    account's retry budget, and says what is wrong in :meth:`problem`); write to a sink; touch
    another account's devices or decide which devices exist (the device list and the config do);
    log per message or per poll (one event per state change).

    **Lifecycle**: the daemon calls :meth:`start` once (it returns at once) and :meth:`stop`
    once; nothing is delivered after :meth:`stop` has returned, except by a thread it had to leave
    behind (logged). The health check and the `ecoflow_collector` measurement read
    :meth:`counters` and :meth:`problem`.
    """

    name: str  # "mqtt" or "http": the prefix of its counters and of its section in /healthz

    def start(self) -> None:
        """Begin delivering in the background; returns at once, whatever the network does."""

    def stop(self, timeout: float) -> None:
        """Deliver nothing more; give the threads in flight up to ``timeout`` seconds."""

    def counters(self) -> Mapping[str, int]:
        """Counters since start (monotonic) for the collector's own measurement."""

    def problem(self) -> str | None:
        """What keeps it from delivering now (a refused key, an unreachable broker), or None."""
