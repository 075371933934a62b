"""The DELTA Pro catalog against its seed document, a real capture and the project's own fixtures.

The real capture and the seed document live in ``../shared`` beside the project; the tests that
need them skip when that folder is absent. The fixtures in ``tests/fixtures/delta_pro`` are the
project's own payloads (figures modelled on the real device, not copies of captures).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import pytest

from collector.catalog import Catalog, Kind, Product, load_product_file
from collector.decoding import decode_bytes
from collector.normalize import normalize_values, summarize

ROOT = Path(__file__).resolve().parents[1]
CATALOG_FILE = ROOT / "collector" / "catalog" / "products" / "delta_pro.toml"
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "delta_pro"
SHARED = Path(__file__).resolve().parents[2] / "shared"
CAPTURE = SHARED / "captures" / "deltapro_rustyy-fixture_1.json"
SEED = SHARED / "seeds" / "delta-pro-open-api.txt"

BMS_PREFIXES = ("bmsMaster", "bmsSlave1", "bmsSlave2")


# --- helpers ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def product() -> Product:
    return load_product_file(CATALOG_FILE)


def _raw(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def _decoded(name: str) -> dict[str, Any]:
    return dict(decode_bytes(_raw(name)).values)


def _normalized(product: Product, name: str) -> dict[str, float]:
    return normalize_values(product, decode_bytes(_raw(name)).values)


@pytest.fixture(scope="module")
def capture_values() -> dict[str, Any]:
    if not CAPTURE.is_file():
        pytest.skip(f"real capture not available: {CAPTURE}")
    return dict(decode_bytes(CAPTURE.read_bytes()).values)


@pytest.fixture(scope="module")
def seed_text() -> str:
    if not SEED.is_file():
        pytest.skip(f"seed document not available: {SEED}")
    return SEED.read_text(encoding="utf-8")


def _close(a: float, b: float, rel: float, abs_: float = 0.0) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def _array(values: dict[str, Any], key: str) -> list[float]:
    items: list[float] = []
    while f"{key}[{len(items)}]" in values:
        items.append(values[f"{key}[{len(items)}]"])
    return items


# --- the file itself ----------------------------------------------------------------------------------


def test_product_identity(product: Product) -> None:
    catalog = Catalog([product])
    assert product.slug == "delta_pro"
    for name in ("DELTA Pro", "Delta Pro", "delta pro"):
        assert catalog.by_product_name(name) is product
    assert catalog.by_serial("DCABZ5SG7080038") is product
    assert catalog.by_serial("DCEBZ8ZF2230701") is product
    assert catalog.by_serial("DBEBZ5XD9180271") is None  # DELTA mini
    assert catalog.by_product_name("DELTA Pro 3") is None


def test_physical_fields_declare_a_range(product: Product) -> None:
    missing = [
        spec.key
        for spec in product.all_fields()
        if spec.unit.symbol and spec.kind in (Kind.MEASUREMENT, Kind.COUNTER) and spec.range is None
    ]
    assert missing == []


def test_bms_group_covers_all_three_prefixes(product: Product) -> None:
    suffixes = {key.split(".", 1)[1] for key in product.fields if key.startswith("bmsMaster.")}
    assert len(suffixes) >= 54
    for prefix in BMS_PREFIXES[1:]:
        assert {key.split(".", 1)[1] for key in product.fields if key.startswith(prefix + ".")} == suffixes


def test_array_fields(product: Product) -> None:
    for suffix in ("cellVol", "cellTemp", "hwEdition", "packSn"):
        for prefix in BMS_PREFIXES:
            spec = product.lookup(f"{prefix}.{suffix}[3]")
            assert spec is not None and spec.array, f"{prefix}.{suffix}"
    hw_edition = product.lookup("bmsMaster.hwEdition[0]")
    assert hw_edition is not None and hw_edition.kind is Kind.IDENTIFIER
    assert (
        product.lookup("kit.productInfoDetails[1].f32Soc") is product.fields["kit.productInfoDetails.f32Soc"]
    )


# --- (a) + (b): the real capture --------------------------------------------------------------------


def test_every_capture_key_is_catalogued(product: Product, capture_values: dict[str, Any]) -> None:
    assert len(capture_values) > 300  # 296 top-level keys; arrays and the kit list expand
    unknown = sorted(key for key in capture_values if product.lookup(key) is None)
    assert unknown == []


def test_capture_values_lie_inside_their_ranges(product: Product, capture_values: dict[str, Any]) -> None:
    outside = []
    checked = 0
    for key, raw in capture_values.items():
        spec = product.lookup(key)
        assert spec is not None, key
        if isinstance(raw, str) or raw in spec.sentinels or spec.range is None:
            continue
        value = normalize_values(product, {key: raw})[key]
        checked += 1
        if not spec.range[0] <= value <= spec.range[1]:
            outside.append(f"{key}: {raw} -> {value} not in {spec.range}")
    assert outside == []
    assert checked > 150


def test_capture_sentinels_are_not_written(product: Product, capture_values: dict[str, Any]) -> None:
    out = normalize_values(product, capture_values)
    for key in (
        "bmsMaster.totalChgCap",
        "bmsMaster.totalDsgCap",
        "bmsSlave1.totalChgCap",
        "bmsMaster.ecloudOcv",
        "bmsSlave1.ecloudOcv",
        "pd.acautooutPause",
        "pd.minAcoutSoc",
    ):
        assert key in capture_values
        assert key not in out
    assert out["inv.cfgAcOutVoltage"] == 120.0  # 120000 mV on a 60 Hz unit


def test_capture_summary(product: Product, capture_values: dict[str, Any]) -> None:
    summary = summarize(product, normalize_values(product, capture_values))
    assert summary["soc_percent"] == pytest.approx(53.855263)
    assert summary["input_w"] == 296.0
    assert summary["output_w"] == 114.0
    assert summary["pv_input_w"] == 296.0
    assert summary["battery_w"] == 182.0
    assert summary["battery_soh_percent"] == 100.0  # bmsMaster.soh: the main pack
    assert summary["battery_cycles"] == 29.0


# --- (d): balances ----------------------------------------------------------------------------------


def _check_balances(product: Product, raw: dict[str, Any]) -> int:
    """Assert the physical balances a payload allows; returns how many were checked."""
    values = normalize_values(product, raw)
    checked = 0
    for prefix in BMS_PREFIXES:
        cells = _array(values, f"{prefix}.cellVol")
        vol = values.get(f"{prefix}.vol")
        if cells and vol is not None:
            assert len(cells) == 15
            assert _close(sum(cells), vol, rel=0.01), f"{prefix}: cells {sum(cells):.3f} V vs pack {vol} V"
            assert max(cells) <= values.get(f"{prefix}.maxCellVol", max(cells))
            checked += 1
        amp = values.get(f"{prefix}.amp")
        if vol is not None and amp:
            net = values.get(f"{prefix}.inputWatts", 0.0) - values.get(f"{prefix}.outputWatts", 0.0)
            if net:  # bmsMaster reads 0 W in the real capture while current flows
                assert _close(vol * amp, net, rel=0.05, abs_=3), f"{prefix}: {vol} V x {amp} A vs {net} W"
                checked += 1
        remain, full = values.get(f"{prefix}.remainCap"), values.get(f"{prefix}.fullCap")
        if remain is not None and full and f"{prefix}.f32ShowSoc" in values:
            assert _close(100 * remain / full, values[f"{prefix}.f32ShowSoc"], rel=0, abs_=0.5)
            checked += 1
    for side in ("in", "out"):
        volts, amps, watts = (values.get(f"mppt.{side}{q}") for q in ("Vol", "Amp", "Watts"))
        if volts is not None and amps is not None and watts:
            assert _close(volts * amps, watts, rel=0.03, abs_=2), (
                f"mppt.{side}: {volts} V x {amps} A vs {watts} W"
            )
            checked += 1
    if "mppt.inWatts" in values and "pd.wattsInSum" in values and values["mppt.inWatts"]:
        assert _close(values["mppt.inWatts"], values["pd.wattsInSum"], rel=0.02, abs_=1)
        checked += 1
    packs = [p for p in BMS_PREFIXES if f"{p}.remainCap" in values and f"{p}.fullCap" in values]
    if packs and "ems.f32LcdShowSoc" in values:
        remain = sum(values[f"{p}.remainCap"] for p in packs)
        full = sum(values[f"{p}.fullCap"] for p in packs)
        assert _close(100 * remain / full, values["ems.f32LcdShowSoc"], rel=0, abs_=0.5)
        checked += 1
    return checked


def test_capture_balances(product: Product, capture_values: dict[str, Any]) -> None:
    values = normalize_values(product, capture_values)
    assert _check_balances(product, capture_values) >= 8
    # the figures behind the unit decisions, pinned
    assert sum(_array(values, "bmsMaster.cellVol")) == pytest.approx(50.017)
    assert values["bmsMaster.vol"] == 50.133
    assert values["bmsSlave1.vol"] * values["bmsSlave1.amp"] == pytest.approx(114.9, abs=0.1)
    assert values["mppt.inVol"] * values["mppt.inAmp"] == pytest.approx(295.7, abs=0.1)
    assert values["mppt.outVol"] * values["mppt.outAmp"] == pytest.approx(289.6, abs=0.1)
    # pd.soc follows the main pack, ems.f32LcdShowSoc both packs
    assert values["pd.soc"] == values["bmsMaster.soc"]
    # pd.wattsOutSum carries the extra battery's charging power
    assert (
        values["pd.wattsOutSum"]
        == values["bmsSlave1.inputWatts"]
        == values["kit.productInfoDetails[0].curPower"]
    )


@pytest.mark.parametrize("name", ["mqtt_quota_strings.json", "mqtt_quota_numbers.json", "quota_all.json"])
def test_fixture_balances(product: Product, name: str) -> None:
    assert _check_balances(product, _decoded(name)) >= 3


# --- (c): pinned conversions on the fixtures -----------------------------------------------------------


@pytest.mark.parametrize("name", ["mqtt_quota_strings.json", "mqtt_quota_numbers.json", "quota_all.json"])
def test_fixture_keys_are_catalogued_and_in_range(product: Product, name: str) -> None:
    raw = _decoded(name)
    assert [key for key in raw if product.lookup(key) is None] == []
    for key, value in normalize_values(product, raw).items():
        spec = product.lookup(key)
        assert spec is not None
        if spec.range is not None:
            assert spec.range[0] <= value <= spec.range[1], key


def test_mqtt_report_with_string_numbers(product: Product) -> None:
    decoded = decode_bytes(_raw("mqtt_quota_strings.json"))
    assert decoded.values["pd.soc"] == 80  # strings holding numbers become numbers
    out = normalize_values(product, decoded.values)
    assert out["mppt.inVol"] == 69.1
    assert out["mppt.inAmp"] == 4.28
    assert out["mppt.inWatts"] == 296.0
    assert out["mppt.inVol"] * out["mppt.inAmp"] == pytest.approx(296.0, rel=0.01)
    assert out["mppt.outVol"] == 53.1
    assert out["bmsMaster.vol"] == 53.12
    assert out["bmsMaster.amp"] == 5.1
    assert out["bmsMaster.cellVol[0]"] == 3.541
    assert out["bmsMaster.remainCap"] == 60.952
    assert out["mppt.cfgDcChgCurrent"] == 8.0
    assert out["pd.remainTime"] == 185 * 60.0
    assert out["pd.lcdBrightness"] == 128.0  # 128 = automatic, a value, not a sentinel
    assert out["pd.chgSunPower"] == 15321.0
    for sentinel_key in ("inv.cfgAcXboost", "inv.cfgAcOutFreq", "bmsMaster.ecloudOcv", "ems.dsgRemainTime"):
        assert sentinel_key in decoded.values
        assert sentinel_key not in out
    assert summarize(product, out) == {
        "soc_percent": 80.2,
        "input_w": 296.0,
        "output_w": 0.0,
        "pv_input_w": 296.0,
        "battery_w": 296.0,
    }


def test_mqtt_report_with_numbers_discharging(product: Product) -> None:
    out = _normalized(product, "mqtt_quota_numbers.json")
    assert out["pd.remainTime"] == -412 * 60.0  # negative = time to empty, kept
    assert out["ems.dsgRemainTime"] == 412 * 60.0
    assert "ems.chgRemainTime" not in out  # 5999 = not applicable
    assert out["inv.cfgAcOutVoltage"] == 120.0
    assert out["inv.invOutVol"] == 120.02
    assert out["inv.invOutAmp"] == 3.766
    assert out["inv.invOutVol"] * out["inv.invOutAmp"] == pytest.approx(out["inv.outputWatts"], rel=0.01)
    assert out["bmsMaster.amp"] == -9.84  # negative = discharging
    assert out["bmsMaster.vol"] * -out["bmsMaster.amp"] == pytest.approx(
        out["bmsMaster.outputWatts"], rel=0.01
    )
    assert out["pd.dsgPowerAc"] == 48211.0
    assert out["bmsMaster.cellTemp[2]"] == 32.0
    for key in (
        "pd.acautooutPause",
        "pd.minAcoutSoc",
        "bmsMaster.totalChgCap",
        "bmsMaster.totalDsgCap",
    ):
        assert key not in out
    assert out["inv.cfgAcXboost"] == 1.0
    summary = summarize(product, out)
    assert summary["battery_w"] == -470.0
    assert summary["output_w"] == 470.0
    assert summary["soc_percent"] == 61.8


def test_quota_all_envelope(product: Product) -> None:
    decoded = decode_bytes(_raw("quota_all.json"))
    values = decoded.values
    assert values["kit.productInfoDetails[0].sn"] == "DCE0TEST0000002"  # text stays text
    out = normalize_values(product, values)
    assert "kit.productInfoDetails[0].sn" not in out
    assert out["kit.productInfoDetails[0].curPower"] == 97.0
    assert out["mppt.inVol"] == 76.4
    assert out["mppt.inAmp"] == 4.48
    assert out["mppt.inWatts"] == 342.3
    assert out["bmsSlave1.vol"] == 50.33
    assert out["bmsSlave1.amp"] == 1.93
    assert out["bmsSlave1.tagChgAmp"] == 48.0
    assert out["ems.chgAmp"] == 130.0
    assert out["ems.chgVol"] == 51.38
    assert out["inv.cfgStandbyMin"] == 720 * 60.0
    assert out["pd.invUsedTime"] == 4512000.0
    assert out["bmsMaster.designCap"] == 80.0
    assert out["bmsMaster.hwEdition[0]"] == 86.0  # 'V', identifiers stay numbers
    assert "".join(chr(int(c)) for c in _array(out, "bmsMaster.hwEdition")) == "V0.0.0"
    assert len(_array(out, "bmsSlave1.cellVol")) == 15
    for key in ("bmsMaster.totalChgCap", "bmsSlave1.ecloudOcv", "pd.minAcoutSoc", "pd.acautooutPause"):
        assert key in values and key not in out
    summary = summarize(product, out)
    assert summary["soc_percent"] == 58.93
    assert summary["input_w"] == 342.0
    assert summary["output_w"] == 97.0
    assert summary["pv_input_w"] == 342.3
    assert summary["battery_w"] == 245.0


# --- (c): the seed document's examples ---------------------------------------------------------------

# Every value example the seed document gives (quota/all response, get-quota responses, the MQTT report),
# with the stored value expected. None = not written (a sentinel).
SEED_EXAMPLES: dict[str, tuple[int | str, float | None]] = {
    # GET quota/all example (strings)
    "bmsMaster.soc": ("100", 100.0),
    "bmsMaster.temp": ("34", 34.0),
    "bmsMaster.inputWatts": ("0", 0.0),
    "bmsMaster.outputWatts": ("0", 0.0),
    "pd.remainTime": ("14781", 14781 * 60.0),
    "pd.usb1Watts": ("0", 0.0),
    "pd.usb2Watts": ("0", 0.0),
    "pd.qcUsb1Watts": ("0", 0.0),
    # MQTT quota report example (strings)
    "pd.iconWifiMode": ("0", 0.0),
    "mppt.faultCode": ("0", 0.0),
    "ems.minDsgSoc": ("0", 0.0),
    "pd.iconOverloadState": ("0", 0.0),
    "ems.emsIsNormalFlag": ("1", 1.0),
    # get-quota responses (numbers)
    "inv.cfgAcEnabled": (1, 1.0),
    "inv.cfgAcXboost": (0, 0.0),
    "mppt.carState": (1, 1.0),
    "ems.maxChargeSoc": (0, 0.0),
    "mppt.cfgDcChgCurrent": (0, 0.0),
    "pd.beepState": (1, 1.0),
    "pd.lcdBrightness": (100, 100.0),
    "ems.minOpenOilEbSoc": (0, 0.0),
    "ems.maxCloseOilEbSoc": (0, 0.0),
    "pd.standByMode": (0, 0.0),
    "pd.lcdOffSec": (60, 60.0),
    "inv.cfgStandbyMin": (720, 43200.0),
    "inv.cfgSlowChgWatts": (0, 0.0),
    "inv.acDipSwitch": (0, 0.0),
    "mppt.cfgChgType": (0, 0.0),
    "inv.acPassbyAutoEn": (0, 0.0),
}


def test_seed_document_examples(product: Product) -> None:
    payload = json.dumps(
        {"code": "0", "message": "Success", "data": {k: v for k, (v, _) in SEED_EXAMPLES.items()}}
    )
    out = normalize_values(product, decode_bytes(payload).values)
    for key, (_, expected) in SEED_EXAMPLES.items():
        assert product.lookup(key) is not None, key
        if expected is None:
            assert key not in out, key
        else:
            assert out[key] == expected, key


def test_seed_examples_are_the_documents(seed_text: str) -> None:
    for key, (value, _) in SEED_EXAMPLES.items():
        shown = f'"{value}"' if isinstance(value, str) else str(value)
        assert re.search(rf'"{re.escape(key)}"\s*:\s*{re.escape(shown)}', seed_text), key


def test_sentinels_of_the_document(product: Product) -> None:
    # "0xff: ignored" / "0xffffffff: ignored" in the field table
    assert 255 in product.fields["inv.cfgAcXboost"].sentinels
    assert 255 in product.fields["inv.cfgAcOutFreq"].sentinels
    assert 4294967295 in product.fields["inv.cfgAcOutVoltage"].sentinels
    values = {"inv.cfgAcXboost": 255, "inv.cfgAcOutFreq": 255, "inv.cfgAcOutVoltage": 4294967295}
    assert normalize_values(product, values) == {}


# --- (e): the seed document's fields ------------------------------------------------------------------

_DOC_FIELD = re.compile(r"^((?:bmsMaster|inv|mppt|pd|ems)\.[A-Za-z0-9_]+)$", re.M)
_DOC_QUOTED = re.compile(r'"((?:bmsMaster|inv|mppt|pd|ems)\.[A-Za-z0-9_]+)"')


def test_every_seed_field_is_catalogued(product: Product, seed_text: str) -> None:
    table = set(_DOC_FIELD.findall(seed_text))
    quoted = set(_DOC_QUOTED.findall(seed_text))
    assert len(table) > 200
    assert [key for key in sorted(table | quoted) if product.lookup(key) is None] == []


def test_doc_units_are_overridden_only_with_evidence(product: Product) -> None:
    # the MPPT board reports 0.1 V / 0.01 A / 0.1 W although the document says mV / mA / W
    for key, unit in (
        ("mppt.inVol", "0.1V"),
        ("mppt.inAmp", "0.01A"),
        ("mppt.inWatts", "0.1W"),
        ("mppt.outVol", "0.1V"),
        ("mppt.outAmp", "0.01A"),
        ("mppt.outWatts", "0.1W"),
        ("inv.cfgAcOutVoltage", "mV"),
    ):
        spec = product.fields[key]
        assert spec.unit.symbol == unit, key
        assert spec.evidence, key
    for key in ("inv.invOutVol", "inv.acInVol", "inv.dcInVol", "bmsMaster.vol", "bmsMaster.cellVol"):
        assert product.fields[key].unit.symbol == "mV", key
    for key in ("inv.invOutAmp", "inv.acInAmp", "inv.dcInAmp", "bmsMaster.amp"):
        assert product.fields[key].unit.symbol == "mA", key
    for key in ("pd.remainTime", "ems.chgRemainTime", "ems.dsgRemainTime", "inv.cfgStandbyMin"):
        assert product.fields[key].unit.symbol == "min", key


# --- settings -----------------------------------------------------------------------------------------

SETTINGS = {
    # name: (id, param, min, max)
    "x-boost": (66, "xboost", 0, 1),
    "ac-enabled": (66, "enabled", 0, 1),
    "car-charger": (81, "enabled", 0, 1),
    "max-charge-soc": (49, "maxChgSoc", 50, 100),
    "min-discharge-soc": (51, "minDsgSoc", 0, 30),
    "car-input-current": (71, "currMa", 4, 8),
    "beep": (38, "enabled", 0, 1),
    "lcd-brightness": (39, "lcdBrightness", 0, 100),
    "screen-timeout": (39, "lcdTime", 0, 1800),
    "generator-start-soc": (52, "openOilSoc", 0, 100),
    "generator-stop-soc": (53, "closeOilSoc", 0, 100),
    "unit-timeout": (33, "standByMode", 0, 5999),
    "ac-standby": (153, "standByMins", 0, 1440),
    "ac-charging-watts": (69, "slowChgPower", 200, 2900),
    "pv-charging-type": (82, "chgType", 0, 2),
    "bypass-ac-auto-start": (84, "enabled", 0, 1),
}


def test_settings(product: Product) -> None:
    assert set(product.settings) == set(SETTINGS)
    for name, (cmd_id, param, low, high) in SETTINGS.items():
        entry = product.settings[name].entry
        assert (entry.cmd_set, entry.cmd_id, entry.param) == (32, cmd_id, param), name
        assert (entry.min, entry.max) == (low, high), name
        assert entry.cmd_code is None
        for key in entry.read_quotas:
            assert product.lookup(key) is not None, (name, key)
    current = product.settings["car-input-current"].entry
    assert round(4 * current.scale) == 4000 and round(8 * current.scale) == 8000  # currMa
    assert product.settings["ac-enabled"].entry.fixed == {"xboost": 255}
    assert 255 in product.fields["inv.cfgAcXboost"].sentinels  # 0xff = "ignored", so X-Boost is left alone
    assert product.settings["beep"].entry.choices["quiet"] == 1  # enabled=1 -> pd.beepState 1 = quiet
    assert product.settings["pv-charging-type"].entry.choices == {"auto": 0, "mppt": 1, "adapter": 2}


def test_settings_match_the_document(product: Product, seed_text: str) -> None:
    documented = set()
    for block in re.findall(r'\{[^{}]*"cmdSet":\s*32[^{}]*\}', seed_text):
        cmd_id = re.search(r'"id":\s*(\d+)', block)
        assert cmd_id is not None
        for param in re.findall(r'"(\w+)":', block):
            if param not in ("cmdSet", "id", "quotas", "ack"):
                documented.add((cmd_id.group(1), param))
    read_back: dict[int, set[str]] = {}
    for cmd_id, quotas in re.findall(r'"id":\s*(\d+),\s*"quotas":\s*\[([^\]]*)\]', seed_text):
        read_back.setdefault(int(cmd_id), set()).update(re.findall(r'"([\w.]+)"', quotas))
    for name, setting in product.settings.items():
        entry = setting.entry
        assert entry.cmd_id is not None
        assert (str(entry.cmd_id), entry.param) in documented, name
        assert read_back[entry.cmd_id] & set(entry.read_quotas), name
