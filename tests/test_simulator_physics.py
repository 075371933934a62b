"""The simulated devices: physics over an injected clock (no sleeps), units, catalog keys, commands."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

import pytest

from collector.catalog import default_catalog
from collector.decoding import flatten
from collector.simulator.clock import ManualClock
from collector.simulator.commands import CommandError, resolve
from collector.simulator.devices import (
    DeltaPro,
    DeviceSpec,
    PowerStream,
    SimDevice,
    make_devices,
    parse_device_specs,
    wire_values,
)

MIDNIGHT = 1_700_006_400.0  # 2023-11-15 00:00 UTC; the default site's solar noon is 12:00 UTC
HOUR = 3600.0


def _devices(clock: ManualClock, seed: int = 7, spec: str = "powerstream=1,delta_pro=1") -> list[SimDevice]:
    return make_devices(spec, clock=clock, rng=random.Random(seed))


def _day(
    clock: ManualClock, device: SimDevice, step_s: float = 600.0
) -> Iterator[tuple[float, dict[str, Any]]]:
    """(hour of the day, quota/all snapshot) every `step_s` over one day."""
    start = clock()
    while clock() - start <= 24 * HOUR:
        yield (clock() - start) / HOUR, device.snapshot()
        clock.advance(step_s)


@pytest.fixture()
def clock() -> ManualClock:
    return ManualClock(MIDNIGHT)


def test_powerstream_battery_charges_by_day_and_discharges_by_night(clock: ManualClock) -> None:
    ps = make_devices("powerstream=1", clock=clock, rng=random.Random(1))[0]
    assert isinstance(ps, PowerStream)
    previous: tuple[float, int] | None = None
    charged = discharged = 0
    for _, values in _day(clock, ps):
        soc, bat_w = ps.soc, values["20_1.batInputWatts"]
        assert values["20_1.batSoc"] == round(soc)
        if previous is not None:
            last_soc, last_bat_w = previous
            if last_bat_w < -50 and bat_w < -50:  # charging throughout the step
                assert soc > last_soc
                charged += 1
            if last_bat_w > 50 and bat_w > 50:  # discharging throughout the step
                assert soc < last_soc
                discharged += 1
        previous = soc, bat_w
    assert charged >= 6 and discharged >= 6


def test_delta_pro_soc_follows_the_pack_power(clock: ManualClock) -> None:
    dp = make_devices("delta_pro=1", clock=clock, rng=random.Random(2))[0]
    previous: tuple[float, int] | None = None
    charged = discharged = 0
    for _, values in _day(clock, dp):
        soc, amps = values["bmsMaster.f32ShowSoc"], values["bmsMaster.amp"]
        if previous is not None:
            if previous[1] > 500 and amps > 500:  # > 0.5 A into the pack
                assert soc > previous[0]
                charged += 1
            if previous[1] < -500 and amps < -500:
                assert soc < previous[0]
                discharged += 1
        previous = soc, amps
    assert charged >= 6 and discharged >= 6


def test_soc_integrates_power_over_capacity(clock: ManualClock) -> None:
    ps = PowerStream("HW51TEST00000001", "ps", clock=clock, seed=1, soc=50.0, battery_wh=1000.0)
    ps.set_quota("20_1.supplyPriority", 0)
    clock.advance(HOUR)  # 01:00 to 02:00: no sun, the battery feeds the custom load and the plug
    before, drawn = ps.soc, 0.0
    for _ in range(60):
        drawn += ps.snapshot()["20_1.batInputWatts"] / 10.0 * 60.0 / 3600.0  # Wh in one minute
        clock.advance(60.0)
    # 1000 Wh capacity: every 10 Wh drawn is 1 % (sampling once a minute leaves a little slack)
    assert before - ps.soc == pytest.approx(drawn / 10.0, rel=0.05)


def test_pv_is_zero_at_night_and_peaks_around_noon(clock: ManualClock) -> None:
    # a nearly empty Delta Pro takes all the sun offers until after noon (a full pack curtails PV)
    dp = DeltaPro("DCABZTEST0000001", "dp", clock=clock, seed=5, soc=5.0)
    ps = PowerStream("HW51TEST00000001", "ps", clock=clock, seed=5, soc=50.0)
    pv_by_hour: dict[float, int] = {}
    for hour, d in _day(clock, dp, step_s=900.0):
        p = ps.snapshot()
        if hour < 5.5 or hour > 18.5:
            assert p["20_1.pv1InputWatts"] == p["20_1.pv2InputWatts"] == p["20_1.pv1InputVolt"] == 0
            assert p["20_1.pv1Statue"] == 1 and d["mppt.inWatts"] == d["mppt.inVol"] == 0
        elif 7 <= hour <= 17:
            assert p["20_1.pv1InputVolt"] > 0 and p["20_1.pv1Statue"] == 4
        pv_by_hour[hour] = d["mppt.inWatts"]
    assert pv_by_hour[12.0] > 2 * pv_by_hour[8.0] and pv_by_hour[12.0] > 2 * pv_by_hour[16.0]
    morning = {hour: watts for hour, watts in pv_by_hour.items() if hour <= 12.5}
    assert 10.5 <= max(morning, key=lambda hour: morning[hour]) <= 12.5


def _balanced(volts: int, amps: int, watts: int, per_watt_unit: int) -> bool:
    """V x I = W in device units, within what rounding V, I and W to whole units can explain."""
    rounding = (abs(volts) + abs(amps)) * 0.5 / per_watt_unit + 1
    return abs(volts * amps / per_watt_unit - watts) <= rounding


def test_port_volts_times_amps_match_watts_in_device_units(clock: ManualClock) -> None:
    ps, dp = _devices(clock)
    for _ in range(96):
        p, d = ps.snapshot(), dp.snapshot()
        for port in ("pv1", "pv2"):  # 0.1 V x 0.1 A = 0.01 W: 10 per 0.1 W unit
            volts, amps, watts = (p[f"20_1.{port}Input{q}"] for q in ("Volt", "Cur", "Watts"))
            assert _balanced(volts, amps, watts, 10)
        assert _balanced(p["20_1.batInputVolt"], p["20_1.batInputCur"], p["20_1.batInputWatts"], 10)
        # AC: RMS current carries the output filter's reactive part, so V x I >= W, within ~0.5 A
        ac_va = p["20_1.invOpVolt"] / 10 * p["20_1.invOutputCur"] / 1000
        assert p["20_1.invOutputWatts"] / 10 - 1 <= ac_va <= p["20_1.invOutputWatts"] / 10 + 0.5 * 250
        for side in ("in", "out"):  # Delta Pro MPPT: 0.1 V x 0.01 A = 0.001 W: 100 per 0.1 W unit
            volts, amps, watts = (d[f"mppt.{side}{q}"] for q in ("Vol", "Amp", "Watts"))
            assert _balanced(volts, amps, watts, 100)
        # pack and inverter: mV x mA = uW; W units
        assert abs(d["bmsMaster.vol"] * d["bmsMaster.amp"] / 1e6) == pytest.approx(
            d["bmsMaster.inputWatts"] + d["bmsMaster.outputWatts"], abs=1.5
        )
        assert d["inv.invOutVol"] * d["inv.invOutAmp"] / 1e6 == pytest.approx(d["inv.outputWatts"], abs=1.0)
        clock.advance(900.0)


def test_powerstream_ports_balance_exactly(clock: ManualClock) -> None:
    ps = _devices(clock, spec="powerstream=1")[0]
    for _, p in _day(clock, ps, step_s=1200.0):
        pv = p["20_1.pv1InputWatts"] + p["20_1.pv2InputWatts"]
        assert pv + p["20_1.batInputWatts"] == p["20_1.invOutputWatts"]  # as in every real heartbeat
        assert p["20_1.pvToInvWatts"] == pv
        assert p["20_1.invToPlugWatts"] + p["20_1.invToOtherWatts"] == p["20_1.invOutputWatts"]


def test_delta_pro_pack_figures_agree(clock: ManualClock) -> None:
    dp = _devices(clock, spec="delta_pro=1")[0]
    for _, d in _day(clock, dp, step_s=3600.0):
        cells = d["bmsMaster.cellVol"]
        assert len(cells) == 15 and abs(sum(cells) - d["bmsMaster.vol"]) < 200  # mV
        assert (d["bmsMaster.maxCellVol"], d["bmsMaster.minCellVol"]) == (max(cells), min(cells))
        assert d["bmsMaster.remainCap"] / d["bmsMaster.fullCap"] * 100 == pytest.approx(
            d["bmsMaster.f32ShowSoc"], abs=0.01
        )
        assert d["pd.soc"] == d["bmsMaster.soc"] == round(d["ems.f32LcdShowSoc"])


def test_sentinels_where_real_devices_send_them(clock: ManualClock) -> None:
    ps, dp = _devices(clock)
    p, d = ps.snapshot(), dp.snapshot()  # midnight: the PowerStream discharges, nothing charges
    assert p["20_1.chgRemainTime"] == 5939 and p["20_1.batInputWatts"] > 0
    assert d["bmsMaster.totalChgCap"] == 4294967295 and d["bmsMaster.ecloudOcv"] == 65535
    assert d["pd.acautooutPause"] == 255 and d["ems.chgRemainTime"] == 5999
    clock.set(MIDNIGHT + 10 * HOUR)  # morning sun: the PowerStream charges
    p = ps.snapshot()
    assert p["20_1.batInputWatts"] < 0 and p["20_1.dsgRemainTime"] == 5999 and p["20_1.chgRemainTime"] < 5939


def test_temperatures_drift_with_load_and_sun(clock: ManualClock) -> None:
    ps, dp = _devices(clock)
    night_pv, night_mppt = ps.snapshot()["20_1.pv1Temp"], dp.snapshot()["mppt.mpptTemp"]
    clock.set(MIDNIGHT + 12 * HOUR)
    assert ps.snapshot()["20_1.pv1Temp"] > night_pv + 50  # 0.1 °C: > 5 °C warmer at noon
    assert dp.snapshot()["mppt.mpptTemp"] > night_mppt + 5


def test_every_reported_key_is_in_the_catalog_and_in_range(clock: ManualClock) -> None:
    catalog = default_catalog()
    devices = _devices(clock, spec="powerstream=2,delta_pro=2")
    for _ in range(24):
        for device in devices:
            product = catalog.products[device.product_slug]
            for key, value in flatten(device.snapshot()).items():
                spec = product.lookup(key)
                assert spec is not None, f"{device.product_slug}: {key} is not in the catalog"
                if isinstance(value, str) or value in spec.sentinels or spec.range is None:
                    continue
                stored = value * spec.mul / spec.div
                assert spec.range[0] <= stored <= spec.range[1], f"{key}={value} outside {spec.range}"
        clock.advance(HOUR)


def test_full_report_has_every_device_key_and_incremental_only_changes(clock: ManualClock) -> None:
    ps, dp = _devices(clock)
    full = dp.full_report()
    assert set(full) == set(dp.snapshot())  # a Delta Pro reports over MQTT what quota/all holds
    ps_full = ps.full_report()
    assert all(key.startswith("20_1.") for key in ps_full) and "20_1.updateTime" not in ps_full
    assert "20_1.updateTime" in ps.snapshot() and "20_134.task1" in ps.snapshot()
    assert set(dp.incremental_report()) == set(DeltaPro.heartbeat_keys)  # nothing changed yet
    clock.advance(600.0)
    before = dict(full)
    increment = dp.incremental_report(limit=5)
    assert 0 < len(increment) <= 5
    assert all(before[key] != value for key, value in increment.items())


def test_a_changed_setting_is_reported_first(clock: ManualClock) -> None:
    ps = _devices(clock, spec="powerstream=1")[0]
    ps.full_report()
    clock.advance(60.0)
    ps.set_quota("20_1.permanentWatts", 2500)
    increment = ps.incremental_report(limit=3)
    assert next(iter(increment)) == "20_1.permanentWatts" and increment["20_1.permanentWatts"] == 2500
    assert "20_1.permanentWatts" not in ps.incremental_report(limit=50)  # reported once


def test_settings_drive_the_physics(clock: ManualClock) -> None:
    ps, dp = _devices(clock)
    clock.set(MIDNIGHT + HOUR)
    base = ps.snapshot()["20_1.invToOtherWatts"]
    ps.set_quota("20_1.permanentWatts", 3000)  # 300.0 W custom load
    assert ps.snapshot()["20_1.invToOtherWatts"] == 3000 != base
    dp.set_quota("inv.cfgAcEnabled", 0)
    clock.advance(60.0)
    off = dp.snapshot()
    assert off["inv.outputWatts"] == 0 and off["inv.invOutVol"] == 0
    dp.set_quota("ems.maxChargeSoc", 60)
    dp.set_quota("inv.cfgAcEnabled", 1)
    clock.set(MIDNIGHT + 36 * HOUR)  # a full sunny day later
    assert dp.soc <= 60.5


def test_same_seed_same_devices_and_values() -> None:
    runs = []
    for _ in range(2):
        clock = ManualClock(MIDNIGHT)
        devices = _devices(clock, seed=42)
        clock.advance(13.5 * HOUR)
        runs.append([(d.sn, d.device_name, d.snapshot()) for d in devices])
    assert runs[0] == runs[1]
    ps, dp = (sn for sn, _, _ in runs[0])
    assert ps.startswith("HW51") and dp.startswith("DCABZ") and len(ps) == len(dp) == 16


def test_device_list_entries_and_wire_values(clock: ManualClock) -> None:
    dp = DeltaPro(
        "DCABZTEST0000001", "box", clock=clock, seed=3, numbers_as_strings=True, list_product_name=False
    )
    assert dp.list_entry() == {"sn": "DCABZTEST0000001", "deviceName": "box", "online": 1}
    wired = wire_values(dp, {"pd.soc": 56, "bmsMaster.cellTemp": [27, 28], "ems.f32LcdShowSoc": 53.5})
    assert wired == {"pd.soc": "56", "bmsMaster.cellTemp": [27, 28], "ems.f32LcdShowSoc": "53.5"}


def test_parse_device_specs() -> None:
    assert parse_device_specs("powerstream=2, delta_pro") == [
        DeviceSpec("powerstream", 2),
        DeviceSpec("delta_pro"),
    ]
    with pytest.raises(ValueError, match="unknown product"):
        parse_device_specs("river=1")
    with pytest.raises(ValueError, match="not a number"):
        parse_device_specs("powerstream=x")


# ----------------------------------------------------------------------------- commands


def test_commands_resolve_against_the_catalog() -> None:
    catalog = default_catalog()
    ps, dp = catalog.products["powerstream"], catalog.products["delta_pro"]
    (change,) = resolve(ps, "WN511_SET_PERMANENT_WATTS_PACK", {"permanentWatts": 2000})
    assert (change.key, change.value) == ("20_1.permanentWatts", 2000)
    # X-Boost and AC output share 32/66; xboost 255 means "leave it"
    (change,) = resolve(dp, None, {"cmdSet": 32, "id": 66, "enabled": 0, "xboost": 255})
    assert (change.key, change.value) == ("inv.cfgAcEnabled", 0)
    (change,) = resolve(dp, None, {"cmdSet": 32, "id": 66, "xboost": 0})
    assert change.key == "inv.cfgAcXboost"
    # 32/39 carries either the brightness or the screen timeout
    (change,) = resolve(dp, None, {"cmdSet": 32, "id": 39, "lcdTime": 60})
    assert change.key == "pd.lcdOffSec"
    (change,) = resolve(dp, None, {"cmdSet": 32, "id": 39, "lcdBrightness": 128})  # the "auto" word
    assert change.value == 128


@pytest.mark.parametrize(
    ("product", "cmd_code", "params", "reason"),
    [
        ("powerstream", "WN511_NO_SUCH_PACK", {"x": 1}, "no command"),
        ("powerstream", "WN511_SET_PERMANENT_WATTS_PACK", {"permanentWatts": 9000}, "outside 0..6000"),
        ("powerstream", "WN511_SET_PERMANENT_WATTS_PACK", {"permanentWatts": "20"}, "must be a number"),
        ("powerstream", "WN511_SET_BAT_UPPER_PACK", {"lowerLimit": 80}, "unknown parameter"),
        ("delta_pro", None, {"cmdSet": 32, "id": 99, "enabled": 1}, "no command"),
        ("delta_pro", None, {"cmdSet": 32, "id": 49, "maxChgSoc": 20}, "outside 50..100"),
        ("delta_pro", None, {"cmdSet": 32, "id": 71, "currMa": 4000.5}, "whole number"),
        ("delta_pro", None, {"cmdSet": 32, "id": 49}, "needs one of the parameters maxChgSoc"),
        ("delta_pro", None, [1, 2], "must be an object"),
    ],
)
def test_commands_a_device_refuses(product: str, cmd_code: str | None, params: object, reason: str) -> None:
    with pytest.raises(CommandError, match=reason):
        resolve(default_catalog().products[product], cmd_code, params)


def test_delete_task_clears_the_task(clock: ManualClock) -> None:
    ps = _devices(clock, spec="powerstream=1")[0]
    (change,) = resolve(default_catalog().products["powerstream"], "WN511_DELETE_TIME_TASK", {"taskIndex": 4})
    ps.set_quota(change.key, change.value)
    task = ps.snapshot()["20_134.task5"]
    assert task["taskIndex"] == 4 and task["timeRange"]["isEnable"] is False
    assert "20_134.task1" not in ps.incremental_report()  # a cloud-side object, not a device report
