"""The catalog compiles a product's hot-path structures on first use, but refuses a bad file at
load: a collector of two products builds two products' field tables (docs/benchmarks.md)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from collector.catalog import PRODUCTS_DIR, CatalogError, Product, load_catalog, load_product_file

_FIELDS = """
[[groups]]
prefixes = [""]
[groups.fields]
soc = { unit = "%", kind = "measurement", desc = "State of charge" }
"""


def _compiled(product: Product) -> bool:
    return product._compile is None


def test_loading_compiles_no_product_and_first_use_compiles_that_one() -> None:
    catalog = load_catalog()
    assert not any(_compiled(p) for p in catalog.products.values())
    # what lookups by name and serial need is there without compiling
    product = catalog.by_serial("HW51ZZZ0001")
    assert product is not None and product.slug == "powerstream"
    assert not _compiled(product)
    eager = load_product_file(PRODUCTS_DIR / "powerstream.toml")
    assert product.fields == eager.fields
    assert [(p.pattern, s) for p, s in product.patterns] == [(p.pattern, s) for p, s in eager.patterns]
    assert (product.summary, product.settings, product.dashboard, product.cmd_prefix) == (
        eager.summary,
        eager.settings,
        eager.dashboard,
        eager.cmd_prefix,
    )
    assert product == eager
    assert [slug for slug, p in catalog.products.items() if _compiled(p)] == ["powerstream"]
    assert product.lookup("20_1.pv1InputVolt") is product.fields["20_1.pv1InputVolt"]


def test_threads_using_a_product_first_share_one_compilation() -> None:
    product = load_catalog().products["delta_pro"]
    barrier = threading.Barrier(8)
    seen: list[object] = []

    def first_use() -> None:
        barrier.wait()
        seen.append(product.fields)

    threads = [threading.Thread(target=first_use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == 8 and all(fields is seen[0] for fields in seen)


def test_an_attribute_no_product_has_is_still_an_attribute_error() -> None:
    product = load_catalog().products["smart_plug"]
    with pytest.raises(AttributeError, match="no attribute 'fieldz'"):
        product.fieldz  # type: ignore[attr-defined]  # noqa: B018
    assert not _compiled(product)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_FIELDS + _FIELDS, "key 'soc' is declared twice"),
        ('[summary]\nsoc_percent = ["-nope"]\n' + _FIELDS, "summary soc_percent names 'nope'"),
        (
            '[settings.limit]\ndesc = "Limit"\nmin = 0\nmax = 100\ncmd_code = "X"\nparam = "v"\n'
            'read_quotas = ["nope"]\n' + _FIELDS,
            "setting limit reads 'nope', not a catalog field",
        ),
        ('[[groups]]\nprefixes = [""]\n[groups.fields]\nsoc = { kind = "measurement" }\n', "desc"),
    ],
)
def test_a_bad_file_still_stops_loading_the_catalog(tmp_path: Path, text: str, message: str) -> None:
    shutil.copy(PRODUCTS_DIR / "smart_plug.toml", tmp_path / "smart_plug.toml")
    path = tmp_path / "test_box.toml"
    path.write_text('[product]\nslug = "test_box"\nname = "Test Box"\n' + text, encoding="utf-8")
    with pytest.raises(CatalogError, match=message) as raised:
        load_catalog(tmp_path)
    assert str(path) in str(raised.value)
    with pytest.raises(CatalogError, match=message):  # the same error as compiling it
        load_product_file(path)
