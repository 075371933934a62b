"""Every simulated product against its catalog file: keys, ranges, units, envelopes, balances, energy.

The simulator computes SI values and sends them through the catalog (collector/simulator/codec.py);
these tests read what it sends the way the collector does (decode, normalize, summarize) and check it
against the physics. Time is a manual clock, so a simulated day takes a fraction of a second.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from collector.catalog import PRODUCTS_DIR, Product, default_catalog, load_catalog
from collector.decoding import TopicKind, decode_bytes, decode_object, flatten
from collector.history.energy import COUNTERS, POWER_FIELDS
from collector.normalize import KeyReporter, normalize_values, summarize
from collector.simulator.clock import ManualClock
from collector.simulator.codec import Codec
from collector.simulator.commands import resolve
from collector.simulator.devices import PRODUCTS, DeviceSpec, SimDevice, make_devices
from collector.simulator.publisher import report_payloads
from tests.test_catalog import FIXTURES, TRIPLES, _triple_failures

MIDNIGHT = 1_700_006_400.0  # 2023-11-15 00:00 UTC; the default site's solar noon is 12:00 UTC
HOUR = 3600.0
SLUGS = sorted(PRODUCTS)
CATALOG = default_catalog()
_INDEX = re.compile(r"\[\d+\]")


def _device(slug: str, clock: ManualClock, seed: int = 7, **options: Any) -> SimDevice:
    (device,) = make_devices(f"{slug}=1", clock=clock, rng=random.Random(seed))
    for key, value in options.items():
        setattr(device, key, value)
    return device


def _stored(product: Product, values: dict[str, Any]) -> dict[str, float]:
    return normalize_values(product, flatten(values), KeyReporter())


def _day(clock: ManualClock, device: SimDevice, step_s: float) -> Iterator[dict[str, Any]]:
    start = clock()
    while clock() - start <= 24 * HOUR:
        yield device.snapshot()
        clock.advance(step_s)


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(MIDNIGHT)


# Catalog products the local cloud cannot simulate, each with the reason (none so far). A product
# listed here is left out knowingly; every other catalog file needs a simulator.
NOT_SIMULATED: dict[str, str] = {}


def test_every_catalog_product_is_simulated() -> None:
    assert set(SLUGS) <= set(CATALOG.products), "a simulated product without a catalog file"
    assert not set(NOT_SIMULATED) & set(SLUGS), "a product both simulated and excluded"
    assert set(NOT_SIMULATED) <= set(CATALOG.products), "an excluded product without a catalog file"
    missing = sorted(set(CATALOG.products) - set(SLUGS) - set(NOT_SIMULATED))
    assert missing == [], (
        f"no simulated device for {', '.join(missing)}: add a SimDevice class for each (physics in SI "
        "through its catalog file, collector/simulator/, CONTRIBUTING.md section 4) to PRODUCTS of "
        "collector/simulator/devices.py, or list the product in NOT_SIMULATED of "
        "tests/test_sim_products.py with the reason it cannot be simulated"
    )


@pytest.mark.parametrize("slug", SLUGS)
def test_identity_comes_from_the_catalog(slug: str, clock: ManualClock) -> None:
    device = _device(slug, clock)
    product = CATALOG.products[slug]
    entry = device.list_entry()
    assert device.sn.startswith(product.serial_prefixes[0]) and len(device.sn) == 16
    assert entry["productName"] == product.name and device.device_name.startswith(f"{product.name}-")
    assert CATALOG.identify(entry["productName"], device.sn) == (slug, product)
    assert CATALOG.identify(None, device.sn) == (slug, product)  # a list without productName


@pytest.mark.parametrize("slug", SLUGS)
def test_every_key_resolves_and_lies_in_its_range(slug: str, clock: ManualClock) -> None:
    device = _device(slug, clock)
    product = CATALOG.products[slug]
    for values in _day(clock, device, step_s=2 * HOUR):
        for key, value in flatten(values).items():
            spec = product.lookup(key)
            assert spec is not None, f"{slug}: {key} is not in the catalog"
            if isinstance(value, str) or value in spec.sentinels or spec.range is None:
                continue
            stored = value * spec.mul / spec.div
            assert spec.range[0] <= stored <= spec.range[1], f"{slug}: {key}={value} outside {spec.range}"


# Keys of a product's fixtures (what real devices report) its simulator leaves out, as key
# prefixes, with the reason. Each entry must still leave something out: the list shrinks as the
# simulators learn more.
FIXTURE_KEYS_NOT_SIMULATED: dict[str, tuple[tuple[str, ...], str]] = {
    "delta_2": (("bms_slave_bmsSlaveStatus_1.",), "the simulated DELTA 2 has no extra battery"),
    "delta_pro": (("bmsSlave1.",), "the simulated DELTA Pro has no extra battery"),
    "powerocean": (
        ("emsErrCode.errCode",),
        "the simulated system has no fault: its empty code list flattens to no key",
    ),
    "powerstream": (
        ("20_1.eventInfo.mqttSuccessCount", "20_1.fisoRxyz"),
        "diagnostics of one capture's firmware, not simulated",
    ),
}


@pytest.mark.parametrize("slug", SLUGS)
def test_every_field_a_real_device_reports_is_simulated(slug: str, clock: ManualClock) -> None:
    """Every catalog field of the product's fixtures is in the simulated quota/all or MQTT reports
    (`status` is the /status topic's, sent apart)."""
    product = CATALOG.products[slug]
    fields = {spec.key for spec in CATALOG.products[slug].all_fields()}

    def field(key: str) -> str:
        spec = product.lookup(key)
        assert spec is not None and spec.key in fields, (slug, key)
        return spec.key

    real = {
        field(key)
        for path in sorted((FIXTURES / slug).glob("*.json"))
        for key in decode_bytes(path.read_bytes(), cmd_prefix=product.cmd_prefix).values
        if key != "status"
    }
    clock.set(MIDNIGHT + 12 * HOUR)
    device = _device(slug, clock)
    simulated = {
        field(key) for values in (device.snapshot(), device.full_report()) for key in flatten(values)
    }
    prefixes, _reason = FIXTURE_KEYS_NOT_SIMULATED.get(slug, ((), ""))
    left_out = sorted(real - simulated)
    assert [key for key in left_out if not key.startswith(prefixes)] == []
    assert all(any(key.startswith(prefix) for key in left_out) for prefix in prefixes), (slug, left_out)


@pytest.mark.parametrize("slug", SLUGS)
def test_every_sent_value_is_the_physics_value_in_the_catalog_unit(
    slug: str, clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the simulator computed (SI), the collector's normalizer gives back within rounding."""
    sent: list[tuple[str, float, float]] = []
    encode = Codec.encode

    def recording(codec: Codec, key: str, value: Any) -> Any:
        out = encode(codec, key, value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            sent.append((key, float(value), out))
        return out

    monkeypatch.setattr(Codec, "encode", recording)
    device = _device(slug, clock)
    clock.set(MIDNIGHT + 11 * HOUR)
    device.snapshot()
    product = CATALOG.products[slug]
    assert len({key for key, _, _ in sent}) > 10
    for key, physics, raw in sent:
        spec = product.lookup(key)
        assert spec is not None
        if raw in spec.sentinels:
            continue
        stored = normalize_values(product, {key: raw}, KeyReporter())[key]
        quantum = spec.mul / spec.div  # one count of the sent unit
        is_float = key in device.float_keys or _INDEX.sub("", key) in device.float_keys
        digits = 0.0005 if is_float else 0.5
        assert abs(stored - physics) <= quantum * digits * 1.000001, (key, physics, raw, stored)


def test_a_unit_fixed_in_the_catalog_reaches_the_simulator(tmp_path: Path, clock: ManualClock) -> None:
    """The DELTA 2's PV voltage in 0.01 V instead of mV, the PowerStream's AC power in W instead of
    0.1 W: the simulator sends the same physics in the new units, with no change of its own."""
    changed = tmp_path / "products"
    shutil.copytree(PRODUCTS_DIR, changed)
    for name, key, old, new in (
        ("delta_2.toml", "inVol", 'unit = "mV"', 'unit = "0.01V"'),
        ("powerstream.toml", "invOutputWatts", 'unit = "0.1W"', 'unit = "W"'),
    ):
        path = changed / name
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{key} = ") and old in line]
        lines[index] = lines[index].replace(old, new, 1)
        path.write_text("".join(lines), encoding="utf-8")
    fixed = load_catalog(changed)
    clock.set(MIDNIGHT + 12 * HOUR)  # noon: PV and the inverter work
    for slug, key, ratio in (("delta_2", "mppt.inVol", 10), ("powerstream", "20_1.invOutputWatts", 10)):
        before = make_devices(f"{slug}=1", clock=clock, rng=random.Random(5))[0].snapshot()[key]
        after = make_devices(f"{slug}=1", clock=clock, rng=random.Random(5), catalog=fixed)[0].snapshot()[key]
        assert before > 100 and after == round(before / ratio), (slug, before, after)
        assert fixed.products[slug].lookup(key) is not None
        spec_before, spec_after = CATALOG.products[slug].lookup(key), fixed.products[slug].lookup(key)
        assert spec_before is not None and spec_after is not None
        assert after * spec_after.mul / spec_after.div == pytest.approx(
            before * spec_before.mul / spec_before.div, abs=spec_after.mul / spec_after.div
        )


# (catalog file, field as the file names it, unit before, unit after, a sent key of that field, how
# many of the new unit make one of the old): floats, integers, array elements, nested objects
UNIT_CHANGES = (
    ("delta_pro_ultra", "inHvMpptVol", "V", "0.1V", "hs_yj751_pd_backend_addr.inHvMpptVol", 10),
    ("delta_pro_ultra", "remainTime", "min", "s", "hs_yj751_pd_appshow_addr.remainTime", 60),
    (
        "smart_home_panel",
        '"energyInfos.lcdInputWatts"',
        "W",
        "0.1W",
        "heartbeat.energyInfos[0].lcdInputWatts",
        10,
    ),
    ("smart_home_panel", '"energyInfos.chargeTime"', "min", "s", "heartbeat.energyInfos[0].chargeTime", 60),
)


@pytest.mark.parametrize(("slug", "field", "old", "new", "key", "ratio"), UNIT_CHANGES)
def test_a_unit_fixed_in_the_catalog_reaches_the_new_products(
    tmp_path: Path, clock: ManualClock, slug: str, field: str, old: str, new: str, key: str, ratio: int
) -> None:
    """The same for the DELTA Pro Ultra and the Smart Home Panel: a changed unit in their catalog
    files changes what the simulator sends, and what the collector stores stays the physics."""
    changed = tmp_path / "products"
    shutil.copytree(PRODUCTS_DIR, changed)
    path = changed / f"{slug}.toml"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    (index,) = [
        i for i, line in enumerate(lines) if line.startswith(f"{field} = ") and f'unit = "{old}"' in line
    ]
    lines[index] = lines[index].replace(f'unit = "{old}"', f'unit = "{new}"', 1)
    path.write_text("".join(lines), encoding="utf-8")
    fixed = load_catalog(changed)
    clock.set(MIDNIGHT + 12 * HOUR)  # noon: solar comes in, the battery charges
    before = _sent(make_devices(f"{slug}=1", clock=clock, rng=random.Random(5))[0].snapshot(), key)
    after = _sent(
        make_devices(f"{slug}=1", clock=clock, rng=random.Random(5), catalog=fixed)[0].snapshot(), key
    )
    spec_before, spec_after = CATALOG.products[slug].lookup(key), fixed.products[slug].lookup(key)
    assert spec_before is not None and spec_after is not None
    assert spec_after.mul / spec_after.div * ratio == pytest.approx(spec_before.mul / spec_before.div)
    assert before > 100 / ratio, (slug, key, before)  # a value that shows the change
    assert after == pytest.approx(before * ratio, abs=ratio / 2 + 0.001), (slug, key, before, after)
    quantum = spec_before.mul / spec_before.div
    assert after * spec_after.mul / spec_after.div == pytest.approx(before * quantum, abs=quantum / 2 + 0.001)


def _sent(values: dict[str, Any], key: str) -> float:
    """The sent number of a flattened key (array elements, nested objects)."""
    value = flatten(values)[key]
    assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
    return float(value)


@pytest.mark.parametrize("slug", SLUGS)
def test_mqtt_reports_decode_into_the_quota_key_space(slug: str, clock: ManualClock) -> None:
    device = _device(slug, clock)
    product = CATALOG.products[slug]
    full = device.full_report()
    clock.advance(HOUR)
    incremental = device.incremental_report(limit=6)
    for values in (full, incremental):
        decoded: dict[str, Any] = {}
        messages = report_payloads(device, values, random.Random(1))
        for payload, keys in messages:
            body = decode_object(json.loads(json.dumps(payload)), TopicKind.QUOTA, product.cmd_prefix).values
            assert set(body) == set(flatten({key: values[key] for key in keys}))
            decoded.update(body)
        assert decoded == flatten(values)
        assert all(product.lookup(key) is not None for key in decoded)
    if device.report_modules:  # DELTA 2 family: one message per module, typeCode as the device sends it
        shapes = {
            (p["typeCode"], p["moduleType"]) for p, _ in report_payloads(device, full, random.Random(1))
        }
        assert shapes <= set(device.report_modules.values()) and len(shapes) >= 5
    status = decode_bytes(json.dumps({"params": {"status": 1}}), TopicKind.STATUS)
    assert status.online == 1


def test_envelopes_as_the_real_devices_send_them(clock: ManualClock) -> None:
    rng = random.Random(3)
    plug = _device("smart_plug", clock)
    ((payload, _),) = report_payloads(plug, {"2_1.watts": 652, "2_1.volt": 229}, rng, new_shape_share=0.0)
    assert payload == {"cmdId": 1, "cmdFunc": 2, "param": {"watts": 652, "volt": 229}}
    dp3 = _device("delta_pro_3", clock)
    ((payload, _),) = report_payloads(dp3, {"powInSumW": 12.5}, rng)
    assert payload == {
        "cmdId": 2,
        "cmdFunc": 2,
        "addr": "hs_yj751_pd_backend_addr",
        "version": "1.0",
        "params": {"powInSumW": 12.5},
    }
    d2 = _device("delta_2", clock)
    messages = report_payloads(d2, {"pd.soc": 58, "pd.wattsOutSum": 352, "inv.outputWatts": 340}, rng)
    assert [(p["typeCode"], p["moduleType"], p["params"], keys) for p, keys in messages] == [
        ("pdStatus", 1, {"soc": 58, "wattsOutSum": 352}, ("pd.soc", "pd.wattsOutSum")),
        ("invStatus", 3, {"outputWatts": 340}, ("inv.outputWatts",)),
    ]
    for slug in ("stream", "smart_meter"):
        ((payload, _),) = report_payloads(_device(slug, clock), {"powGetSysGrid": 512.25}, rng)
        assert set(payload) == {"id", "version", "timestamp", "params"}
        assert payload["params"] == {"powGetSysGrid": 512.25}
    dpu = _device("delta_pro_ultra", clock)
    values = {"hs_yj751_pd_appshow_addr.soc": 58, "hs_yj751_pd_backend_addr.inHvMpptVol": 310.2}
    ((payload, _),) = report_payloads(dpu, values, rng)
    assert set(payload) == {"id", "version", "timestamp", "params"} and payload["params"] == values
    # the panel's channel powers: its channelPower report's bare `infoList` (the fixture's shape)
    panel = _device("smart_home_panel", clock)
    full = panel.full_report()
    assert "infoList" in full and "channelPower.infoList" not in full and "heartbeat.gridSta" in full
    fixture = json.loads((FIXTURES / "smart_home_panel" / "mqtt_channel_power.json").read_bytes())
    ((payload, keys),) = report_payloads(panel, {"infoList": full["infoList"]}, rng)
    assert set(payload) == set(fixture) and payload["params"] == {"infoList": full["infoList"]}
    assert (
        keys == ("infoList",) and [set(entry) for entry in full["infoList"]] == [{"chWatt", "powType"}] * 12
    )


BATTERIES = [slug for slug in SLUGS if "battery_w" in CATALOG.products[slug].summary]


@pytest.mark.parametrize("slug", BATTERIES)
def test_summary_signs_while_charging_and_discharging(slug: str, clock: ManualClock) -> None:
    device = _device(slug, clock, seed=3)
    product = CATALOG.products[slug]
    charging = discharging = 0
    last_soc: float | None = None
    last_battery = 0.0
    for values in _day(clock, device, step_s=1800.0):
        summary = summarize(product, _stored(product, values))
        soc, battery = device.soc, summary["battery_w"]
        # away from the limits, where the outputs switch and PV is curtailed; the summary's battery
        # power is input minus output, conversion losses left out: compared beyond them
        steady = last_soc is not None and min(soc, last_soc) > 15 and max(soc, last_soc) < 90
        if steady and last_battery > 100 and battery > 100:
            assert last_soc is not None and soc > last_soc, (slug, soc, last_soc)
            charging += 1
        if steady and last_battery < -20 and battery < -20:
            assert last_soc is not None and soc < last_soc, (slug, soc, last_soc)
            discharging += 1
        assert summary.get("pv_input_w", 0.0) >= 0 and summary.get("output_w", 0.0) >= 0
        if "soc_percent" in summary:
            assert summary["soc_percent"] == pytest.approx(soc, abs=0.6)
        last_soc, last_battery = soc, battery
    assert charging >= 3 and discharging >= 3, (charging, discharging)


@pytest.mark.parametrize("slug", [slug for slug in SLUGS if TRIPLES.get(slug)])
def test_power_triples_balance(slug: str, clock: ManualClock) -> None:
    device = _device(slug, clock, seed=11)
    product = CATALOG.products[slug]
    checked = 0
    for values in _day(clock, device, step_s=3 * HOUR):
        count, failures = _triple_failures(slug, _stored(product, values))
        assert failures == [], (slug, failures)
        checked += count
    assert checked >= 3  # by day at least, every product has a working triple


SUMMED = [slug for slug in SLUGS if any(name in CATALOG.products[slug].summary for name in POWER_FIELDS)]


@pytest.mark.parametrize("slug", SUMMED)
def test_meter_integrates_the_reported_values_through_the_catalog(slug: str) -> None:
    """The energy truth of every product, against the collector's own normalize+summarize."""
    clock = ManualClock(MIDNIGHT + 9 * HOUR)
    device = _device(slug, clock, seed=7)
    product = CATALOG.products[slug]
    before = device.energy_totals()
    expected = dict.fromkeys(COUNTERS, 0.0)
    for _ in range(120):  # an hour of 30 s steps in the morning sun
        summary = summarize(product, _stored(product, device.snapshot()))
        battery = summary.get("battery_w", 0.0)
        flows = (
            summary.get("pv_input_w", 0.0),
            summary.get("input_w", 0.0),
            summary.get("output_w", 0.0),
            max(battery, 0.0),
            max(-battery, 0.0),
        )
        for name, power in zip(COUNTERS, flows, strict=True):
            expected[name] += power * 30.0 / 3600.0
        clock.advance(30.0)
    after = device.energy_totals()
    for name in COUNTERS:
        assert after[name] - before[name] == pytest.approx(expected[name], rel=1e-9, abs=1e-9), name
    assert sum(expected.values()) > 10.0  # something flowed: the check is not 0 == 0


@pytest.mark.parametrize("slug", SLUGS)
def test_same_seed_same_values(slug: str) -> None:
    runs = []
    for _ in range(2):
        clock = ManualClock(MIDNIGHT)
        device = _device(slug, clock, seed=42)
        clock.advance(13.5 * HOUR)
        runs.append((device.sn, device.snapshot()))
    assert runs[0] == runs[1]


def test_the_plug_switch_drives_its_load(clock: ManualClock) -> None:
    plug = _device("smart_plug", clock)
    product = CATALOG.products["smart_plug"]
    (change,) = resolve(product, "WN511_SOCKET_SET_PLUG_SWITCH_MESSAGE", {"plugSwitch": 0})
    plug.set_quota(change.key, change.value)
    for _ in range(12):
        clock.advance(600.0)
        values = plug.snapshot()
        assert values["2_1.switchSta"] == 0 and values["2_1.watts"] == 0 and values["2_1.current"] > 0
    (change,) = resolve(product, "WN511_SOCKET_SET_PLUG_SWITCH_MESSAGE", {"plugSwitch": 1})
    plug.set_quota(change.key, change.value)
    loads = []
    for _ in range(24):
        clock.advance(600.0)
        loads.append(plug.snapshot()["2_1.watts"])
    assert max(loads) > 700  # 0.1 W: the fridge's compressor ran
    (change,) = resolve(product, "WN511_SOCKET_DELETE_TIME_TASK", {"taskIndex": 2})
    plug.set_quota(change.key, change.value)
    assert plug.snapshot()["2_2.task3"]["timeRange"]["isEnable"] is False


def test_the_meter_sums_its_phases_and_counts_energy(clock: ManualClock) -> None:
    meter = _device("smart_meter", clock)
    product = CATALOG.products["smart_meter"]
    first = _stored(product, meter.snapshot())
    imported = 0.0
    for _ in range(60):
        stored = _stored(product, meter.snapshot())
        phases = sum(stored[f"gridConnectionPowerL{n}"] for n in (1, 2, 3))
        assert stored["powGetSysGrid"] == pytest.approx(phases, abs=0.002)
        imported += stored["powGetSysGrid"] * 60.0 / 3600.0
        clock.advance(60.0)
    last = _stored(product, meter.snapshot())
    grown = (
        last["gridConnectionDataRecord.totalActiveEnergy"]
        - first["gridConnectionDataRecord.totalActiveEnergy"]
    )
    assert grown == pytest.approx(imported, abs=2.0) and imported > 100


def test_the_delta_pro_ultra_sums_its_ports_and_charges_from_the_grid_below_its_reserve(
    clock: ManualClock,
) -> None:
    """The night, in 30 s steps (the physics' own): the C20 inlet charges at chgC20SetWatts from
    below the backup reserve (20 %) to 10 % above it, decided on the SoC of the step before."""
    show = "hs_yj751_pd_appshow_addr."
    (dpu,) = make_devices(
        [DeviceSpec("delta_pro_ultra", 1, {"soc": 15.0})], clock=clock, rng=random.Random(2)
    )
    last_soc, last_c20 = dpu.soc, 1500.0
    switches = []
    for _ in range(7 * 120):
        clock.advance(30.0)
        values = dpu.snapshot()
        inputs = [values[f"{show}{port}Pwr"] for port in ("inHvMppt", "inLvMppt", "inAcC20", "inAc5p8")]
        outputs = [values[key] for key in values if key.startswith(f"{show}out") and key.endswith("Pwr")]
        assert values[f"{show}wattsInSum"] == round(sum(inputs), 3)
        assert values[f"{show}wattsOutSum"] == round(sum(outputs), 3) and len(outputs) == 13
        c20 = values[f"{show}inAcC20Pwr"]
        assert c20 in (0, 1500.0)
        if c20 != last_c20:
            assert (last_soc < 20.0) if c20 else (last_soc >= 30.0), (c20, last_soc)
            switches.append(c20)
        last_soc, last_c20 = dpu.soc, c20
    assert switches[:3] == [0, 1500.0, 0]  # charged up, drained by the night's loads, charged again


def test_the_panel_runs_its_circuits_from_the_grid_or_its_battery(clock: ManualClock) -> None:
    panel = _device("smart_home_panel", clock, seed=5)
    product = CATALOG.products["smart_home_panel"]
    states = set()
    for _ in range(24 * 6):
        values = panel.snapshot()
        stored = _stored(product, values)
        channels = values["channelPower.infoList"]
        grid_on = values["heartbeat.gridSta"] == 1
        kept = [entry["isEnable"] for entry in values["emergencyStrategy.chSta"]]
        on_battery = [
            stored[f"channelPower.infoList[{i}].chWatt"] for i in range(10) if channels[i]["powType"] == 1
        ]
        if channels[10]["powType"] == 1:  # battery channel 1 carries what its circuits take
            assert stored["channelPower.infoList[10].chWatt"] == pytest.approx(sum(on_battery), abs=0.006)
        if not grid_on:  # an outage: every circuit on the battery, those not kept off
            assert [c["powType"] for c in channels[:10]] == [1] * 10
            assert all(channels[i]["chWatt"] == 0 for i in range(10) if not kept[i])
        assert stored["heartbeat.backupBatPer"] == pytest.approx(panel.soc, abs=0.5)
        mains = sum(stored[f"mainsLoadWatt.watth[{i}][{h}]"] for i in range(10) for h in range(24))
        topup = sum(stored[f"topupLoadWatt.watth[0][{h}]"] for h in range(24))
        assert stored["heartbeat.gridDayWatth"] == pytest.approx(mains + topup, abs=250 * 0.5 + 0.001)
        states.add((grid_on, channels[10]["powType"]))
        clock.advance(600.0)
    assert states >= {(True, 1), (False, 1)}  # on the grid with battery circuits, and an outage
