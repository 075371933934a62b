"""What `check` and `devices` tell about a device's data: does the configured product know its keys?

A `quota/all` answer of a device configured as the wrong product is still stored (unknown keys
are written as they arrive), but unscaled and missing from the fleet summary: `check` says so,
with the share of keys the configured product's catalog knows and the product that would know
them best.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.catalog import Catalog, Product
from collector.decoding import flatten

# below this share of known keys a configured product is called a mismatch
MISMATCH_BELOW = 0.5


@dataclass(frozen=True, slots=True)
class KeyMatch:
    keys: int  # flattened quota keys in the answer
    known: int  # of them, known to the configured product's catalog
    best: str | None  # the catalog product knowing the largest share (None: the answer had no keys)
    best_known: int

    @property
    def share(self) -> float:
        return self.known / self.keys if self.keys else 1.0

    @property
    def best_share(self) -> float:
        return self.best_known / self.keys if self.keys else 0.0

    def mismatch(self, slug: str) -> bool:
        """The configured product knows too few of the keys, and another one knows more."""
        return (
            self.keys > 0 and self.share < MISMATCH_BELOW and self.best is not None and self.best != slug
        ) and self.best_known > self.known


def _known(product: Product, keys: list[str]) -> int:
    return sum(1 for key in keys if product.lookup(key) is not None)


def key_match(catalog: Catalog, product: Product | None, data: Mapping[str, Any]) -> KeyMatch:
    """How well `product` (None: no catalog product) knows the keys of one quota/all answer."""
    keys = sorted(flatten(dict(data)))
    known = _known(product, keys) if product is not None else 0
    best, best_known = None, -1
    for candidate in sorted(catalog.products.values(), key=lambda p: p.slug):
        count = _known(candidate, keys)
        if count > best_known:
            best, best_known = candidate.slug, count
    if not keys:
        return KeyMatch(0, 0, None, 0)
    return KeyMatch(len(keys), known, best, max(best_known, 0))


def describe(match: KeyMatch, slug: str, catalog: Catalog) -> str:
    """One line: `97 % of 120 keys known to delta_pro`, plus the better product on a mismatch."""
    text = f"{100 * match.share:.0f} % of {match.keys} keys known to {slug}"
    if match.mismatch(slug) and match.best is not None:
        name = catalog.products[match.best].name
        text = (
            f"the keys do not match the configured product {slug}: it knows {100 * match.share:.0f} % of "
            f"{match.keys} keys, {match.best} ({name}) would know {100 * match.best_share:.0f} %; "
            f"the data is stored, unscaled where {slug} does not know a key: fix product in [[devices]]"
        )
    return text
