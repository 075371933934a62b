"""Sinks: where points go. The contract every sink keeps is :class:`Sink`.

- :mod:`collector.sink.influx`: :class:`~collector.sink.influx.InfluxWriter`, InfluxDB through
  influxdb-client, falling back on the spool;
- :mod:`collector.sink.spool`: :class:`~collector.sink.spool.Spool`, the durable on-disk FIFO;
- :mod:`collector.sink.linefile`: :class:`~collector.sink.linefile.LineFileSink`, line protocol
  appended to a file (the demo's stand-in).

Import them from their modules: this package stays light, so that tools which only need the
spool do not load an HTTP client.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from collector.points import Point

__all__ = ["Sink", "SinkStats"]


def _no_errors() -> Mapping[str, int]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class SinkStats:
    """A sink's counters since start. Their names are the `ecoflow_collector` field names
    (docs/schema.md; the collector dashboard and the alert rules query them): see :meth:`fields`.

    - ``points_written``, ``batches_written``: successful write requests (a replayed batch counts again);
    - ``write_errors``: failed requests by error class (``connection``, ``timeout``, ``server``,
      ``auth``, ...: :class:`collector.sink.influx.ErrorClass` values);
    - ``points_spooled``: points appended to the spool; ``points_replayed``: taken out of it again
      (written, or set aside as rejected); ``points_rejected``: in batches set aside in ``rejected/``;
    - ``points_dropped``: lost (spool overflow or failure, submit after close);
    - ``queue_points``: in memory (also those on their way to the spool); ``spool_depth`` (batches),
      ``spool_points``, ``spool_bytes``: durable in the spool;
    - ``last_success_time``: Unix time of the last successful write (None: none yet);
    - ``last_error``: the error class of the last failure (None after a success); ``stuck``.
    """

    points_written: int = 0
    batches_written: int = 0
    write_errors: Mapping[str, int] = field(default_factory=_no_errors)
    points_spooled: int = 0
    points_replayed: int = 0
    points_rejected: int = 0
    points_dropped: int = 0
    queue_points: int = 0
    spool_depth: int = 0
    spool_points: int = 0
    spool_bytes: int = 0
    last_success_time: float | None = None
    last_error: str | None = None
    stuck: bool = False

    def fields(self) -> dict[str, float]:
        """The `ecoflow_collector` fields: every counter, ``write_errors`` as the total and one
        ``write_errors_<class>`` per class seen, ``last_success_time`` once there was a success."""
        fields: dict[str, float] = {
            "points_written": float(self.points_written),
            "batches_written": float(self.batches_written),
            "write_errors": float(sum(self.write_errors.values())),
            "points_spooled": float(self.points_spooled),
            "points_replayed": float(self.points_replayed),
            "points_rejected": float(self.points_rejected),
            "points_dropped": float(self.points_dropped),
            "queue_points": float(self.queue_points),
            "spool_depth": float(self.spool_depth),
            "spool_points": float(self.spool_points),
            "spool_bytes": float(self.spool_bytes),
        }
        fields.update({f"write_errors_{kind}": float(n) for kind, n in self.write_errors.items()})
        if self.last_success_time is not None:
            fields["last_success_time"] = float(self.last_success_time)
        return fields


class Sink(Protocol):
    def submit(self, points: list[Point]) -> None:
        """Take points for writing without waiting for the network; never raises for I/O."""

    def close(self, timeout: float) -> None:
        """Stop within ``timeout``, keeping what is pending."""

    def stats(self) -> SinkStats:
        """Counters (written to the collector's own measurement, shown by the health check)."""

    def stuck(self) -> bool:
        """True when the sink has work but makes no progress (a health check fails on it)."""
