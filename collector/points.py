"""The stored schema: points and their InfluxDB line protocol (see docs/schema.md).

- `<product slug>` (e.g. `powerstream`, `delta_pro`), tags `name`, `sn`: one float field per quota key;
- `ecoflow_summary`, tags `name`, `product`, `sn`: canonical fleet fields;
- `ecoflow_status`, tags `name`, `sn`: field `online` (1.0 / 0.0);
- every device point also has the tag `account` (the `[[accounts]]` name) where more than one
  account is configured;
- timestamps in milliseconds: the time the collector received the data.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

import orjson

from collector.catalog import Catalog, Product

SUMMARY_MEASUREMENT: Final = "ecoflow_summary"
STATUS_MEASUREMENT: Final = "ecoflow_status"
COLLECTOR_MEASUREMENT: Final = "ecoflow_collector"

_MEASUREMENT_ESCAPES = str.maketrans({",": r"\,", " ": r"\ "})
_KEY_ESCAPES = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ "})
_CONTROLS = str.maketrans({"\n": " ", "\r": " ", "\t": " "})
# Line protocol knows only `\,` `\=` `\ ` as escapes: a backslash before one of those characters or
# at the end would swallow our escape or the separator after it, so such backslashes are dropped.
_CLASHING_BACKSLASHES = re.compile(r"\\+(?=[,= ]|$)")


def _escape(text: str, table: dict[int, str]) -> str:
    if "," in text or "=" in text or " " in text or "\\" in text or not text.isprintable():
        return _CLASHING_BACKSLASHES.sub("", text.translate(_CONTROLS)).translate(table)
    return text


def escape_key(text: str) -> str:
    """Escape a tag key, tag value or field key for line protocol."""
    return _escape(text, _KEY_ESCAPES)


# Keys made only of these characters need no escaping and no quoting in JSON: for them the field
# set is serialised by orjson (C) and turned into line protocol by one translate (see Point.to_line).
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\[\]@#+-]+")
_plain_keys: set[str] = set()
# `{"a":1.0,"b":2.5}` -> ` a=1.0,b=2.5 `: the braces become the spaces around the field set
_JSON_TO_LINE = bytes.maketrans(b":{}", b"=  ")


def plain_key(key: str) -> bool:
    """Whether a field key goes into line protocol as it is (and into JSON unquoted)."""
    return _PLAIN_KEY.fullmatch(key) is not None


def _all_plain(keys: Iterable[str]) -> bool:
    for key in keys:
        if key not in _plain_keys:
            if not _PLAIN_KEY.fullmatch(key):
                return False
            if len(_plain_keys) < 100_000:
                _plain_keys.add(key)
    return True


@dataclass(slots=True)
class Point:
    measurement: str
    tags: tuple[tuple[str, str], ...]  # sorted by key
    fields: dict[str, float]
    time_ms: int
    series_text: str | None = None  # measurement and tags in line protocol, when known already
    plain: bool = False  # every field key is known to be plain (plain_key): to_line need not look

    def series(self) -> str:
        return ",".join(
            [_escape(self.measurement, _MEASUREMENT_ESCAPES)]
            + [f"{escape_key(k)}={value}" for k, v in self.tags if (value := escape_key(v))]
        )

    def to_line(self, series: str | None = None) -> str:
        """One line of line protocol (decoding admits only finite numbers, so every value is)."""
        fields = self.fields
        if self.plain or _plain_keys.issuperset(fields) or _all_plain(fields):
            # {"a":1.0,"b":2.5} -> ` a=1.0,b=2.5 `: plain keys hold no `"`, `:` or braces, nor do
            # the numbers, which orjson writes in a form line protocol reads
            body = orjson.dumps(fields).translate(_JSON_TO_LINE, b'"').decode()
            return f"{series or self.series_text or self.series()}{body}{self.time_ms}"
        body = ",".join([f"{escape_key(k)}={v!r}" for k, v in fields.items()])
        return f"{series or self.series_text or self.series()} {body} {self.time_ms}"


@dataclass(frozen=True, slots=True)
class Device:
    """Who a point belongs to: its serial, display name and product."""

    sn: str
    name: str
    slug: str  # the measurement
    product: Product | None
    account: str | None = None  # the `account` tag: only where several accounts are configured
    # the series of its two per-message points, escaped once rather than for every point
    series: str = field(init=False, repr=False, compare=False)
    summary_series: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "series", Point(self.slug, self.tags(), {}, 0).series())
        summary = Point(SUMMARY_MEASUREMENT, self.summary_tags(), {}, 0).series()
        object.__setattr__(self, "summary_series", summary)

    @classmethod
    def resolve(
        cls,
        catalog: Catalog,
        sn: str,
        name: str | None = None,
        product: str | None = None,
        account: str | None = None,
    ) -> Device:
        slug, known = catalog.identify(product, sn)
        return cls(sn=sn, name=name or sn, slug=slug, product=known, account=account)

    def tags(self) -> tuple[tuple[str, str], ...]:
        if self.account:  # built per point: one call, not two
            return (("account", self.account), ("name", self.name), ("sn", self.sn))
        return (("name", self.name), ("sn", self.sn))

    def summary_tags(self) -> tuple[tuple[str, str], ...]:
        if self.account:
            return (("account", self.account), ("name", self.name), ("product", self.slug), ("sn", self.sn))
        return (("name", self.name), ("product", self.slug), ("sn", self.sn))


def device_point(device: Device, fields: dict[str, float], time_ms: int) -> Point:
    return Point(device.slug, device.tags(), fields, time_ms, device.series)


def summary_point(device: Device, summary: dict[str, float], time_ms: int) -> Point:
    return Point(SUMMARY_MEASUREMENT, device.summary_tags(), summary, time_ms, device.summary_series)


ONLINE, ASSUMED_OFFLINE, OFFLINE = 2, 1, 0  # `ecoflow_status.state` (see docs/schema.md)


def status_point(device: Device, state: int, time_ms: int) -> Point:
    """`online` 1/0 and the three-state `state`: 2 online, 1 assumed offline, 0 offline."""
    fields = {"online": 1.0 if state == ONLINE else 0.0, "state": float(state)}
    return Point(STATUS_MEASUREMENT, device.tags(), fields, time_ms)


def to_lines(points: list[Point]) -> str:
    return "\n".join(point.to_line() for point in points if point.fields)
