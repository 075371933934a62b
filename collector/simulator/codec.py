"""Values between the simulator's SI physics and the units a device sends, through the catalog.

The catalog says, per quota key, `stored = sent * mul / div` (collector/catalog/model.py FieldSpec);
the simulator computes stored (SI) values and sends `sent = stored * div / mul`. Values a real
device sends as integers are rounded to integers, the others are floats rounded to a few decimals
of the sent unit. No unit is restated here: a unit fixed in a catalog file changes what the
simulator sends at once.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from collector.catalog import FieldSpec, Product

Value = Any  # int, float, bool, str, list or dict: JSON as the device sends it

FLOAT_DIGITS: Final = 3  # decimals of a float value, in the unit it is sent in
_INDEX: Final = re.compile(r"\[\d+\]")


@dataclass(frozen=True, slots=True)
class Raw:
    """A value sent exactly as given, whatever the key's unit (a "not set" sentinel such as 5999)."""

    value: Value


class UnknownKeyError(KeyError):
    """The simulator was about to send a key that the product's catalog file does not declare."""


class Codec:
    """Encodes SI values of one product's quota keys into sent values, and back.

    `floats`: keys the device sends as floats (all others go out as integers); an array element by
    its key without indices (`channelPower.infoList.chWatt` for `channelPower.infoList[3].chWatt`).
    """

    __slots__ = ("_factors", "floats", "product")

    def __init__(self, product: Product, floats: Iterable[str] = ()) -> None:
        self.product = product
        self.floats = frozenset(floats)
        self._factors: dict[str, tuple[float, float, bool]] = {}  # key -> (div / mul, mul / div, float)

    def spec(self, key: str) -> FieldSpec:
        spec = self.product.lookup(key)
        if spec is None:
            raise UnknownKeyError(f"{self.product.slug}: {key!r} is not a key of its catalog file")
        return spec

    def _factor(self, key: str) -> tuple[float, float, bool]:
        known = self._factors.get(key)
        if known is None:
            spec = self.spec(key)
            is_float = key in self.floats or ("[" in key and _INDEX.sub("", key) in self.floats)
            known = (spec.div / spec.mul, spec.mul / spec.div, is_float)
            self._factors[key] = known
        return known

    def encode(self, key: str, value: Value) -> Value:
        """The sent value of `key` for an SI `value` (numbers; lists and objects element by element;
        text, booleans and :class:`Raw` values as they are)."""
        if isinstance(value, Raw):
            return value.value
        if isinstance(value, bool | str) or value is None:
            return value
        if isinstance(value, int | float):
            to_sent, _, is_float = self._factor(key)
            sent = value * to_sent
            return round(sent, FLOAT_DIGITS) if is_float else round(sent)
        if isinstance(value, list):
            return [self.encode(f"{key}[{index}]", item) for index, item in enumerate(value)]
        if isinstance(value, Mapping):
            return {name: self.encode(f"{key}.{name}", item) for name, item in value.items()}
        raise TypeError(f"{key}: cannot send a {type(value).__name__}")

    def decode(self, key: str, sent: float) -> float:
        """The SI value of a sent number (what the collector stores)."""
        return float(sent) * self._factor(key)[1]

    def quantize(self, key: str, value: float) -> float:
        """`value` as the collector will see it after the device rounded it to its unit."""
        return self.decode(key, self.encode(key, value))
