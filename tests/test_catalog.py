"""The whole catalog: every product file against its fixtures, the real captures and each other.

Parametrised over catalog products x ``tests/fixtures/<slug>/*.json`` (the project's own payloads,
figures modelled on real devices). The real captures in ``../shared/captures`` are extra evidence:
the tests that read them skip cleanly when that folder is absent.

Power triples (voltage x current ~ power) live in ``TRIPLES`` below rather than in the catalog
files: declaring them in TOML would need a model change for a check that only tests make.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from collector.catalog import Catalog, Kind, Product, load_catalog, slugify
from collector.cli import main
from collector.cli.schema import products_markdown
from collector.decoding import decode_bytes, decode_object
from collector.normalize import KeyReporter, normalize_values, summarize

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CAPTURES = ROOT.parent / "shared" / "captures"

CATALOG = load_catalog()
PRODUCTS = sorted(CATALOG.products)

# Products written before this suite: their header comments name the document's units, and fields
# without `evidence` there follow the document. Every newer product carries evidence on every field
# that has a unit (quoting the document where the document states it).
LEGACY_EVIDENCE = {"delta_pro", "powerstream"}


class Triple(NamedTuple):
    volts: str
    amps: str
    watts: str
    ac: bool = False  # AC: W <= V x A (power factor <= 1) instead of W ~ V x A
    rel: float = 0.05  # relative tolerance
    abs_w: float = 3.0  # absolute tolerance, W (one count of a coarse current unit)


TRIPLES: dict[str, tuple[Triple, ...]] = {
    "delta_pro": (
        Triple("mppt.inVol", "mppt.inAmp", "mppt.inWatts"),
        Triple("mppt.outVol", "mppt.outAmp", "mppt.outWatts"),
        Triple("inv.invOutVol", "inv.invOutAmp", "inv.outputWatts", ac=True),
        Triple("inv.acInVol", "inv.acInAmp", "inv.inputWatts", ac=True),
    ),
    "powerstream": (
        # 0.1 A steps: one count at 30 V is 3 W, so the tolerance is wider (see powerstream.toml)
        Triple("20_1.pv1InputVolt", "20_1.pv1InputCur", "20_1.pv1InputWatts", rel=0.2, abs_w=4),
        Triple("20_1.pv2InputVolt", "20_1.pv2InputCur", "20_1.pv2InputWatts", rel=0.2, abs_w=4),
        Triple("20_1.invOpVolt", "20_1.invOutputCur", "20_1.invOutputWatts", ac=True),
    ),
    "delta_2": (
        Triple("mppt.inVol", "mppt.inAmp", "mppt.inWatts"),
        Triple("mppt.outVol", "mppt.outAmp", "mppt.outWatts"),
        Triple("mppt.carOutVol", "mppt.carOutAmp", "mppt.carOutWatts"),
        Triple("mppt.dcdc12vVol", "mppt.dcdc12vAmp", "mppt.dcdc12vWatts"),
        Triple("inv.invOutVol", "inv.invOutAmp", "inv.outputWatts", ac=True),
        Triple("inv.acInVol", "inv.acInAmp", "inv.inputWatts", ac=True),
    ),
    "delta_2_max": (
        Triple("mppt.inVol", "mppt.inAmp", "mppt.inWatts"),
        Triple("mppt.pv2InVol", "mppt.pv2InAmp", "mppt.pv2InWatts"),
        Triple("mppt.outVol", "mppt.outAmp", "mppt.outWatts"),
        Triple("mppt.carOutVol", "mppt.carOutAmp", "mppt.carOutWatts"),
        Triple("mppt.dcdc12vVol", "mppt.dcdc12vAmp", "mppt.dcdc12vWatts"),
        Triple("inv.invOutVol", "inv.invOutAmp", "inv.outputWatts", ac=True),
        Triple("inv.acInVol", "inv.acInAmp", "inv.inputWatts", ac=True),
    ),
    "delta_max": (
        Triple("mppt.inVol", "mppt.inAmp", "mppt.inWatts"),
        Triple("mppt.outVol", "mppt.outAmp", "mppt.outWatts"),
        Triple("mppt.carOutVol", "mppt.carOutAmp", "mppt.carOutWatts"),
        Triple("mppt.dcdc12vVol", "mppt.dcdc12vAmp", "mppt.dcdc12vWatts"),
        Triple("inv.invOutVol", "inv.invOutAmp", "inv.outputWatts", ac=True),
        Triple("inv.acInVol", "inv.acInAmp", "inv.inputWatts", ac=True),
    ),
    "delta_pro_3": (
        Triple("powGetPvHVol", "powGetPvHAmp", "powGetPvH"),
        Triple("powGetPvLVol", "powGetPvLAmp", "powGetPvL"),
        Triple("inLvMpptVol", "inLvMpptAmp", "powGetPvL"),
    ),
    "smart_plug": (Triple("2_1.volt", "2_1.current", "2_1.watts", ac=True),),
    "smart_meter": tuple(
        Triple(f"gridConnectionVol{p}", f"gridConnectionAmp{p}", f"gridConnectionPower{p}", ac=True)
        for p in ("L1", "L2", "L3")
    ),
    "stream": tuple(
        Triple(f"plugInInfoPv{n}Vol", f"plugInInfoPv{n}Amp", f"powGetPv{n}") for n in ("", "2", "3", "4")
    ),
    "delta_pro_ultra": tuple(
        Triple(
            f"hs_yj751_pd_backend_addr.{port}Vol",
            f"hs_yj751_pd_backend_addr.{port}Amp",
            f"hs_yj751_pd_appshow_addr.{port}Pwr",
            ac=ac,
        )
        for port, ac in (
            ("inHvMppt", False),
            ("inLvMppt", False),
            ("inAcC20", True),
            ("inAc5p8", True),
            ("outAc5p8", True),
            ("outAcL11", True),
            ("outAcL12", True),
            ("outAcL21", True),
            ("outAcL22", True),
            ("outAcTt", True),
            ("outAcL14", True),
        )
    ),
    # PowerOcean: D's own samples give vol x amp = apparentPwr (VA) and actPwr <= it (powerocean.toml)
    "powerocean": (
        *(
            Triple(
                f"mpptHeartBeat[0].mpptPv[{i}].vol",
                f"mpptHeartBeat[0].mpptPv[{i}].amp",
                f"mpptHeartBeat[0].mpptPv[{i}].pwr",
            )
            for i in (0, 1)
        ),
        *(Triple(f"pcs{p}Phase.vol", f"pcs{p}Phase.amp", f"pcs{p}Phase.apparentPwr") for p in "ABC"),
        *(Triple(f"pcs{p}Phase.vol", f"pcs{p}Phase.amp", f"pcs{p}Phase.actPwr", ac=True) for p in "ABC"),
    ),
    # no mppt.out triple: a real answer shows outVol x outAmp = 745 W beside outWatts 0 (river_2_pro.toml)
    "river_2_pro": (
        Triple("mppt.inVol", "mppt.inAmp", "mppt.inWatts"),
        Triple("mppt.carOutVol", "mppt.carOutAmp", "mppt.carOutWatts"),
        Triple("mppt.dcdc12vVol", "mppt.dcdc12vAmp", "mppt.dcdc12vWatts"),
        Triple("inv.invOutVol", "inv.invOutAmp", "inv.outputWatts", ac=True),
        Triple("inv.acInVol", "inv.acInAmp", "inv.inputWatts", ac=True),
    ),
}

# Real captures per product (file names in ../shared/captures). Tolwi's diagnostics dump keeps the
# device payload under data.params.
CAPTURE_FILES: dict[str, tuple[str, ...]] = {
    "delta_pro": ("deltapro_rustyy-fixture_1.json",),
    "powerstream": (
        "powerstream_official-doc_1.json",
        "powerstream_rustyy-fixture_1.json",
        "powerstream_shuette42-fixture_1.json",
        "powerstream_tolwi-diag_1.json",
    ),
    "delta_2": (
        "delta2_rustyy-fixture_1.json",
        "delta2_official-doc_1.json",
        "delta2_official-doc_2.json",
        "delta2_official-doc_3.json",
        "delta2_official-doc_4.json",
        "delta2_official-doc_5.json",
    ),
    "delta_2_max": (
        "delta2max_unidentified-go-test_1.json",
        "delta2max_unidentified-go-test_2.json",
        "delta2max_unidentified-go-test_3.json",
        "delta2max_unidentified-go-test_4.json",
    ),
    "delta_pro_3": (
        "deltapro3_rustyy-fixture_1.json",
        "deltapro3_taraskhust-dump_1.json",
        # MQTT {"cmdId":2,"cmdFunc":2,"addr":..,"params":{flat keys}}: no `2_2.` prefix for this product
        "deltapro3_unidentified-go-test_1.json",
        # {"cmdId":21,"cmdFunc":254,"param":{..},"params":{}}: the non-empty `param` is the body
        "deltapro3_unidentified-go-test_2.json",
    ),
    "smart_plug": (
        "smartplug_colombod-recording_1.json",
        "smartplug_colombod-recording_2.json",
        "smartplug_colombod-recording_3.json",
        "smartplug_colombod-recording_4.json",
        "smartplug_colombod-vector_1.json",
        "smartplug_official-doc_1.json",
        "smartplug_rustyy-fixture_1.json",
    ),
    "smart_meter": (
        "smartmeter_colombod-recording_1.json",
        "smartmeter_colombod-recording_2.json",
        "smartmeter_colombod-vector_1.json",
    ),
    "stream": (
        "streamacpro_colombod-recording_1.json",
        "streamacpro_colombod-recording_2.json",
        "streamacpro_colombod-recording_3.json",
        "streamultra_colombod-recording_1.json",
        "streamultra_colombod-recording_2.json",
        "streamultra_colombod-recording_3.json",
        "streamultra_colombod-vector_1.json",
    ),
    "smart_home_panel": ("smarthomepanel_rustyy-fixture_1.json",),
}

# --- helpers -----------------------------------------------------------------------------------------


def _fixture_cases() -> list[tuple[str, str]]:
    cases = []
    for slug in PRODUCTS:
        for path in sorted((FIXTURES / slug).glob("*.json")):
            cases.append((slug, path.name))
    return cases


FIXTURE_CASES = _fixture_cases()
CAPTURE_CASES = [(slug, name) for slug, names in sorted(CAPTURE_FILES.items()) for name in names]


def _decoded_fixture(slug: str, name: str) -> dict[str, Any]:
    path = FIXTURES / slug / name
    return dict(decode_bytes(path.read_bytes(), cmd_prefix=CATALOG.products[slug].cmd_prefix).values)


def _decoded_capture(slug: str, name: str) -> dict[str, Any]:
    """A capture decoded into the product's key space, as the pipeline decodes it."""
    return dict(decode_object(_capture_object(name), cmd_prefix=CATALOG.products[slug].cmd_prefix).values)


def _capture_object(name: str) -> Any:
    path = CAPTURES / name
    if not path.is_file():
        pytest.skip(f"{path} is absent (shared captures are optional)")
    obj = json.loads(path.read_text(encoding="utf-8"))
    if "tolwi-diag" in name:
        obj = obj["data"]["params"]
    return obj


def _normalized(product: Product, raw: dict[str, Any]) -> dict[str, float]:
    return normalize_values(product, raw, KeyReporter())


def _triple_failures(slug: str, values: dict[str, float]) -> tuple[int, list[str]]:
    checked, failures = 0, []
    for triple in TRIPLES.get(slug, ()):
        volts, amps, watts = (values.get(k) for k in triple[:3])
        if volts is None or amps is None or watts is None:
            continue
        va = abs(volts * amps)
        if volts == 0:  # no voltage reading: quota/all keeps each key's last report, some are stale
            continue
        checked += 1
        slack = triple.rel * max(va, abs(watts)) + triple.abs_w
        ok = abs(watts) <= va + slack if triple.ac else abs(va - abs(watts)) <= slack
        if not ok:
            failures.append(f"{triple.volts} {volts} V x {triple.amps} {amps} A = {va:.1f} VA vs {watts} W")
    return checked, failures


# --- every fixture ---------------------------------------------------------------------------------


def test_every_product_has_fixtures() -> None:
    assert sorted({slug for slug, _ in FIXTURE_CASES}) == PRODUCTS


@pytest.mark.parametrize(("slug", "name"), FIXTURE_CASES)
def test_every_fixture_key_resolves(slug: str, name: str) -> None:
    product = CATALOG.products[slug]
    raw = _decoded_fixture(slug, name)
    assert raw, f"{name} decoded to nothing"
    assert sorted(key for key in raw if product.lookup(key) is None) == []


@pytest.mark.parametrize(("slug", "name"), FIXTURE_CASES)
def test_every_converted_value_lies_in_its_range(slug: str, name: str) -> None:
    product = CATALOG.products[slug]
    outside = []
    for key, value in _normalized(product, _decoded_fixture(slug, name)).items():
        spec = product.lookup(key)
        assert spec is not None, key
        if spec.range is not None and not spec.range[0] <= value <= spec.range[1]:
            outside.append(f"{key}: {value} not in {spec.range}")
    assert outside == []


@pytest.mark.parametrize(("slug", "name"), FIXTURE_CASES)
def test_power_triples_balance(slug: str, name: str) -> None:
    _, failures = _triple_failures(slug, _normalized(CATALOG.products[slug], _decoded_fixture(slug, name)))
    assert failures == []


@pytest.mark.parametrize(("slug", "name"), FIXTURE_CASES)
def test_summary_signs(slug: str, name: str) -> None:
    product = CATALOG.products[slug]
    summary = summarize(product, _normalized(product, _decoded_fixture(slug, name)))
    for field in ("input_w", "output_w", "pv_input_w"):
        assert summary.get(field, 0.0) >= 0, field
    if "soc_percent" in summary:
        assert 0 <= summary["soc_percent"] <= 100
    stem = Path(name).stem
    if stem.endswith("_discharging"):
        assert summary.get("battery_w", -1.0) < 0
    elif stem.endswith("_charging"):
        assert summary["battery_w"] > 0


# --- every product file ----------------------------------------------------------------------------


@pytest.mark.parametrize("slug", PRODUCTS)
def test_units_carry_evidence(slug: str) -> None:
    if slug in LEGACY_EVIDENCE:
        pytest.skip("written before this rule; its header comment names the document's units")
    product = CATALOG.products[slug]
    missing = [spec.key for spec in product.all_fields() if spec.unit.symbol and not spec.evidence]
    assert missing == []


@pytest.mark.parametrize("slug", PRODUCTS)
def test_physical_fields_declare_a_range(slug: str) -> None:
    product = CATALOG.products[slug]
    missing = [
        spec.key
        for spec in product.all_fields()
        if spec.unit.symbol
        and spec.unit.quantity != "timestamp"
        and spec.kind in (Kind.MEASUREMENT, Kind.COUNTER)
        and spec.range is None
    ]
    assert missing == []


@pytest.mark.parametrize("slug", PRODUCTS)
def test_battery_products_report_health(slug: str) -> None:
    product = CATALOG.products[slug]
    if "battery_w" not in product.summary or slug == "powerstream":  # the PowerStream has no pack
        pytest.skip("no battery of its own")
    markers = {spec.health for spec in product.all_fields() if spec.health}
    assert {"soh", "cycles", "full_capacity", "design_capacity"} <= markers
    for field, marker in (("battery_soh_percent", "soh"), ("battery_cycles", "cycles")):
        ((key, sign),) = product.summary[field]
        assert sign == 1.0 and product.fields[key].health == marker


def test_serial_prefixes_and_aliases_are_unique() -> None:
    prefixes = [p for slug in PRODUCTS for p in CATALOG.products[slug].serial_prefixes]
    assert len(prefixes) == len(set(prefixes))
    for prefix in prefixes:  # no prefix shadows another product's
        owners = {slug for slug in PRODUCTS if CATALOG.by_serial(prefix + "X") is CATALOG.products[slug]}
        assert len(owners) == 1, prefix
    owner: dict[str, str] = {}
    for slug in PRODUCTS:
        product = CATALOG.products[slug]
        for name in {slugify(n) for n in (product.name, *product.aliases)}:
            assert owner.setdefault(name, slug) == slug, f"{name!r}: {owner[name]} and {slug}"
    Catalog(CATALOG.products.values())  # refuses aliases claimed twice


# --- real captures (../shared/captures) ---------------------------------------------------------------


@pytest.mark.parametrize(("slug", "name"), CAPTURE_CASES)
def test_every_capture_key_resolves(slug: str, name: str) -> None:
    values = _decoded_capture(slug, name)
    assert values, f"{name} decoded to nothing"
    product = CATALOG.products[slug]
    assert sorted(key for key in values if product.lookup(key) is None) == []


@pytest.mark.parametrize(("slug", "name"), CAPTURE_CASES)
def test_capture_values_lie_in_their_ranges(slug: str, name: str) -> None:
    product = CATALOG.products[slug]
    out = _normalized(product, _decoded_capture(slug, name))
    outside = [
        f"{key}: {value} not in {spec.range}"
        for key, value in out.items()
        if (spec := product.lookup(key)) is not None
        and spec.range is not None
        and not spec.range[0] <= value <= spec.range[1]
    ]
    assert outside == []


@pytest.mark.parametrize(("slug", "name"), CAPTURE_CASES)
def test_decode_of_a_capture_gives_balanced_si_values(
    slug: str, name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_text(json.dumps(_capture_object(name)), encoding="utf-8")
    assert main(["decode", "--product", slug, "--sn", "X", "--time-ms", "1", str(path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith(f"{slug},name=X,sn=X ")
    fields = {k: float(v) for k, v in (pair.split("=") for pair in line.split(" ")[1].split(","))}
    assert all(math.isfinite(v) for v in fields.values())
    _, failures = _triple_failures(slug, fields)
    assert failures == []


def test_cmd_envelope_keeps_the_key_space_of_the_product() -> None:
    flat = _decoded_capture("delta_pro_3", "deltapro3_unidentified-go-test_1.json")
    assert flat == {
        "fanState": 0,
        "mpptHvTemp": 25.0,
        "mpptLvTemp": 25.0,
        "pcsAcTemp": 26.0,
        "pcsDcTemp": 25.0,
        "pdTemp": 24,
        "inLvMpptVol": 33.306152,
        "inLvMpptAmp": 1.1429396,
        "bmsOutputWatts": 84.0,
    }
    assert _decoded_capture("delta_pro_3", "deltapro3_unidentified-go-test_2.json") == {
        "evChgManualCtrl": 0,
        "plugInInfoAcpRunState": 0,
    }
    plug = _decoded_capture("smart_plug", "smartplug_colombod-recording_1.json")  # same envelope, cmdFunc 2
    assert plug and all(key.startswith("2_1.") for key in plug)


# --- pinned conversions ------------------------------------------------------------------------------

# (product, fixture) -> stored values expected, written out
FIXTURE_VALUES: dict[tuple[str, str], dict[str, float]] = {
    ("delta_2", "quota_all_charging.json"): {
        "mppt.inVol": 38.45,
        "mppt.inAmp": 5.21,
        "mppt.inWatts": 200.0,
        "mppt.outVol": 53.08,
        "bms_bmsStatus.vol": 53.016,
        "bms_bmsStatus.amp": 3.27,
        "bms_bmsStatus.cellVol[15]": 3.314,
        "bms_bmsStatus.remainCap": 12.634,
        "bms_bmsStatus.designCap": 20.0,
        "bms_bmsStatus.tagChgAmp": 20.0,
        "bms_emsStatus.chgVol": 55.12,
        "bms_emsStatus.chgAmp": 25.0,
        "bms_emsStatus.chgRemainTime": 7500.0,
        "inv.cfgAcOutVol": 230.0,
        "inv.standbyMins": 43200.0,
        "mppt.cfgAcOutVol": 230.0,
        "mppt.cfgAcOutFreq": 50.0,
        "mppt.dcChgCurrent": 8.0,
        "pd.remainTime": 7500.0,
        "pd.chgSunPower": 48211.0,
        "pd.lcdOffSec": 300.0,
    },
    ("delta_2", "mqtt_inv_status_discharging.json"): {
        "inv.invOutVol": 230.48,
        "inv.invOutAmp": 1.47,
        "inv.outputWatts": 331.0,
        "inv.cfgAcOutVol": 230.0,
    },
    ("delta_2", "mqtt_bms_status_discharging.json"): {
        "bms_bmsStatus.vol": 51.84,
        "bms_bmsStatus.amp": -6.72,
        "bms_bmsStatus.outputWatts": 348.0,
        "bms_bmsStatus.cellVol[0]": 3.24,
        "bms_bmsStatus.fullCap": 19.92,
    },
    ("delta_2", "mqtt_pd_status_discharging.json"): {
        "pd.remainTime": -10980.0,
        "pd.wattsOutSum": 352.0,
        "pd.dsgPowerAC": 121210.0,
        "pd.invUsedTime": 3024600.0,
    },
    ("delta_2", "mqtt_bms_slave_status_1.json"): {  # an extra battery (typeCode bmsSlaveStatus_1)
        "bms_slave_bmsSlaveStatus_1.vol": 51.52,
        "bms_slave_bmsSlaveStatus_1.amp": -2.33,
        "bms_slave_bmsSlaveStatus_1.f32ShowSoc": 57.6,
        "bms_slave_bmsSlaveStatus_1.designCap": 20.0,
        "bms_slave_bmsSlaveStatus_1.cellVol[2]": 3.221,
        "bms_slave_bmsSlaveStatus_1.remainTime": 16980.0,
        "bms_slave_bmsSlaveStatus_1.outputWatts": 120.0,
    },
    ("delta_2", "mqtt_ems_status_discharging.json"): {
        "bms_emsStatus.dsgRemainTime": 10980.0,
        "bms_emsStatus.f32LcdShowSoc": 58.1,
    },
}

FIXTURE_VALUES |= {
    ("delta_2_max", "quota_all_charging.json"): {
        "mppt.inVol": 41.2,
        "mppt.inAmp": 7.28,
        "mppt.inWatts": 300.0,
        "mppt.pv2InVol": 39.5,
        "mppt.pv2InAmp": 6.32,
        "mppt.pv2InWatts": 249.6,
        "mppt.outVol": 53.41,
        "mppt.outAmp": 9.87,
        "bms_bmsStatus.vol": 53.33,
        "bms_bmsStatus.amp": 8.61,
        "bms_bmsStatus.designCap": 40.0,
        "inv.invOutVol": 230.15,
        "inv.invOutAmp": 0.178,
        "inv.cfgAcOutVol": 230.0,
        "inv.standbyMin": 43200.0,
        "pd.remainTime": 5880.0,
        "pd.chgSunPower": 311902.0,
    },
    ("delta_2_max", "mqtt_pd_status_discharging.json"): {
        "pd.wattsOutSum": 412.0,
        "pd.invOutWatts": 400.0,
        "pd.XT150Watts2": -120.0,
        "pd.remainTime": -15900.0,
    },
    ("delta_2_max", "mqtt_kit_info.json"): {
        "bms_kitInfo.watts[1].curPower": -118.0,
        "bms_kitInfo.watts[1].f32Soc": 44.1,
        "bms_kitInfo.watts[1].type": 81.0,
    },
    ("delta_2_max", "mqtt_inv_status_discharging.json"): {
        "inv.invOutVol": 229.87,
        "inv.invOutAmp": 1.79,
        "inv.outputWatts": 400.0,
    },
}

FIXTURE_VALUES |= {
    ("delta_max", "quota_all_charging.json"): {
        "mppt.inVol": 65.2,
        "mppt.inAmp": 6.18,
        "mppt.inWatts": 401.2,
        "mppt.outVol": 53.2,
        "mppt.outWatts": 389.8,
        "bmsMaster.vol": 53.9,
        "bmsMaster.amp": 6.12,
        "bmsMaster.cellVol[13]": 3.851,
        "bmsMaster.designCap": 40.0,
        "bmsMaster.remainTime": 9120.0,
        "inv.invOutVol": 230.12,
        "inv.invOutAmp": 0.412,
        "inv.cfgAcOutVoltage": 230.0,
        "inv.cfgStandbyMin": 43200.0,
        "mppt.cfgDcChgCurrent": 8.0,
        "pd.remainTime": 9120.0,
        "pd.chgSunPower": 210345.0,
        "pd.invUsedTime": 4012330.0,
        "ems.chgVol": 58.8,
        "ems.chgAmp": 30.0,
    },
    ("delta_max", "mqtt_quota_discharging.json"): {
        "pd.remainTime": -9480.0,
        "inv.invOutVol": 229.87,
        "bmsMaster.amp": -12.05,
        "ems.dsgRemainTime": 9480.0,
    },
}

FIXTURE_VALUES |= {
    ("delta_pro_3", "quota_all_charging.json"): {
        "powGetPvH": 612.3,
        "powGetPvHVol": 154.2,
        "bmsDesignCap": 80.0,
        "cmsBattFullEnergy": 4096.0,
        "bleStandbyTime": 2592000.0,
        "devStandbyTime": 1800.0,
        "cmsChgRemTime": 3720.0,
        "generatorCareModeStartTime": 79200.0,
        "quota_device_ts": 1781440269.0,
    },
    ("delta_pro_3", "quota_all_discharging.json"): {
        "powOutSumW": 462.3,
        "bmsBattVol": 52.47,
        "bmsBattAmp": -9.21,
        "cmsDsgRemTime": 23880.0,
    },
}

FIXTURE_VALUES |= {
    ("smart_plug", "quota_all.json"): {
        "2_1.watts": 189.3,
        "2_1.current": 0.872,
        "2_1.volt": 231.0,
        "2_1.maxCur": 10.0,
        "2_1.consWatt": -189.3,
        "2_1.geneWatt": 412.0,
        "2_1.switchSta": 1.0,
        "2_1.runTime": 611204.0,
        "2_2.task1.timeRange.startTime.hour": 7.0,
        "2_2.task1.timeRange.isEnable": 1.0,
    },
    ("smart_plug", "mqtt_heartbeat.json"): {"2_1.watts": 65.2, "2_1.current": 0.318, "2_1.dstTime": 3600.0},
    ("smart_plug", "mqtt_heartbeat_param_off.json"): {
        "2_1.watts": 0.0,
        "2_1.switchSta": 0.0,
        "2_1.maxWatts": 2500.0,
    },
}

FIXTURE_VALUES |= {
    ("smart_meter", "push_three_phases.json"): {
        "powGetSysGrid": 512.25,
        "gridConnectionPowerL3": -612.25,
        "gridConnectionVolL1": 231.4,
        "gridConnectionAmpL1": 4.21,
        "gridConnectionFlagL2": 1.0,
    },
    ("smart_meter", "push_records.json"): {
        "gridConnectionDataRecord.totalActiveEnergy": 4410233.0,
        "gridConnectionDataRecord.todayActiveL3": 695902.0,
        "displayPropertyFullUploadPeriod": 120.0,
        "runtimePropertyIncrementalUploadPeriod": 60.0,
        "debugModeEnable": 0.0,
    },
}

FIXTURE_VALUES |= {
    ("stream", "push_ultra_charging.json"): {
        "powGetPv": 611.2,
        "plugInInfoPvVol": 38.4,
        "vBat": 20.54,
        "designCap": 100.0,
        "bmsChgRemTime": 3120.0,
        "relay2Onoff": 1.0,
    },
    ("stream", "quota_all_discharging.json"): {
        "cloudMetter.phaseAPower": 102.0,
        "gridConnectionPower": 598.2,
        "powGetBpCms": -612.5,
        "vBat": 19.31,
    },
    ("stream", "push_ac_pro_ems.json"): {
        "v1p0.chgVol": 22.017,
        "v1p0.chgAmp": 90.0,
        "v1p0.dsgRemainTime": 18660.0,
        "v1p0.bmsIsConnt[2]": 1.0,
        "ongridVinRms": 231.2,
        "iotLan1PlugConsPwr": -45.5,
        "displayPropertyIncrementalUploadPeriod": 2.0,
        "invIl1Rms": 22.0,
    },
}

# (product, fixture) -> keys that arrive but are not written (sentinels)
FIXTURE_SENTINELS: dict[tuple[str, str], tuple[str, ...]] = {
    ("delta_2", "quota_all_charging.json"): (
        "bms_bmsStatus.chgCap",
        "bms_bmsStatus.dsgCap",
        "bms_bmsStatus.ecloudOcv",
        "bms_emsStatus.dsgRemainTime",
        "pd.minAcoutSoc",
        "pd.minDsgSoc",
        "pd.minChgSoc",
    ),
    ("delta_2", "mqtt_bms_status_discharging.json"): ("bms_bmsStatus.chgCap",),
    ("delta_max", "quota_all_charging.json"): ("ems.dsgRemainTime",),
    ("delta_max", "mqtt_quota_discharging.json"): ("ems.chgRemainTime",),
    ("smart_plug", "quota_all.json"): ("2_1.mqttErrTime", "2_1.wifiErrTime"),
    ("stream", "push_ultra_charging.json"): ("bmsDsgRemTime",),
    ("stream", "push_ac_pro_ems.json"): ("v1p0.chgRemainTime",),
    ("delta_2", "mqtt_ems_status_discharging.json"): ("bms_emsStatus.chgRemainTime",),
}

FIXTURE_SUMMARIES: dict[tuple[str, str], dict[str, float]] = {
    ("delta_max", "quota_all_charging.json"): {
        "soc_percent": 60.0,
        "input_w": 401.0,
        "output_w": 63.0,
        "pv_input_w": 401.2,
        "battery_w": 338.0,
        "battery_soh_percent": 98.0,
        "battery_cycles": 143.0,
    },
    ("delta_max", "mqtt_quota_discharging.json"): {
        "soc_percent": 56.8,
        "input_w": 0.0,
        "output_w": 612.0,
        "battery_w": -612.0,
    },
    ("stream", "push_ultra_charging.json"): {
        "soc_percent": 61.0,
        "pv_input_w": 1194.0,
        "battery_w": 548.0,
        "battery_soh_percent": 100.0,
        "battery_cycles": 88.0,
    },
    ("stream", "quota_all_discharging.json"): {
        "soc_percent": 33.0,
        "pv_input_w": 0.0,
        "battery_w": -621.0,
        "battery_soh_percent": 100.0,
        "battery_cycles": 88.0,
    },
    ("smart_plug", "quota_all.json"): {"output_w": 189.3},
    ("smart_plug", "mqtt_heartbeat.json"): {"output_w": 65.2},
    ("delta_pro_3", "quota_all_charging.json"): {
        "soc_percent": 46.3,
        "input_w": 1860.8,
        "output_w": 200.2,
        "pv_input_w": 650.4,
        "battery_w": 1660.6,
        "battery_soh_percent": 100.0,
        "battery_cycles": 27.0,
    },
    ("delta_pro_3", "quota_all_discharging.json"): {
        "soc_percent": 71.8,
        "input_w": 0.0,
        "output_w": 462.3,
        "pv_input_w": 0.0,
        "battery_w": -462.3,
        "battery_soh_percent": 100.0,
        "battery_cycles": 27.0,
    },
    ("delta_2_max", "quota_all_charging.json"): {
        "soc_percent": 71.2,
        "input_w": 550.0,
        "output_w": 64.0,
        "pv_input_w": 549.6,
        "battery_w": 486.0,
        "battery_soh_percent": 98.0,
        "battery_cycles": 112.0,
    },
    ("delta_2_max", "mqtt_pd_status_discharging.json"): {
        "input_w": 120.0,
        "output_w": 412.0,
        "battery_w": -292.0,
    },
    ("delta_2", "quota_all_charging.json"): {
        "soc_percent": 63.4,
        "input_w": 200.0,
        "output_w": 18.0,
        "pv_input_w": 200.0,
        "battery_w": 182.0,
        "battery_soh_percent": 100.0,
        "battery_cycles": 41.0,
    },
    ("delta_2", "mqtt_pd_status_discharging.json"): {
        "input_w": 0.0,
        "output_w": 352.0,
        "battery_w": -352.0,
    },
}


@pytest.mark.parametrize(("slug", "name"), sorted(FIXTURE_VALUES))
def test_fixture_conversions(slug: str, name: str) -> None:
    out = _normalized(CATALOG.products[slug], _decoded_fixture(slug, name))
    expected = FIXTURE_VALUES[(slug, name)]
    assert {key: out.get(key) for key in expected} == expected


@pytest.mark.parametrize(("slug", "name"), sorted(FIXTURE_SENTINELS))
def test_fixture_sentinels_are_not_written(slug: str, name: str) -> None:
    raw = _decoded_fixture(slug, name)
    out = _normalized(CATALOG.products[slug], raw)
    for key in FIXTURE_SENTINELS[(slug, name)]:
        assert key in raw and key not in out, key


@pytest.mark.parametrize(("slug", "name"), sorted(FIXTURE_SUMMARIES))
def test_fixture_summaries(slug: str, name: str) -> None:
    product = CATALOG.products[slug]
    assert (
        summarize(product, _normalized(product, _decoded_fixture(slug, name)))
        == FIXTURE_SUMMARIES[(slug, name)]
    )


def _capture_values(slug: str, name: str) -> dict[str, float]:
    return _normalized(CATALOG.products[slug], _decoded_capture(slug, name))


def test_delta_2_capture() -> None:
    out = _capture_values("delta_2", "delta2_rustyy-fixture_1.json")
    assert out["bms_bmsStatus.vol"] == 52.161
    assert out["bms_bmsStatus.amp"] == -3.753
    assert out["bms_bmsStatus.vol"] * out["bms_bmsStatus.amp"] == pytest.approx(-195.8, abs=0.05)
    assert out["bms_bmsStatus.cellVol[2]"] == 3.261
    assert out["bms_bmsStatus.designCap"] == 20.0
    assert out["bms_emsStatus.chgVol"] == 54.199
    assert out["bms_emsStatus.dsgRemainTime"] == 164 * 60.0
    assert out["pd.remainTime"] == -164 * 60.0
    assert out["mppt.outVol"] == 52.351
    assert out["mppt.inVol"] == 1.486
    assert out["inv.cfgAcOutVol"] == 230.0
    assert out["inv.cfgAcOutFreq"] == 1.0
    assert out["mppt.cfgAcOutVol"] == 230.0
    assert out["bms_kitInfo.watts[0].curPower"] == 199.0
    for key in (
        "bms_bmsStatus.chgCap",
        "bms_bmsStatus.dsgCap",
        "bms_bmsStatus.ecloudOcv",
        "bms_emsStatus.chgRemainTime",
    ):
        assert key not in out
    assert summarize(CATALOG.products["delta_2"], out) == {
        "soc_percent": 46.2,
        "input_w": 0.0,
        "output_w": 201.0,
        "pv_input_w": 0.0,
        "battery_w": -201.0,
        "battery_soh_percent": 99.0,
        "battery_cycles": 73.0,
    }


def test_delta_2_mqtt_reports_get_their_quota_all_prefix() -> None:
    out = _capture_values("delta_2", "delta2_official-doc_2.json")
    assert out == {"bms_bmsStatus.vol": 53.251, "bms_bmsStatus.amp": -0.138, "bms_bmsStatus.f32ShowSoc": 79.3}
    pd = _capture_values("delta_2", "delta2_official-doc_1.json")
    assert pd["pd.soc"] == 79.0 and "pd.remainTime" not in pd  # -5939: not applicable
    inv = _capture_values("delta_2", "delta2_official-doc_5.json")
    assert inv["inv.invOutVol"] == 229.104


def test_delta_2_max_mqtt_reports() -> None:
    pd = _capture_values("delta_2_max", "delta2max_unidentified-go-test_3.json")
    assert pd == {
        "pd.XT150Watts2": -96.0,
        "pd.wattsInSum": 96.0,
        **{f"pd.icoBytes[{i}]": 0.0 for i in range(14)},
    } | {
        "pd.icoBytes[1]": 8.0,
        "pd.icoBytes[2]": 136.0,
        "pd.icoBytes[4]": 128.0,
    }
    kit = _capture_values("delta_2_max", "delta2max_unidentified-go-test_2.json")
    assert kit["bms_kitInfo.watts[1].curPower"] == -100.0
    assert kit["bms_kitInfo.watts[1].f32Soc"] == 26.25
    out = _capture_values("delta_2_max", "delta2max_unidentified-go-test_1.json")
    assert out["pd.wattsOutSum"] == out["pd.invOutWatts"] == 136.0
    assert out["pd.remainTime"] == 444 * 60.0


def test_delta_pro_3_capture() -> None:
    out = _capture_values("delta_pro_3", "deltapro3_taraskhust-dump_1.json")
    assert out["bmsDesignCap"] == 80.0  # 80000 mAh x 51.2 V = 4096 Wh
    assert out["cmsBattFullEnergy"] == 8192.0  # main pack + one extra battery
    assert out["bleStandbyTime"] == 2592000.0  # 30 days, in seconds
    assert out["xboostEn"] == 1.0  # booleans become 0/1
    assert out["plugInInfo4p82Resv.resvInfo[3]"] == 80000.0
    assert "stormPatternEndTime" not in out and "quota_device_ts" not in out  # 0 = not set
    summary = summarize(CATALOG.products["delta_pro_3"], out)
    assert summary == {
        "soc_percent": 100.0,
        "input_w": 0.0,
        "output_w": 0.0,
        "pv_input_w": 0.0,
        "battery_w": 0.0,
        "battery_soh_percent": 100.0,
    }


def test_smart_plug_captures() -> None:
    quota = _capture_values("smart_plug", "smartplug_colombod-recording_4.json")
    assert quota["2_1.watts"] == 107.0
    assert quota["2_1.volt"] * quota["2_1.current"] == pytest.approx(304.32)  # VA >= W: 0.1 W, not W
    assert quota["2_1.maxWatts"] == 3250.0
    assert quota["2_1.mqttErrTime"] == 1789913649.0
    pushed = _capture_values("smart_plug", "smartplug_colombod-recording_1.json")
    assert (
        pushed["2_1.runTime"] - quota["2_1.runTime"] == pushed["2_1.utcTime"] - quota["2_1.utcTime"] == 49.0
    )
    vector = _capture_values("smart_plug", "smartplug_colombod-vector_1.json")
    assert summarize(CATALOG.products["smart_plug"], vector) == {"output_w": 264.0}


def test_smart_meter_captures() -> None:
    vector = _capture_values("smart_meter", "smartmeter_colombod-vector_1.json")
    phases = sum(vector[f"gridConnectionPower{p}"] for p in ("L1", "L2", "L3"))
    assert vector["powGetSysGrid"] == phases == 4917.057
    assert vector["gridConnectionVolL1"] * vector["gridConnectionAmpL1"] == pytest.approx(5129.3, abs=0.1)
    pushed = _capture_values("smart_meter", "smartmeter_colombod-recording_1.json")
    assert pushed["gridConnectionDataRecord.totalActiveEnergy"] == 12825839.0
    assert summarize(CATALOG.products["smart_meter"], pushed) == {}  # a meter feeds no summary
    empty = decode_object(_capture_object("smartmeter_colombod-recording_3.json"))
    assert empty.values == {}  # quota/all success without `data`


def test_stream_captures_balance() -> None:
    for name in ("streamultra_colombod-recording_2.json", "streamultra_colombod-recording_3.json"):
        out = _capture_values("stream", name)
        assert out["powGetSysGrid"] == pytest.approx(out["powGetSysLoad"] + out["powGetBpCms"], abs=0.01)
    charging = _capture_values("stream", "streamultra_colombod-recording_2.json")
    assert charging["powGetBpCms"] == 37.375 and charging["bmsChgDsgState"] == 2.0  # positive = charging
    vector = _capture_values("stream", "streamultra_colombod-vector_1.json")
    assert 100 * vector["remainCap"] / vector["fullCap"] == pytest.approx(46.495)
    assert summarize(CATALOG.products["stream"], vector) == {
        "soc_percent": 45.0,
        "pv_input_w": 0.0,
        "battery_w": 970.0,
        "battery_soh_percent": 100.0,
        "battery_cycles": 219.0,
    }
    ems = _capture_values("stream", "streamacpro_colombod-recording_3.json")
    assert ems["v1p0.chgVol"] == 22.017 and "v1p0.chgRemainTime" not in ems


def _fixture_values(slug: str, name: str) -> dict[str, float]:
    return _normalized(CATALOG.products[slug], _decoded_fixture(slug, name))


def test_river_2_pro_fixtures() -> None:
    product = CATALOG.products["river_2_pro"]
    charging = _fixture_values("river_2_pro", "quota_all_charging.json")
    assert {key: charging.get(key) for key in RIVER_2_PRO_CHARGING} == RIVER_2_PRO_CHARGING
    assert "bms_emsStatus.dsgRemainTime" not in charging  # 5999: not applicable
    assert summarize(product, charging) == {
        "soc_percent": 54.3,
        "input_w": 700.0,
        "output_w": 45.0,
        "pv_input_w": 180.0,
        "battery_w": 655.0,
        "battery_soh_percent": 99.0,
        "battery_cycles": 37.0,
    }
    pd = _fixture_values("river_2_pro", "mqtt_pd_status_discharging.json")
    assert pd["pd.remainTime"] == -5880.0 and pd["pd.typec1Watts"] == 18.0
    assert summarize(product, pd) == {"input_w": 0.0, "output_w": 312.0, "battery_w": -312.0}
    bms = _fixture_values("river_2_pro", "mqtt_bms_status_discharging.json")
    assert bms["bms_bmsStatus.vol"] == 20.0  # whole volts (a real answer: 20 beside 6 cells of 3.443 V)
    assert bms["bms_bmsStatus.amp"] == -14.0  # whole amperes
    assert bms["bms_bmsStatus.remainCap"] == 25.474 and bms["bms_bmsStatus.designCap"] == 40.0
    assert bms["bms_bmsStatus.maxCellVol"] == 3.321 and bms["bms_bmsStatus.outputWatts"] == 296.0
    ems = _fixture_values("river_2_pro", "mqtt_ems_status_discharging.json")
    assert ems["bms_emsStatus.dsgRemainTime"] == 5880.0 and ems["bms_emsStatus.chgVol"] == 21.0
    assert "bms_emsStatus.chgRemainTime" not in ems


def test_smart_home_panel_fixtures() -> None:
    product = CATALOG.products["smart_home_panel"]
    quota = _fixture_values("smart_home_panel", "quota_all.json")
    assert {key: quota.get(key) for key in SMART_HOME_PANEL_QUOTA} == SMART_HOME_PANEL_QUOTA
    assert "areaInfo.area" not in quota and "loadChInfo.info[0].chName" not in quota  # text
    assert summarize(product, quota) == {}  # the DELTA Pro batteries report themselves
    pushed = _fixture_values("smart_home_panel", "mqtt_channel_power.json")
    assert pushed["infoList[10].chWatt"] == 160.0 and pushed["infoList[5].chWatt"] == 1502.0
    assert pushed["infoList[11].powType"] == 0.0 and len(pushed) == 24


SMART_HOME_PANEL_QUOTA = {
    "heartbeat.workTime": 1209600.0,  # ms: 14 days
    "heartbeat.backupFullCap": 151.2,
    "heartbeat.backupBatPer": 63.0,
    "heartbeat.backupChaTime": 611.0,  # stored raw: the real panels disagree on its unit
    "heartbeat.gridDayWatth": 3120.5,
    "heartbeat.energyInfos[0].dischargeTime": 36660.0,
    "heartbeat.energyInfos[0].fullCap": 80.0,
    "heartbeat.energyInfos[0].outputPower": 388.0,
    "heartbeat.energyInfos[1].stateBean.isConnect": 0.0,
    "channelPower.infoList[10].chWatt": 362.5,
    "channelPower.infoList[5].chWatt": 1480.75,
    "mainsLoadWatt.watth[3][7]": 88.0,
    "topupLoadWatt.watth[0][3]": 410.0,
    "loadChCurInfo.cur[5]": 30.0,
    "selfCheck.vIn[1]": 231.25,
    "gridInfo.gridVol": 230.0,
    "backupChaDiscCfg.discLower": 15.0,
}


def test_smart_home_panel_capture() -> None:
    out = _capture_values("smart_home_panel", "smarthomepanel_rustyy-fixture_1.json")
    assert out["heartbeat.workTime"] == 3367545.276  # 39 days: ms, not the document's minutes
    assert out["heartbeat.backupFullCap"] == 304.0  # 4 packs of 80 Ah at 95 %
    assert out["heartbeat.backupBatPer"] == 77.0
    levels = [out[f"heartbeat.energyInfos[{i}].batteryPercentage"] for i in (0, 1)]
    assert sum(levels) / 2 == 76.5  # the combined level is their mean
    assert out["channelPower.infoList[11].chWatt"] == 31.707523
    assert out["heartbeat.energyInfos[1].outputPower"] == 42.0
    assert out["mainsLoadWatt.watth[0][3]"] == 111.0
    assert out["gridInfo.gridVol"] == 120.0 and out["selfCheck.vIn[0]"] == 115.13682
    assert summarize(CATALOG.products["smart_home_panel"], out) == {}


def test_delta_pro_ultra_fixtures() -> None:
    product = CATALOG.products["delta_pro_ultra"]
    show, backend = "hs_yj751_pd_appshow_addr.", "hs_yj751_pd_backend_addr."
    charging = _fixture_values("delta_pro_ultra", "quota_all_solar_and_grid_in.json")
    assert charging[f"{show}remainTime"] == 12720.0  # 212 min
    assert charging[f"{backend}inHvMpptVol"] == 310.2 and charging[f"{backend}inHvMpptAmp"] == 5.82
    assert charging[f"{backend}outAcL11Pf"] == 60.0
    assert charging["hs_yj751_pd_app_set_info_addr.screenStandbySec"] == 300.0
    assert charging["hs_yj751_pd_app_set_info_addr.acStandbyMins"] == 43200.0
    assert "hs_yj751_pd_app_set_info_addr.sysTimezoneId" not in charging  # text
    assert summarize(product, charging) == {
        "soc_percent": 47.0,
        "input_w": 3704.5,
        "output_w": 246.25,
        "pv_input_w": 2202.5,
    }
    out = _fixture_values("delta_pro_ultra", "quota_all_ac_out.json")
    assert out[f"{show}outAcTtPwr"] == 2401.0 and out[f"{backend}outAcTtVol"] == 240.2
    assert out[f"{show}remainTime"] == 15900.0
    assert summarize(product, out) == {
        "soc_percent": 63.0,
        "input_w": 0.0,
        "output_w": 3742.5,
        "pv_input_w": 0.0,
    }


RIVER_2_PRO_CHARGING = {
    "mppt.inVol": 36.21,
    "mppt.inAmp": 4.97,
    "mppt.inWatts": 180.0,
    "mppt.outVol": 20.31,
    "mppt.outAmp": 8.62,
    "mppt.faultCode": 0.0,
    "mppt.scrStandbyMin": 300.0,  # seconds, as the lcdCfg command sets it
    "mppt.acStandbyMins": 43200.0,
    "mppt.dcChgCurrent": 8.0,
    "inv.acInVol": 230.87,
    "inv.acInAmp": 2.31,
    "inv.invOutVol": 230.104,
    "inv.invOutAmp": 0.26,
    "bms_bmsStatus.vol": 20.0,
    "bms_bmsStatus.amp": 30.0,
    "bms_bmsStatus.maxCellVol": 3.391,
    "bms_bmsStatus.designCap": 40.0,
    "bms_bmsStatus.remainCap": 19.537,
    "bms_bmsStatus.tagChgAmp": 36.0,
    "bms_emsStatus.chgVol": 21.0,
    "bms_emsStatus.chgAmp": 30.0,
    "bms_emsStatus.chgRemainTime": 2280.0,
    "pd.remainTime": 2280.0,
    "pd.chgSunPower": 12044.0,
    "pd.lcdOffSec": 60.0,
}


# --- docs/products.md ------------------------------------------------------------------------------


def test_products_doc_is_current() -> None:
    text = (ROOT / "docs" / "products.md").read_text(encoding="utf-8")
    assert text == products_markdown(CATALOG), (
        "regenerate with: ecoflow-collector schema --markdown > docs/products.md"
    )
