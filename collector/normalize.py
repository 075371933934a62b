"""Normalization: flat device values -> floats in stored units, driven by the catalog.

Values of keys the catalog does not know are kept as they are (numbers only) and reported once
per key, never dropped silently. Sentinels ("not set") are not written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import itemgetter, truediv
from typing import Any, Protocol

import structlog

from collector.catalog import Product
from collector.decoding import (
    _CMD_PREFIX,
    _DIGITS,
    CMD_PREFIXED,
    MAX_FIELDS,
    MAX_KEY_LENGTH,
    TYPE_CODE_PREFIXED,
    PayloadError,
    Scalar,
    _flatten_object,
    _flatten_other,
    _number,
    _numbers,
)
from collector.points import plain_key

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
    out: dict[str, float] = {}
    _normalize_into(product, values.items(), out, reporter or _default_reporter, slug)
    return out


def _normalize_into(
    product: Product | None,
    items: Iterable[tuple[str, Scalar]],
    out: dict[str, float],
    report: KeyReporter,
    slug: str | None,
) -> None:
    name = slug or (product.slug if product else "unknown")
    divisors = product.divisors if product is not None else {}
    for key, raw in items:
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


# --- the fast path: flatten and normalize in one pass, per key set ------------------------------


_UNKNOWN, _NESTED = 1, 2  # what a slow position of a plan holds


@dataclass(slots=True)
class _Slow:
    """A position of a plan that the one C pass leaves out: a key the catalog does not know
    (reported), or a nested value (flattened and normalized by the generic code)."""

    index: int  # in the values with the arrays spliced in
    key: str
    what: int


_Get = Callable[[Sequence[Any]], Sequence[Any]]
_in_set = frozenset.__contains__


@dataclass(slots=True)
class _Plan:
    """How one key set of one body shape becomes fields: each position's quota/all key, in
    decode_object's order, its scale, and the positions that need more than the one C pass.
    Arrays of numbers are spliced into the values (`splice`): their elements are positions of the
    one C pass like any other value."""

    order: _Get | None  # decode_object's order of the body's values (CMD_PREFIXED with own prefixes)
    splice: tuple[tuple[int, int], ...]  # (position, length) of the arrays spliced in, last first
    fast: _Get | None  # the values of the fast positions (None: every position is one)
    keys: tuple[str, ...]  # of the fast positions
    divisors: tuple[float, ...]  # of the fast positions: stored = sent / div where mul is 1
    scale_ups: tuple[tuple[int, float, float], ...]  # (fast position, mul, div) where mul != 1
    sentinel_values: _Get | None  # the sent values of the fast positions with sentinels
    sentinel_positions: tuple[int, ...]
    sentinel_sets: tuple[frozenset[float], ...]  # the sentinels of each of those positions
    slow: tuple[_Slow, ...]
    runs: tuple[tuple[int, int, tuple[str, ...]], ...]  # fast positions before each slow one, and after
    names: frozenset[str]  # every key the plan makes
    plain: bool  # every key needs no escaping in line protocol
    depth: int  # the body's depth as decode_object counts it (MAX_DEPTH)
    texts: bool = False  # the last report of this shape sent numbers as text


_PLANS_PER_PRODUCT = 256  # key sets of one product that get a plan (full reports, heartbeats)
_PENDING_LIMIT = 4096  # key sets seen once, remembered to build a plan when they come again
_NAMES_LIMIT = 100_000


def _divide_texts(
    values: Sequence[Any], divisors: tuple[float, ...]
) -> tuple[list[float], Sequence[Any]] | None:
    """(values / divisors, the values as numbers) for values with numbers as text, in C passes;
    None: not all numbers."""
    try:
        numbers = list(map(_numbers.get, values, values))  # the memo's hits; other texts stay text
    except TypeError:  # an object or array is not a key of the memo
        numbers = list(values)
    try:
        return list(map(truediv, numbers, divisors)), numbers
    except TypeError:
        pass
    numbers = [_number(v) if v.__class__ is str else v for v in numbers]  # past the memo's bound
    try:
        return list(map(truediv, numbers, divisors)), numbers
    except TypeError:
        return None


def _spliced(plan: _Plan, values: list[Any]) -> list[Any] | None:
    """The body's values in decode_object's order, arrays replaced by their elements; None: an
    array is not there, or not as long as the plan's."""
    if plan.order is not None:
        values = list(plan.order(values))
    for index, length in plan.splice:
        array = values[index]
        if array.__class__ is not list or len(array) != length:
            return None
        values[index : index + 1] = array
    return values


class FastNormalizer:
    """decode_object's flattening and normalize_values fused, for the key sets a product repeats.

    A key set (a body's keys, in order, with the shape's prefix) seen twice gets a _Plan: the quota/all
    key of each position and its scale, resolved once. A report of that key set is then normalized
    by one C pass over its numbers (`map(truediv, values, divisors)` into `dict(zip(keys, ...))`;
    arrays of numbers spliced into the values first), the few values that are multiplied (x60,
    x1000) computed again as the generic path does, sentinels found by one C pass over the sent
    values of the positions that have any; the other positions (unknown keys, nested objects, arrays
    beside them) get exactly what normalize_values does to them, in order. Whatever the plan cannot
    do as decode_object + normalize_values would (a value of another type where a number was, text
    that is no number, an array of another length, a key that would occur twice, a nested value
    past the limits) makes `normalize` return None before any side effect: the caller takes the
    generic path.
    """

    def __init__(self, product: Product) -> None:
        self.product = product
        self._plans: dict[tuple[int, str, tuple[str, ...]], _Plan | None] = {}
        self._pending: set[tuple[int, str, tuple[str, ...]]] = set()
        self._names: dict[str, str] = {}  # one string per quota/all key, shared by every plan

    def normalize(
        self, located: tuple[dict[str, Any], int, str, int], reporter: KeyReporter, slug: str
    ) -> tuple[dict[str, float], bool] | None:
        """(fields, whether every key is plain) of a body where `quota_body` located it (body, how
        its keys map, prefix, depth), or None: take the generic path."""
        body, mode, prefix, _ = located
        plan = self._plans.get((mode, prefix, tuple(body)))
        if plan is None:
            plan = self._plan(located)
            if plan is None:
                return None
        values: list[Any] = list(body.values())
        if plan.order is not None or plan.splice:
            spliced = _spliced(plan, values)
            if spliced is None:
                return None
            values = spliced
        fast = values if plan.fast is None else plan.fast(values)
        numbers: Sequence[Any] = fast
        scaled: list[float] | None
        if plan.texts:  # the last report of this shape sent numbers as text
            scaled = None
        else:
            try:
                scaled = list(map(truediv, fast, plan.divisors))
            except TypeError:
                scaled = None
        if scaled is None:
            divided = _divide_texts(fast, plan.divisors)
            if divided is None:
                return None
            scaled, numbers = divided
        plan.texts = numbers is not fast
        overflows: list[int] | None = None
        for index, times, divisor in plan.scale_ups:  # x60, x1000: as normalize_values computes them
            value = numbers[index] * times / divisor
            scaled[index] = value
            if not math.isfinite(value):
                overflows = [index] if overflows is None else [*overflows, index]
        out: dict[str, float]
        plain = plan.plain
        if not plan.slow:
            out = dict(zip(plan.keys, scaled, strict=False))  # as long as each other (one key set)
        else:
            made = self._with_slow(plan, values, scaled, reporter, slug)
            if made is None:
                return None
            out, nested = made
            if nested:
                plain = False
        if plan.sentinel_values is not None and any(
            map(_in_set, plan.sentinel_sets, plan.sentinel_values(numbers))
        ):
            keys = plan.keys
            for index, sentinels in zip(plan.sentinel_positions, plan.sentinel_sets, strict=True):
                if numbers[index] in sentinels:
                    del out[keys[index]]
                    reporter.sentinels_skipped += 1
        if overflows is not None:
            for index in overflows:
                out.pop(plan.keys[index], None)
        return out, plain

    def _with_slow(
        self, plan: _Plan, values: Sequence[Any], scaled: list[float], reporter: KeyReporter, slug: str
    ) -> tuple[dict[str, float], bool] | None:
        """The fields of a plan with slow positions, in order, and whether a nested value was
        flattened; None when one cannot be made exactly as the generic path would."""
        made: dict[int, dict[str, Scalar]] = {}
        nested = 0
        for slow in plan.slow:  # first what may refuse the report (no side effect yet)
            value = values[slow.index]
            cls = value.__class__
            if cls is not dict and cls is not list:
                if slow.what != _UNKNOWN:  # an array or object became a scalar
                    return None
                continue
            flat: dict[str, Scalar] = {}
            try:
                if cls is dict:
                    _flatten_object(value, slow.key + ".", flat, plan.depth + 1)
                else:
                    _flatten_other(value, slow.key, flat, plan.depth)
            except PayloadError:
                return None
            if not plan.names.isdisjoint(flat) or any(len(k) > MAX_KEY_LENGTH for k in flat):
                return None
            made[slow.index] = flat
            nested += len(flat)
        if nested and (nested + len(plan.names) > MAX_FIELDS or len(set().union(*made.values())) != nested):
            return None
        out: dict[str, float] = {}
        product = self.product
        name = slug or product.slug
        runs = plan.runs
        for number, slow in enumerate(plan.slow):
            start, stop, keys = runs[number]
            if stop > start:
                out.update(zip(keys, scaled[start:stop], strict=True))
            done = made.get(slow.index)
            if done is None:  # a key the catalog does not know: kept as it is, reported
                raw = values[slow.index]
                if raw.__class__ is str:
                    raw = _number(raw)
                    if raw.__class__ is str:
                        reporter.non_numeric(name, slow.key, raw)
                        continue
                elif raw is None:
                    continue
                elif raw is True or raw is False:
                    raw = int(raw)
                reporter.unknown(name, slow.key, raw)
                if slow.key != "time":  # InfluxDB refuses a field named `time`
                    out[slow.key] = float(raw)
            else:
                _normalize_into(product, done.items(), out, reporter, name)
        start, stop, keys = runs[-1]
        if stop > start:
            out.update(zip(keys, scaled[start:stop], strict=True))
        return out, nested > 0

    def _plan(self, located: tuple[dict[str, Any], int, str, int]) -> _Plan | None:
        """A plan for a key set seen before; None (the generic path) the first time, or when the
        key set cannot have one."""
        body, mode, prefix, depth = located
        shape = (mode, prefix, tuple(body))
        if shape in self._plans:  # refused before
            return None
        if shape not in self._pending:
            if len(self._pending) >= _PENDING_LIMIT:
                self._pending.clear()
            self._pending.add(shape)
            return None
        self._pending.discard(shape)
        plan = self._build(shape, body, depth)
        if len(self._plans) < _PLANS_PER_PRODUCT:
            self._plans[shape] = plan
        return plan

    def _intern(self, key: str) -> str:
        return self._names.setdefault(key, key) if len(self._names) < _NAMES_LIMIT else key

    def _build(
        self, shape: tuple[int, str, tuple[str, ...]], body: dict[str, Any], depth: int
    ) -> _Plan | None:
        mode, prefix, names = shape
        if not names or len(names) > MAX_FIELDS:
            return None
        positions = list(range(len(names)))
        if mode == CMD_PREFIXED:
            own = {i for i, key in enumerate(names) if key[:1] in _DIGITS and _CMD_PREFIX.match(key)}
            positions = [i for i in positions if i not in own] + sorted(own)
            keys = [names[i] if i in own else prefix + names[i] for i in positions]
        elif mode == TYPE_CODE_PREFIXED:
            keys = [key if key.startswith(prefix) else prefix + key for key in names]
        else:
            keys = list(names)
        if len(set(keys)) != len(keys) or any(len(key) > MAX_KEY_LENGTH for key in keys):
            return None
        keys = [self._intern(key) for key in keys]
        body_values = list(body.values())
        values = [body_values[i] for i in positions]
        product = self.product
        made = set(keys)
        # per position of the values with the arrays spliced in: (key, div, mul, sentinels), or
        # None for a slow one
        scales: list[tuple[str, float, float, frozenset[float]] | None] = []
        splice: list[tuple[int, int]] = []
        slow: list[_Slow] = []
        for index, (key, value) in enumerate(zip(keys, values, strict=True)):
            cls = value.__class__
            if cls is list:
                array = self._array(key, value, made)
                if array is not None:
                    splice.append((index, len(array)))
                    scales += array
                    continue
            if cls is dict or cls is list:
                slow.append(_Slow(len(scales), key, _NESTED))
                scales.append(None)
                continue
            spec = product.lookup(key)
            if spec is None:
                slow.append(_Slow(len(scales), key, _UNKNOWN))
                scales.append(None)
                continue
            scales.append((key, spec.div, spec.mul, spec.sentinels))
        fast = [i for i, scale in enumerate(scales) if scale is not None]
        if not fast or len(made) > MAX_FIELDS:
            return None  # nothing to gain, or decode_object refuses the report
        known = [scale for scale in scales if scale is not None]
        runs: list[tuple[int, int, tuple[str, ...]]] = []
        run_start = 0
        for entry in [*slow, None]:  # the fast positions before each slow one, and after the last
            stop = len(fast) if entry is None else sum(1 for i in fast if i < entry.index)
            runs.append((run_start, stop, tuple(scale[0] for scale in known[run_start:stop])))
            run_start = stop
        guarded = [i for i, scale in enumerate(known) if scale[3]]
        return _Plan(
            order=None if positions == list(range(len(names))) else itemgetter(*positions),
            splice=tuple(reversed(splice)),
            fast=None if not slow else _getter(fast),
            keys=tuple(scale[0] for scale in known),
            divisors=tuple(scale[1] for scale in known),
            scale_ups=tuple((i, scale[2], scale[1]) for i, scale in enumerate(known) if scale[2] != 1.0),
            sentinel_values=_getter(guarded) if guarded else None,
            sentinel_positions=tuple(guarded),
            sentinel_sets=tuple(known[i][3] for i in guarded),
            slow=tuple(slow),
            runs=tuple(runs),
            names=frozenset(made),
            plain=all(plain_key(key) for key in made),
            depth=depth,
        )

    def _array(
        self, key: str, value: list[Any], made: set[str]
    ) -> list[tuple[str, float, float, frozenset[float]]] | None:
        """The scales of the elements of an array of numbers that all only divide; None: the
        array goes through the generic code."""
        names = [self._intern(f"{key}[{i}]") for i in range(len(value))]
        if not names or made.intersection(names) or len(max(names, key=len)) > MAX_KEY_LENGTH:
            return None
        scales = []
        for element, item in zip(names, value, strict=True):
            spec = self.product.lookup(element)
            if item.__class__ in (dict, list) or spec is None or spec.sentinels or spec.mul != 1.0:
                return None
            scales.append((element, spec.div, 1.0, spec.sentinels))
        made.update(names)
        return scales


def _getter(indices: list[int]) -> _Get:
    if len(indices) == 1:
        only = indices[0]
        return lambda values: (values[only],)
    return itemgetter(*indices)


_fast: dict[int, FastNormalizer] = {}  # id(product) -> its FastNormalizer (which keeps it alive)


def fast_normalizer(product: Product) -> FastNormalizer:
    fast = _fast.get(id(product))
    if fast is None or fast.product is not product:
        if len(_fast) >= 1024:  # catalogs loaded again and again (tests): forget the old ones
            _fast.clear()
        fast = _fast[id(product)] = FastNormalizer(product)
    return fast


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
