"""Docs generated from the catalog stay current."""

from __future__ import annotations

from pathlib import Path

from collector.catalog import default_catalog
from collector.cli.schema import summary_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_schema_doc_summary_table_matches_the_catalog() -> None:
    text = (ROOT / "docs" / "schema.md").read_text(encoding="utf-8")
    block = text.split("<!-- summary:begin -->\n", 1)[1].split("\n<!-- summary:end -->", 1)[0]
    assert block == summary_markdown(default_catalog()), "regenerate with: ecoflow-collector schema --summary"
