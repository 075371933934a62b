"""decode -> normalize -> points: the one path every payload takes, from MQTT, HTTP or the CLI.

`process` takes the fast path where it can: a quota report whose key set the product repeats is
flattened and normalized in one pass (normalize.FastNormalizer) into the same fields the generic
path (decode_object, then normalize_values) makes; anything else takes the generic path.
"""

from __future__ import annotations

from typing import Protocol

import orjson

from collector.decoding import Decoded, LazyValues, TopicKind, decode_object, parse_json, quota_body
from collector.normalize import KeyReporter, Lookup, fast_normalizer, normalize_values, summarize
from collector.points import OFFLINE, ONLINE, Device, Point, status_point, summary_point


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
        return self._quota_points(device, fields, time_ms, memory, False)

    @staticmethod
    def _quota_points(
        device: Device, fields: dict[str, float], time_ms: int, memory: FieldMemory | None, plain: bool
    ) -> list[Point]:
        if not fields:
            return []
        points = [Point(device.slug, device.tags(), fields, time_ms, device.series, plain)]
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
        if topic_kind is not None and topic_kind.__class__ is not TopicKind:
            topic_kind = TopicKind(topic_kind)
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            obj = parse_json(payload)  # raises PayloadError, as the generic path does
        if product is None:
            cmd_prefix = True
        else:
            cmd_prefix = product.cmd_prefix
            located = quota_body(obj, topic_kind, cmd_prefix)
            if located is not None:
                made = fast_normalizer(product).normalize(located, self.reporter, device.slug)
                if made is not None:
                    decoded = Decoded(TopicKind.QUOTA, LazyValues(obj, topic_kind, cmd_prefix))
                    return decoded, self._quota_points(device, made[0], time_ms, memory, made[1])
        decoded = decode_object(obj, topic_kind, cmd_prefix)
        return decoded, self.points(device, decoded, time_ms, memory)
