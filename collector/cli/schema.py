"""`schema`: the stored schema, straight from the catalog (table or JSON)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from collector.catalog import Catalog, FieldSpec, Product, default_catalog
from collector.catalog.model import SUMMARY_FIELDS
from collector.cli import UsageError, table


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "schema",
        help="list every catalog field: source key, measurement, field, unit, factor, kind",
    )
    parser.add_argument("--product", help="only this product (catalog slug or product name)")
    parser.add_argument("--json", action="store_true", help="JSON instead of a table")
    parser.add_argument(
        "--summary", action="store_true", help="the ecoflow_summary mapping per product (Markdown)"
    )
    parser.set_defaults(handler=run)


def field_record(product: Product, spec: FieldSpec) -> dict[str, Any]:
    field = f"{spec.key}[i]" if spec.array else spec.key
    return {
        "product": product.slug,
        "source_key": spec.key,
        "measurement": product.slug,
        "field": field,
        "unit": spec.unit.stored,
        "sent_unit": spec.unit.symbol,
        "factor": spec.unit.factor,
        "kind": spec.kind.value,
        "sentinels": sorted(spec.sentinels),
        "health": spec.health,
        "description": spec.desc,
    }


def schema_records(catalog: Catalog, only: str | None = None) -> list[dict[str, Any]]:
    products = list(catalog.products.values())
    if only is not None:
        product = catalog.get(only) or catalog.by_product_name(only)
        if product is None:
            known = ", ".join(sorted(catalog.products))
            raise UsageError(f"unknown product {only!r}; the catalog has: {known}")
        products = [product]
    return [
        field_record(product, spec)
        for product in products
        for spec in sorted(product.all_fields(), key=lambda s: s.key)
    ]


def summary_markdown(catalog: Catalog) -> str:
    """The per-product mapping of the `ecoflow_summary` fields, as a Markdown table (docs/schema.md)."""
    names = SUMMARY_FIELDS
    lines = ["| product | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for slug, product in sorted(catalog.products.items()):
        cells = []
        for name in names:
            terms = product.summary.get(name, ())
            text = " ".join(f"{'-' if sign < 0 else '+'} `{key}`" for key, sign in terms).removeprefix("+ ")
            cells.append(text or "—")
        lines.append(f"| `{slug}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table(records: list[dict[str, Any]]) -> str:
    columns = ("measurement", "field", "unit", "sent_unit", "factor", "kind", "description")
    return table(columns, [[str(r[c]) for c in columns] for r in records])


def run(args: argparse.Namespace) -> int:
    if args.summary:
        print(summary_markdown(default_catalog()))
        return 0
    records = schema_records(default_catalog(), args.product)
    print(json.dumps(records, indent=1, ensure_ascii=False) if args.json else _table(records))
    return 0
