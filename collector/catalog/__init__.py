"""The field catalog: what each product's quota keys mean, in which unit they arrive.

One TOML file per product lives in `collector/catalog/products/`. Adding a device type means
adding a file there (and a fixture under tests/). The catalog is loaded once, validated, and
the daemon refuses to start on an invalid one.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Container, Iterable, Iterator
from pathlib import Path

from pydantic import ValidationError

from collector.catalog.model import (
    FieldEntry,
    FieldSpec,
    Kind,
    Product,
    ProductFile,
    Setting,
)
from collector.catalog.units import DEVICE_UNITS
from collector.config import describe_errors

__all__ = [
    "Catalog",
    "CatalogError",
    "FieldSpec",
    "Kind",
    "Product",
    "Setting",
    "default_catalog",
    "load_catalog",
    "load_product_file",
    "slugify",
]

PRODUCTS_DIR = Path(__file__).with_name("products")
_CMD_KEY = re.compile(r"\d+_\d+\.")  # `20_1.pv1InputVolt`: a key of a cmdFunc/cmdId report


class CatalogError(Exception):
    """A catalog file is missing, malformed or inconsistent."""


def slugify(product_name: str) -> str:
    """`DELTA 2 Max` -> `delta_2_max`: lower case, runs of non-alphanumerics become `_`."""
    return re.sub(r"[^a-z0-9]+", "_", product_name.lower()).strip("_") or "unknown"


# Most fields have no sentinels and no value labels: they share one empty set and one empty dict
# (an empty frozenset is 216 bytes, an empty dict 64; 2,400 fields). Nothing changes them.
_NO_SENTINELS: frozenset[float] = frozenset()
_NO_VALUES: dict[str, str] = {}


def _compile_spec(key: str, entry: FieldEntry, group: str, hide: bool) -> FieldSpec:
    unit = DEVICE_UNITS[entry.unit]
    mul, div = (unit.factor, 1.0) if unit.factor >= 1 else (1.0, float(round(1 / unit.factor)))
    return FieldSpec(
        key=key,
        unit=unit,
        kind=entry.kind,
        desc=entry.desc,
        sentinels=frozenset(entry.sentinels) if entry.sentinels else _NO_SENTINELS,
        range=entry.range,
        array=entry.array,
        values=dict(entry.values) if entry.values else _NO_VALUES,
        text=entry.text,
        evidence=entry.evidence,
        health=entry.health,
        panels=entry.panel,
        row=entry.row,
        label=entry.label,
        hide=entry.hide or hide,
        group=group,
        mul=mul,
        div=div,
    )


def _pattern(key: str) -> re.Pattern[str]:
    """A key with `#` (a number: `20_134.task#.type`) as a regular expression."""
    return re.compile(re.escape(key).replace("\\#", "#").replace("#", r"\d+"))


def _declared(path: Path, data: ProductFile) -> Iterator[tuple[str, FieldEntry, str, bool]]:
    """(key, entry, group, hide) of every field the file declares, in file order; CatalogError on a
    key declared twice."""
    seen: set[str] = set()
    for group in data.groups:
        for prefix in group.prefixes:
            for suffix, entry in group.fields.items():
                key = f"{prefix}.{suffix}" if prefix else suffix
                if key in seen:
                    raise CatalogError(f"{path}: key {key!r} is declared twice")
                seen.add(key)
                yield key, entry, group.prefixes[0], group.hide


def _check_references(
    path: Path, data: ProductFile, keys: Container[str], patterns: Iterable[re.Pattern[str]]
) -> None:
    """Every summary term is a field (not a pattern), every key a setting reads a field or pattern."""
    for name, terms in data.summary.items():
        for term in terms:
            key = term[1:] if term.startswith("-") else term
            if key not in keys:
                raise CatalogError(f"{path}: summary {name} names {key!r}, which is not a catalog field")
    for setting, entry in data.settings.items():
        for key in entry.read_quotas:
            if key not in keys and not any(p.fullmatch(key) for p in patterns):
                raise CatalogError(f"{path}: setting {setting} reads {key!r}, not a catalog field")


def _check(path: Path, data: ProductFile) -> None:
    """What `_compile` refuses, without building the product's hot-path structures."""
    keys = [key for key, *_ in _declared(path, data)]
    _check_references(path, data, {k for k in keys if "#" not in k}, [_pattern(k) for k in keys if "#" in k])


def _compile(path: Path, data: ProductFile) -> Product:
    fields: dict[str, FieldSpec] = {}
    patterns: list[tuple[re.Pattern[str], FieldSpec]] = []
    for key, entry, group, hide in _declared(path, data):
        spec = _compile_spec(key, entry, group, hide)
        if "#" in key:
            patterns.append((_pattern(key), spec))
        else:
            fields[key] = spec
    _check_references(path, data, fields, [p for p, _ in patterns])
    summary: dict[str, tuple[tuple[str, float], ...]] = {
        name: tuple((term[1:], -1.0) if term.startswith("-") else (term, 1.0) for term in terms)
        for name, terms in data.summary.items()
    }
    info = data.product
    return Product(
        slug=info.slug,
        name=info.name,
        aliases=info.aliases,
        serial_prefixes=info.serial_prefixes,
        fields=fields,
        patterns=tuple(patterns),
        summary=summary,
        settings={name: Setting(name, entry) for name, entry in data.settings.items()},
        dashboard=data.dashboard,
        cmd_prefix=any(_CMD_KEY.match(key) for key in [*fields, *(spec.key for _, spec in patterns)]),
    )


def _validated(path: Path) -> ProductFile:
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    try:
        data = ProductFile.model_validate(raw)
    except ValidationError as exc:
        raise CatalogError(f"{path}: {describe_errors(exc)}") from exc
    if data.product.slug != path.stem:
        raise CatalogError(f"{path}: product.slug {data.product.slug!r} must match the file name")
    return data


def load_product_file(path: Path) -> Product:
    """The product of one catalog file, compiled; CatalogError if the file is not valid."""
    return _compile(path, _validated(path))


def _deferred_product_file(path: Path) -> Product:
    """The product of one catalog file, validated and checked now (CatalogError here, as from
    `load_product_file`) but compiled from the file on first use of its fields (`Product.deferred`)."""
    data = _validated(path)
    _check(path, data)
    info = data.product
    return Product.deferred(
        info.slug, info.name, info.aliases, info.serial_prefixes, functools.partial(load_product_file, path)
    )


class Catalog:
    """All products, looked up by slug, by device-list product name, or by serial prefix."""

    def __init__(self, products: Iterable[Product]) -> None:
        self.products: dict[str, Product] = {}
        self._by_name: dict[str, Product] = {}
        for product in products:
            if product.slug in self.products:
                raise CatalogError(f"product {product.slug!r} is defined twice")
            self.products[product.slug] = product
            for alias in (product.name, *product.aliases):
                other = self._by_name.setdefault(slugify(alias), product)
                if other is not product:
                    raise CatalogError(
                        f"product name {alias!r} is claimed by {other.slug} and {product.slug}"
                    )

    def get(self, slug: str) -> Product | None:
        return self.products.get(slug)

    def by_product_name(self, product_name: str) -> Product | None:
        return self._by_name.get(slugify(product_name))

    def by_serial(self, sn: str) -> Product | None:
        matches = [
            (len(prefix), product)
            for product in self.products.values()
            for prefix in product.serial_prefixes
            if sn.startswith(prefix)
        ]
        return max(matches, key=lambda m: m[0])[1] if matches else None

    def identify(self, product: str | None, sn: str) -> tuple[str, Product | None]:
        """The measurement slug and catalog product of a device: by product slug or name, else by
        serial prefix (a product name variant the catalog does not list yet), else the slug of
        the product name (or `unknown`) with no catalog product."""
        known = (self.get(product) or self.by_product_name(product) if product else None) or self.by_serial(
            sn
        )
        if known is not None:
            return known.slug, known
        return (slugify(product), None) if product else ("unknown", None)


def load_catalog(directory: Path = PRODUCTS_DIR) -> Catalog:
    """Every product file of the directory, each validated now (an invalid catalog raises
    CatalogError here, before anything starts) and compiled when first used: a collector of two
    products builds the field tables of those two only."""
    files = sorted(directory.glob("*.toml"))
    if not files:
        raise CatalogError(f"{directory}: no product catalog files")
    return Catalog(_deferred_product_file(path) for path in files)


@functools.cache
def default_catalog() -> Catalog:
    return load_catalog()
