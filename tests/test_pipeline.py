"""The pipeline's output, byte for byte: every fixture and capture, and hostile variants of them.

Two references hold the fast decode path (collector/decoding.py, collector/normalize.py,
collector/points.py) to what the collector wrote before it existed:

- GOLDEN: sha256 digests of the line protocol every product's fixtures made (fed in order through
  one device with its memory, each payload also with the topic kind QUOTA and with none), taken
  from the code before the fast path;
- `reference_lines`: a slow, plain implementation of the same semantics kept here (decode, flatten,
  normalize through `Product.lookup`, summary, line protocol), compared on the fixtures, the real
  captures (../shared/captures, when present) and seeded random variants of them: values moved,
  numbers as text, non-finite and oversized numbers, nulls, booleans, nested objects, hostile keys.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from collector.catalog import Catalog, Product, default_catalog
from collector.decoding import TYPE_CODE_PREFIXES, PayloadError, TopicKind
from collector.normalize import KeyReporter
from collector.pipeline import Pipeline
from collector.points import SUMMARY_MEASUREMENT, Device
from collector.state import FieldMemory, KeyTable, Registry

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CAPTURES = ROOT.parent / "shared" / "captures"
CATALOG = default_catalog()
TIME_MS = 1_700_000_000_000
KINDS: tuple[TopicKind | None, ...] = (None, TopicKind.QUOTA)

# capture file name prefix -> catalog product ("wave3": not in the catalog, collected generically)
CAPTURE_PRODUCTS = {
    "deltapro3_": "delta_pro_3",
    "deltapro_": "delta_pro",
    "delta2max_": "delta_2_max",
    "delta2_": "delta_2",
    "powerstream_": "powerstream",
    "smartplug_": "smart_plug",
    "smartmeter_": "smart_meter",
    "streamacpro_": "stream",
    "streamultra_": "stream",
    "smarthomepanel_": "smart_home_panel",
    "shp2_": "smart_home_panel",
    "wave3_": "wave3",
    "status_": "powerstream",
}

# sha256 of `run_fixtures(slug)` before the fast path (commit 1242140's decode, normalize, to_line)
GOLDEN = {
    "delta_2": "c97ed9eec6f46bb444c9c58204f8e03c56a0fbf6d6da02a913bdee1815817423",
    "delta_2_max": "f2ad3cbf33b6e9b68565d9a71255da0bf9485e35c5d501c78e05ad1fd9ee5f9a",
    "delta_max": "7a0673804fde0aa5505fa1c53d0979bcf96a41fc4f39260d7c6609acb34b3f7d",
    "delta_pro": "f946727bbf00e243245468d07411592104e8f1cba0f7562db33f9d351f713cd6",
    "delta_pro_3": "686c20a76cc271570705ebdb89805ee7da51dbae73548bb7a90af81ae6e391b6",
    "delta_pro_ultra": "2cad872d5e09d3228ec078d0c0cc4f33de67c835c915dd5f7991f22d8986d158",
    "powerstream": "6044083e34da3ad1de0f6fa05513916f3d0a25888061108a6f31bbe2ceb51c1e",
    "river_2_pro": "4c7cbf278b5d7bdba4b258500e2c0440c0122b6523edbcf64e50886c9b300ebc",
    "smart_home_panel": "4f45d70efc44c05cac888394fdf69c39cb5db4c8e1276c28bed2cc8c403a991c",
    "smart_meter": "a62fdef3f8aa544c0df527154229dc1781ebc530f03a639585638b15f38c2c48",
    "smart_plug": "a4791145da4055405115c5bdcf71de5d3c6490f3368f808a9e1215afa084089a",
    "stream": "b3380a1f2e6e2859ddf11f66504d037f1e4e9f6dea0addd21a5123440f470cfe",
}


# --- the reference: plain and slow ---------------------------------------------------------------

_CMD_PREFIX = re.compile(r"^\d+_\d+\.")
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_.\[\]@#+-]+")
_CLASHING_BACKSLASHES = re.compile(r"\\+(?=[,= ]|$)")


def _ref_number(text: str) -> int | float | str:
    try:
        integer = int(text)
    except ValueError:
        pass
    else:
        return integer if -(2**64) < integer < 2**64 else text
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def _ref_flatten(value: Any, key: str, out: dict[str, Any], depth: int) -> None:
    if depth > 16:
        raise PayloadError("nested deeper")
    if isinstance(value, dict):
        for name, item in value.items():
            _ref_flatten(item, f"{key}.{name}" if key else name, out, depth + 1)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _ref_flatten(item, f"{key}[{index}]", out, depth + 1)
    elif value is None:
        pass
    elif isinstance(value, bool):
        out[key] = int(value)
    elif isinstance(value, str):
        out[key] = _ref_number(value)
    else:
        out[key] = value


def _ref_flat(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in obj.items():
        _ref_flatten(value, prefix + key, out, 1)
    if len(out) > 10_000 or any(len(k) > 256 for k in out):
        raise PayloadError("too many fields or too long a key")
    return out


def reference_decode(obj: Any, kind: TopicKind | None, cmd_prefix: bool) -> tuple[str, dict[str, Any]]:
    """(kind, flat values) as collector.decoding's docstring describes them."""
    if not isinstance(obj, dict):
        raise PayloadError("not an object")
    if kind is TopicKind.SET_REPLY:
        data = obj.get("data")
        return "set_reply", _ref_flat(data) if isinstance(data, dict) else {}
    if "cmdFunc" in obj and "cmdId" in obj:
        body = obj.get("params") or obj.get("param", obj.get("params"))
        if not isinstance(body, dict):
            raise PayloadError("no body")
        prefix = f"{obj['cmdFunc']}_{obj['cmdId']}."
        if not _CMD_PREFIX.match(prefix):
            raise PayloadError("cmdFunc/cmdId")
        if not cmd_prefix:
            return "quota", _ref_flat(body)
        own = {k: v for k, v in body.items() if _CMD_PREFIX.match(k)}
        rest = {k: v for k, v in body.items() if k not in own}
        return "quota", {**_ref_flat(rest, prefix), **_ref_flat(own)}
    if "code" in obj and ("message" in obj or "data" in obj):
        if str(obj["code"]) != "0":
            raise PayloadError("API error")
        data = obj.get("data")
        if data is None:
            return "quota", {}
        return reference_decode(data, kind, cmd_prefix)
    params = obj.get("params")
    if isinstance(params, dict) and ("version" in obj or "id" in obj or len(obj) == 1):
        if kind is TopicKind.STATUS or (kind is None and set(params) == {"status"}):
            status = params.get("status")
            status = _ref_number(status) if isinstance(status, str) else status
            if status not in (0, 1) or isinstance(status, bool):
                raise PayloadError("status")
            return "status", {"status": int(status)}
        type_code = obj.get("typeCode")
        if isinstance(type_code, str) and type_code:
            prefix = TYPE_CODE_PREFIXES.get(type_code, type_code) + "."
            values: dict[str, Any] = {}
            for key, value in params.items():
                values.update(_ref_flat({key: value}, "" if key.startswith(prefix) else prefix))
            return "quota", values
        return "quota", _ref_flat(params)
    if kind is TopicKind.STATUS:
        raise PayloadError("status without params")
    values = _ref_flat(obj)
    if all(isinstance(v, str) for v in values.values()):
        raise PayloadError("no numeric fields")
    return "quota", values


def reference_normalize(product: Product | None, values: dict[str, Any]) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, raw in values.items():
        if isinstance(raw, str):
            continue
        spec = product.lookup(key) if product is not None else None
        if spec is None:
            if key != "time":
                out[key] = float(raw)
        elif raw in spec.sentinels:
            continue
        elif math.isfinite(value := raw * spec.mul / spec.div):
            out[key] = value
    return out


def reference_summary(product: Product | None, known: dict[str, float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for name, terms in product.summary.items() if product is not None else ():
        if all(key in known for key, _ in terms):
            total = 0.0
            for key, sign in terms:
                total += sign * known[key]
            if math.isfinite(total):
                out[name] = total
    return out


def _ref_escape(text: str, measurement: bool = False) -> str:
    if not ("," in text or "=" in text or " " in text or "\\" in text or not text.isprintable()):
        return text
    text = _CLASHING_BACKSLASHES.sub("", text.replace("\n", " ").replace("\r", " ").replace("\t", " "))
    text = text.replace(",", r"\,").replace(" ", r"\ ")
    return text if measurement else text.replace("=", r"\=")


def reference_line(
    measurement: str, tags: tuple[tuple[str, str], ...], fields: dict[str, float], t: int
) -> str:
    series = ",".join(
        [_ref_escape(measurement, True)]
        + [f"{_ref_escape(k)}={_ref_escape(v)}" for k, v in tags if _ref_escape(v)]
    )
    if all(_PLAIN_KEY.fullmatch(k) for k in fields):
        body = ",".join(f"{k}={orjson.dumps(v).decode()}" for k, v in fields.items())
    else:
        body = ",".join(f"{_ref_escape(k)}={v!r}" for k, v in fields.items())
    return f"{series} {body} {t}"


class ReferenceDevice:
    """The reference's device: what it remembers between reports is every field's last value."""

    def __init__(self, device: Device) -> None:
        self.device = device
        self.known: dict[str, float] = {}

    def lines(self, payload: bytes, kind: TopicKind | None, time_ms: int) -> list[str]:
        device = self.device
        product = device.product
        try:
            obj = orjson.loads(payload)
        except orjson.JSONDecodeError:
            raise PayloadError("not JSON") from None
        decoded_kind, values = reference_decode(obj, kind, product.cmd_prefix if product else True)
        if decoded_kind == "status":
            online = 1.0 if values["status"] == 1 else 0.0
            fields = {"online": online, "state": 2.0 if online else 0.0}
            return [reference_line("ecoflow_status", device.tags(), fields, time_ms)]
        if decoded_kind != "quota":
            return []
        fields = reference_normalize(product, values)
        if not fields:
            return []
        lines = [reference_line(device.slug, device.tags(), fields, time_ms)]
        self.known.update(fields)
        summary = reference_summary(product, self.known)
        if summary:
            lines.append(reference_line(SUMMARY_MEASUREMENT, device.summary_tags(), summary, time_ms))
        return lines


# --- the collector's path ------------------------------------------------------------------------


def pipeline_lines(
    pipeline: Pipeline, device: Device, memory: FieldMemory, payload: bytes, kind: TopicKind | None, t: int
) -> list[str]:
    _, points = pipeline.process(device, payload, kind, t, memory)
    return [point.to_line() for point in points]


def _outcome(call: Any) -> list[str]:
    try:
        lines: list[str] = call()
    except PayloadError:
        return ["<PayloadError>"]
    return lines


def run_both(
    device: Device, payloads: list[bytes], memory: FieldMemory | None = None
) -> tuple[list[str], list[str]]:
    """Every payload with each topic kind through the pipeline and through the reference."""
    pipeline = Pipeline(KeyReporter())
    memory = memory if memory is not None else Registry().add(device).memory
    reference = ReferenceDevice(device)
    got: list[str] = []
    expected: list[str] = []
    for index, payload in enumerate(payloads):
        for kind in KINDS:
            t = TIME_MS + index
            got += _outcome(lambda: pipeline_lines(pipeline, device, memory, payload, kind, t))  # noqa: B023
            expected += _outcome(lambda: reference.lines(payload, kind, t))  # noqa: B023
    return got, expected


def fixture_payloads(slug: str) -> list[bytes]:
    return [path.read_bytes() for path in sorted((FIXTURES / slug).glob("*.json"))]


def golden_device(catalog: Catalog, slug: str) -> Device:
    return Device.resolve(catalog, "GOLDEN0001", "golden unit", slug)


def run_fixtures(slug: str) -> str:
    got, _ = run_both(golden_device(CATALOG, slug), fixture_payloads(slug))
    return "\n".join(got)


# --- the tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", sorted(GOLDEN))
def test_fixtures_make_the_same_lines_as_before(slug: str) -> None:
    lines = run_fixtures(slug)
    assert hashlib.sha256(lines.encode()).hexdigest() == GOLDEN[slug], lines[:2000]


@pytest.mark.parametrize("slug", sorted(GOLDEN))
def test_fixtures_match_the_reference(slug: str) -> None:
    got, expected = run_both(golden_device(CATALOG, slug), fixture_payloads(slug))
    assert got == expected


def _captures() -> list[tuple[str, str]]:
    if not CAPTURES.is_dir():
        return []
    cases = []
    for path in sorted(CAPTURES.glob("*.json")):
        product = next((p for prefix, p in CAPTURE_PRODUCTS.items() if path.name.startswith(prefix)), None)
        if product is not None:
            cases.append((product, path.name))
    return cases


@pytest.mark.parametrize(("slug", "name"), _captures() or [pytest.param("", "", marks=pytest.mark.skip)])
def test_captures_match_the_reference(slug: str, name: str) -> None:
    payload = (CAPTURES / name).read_bytes()
    got, expected = run_both(golden_device(CATALOG, slug), [payload, payload])
    assert got == expected


# hostile keys: every character line protocol treats specially, and text that is not a number
HOSTILE_KEYS = ["a b", "c=d", "e,f", "g\\", "h\\ i", "time", "tab\tkey", "new\nline", "ünï", 'quote"d', "x:y"]
ODD_TEXTS = [
    "nan",
    "inf",
    "-inf",
    "1e999",
    str(2**70),
    str(-(2**70)),
    "0x10",
    " 12 ",
    "1_000",
    "V1.2",
    "",
    "-0",
]


def _mutate(value: Any, rng: random.Random, depth: int = 0) -> Any:
    if isinstance(value, dict):
        out = {k: _mutate(v, rng, depth + 1) for k, v in value.items()}
        if depth <= 1 and rng.random() < 0.3:
            out[rng.choice(HOSTILE_KEYS)] = rng.choice([1, 2.5, "3", None, True])
        return out
    if isinstance(value, list):
        return [_mutate(v, rng, depth + 1) for v in value]
    roll = rng.random()
    if roll < 0.04:
        return rng.choice(ODD_TEXTS)
    if roll < 0.06:
        return None
    if roll < 0.08:
        return rng.choice([True, False])
    if roll < 0.10 and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if roll < 0.11:
        return {"inner": rng.randint(-5, 5), "list": [1, "2", None]}
    if roll < 0.12:
        return rng.choice([4294967295, 65535, -1, 5939, 0.0, -0.0, 1e300, 2**63])
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value + rng.randint(-40, 40)
    if isinstance(value, float):
        return round(value + rng.uniform(-4, 4), rng.randint(0, 4))
    if isinstance(value, str) and value.lstrip("-").isdecimal():
        return str(int(value) + rng.randint(-40, 40))
    return value


@pytest.mark.parametrize("slug", sorted(GOLDEN))
def test_hostile_variants_match_the_reference(slug: str) -> None:
    rng = random.Random(slug)
    originals = [orjson.loads(p) for p in fixture_payloads(slug)]
    payloads = []
    for _ in range(25):
        for original in originals:
            payloads.append(orjson.dumps(_mutate(original, rng)))
    device = Device.resolve(CATALOG, 'SN, "odd" = 1\\', "name\twith = tabs, \\", slug)
    got, expected = run_both(device, payloads)
    assert got == expected


def test_repeated_reports_take_the_same_path_as_the_first() -> None:
    """What the fast path caches per key set gives the same lines on the 1st and the 100th report."""
    device = golden_device(CATALOG, "delta_pro")
    payloads = fixture_payloads("delta_pro") * 40
    got, expected = run_both(device, payloads)
    assert got == expected


def test_unknown_product_and_unknown_keys_are_reported_once() -> None:
    pipeline = Pipeline(KeyReporter())
    device = Device.resolve(CATALOG, "XX1", None, "no such product")
    memory = FieldMemory(KeyTable())
    for _ in range(3):
        pipeline.process(device, b'{"params": {"a": 1, "b": "x"}, "version": "1.0"}', None, 1, memory)
    assert pipeline.reporter.unknown_keys == 1 and pipeline.reporter.non_numeric_values == 3


def test_arrays_spliced_into_the_one_pass_match_the_reference_when_they_change() -> None:
    """Arrays of numbers join the fast path's one pass: a report whose array is longer, shorter,
    missing, nested, or past decode_object's field limit still makes the generic path's lines."""
    device = golden_device(CATALOG, "delta_pro")
    cells = [str(3500 + i) for i in range(15)]

    def report(cell_vol: Any, **extra: Any) -> bytes:
        params = {"pd.soc": "80", "bmsMaster.cellVol": cell_vol, "bmsMaster.vol": "53120", **extra}
        return orjson.dumps({"id": 1, "version": "1.0", "params": params})

    payloads = [report(cells), report(cells)]  # the second one takes the plan
    payloads += [report(cells[:14]), report([*cells, "3501"]), report("3500"), report([[1], 2, *cells[2:]])]
    payloads += [report([int(c) for c in cells]), report(cells), report(cells, extra=1)]
    huge = orjson.dumps({"id": 1, "version": "1.0", "params": {"bmsMaster.cellVol": list(range(10_001))}})
    payloads += [huge, huge, huge]  # a key set of its own: its plan would be built from this array
    got, expected = run_both(device, payloads)
    assert got == expected
    assert "<PayloadError>" in got  # the 10,001 elements


def test_long_texts_that_start_with_a_letter_stay_text() -> None:
    from collector.decoding import _parse_number

    for text in ("DCE0TEST0000002", "com.ecoflow.Kit$Info", "e5", "a1", "x"):
        assert _parse_number(text) == text
    assert _parse_number("inf") == "inf" and _parse_number("nan") == "nan"
    assert _parse_number(" 12") == 12 and _parse_number("-1.5") == -1.5 and _parse_number("1_000") == 1000
