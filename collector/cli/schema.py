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
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="every product, its fields, units and evidence (Markdown: docs/products.md)",
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


def _terms(terms: tuple[tuple[str, float], ...]) -> str:
    return " ".join(f"{'-' if sign < 0 else '+'} `{key}`" for key, sign in terms).removeprefix("+ ")


def summary_markdown(catalog: Catalog) -> str:
    """The per-product mapping of the `ecoflow_summary` fields, as a Markdown table (docs/schema.md)."""
    names = SUMMARY_FIELDS
    lines = ["| product | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for slug, product in sorted(catalog.products.items()):
        cells = []
        for name in names:
            cells.append(_terms(product.summary.get(name, ())) or "—")
        lines.append(f"| `{slug}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


PRODUCTS_DOC_HEADER = """# Products in the catalog

Generated from `collector/catalog/products/*.toml` by `ecoflow-collector schema --markdown`; do not edit
by hand (tests/test_catalog.py checks that it is current). Values are stored as `sent x factor` in the
stored unit; `sent` is the unit the device sends. Evidence says why a unit is what it is where the
product's document is silent or wrong (C = real capture, D = EcoFlow's document, P = public integrations;
each file's header comment names its sources). Array fields are stored as `key[0]`, `key[1]`, ...
Products the catalog leaves generic, and why: [the last section](#products-collected-generically).
"""


# Products on the account that the catalog leaves generic, and why (hand-written: the reason is evidence,
# not catalog data). Their keys are written as they arrive, unscaled, under the slug of their product name.
GENERIC_PRODUCTS: tuple[tuple[str, str, str], ...] = (
    (
        "WAVE 3",
        "`AC71`",
        "protobuf on the public API: `quota/all` answers code 1006 or code 0 without `data`, and a set "
        'command answers 1000 "analyse protobuf message failed" (real answers); no JSON key to describe',
    ),
    (
        "Smart Home Panel 2",
        "—",
        "only a real `/status` push is on hand and no official Open API document among the public copies; "
        "a public integration reads a few JSON keys of it (`backupReserveSoc`, `loadIncreInfo`, ...), but "
        "no real answer shows their units",
    ),
    (
        "WAVE 2, Glacier",
        "—",
        "official Open API documents exist (JSON keys), but no real answer of these products is on hand "
        "yet to check their units against: not catalogued so far, collected generically",
    ),
)


def _generic_markdown() -> list[str]:
    out = ["", "## Products collected generically", ""]
    out.append(
        "These products are collected like any unknown product: every numeric key is written as it "
        "arrives (unscaled) to the measurement named after the product (`WAVE 3` -> `wave_3`), and each "
        "new key is logged once (`catalog.unknown_key`). No summary, units or sentinels."
    )
    out += ["", "| product | serial prefix | why it stays generic |", "|---|---|---|"]
    out += [f"| {name} | {prefix} | {_cell(reason)} |" for name, prefix, reason in GENERIC_PRODUCTS]
    return out


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _number(value: float) -> str:
    return f"{value:g}"


def products_markdown(catalog: Catalog) -> str:
    """docs/products.md: each product, its identification, summary mapping and fields."""
    out = [PRODUCTS_DOC_HEADER]
    out.append("| product | name | device-list names | serial prefixes | fields |")
    out.append("|---|---|---|---|---|")
    for slug, product in sorted(catalog.products.items()):
        aliases = ", ".join(f"`{a}`" for a in product.aliases) or "—"
        prefixes = ", ".join(f"`{p}`" for p in product.serial_prefixes) or "—"
        count = len(product.all_fields())
        out.append(f"| [`{slug}`](#{slug}) | {product.name} | {aliases} | {prefixes} | {count} |")
    for slug, product in sorted(catalog.products.items()):
        out += ["", f"## {slug}", "", f"**{product.name}**. Summary (`ecoflow_summary`):", ""]
        for name in SUMMARY_FIELDS:
            if name in product.summary:
                out.append(f"- `{name}` = {_terms(product.summary[name])}")
        if not product.summary:
            out.append("- none")
        out += ["", "| field | unit | sent | kind | range | not written | description | evidence |"]
        out.append("|---|---|---|---|---|---|---|---|")
        for spec in sorted(product.all_fields(), key=lambda s: s.key):
            field = f"{spec.key}[i]" if spec.array else spec.key
            low_high = f"{_number(spec.range[0])} … {_number(spec.range[1])}" if spec.range else ""
            sentinels = ", ".join(_number(v) for v in sorted(spec.sentinels))
            kind = spec.kind.value + (f" ({spec.health})" if spec.health else "")
            labels = "; ".join(f"{k} = {v}" for k, v in spec.values.items())
            desc = spec.desc + (f" [{labels}]" if labels else "")
            unit, sent = spec.unit.stored, spec.unit.symbol
            cells = (f"`{field}`", unit, sent, kind, low_high, sentinels, desc, spec.evidence or "")
            out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    out += _generic_markdown()
    return "\n".join(out) + "\n"


def _table(records: list[dict[str, Any]]) -> str:
    columns = ("measurement", "field", "unit", "sent_unit", "factor", "kind", "description")
    return table(columns, [[str(r[c]) for c in columns] for r in records])


def run(args: argparse.Namespace) -> int:
    if args.summary:
        print(summary_markdown(default_catalog()))
        return 0
    if args.markdown:
        print(products_markdown(default_catalog()), end="")
        return 0
    records = schema_records(default_catalog(), args.product)
    print(json.dumps(records, indent=1, ensure_ascii=False) if args.json else _table(records))
    return 0
