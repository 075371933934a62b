"""Normalization: flat device values -> floats in stored units, driven by the catalog.

Values of keys the catalog does not know are kept as they are (numbers only) and reported once
per key, never dropped silently. Sentinels ("not set") are not written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import structlog

from collector.catalog import Product
from collector.decoding import Scalar

log = structlog.get_logger("collector.normalize")


class KeyReporter:
    """Logs each unknown or non-numeric key once per product, with a bound on what it remembers."""

    def __init__(self, limit: int = 20_000) -> None:
        self._seen: set[tuple[str, str, str]] = set()
        self._limit = limit
        self.unknown_keys = 0  # distinct unknown keys reported
        self.non_numeric_values = 0  # values dropped because they are text
        self.sentinels_skipped = 0

    def _first(self, what: str, slug: str, key: str) -> bool:
        entry = (what, slug, key)
        if entry in self._seen:
            return False
        if len(self._seen) >= self._limit:
            if len(self._seen) == self._limit:
                self._seen.add(("limit", "", ""))
                log.warning("catalog.report_limit_reached", limit=self._limit)
            return False
        self._seen.add(entry)
        return True

    def unknown(self, slug: str, key: str, value: float) -> None:
        if self._first("unknown", slug, key):
            self.unknown_keys += 1
            log.warning("catalog.unknown_key", product=slug, key=key, value=value)

    def non_numeric(self, slug: str, key: str, value: str) -> None:
        self.non_numeric_values += 1
        if self._first("text", slug, key):
            # expected for text fields (timestamps, serials): counted in the telemetry, at debug here
            log.debug("catalog.non_numeric_value", product=slug, key=key, value=value[:64])


_default_reporter = KeyReporter()


def normalize_values(
    product: Product | None,
    values: Mapping[str, Scalar],
    reporter: KeyReporter | None = None,
    slug: str | None = None,
) -> dict[str, float]:
    """Scale every value to its stored unit; drop sentinels; keep unknown numeric keys as-is."""
    report = reporter or _default_reporter
    name = slug or (product.slug if product else "unknown")
    out: dict[str, float] = {}
    divisors = product.divisors if product is not None else {}
    for key, raw in values.items():
        divisor = divisors.get(key)
        if divisor is not None:  # the common case, in as few operations as possible
            try:
                out[key] = raw / divisor  # type: ignore[operator]
                continue
            except TypeError:  # text where a number belongs: reported below
                pass
        if isinstance(raw, str):
            report.non_numeric(name, key, raw)
            continue
        spec = product.lookup(key) if product is not None else None
        if spec is None:
            report.unknown(name, key, raw)
            if key != "time":  # InfluxDB refuses a field named `time` (and with it the whole line)
                out[key] = float(raw)
        elif raw in spec.sentinels:
            report.sentinels_skipped += 1
        elif math.isfinite(value := raw * spec.mul / spec.div):  # x60 or x1000 may overflow
            out[key] = value
    return out


class Lookup(Protocol):
    def get(self, key: str, /) -> float | None: ...


def summarize(product: Product | None, values: Lookup) -> dict[str, float]:
    """The fleet-wide canonical fields, from normalized values (all terms of a field must be there)."""
    if product is None:
        return {}
    out: dict[str, float] = {}
    for name, terms in product.summary.items():
        total = 0.0
        for key, sign in terms:
            value = values.get(key)
            if value is None:
                break
            total += sign * value
        else:
            if math.isfinite(total):
                out[name] = total
    return out
