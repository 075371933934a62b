"""decode -> normalize -> points: the one path every payload takes, from MQTT, HTTP or the CLI."""

from __future__ import annotations

from typing import Protocol

from collector.decoding import Decoded, TopicKind, decode_bytes
from collector.normalize import KeyReporter, Lookup, normalize_values, summarize
from collector.points import OFFLINE, ONLINE, Device, Point, device_point, status_point, summary_point


class FieldMemory(Protocol):
    """What a device remembers between incremental reports (the daemon's per-device state)."""

    def merge(self, fields: dict[str, float], time_ms: int) -> Lookup: ...


class Pipeline:
    def __init__(self, reporter: KeyReporter | None = None) -> None:
        self.reporter = reporter or KeyReporter()

    def points(
        self,
        device: Device,
        decoded: Decoded,
        time_ms: int,
        memory: FieldMemory | None = None,
    ) -> list[Point]:
        """The points one decoded payload produces for a device (empty when nothing is storable)."""
        if decoded.kind is TopicKind.STATUS:
            return [status_point(device, ONLINE if decoded.online == 1 else OFFLINE, time_ms)]
        if decoded.kind is not TopicKind.QUOTA:
            return []
        fields = normalize_values(device.product, decoded.values, self.reporter, device.slug)
        if not fields:
            return []
        points = [device_point(device, fields, time_ms)]
        known: Lookup = memory.merge(fields, time_ms) if memory is not None else fields
        summary = summarize(device.product, known)
        if summary:
            points.append(summary_point(device, summary, time_ms))
        return points

    def process(
        self,
        device: Device,
        payload: bytes | str,
        topic_kind: TopicKind | None,
        time_ms: int,
        memory: FieldMemory | None = None,
    ) -> tuple[Decoded, list[Point]]:
        """Decode a raw payload and build its points; PayloadError on bad input."""
        product = device.product
        decoded = decode_bytes(payload, topic_kind, product.cmd_prefix if product is not None else True)
        return decoded, self.points(device, decoded, time_ms, memory)
