"""Sinks: where points go. The contract every sink keeps is :class:`Sink`.

- :mod:`collector.sink.influx`: :class:`~collector.sink.influx.InfluxWriter`, InfluxDB through
  influxdb-client, falling back on the spool;
- :mod:`collector.sink.spool`: :class:`~collector.sink.spool.Spool`, the durable on-disk FIFO.

Import them from their modules: this package stays light, so that tools which only need the
spool do not load an HTTP client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from collector.points import Point

__all__ = ["Sink"]


class Sink(Protocol):
    def submit(self, points: list[Point]) -> None:
        """Take points for writing without waiting for the network; never raises for I/O."""

    def close(self, timeout: float) -> None:
        """Stop within ``timeout``, keeping what is pending."""

    def stats(self) -> dict[str, Any]:
        """Counters (numbers are written to the collector's own measurement)."""

    def stuck(self) -> bool:
        """True when the sink has work but makes no progress (a health check fails on it)."""
