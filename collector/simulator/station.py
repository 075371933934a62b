"""One power-station model for every battery product (DELTA Pro, DELTA 2, DELTA 2 Max, DELTA Pro 3,
STREAM): physics in SI, and per product a table of which catalog key carries which quantity.

The physics (:class:`Station`): solar strings behind MPPT inputs, a household load on the AC
outlets (a base load, a morning and an evening peak) and a small USB load, all through the battery
bus; the pack's charge integrates its power over time and capacity; charging stops at the charge
limit (PV is curtailed to what the outputs take), the AC output at the discharge limit; port
voltages times currents give port powers; temperatures drift towards targets set by ambient
temperature and the power handled. Each step computes named quantities (:data:`QUANTITIES`).

A product is a :class:`Build` (pack, strings, load), a `layout` (catalog key -> quantity name, or a
function of the quantities for a key that combines or marks them), the template of what else it
reports (collector/simulator/templates.py) and its MQTT envelope. Units are the catalog's: every
value is put through the product's codec, so the layout holds no unit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final

from collector.simulator import templates
from collector.simulator.base import SimDevice
from collector.simulator.codec import Raw, Value
from collector.simulator.physics import PvString, clamp, drift, household_w, lfp_cell_volts, ncm_cell_volts

Quantities = dict[str, Any]  # one step's SI values by name: floats, ints (states), lists, None
Source = str | Callable[[Quantities], Value]

REMAIN_CAP_S: Final = 5938 * 60.0  # remaining times show at most 98 h 58 min (5939 = not applicable)

# The quantities of a step (pvN_*: per solar string N, from 1).
QUANTITIES: Final = (
    "soc",  # % of the pack
    "max_soc",  # the charge limit setting, %
    "min_soc",  # the discharge limit setting, %
    "ac_on",  # 1 while the AC output is on
    "house_w",  # the household's load
    "load_w",  # AC output (the part of the household load the station serves)
    "grid_w",  # what the household takes from the grid beside it
    "usb_w",  # USB-C output
    "out_w",  # AC + USB output
    "pv_in_w",  # solar input, all strings
    "pv_out_w",  # MPPT output to the battery bus
    "bat_w",  # pack power, positive = charging
    "bat_in_w",  # pack charging power
    "bat_out_w",  # pack discharging power
    "pack_v",
    "pack_a",  # positive = charging
    "cell_v",  # list, one per cell
    "cell_v_max",
    "cell_v_min",
    "full_ah",
    "remain_ah",
    "cell_t",  # list, one per sensor
    "cell_t_max",
    "cell_t_min",
    "pack_t",
    "mos_t",
    "inv_t",
    "mppt_t",
    "dc_t",
    "pd_t",
    "mppt_out_v",
    "mppt_out_a",
    "ac_v",
    "ac_a",
    "ac_hz",
    "inv_dc_v",
    "inv_dc_a",
    "rated_v",  # the AC output's nominal voltage and frequency, and the frequency as a code (1 = 50 Hz)
    "rated_hz",
    "hz_code",
    "fan",  # 0-2
    "state",  # 2 charging, 1 discharging, 0 idle
    "charging",  # 1 while the pack takes more than 1 W
    "pv_on",  # 1 while solar comes in
    "to_limit_s",  # to the charge limit while charging, to the discharge limit else; None when idle
    "to_full_s",  # None unless charging
    "to_empty_s",  # None unless discharging
    "remain_s",  # +to_full_s / -to_empty_s; None when idle
    "sun_wh",  # lifetime counters
    "ac_out_wh",
    "mppt_s",
    "inv_s",
)


@dataclass(frozen=True, slots=True)
class Build:
    """What a power station is made of (SI)."""

    cells: int  # in series (LFP)
    full_ah: float  # full-charge capacity
    strings: tuple[PvString, ...]  # solar strings, one per MPPT input
    load_w: float = 60.0  # base of the household load on the AC outlets
    ac_limit_w: float = 3600.0  # the AC output serves the household load up to this
    usb_w: float = 0.0  # a phone or laptop on USB-C, up to this
    mppt_efficiency: float = 0.98
    inverter_efficiency: float = 0.9
    inverter_idle_w: float = 12.0
    cell_volts: Callable[[float], float] = lfp_cell_volts  # open-circuit voltage of a cell at a SoC (%)
    nominal_cell_v: float = 3.2


def raw_if_none(name: str, sentinel: int) -> Callable[[Quantities], Value]:
    """A quantity that may be None, sent as the device's "not applicable" number then."""

    def source(q: Quantities) -> Value:
        value = q[name]
        return Raw(sentinel) if value is None else value

    return source


def _cells_temp(q: Quantities) -> list[float]:
    return list(q["cell_t"])


class Station(SimDevice):
    """A power station of the product's :class:`Build`, reporting through the product's `layout`."""

    build: ClassVar[Build]
    layout: ClassVar[Mapping[str, Source]]
    limit_keys: ClassVar[tuple[str, str]]  # settings: charge limit, discharge limit (SoC)
    ac_switch: ClassVar[str | None] = None  # setting that switches the AC output (0 = off)

    def __init__(
        self,
        sn: str,
        name: str,
        *,
        pv_peak_w: float | None = None,
        load_w: float | None = None,
        **kwargs: Any,
    ) -> None:
        build = self.build
        if pv_peak_w is not None:  # scale the strings to this peak in all
            scale = pv_peak_w / sum(s.peak_w for s in build.strings)
            build = replace(build, strings=tuple(replace(s, peak_w=s.peak_w * scale) for s in build.strings))
        if load_w is not None:
            build = replace(build, load_w=load_w)
        self.station = build
        self._energy: dict[str, float] = {}
        self._temps: dict[str, float] = {}
        self._cell_offsets: list[float] = []
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        r = self._rng
        ambient = self.site.ambient(self._noise, self._t)
        self._temps = {name: ambient + 3.0 for name in ("cell", "mos", "inv", "mppt", "dc", "pd")}
        self._cell_offsets = [r.uniform(-0.0025, 0.0025) for _ in range(self.station.cells)]
        wh = self._pack_wh()
        self._energy = {  # lifetime counters: tens of cycles' worth
            "sun_wh": r.uniform(15.0, 40.0) * wh,
            "ac_out_wh": r.uniform(10.0, 25.0) * wh,
            "mppt_s": r.uniform(1e6, 3e6),
            "inv_s": r.uniform(3e6, 8e6),
        }
        return {}

    def _pack_wh(self) -> float:
        return self.station.full_ah * self.station.nominal_cell_v * self.station.cells

    def _compute(self, t: float, dt: float) -> None:
        b, site, noise, temps = self.station, self.site, self._noise, self._temps
        max_soc, min_soc = (self._setting(key) for key in self.limit_keys)
        ac_on = self.ac_switch is None or bool(self._setting(self.ac_switch))
        if self._soc <= min_soc:
            ac_on = False  # the EMS cuts the AC output at the discharge limit
        house = household_w(site, noise, 40, t, b.load_w)
        load = min(house, b.ac_limit_w) if ac_on else 0.0
        usb = b.usb_w * noise(43, t, 900.0) if b.usb_w else 0.0
        dc_draw = (load / b.inverter_efficiency + b.inverter_idle_w if ac_on else 0.0) + usb / 0.95
        available = [
            s.peak_w * site.solar(noise, 1 + i, t) * (1.0 - 0.05 * i) for i, s in enumerate(b.strings)
        ]
        offered = sum(available)
        # full: PV covers the outputs at most (the MPPT moves off its maximum power point)
        pv_in = min(offered, dc_draw / b.mppt_efficiency) if self._soc >= max_soc else offered
        pv_out = pv_in * b.mppt_efficiency
        bat_w = pv_out - dc_draw  # positive = charging
        if dt:
            self._soc = clamp(self._soc + 100.0 * bat_w * dt / 3600.0 / self._pack_wh(), 0.0, 100.0)
            self._energy["sun_wh"] += pv_out * dt / 3600.0
            self._energy["ac_out_wh"] += load * dt / 3600.0
            self._energy["mppt_s"] += dt if pv_in > 0 else 0.0
            self._energy["inv_s"] += dt if ac_on else 0.0

        ambient = site.ambient(noise, t)
        temps["cell"] = drift(temps["cell"], ambient + 3.0 + abs(bat_w) / 150.0, dt, 3600.0)
        temps["mos"] = drift(temps["mos"], ambient + 4.0 + abs(bat_w) / 100.0, dt, 900.0)
        temps["inv"] = drift(temps["inv"], ambient + 5.0 + load / 40.0, dt, 900.0)
        temps["mppt"] = drift(temps["mppt"], ambient + 5.0 + pv_in / 30.0, dt, 900.0)
        temps["dc"] = drift(temps["dc"], ambient + 6.0, dt, 1800.0)
        temps["pd"] = drift(temps["pd"], ambient + 7.0 + (load + pv_in) / 200.0, dt, 1800.0)

        cell_ocv = b.cell_volts(self._soc)
        amps_estimate = bat_w / (cell_ocv * b.cells)
        cells = [cell_ocv + 0.0012 * amps_estimate + offset for offset in self._cell_offsets]
        pack_v = sum(cells) + 0.1
        cell_t = [temps["cell"] + d for d in (0.0, 0.2, 0.9, 0.4)]
        state = 2 if bat_w > 1 else 1 if bat_w < -1 else 0
        to_limit = self._seconds_to(max_soc if bat_w > 0 else min_soc, bat_w)
        ac_v = site.grid_v + 1.0 * (noise(41, t, 120.0) - 0.5) if ac_on else 0.0
        q: Quantities = {"soc": self._soc, "max_soc": max_soc, "min_soc": min_soc, "ac_on": int(ac_on)}
        q.update(house_w=house, load_w=load, grid_w=house - load, usb_w=usb, out_w=load + usb)
        q.update(pv_in_w=pv_in, pv_out_w=pv_out, pv_on=int(pv_in > 0))
        for i, string in enumerate(b.strings):
            used = available[i] * pv_in / offered if offered > 0 else 0.0
            volts, amps = string.operate(available[i], used, temps["mppt"])
            q.update({f"pv{i + 1}_w": used, f"pv{i + 1}_v": volts, f"pv{i + 1}_a": amps})
        mppt_out_v = pack_v - 0.6 if pv_in > 0 else 0.0
        q.update(
            bat_w=bat_w,
            bat_in_w=max(bat_w, 0.0),
            bat_out_w=max(-bat_w, 0.0),
            pack_v=pack_v,
            pack_a=bat_w / pack_v,
            cell_v=cells,
            cell_v_max=max(cells),
            cell_v_min=min(cells),
            full_ah=b.full_ah,
            remain_ah=b.full_ah * self._soc / 100.0,
            cell_t=cell_t,
            cell_t_max=max(cell_t),
            cell_t_min=min(cell_t),
            pack_t=temps["cell"] + 0.5,
            mos_t=temps["mos"],
            inv_t=temps["inv"],
            mppt_t=temps["mppt"],
            dc_t=temps["dc"],
            pd_t=temps["pd"],
            mppt_out_v=mppt_out_v,
            mppt_out_a=pv_out / mppt_out_v if mppt_out_v else 0.0,
            ac_v=ac_v,
            ac_a=load / ac_v if ac_v else 0.0,
            ac_hz=site.grid_hz if ac_on else 0.0,
            inv_dc_v=pack_v if ac_on else 0.0,
            inv_dc_a=dc_draw / pack_v if ac_on else 0.0,
            rated_v=float(round(site.grid_v)),
            rated_hz=site.grid_hz,
            hz_code=1 if site.grid_hz == 50 else 2,
            fan=0 if load < 300 else 1 if load < 800 else 2,
            state=state,
            charging=int(bat_w > 0),
            to_limit_s=to_limit,
            to_full_s=to_limit if bat_w > 0 else None,
            to_empty_s=to_limit if bat_w < 0 else None,
            remain_s=None if to_limit is None else to_limit if bat_w > 0 else -to_limit,
            **self._energy,
        )
        for key, source in self.layout.items():
            self._put(key, q[source] if isinstance(source, str) else source(q))

    def _seconds_to(self, soc_limit: float, bat_w: float) -> float | None:
        """Seconds until the pack reaches `soc_limit` at `bat_w`; None when (nearly) idle."""
        if abs(bat_w) < 1.0:
            return None
        wh = abs(soc_limit - self._soc) / 100.0 * self._pack_wh()
        return min(REMAIN_CAP_S, wh / abs(bat_w) * 3600.0)


# ----------------------------------------------------------------------------- the DELTA family


def _delta_family(bms: str, ems: str, not_applicable: int) -> dict[str, Source]:
    """Keys the DELTA Pro and the DELTA 2 family share (their BMS and EMS blocks differ in prefix)."""
    return {
        f"{bms}.vol": "pack_v",
        f"{bms}.amp": "pack_a",
        f"{bms}.inputWatts": "bat_in_w",
        f"{bms}.outputWatts": "bat_out_w",
        f"{bms}.cellVol": "cell_v",
        f"{bms}.maxCellVol": "cell_v_max",
        f"{bms}.minCellVol": "cell_v_min",
        f"{bms}.maxVolDiff": lambda q: q["cell_v_max"] - q["cell_v_min"],
        f"{bms}.soc": "soc",
        f"{bms}.f32ShowSoc": "soc",
        f"{bms}.actSoc": "soc",
        f"{bms}.targetSoc": "soc",
        f"{bms}.remainCap": "remain_ah",
        f"{bms}.fullCap": "full_ah",
        f"{bms}.cellTemp": _cells_temp,
        f"{bms}.temp": "pack_t",
        f"{bms}.maxCellTemp": "cell_t_max",
        f"{bms}.minCellTemp": "cell_t_min",
        f"{bms}.maxMosTemp": lambda q: q["mos_t"] + 0.6,
        f"{bms}.minMosTemp": "mos_t",
        f"{bms}.sysState": lambda q: 2 if q["state"] == 2 else 1,
        f"{bms}.remainTime": lambda q: q["to_limit_s"] or 0.0,
        f"{ems}.lcdShowSoc": "soc",
        f"{ems}.f32LcdShowSoc": "soc",
        f"{ems}.chgState": "charging",
        f"{ems}.chgCmd": lambda q: int(q["soc"] < q["max_soc"]),
        f"{ems}.chgVol": lambda q: q["pack_v"] + (1.0 if q["charging"] else 0.0),
        f"{ems}.paraVolMin": lambda q: q["pack_v"] - 0.55,
        f"{ems}.paraVolMax": lambda q: q["pack_v"] + 0.05,
        f"{ems}.fanLevel": "fan",
        f"{ems}.chgRemainTime": raw_if_none("to_full_s", not_applicable),
        f"{ems}.dsgRemainTime": raw_if_none("to_empty_s", not_applicable),
        "inv.outputWatts": "load_w",
        "inv.invOutVol": "ac_v",
        "inv.invOutAmp": "ac_a",
        "inv.invOutFreq": "ac_hz",
        "inv.dcInVol": "inv_dc_v",
        "inv.dcInAmp": "inv_dc_a",
        "inv.outTemp": "inv_t",
        "inv.dcInTemp": lambda q: q["inv_t"] - 1.0,
        "inv.fanState": "fan",
        "inv.chargerType": lambda q: 3 if q["pv_on"] else 0,
        "inv.dischargeType": "ac_on",
        "inv.cfgAcOutFreq": "hz_code",
        "mppt.inVol": "pv1_v",
        "mppt.inAmp": "pv1_a",
        "mppt.inWatts": "pv1_w",
        "mppt.outVol": "mppt_out_v",
        "mppt.outAmp": "mppt_out_a",
        "mppt.outWatts": "pv_out_w",
        "mppt.mpptTemp": "mppt_t",
        "mppt.chgType": lambda q: 2 if q["pv_on"] else 0,
        "mppt.chgState": lambda q: (1 if q["charging"] else 2) if q["pv_on"] else 0,
        "pd.soc": "soc",
        "pd.wattsInSum": "pv_in_w",
        "pd.wattsOutSum": "out_w",
        "pd.remainTime": raw_if_none("remain_s", 5999),
        "pd.typec1Temp": "pd_t",
        "pd.chgSunPower": "sun_wh",
        "pd.mpptUsedTime": "mppt_s",
        "pd.invUsedTime": "inv_s",
    }


class DeltaPro(Station):
    """DELTA Pro (3.6 kWh LFP, one pack): solar on the XT60 MPPT input, a household load on the AC
    outlets, charge limited by `ems.maxChargeSoc` (PV is curtailed), AC off at `ems.minDsgSoc`."""

    product_slug = "delta_pro"
    heartbeat_keys = ("pd.soc", "pd.wattsInSum", "pd.wattsOutSum")
    template = templates.DELTA_PRO
    float_keys = templates.DELTA_PRO_FLOATS
    build = Build(cells=15, full_ah=76.0, strings=(PvString(800.0, 70.0, 84.0),))
    limit_keys = ("ems.maxChargeSoc", "ems.minDsgSoc")
    ac_switch = "inv.cfgAcEnabled"
    layout: ClassVar[Mapping[str, Source]] = {
        **_delta_family("bmsMaster", "ems", 5999),
        "bmsMaster.chgDsgState": "state",
        "inv.cfgAcOutVoltage": "rated_v",
        "mppt.dc24vTemp": "dc_t",
        "pd.typec2Temp": "pd_t",
        "pd.sysChgDsgState": lambda q: 2 if q["bat_w"] > 0 else 1,
        "pd.iconSolarPanelState": "pv_on",
        "pd.iconRechgTimeState": "charging",
        "pd.iconAcFreqState": lambda q: q["hz_code"] if q["ac_on"] else 0,
        "pd.dsgPowerAc": "ac_out_wh",
    }

    def _pack_wh(self) -> float:
        return self.station.full_ah * 51.2

    def _initial_values(self) -> dict[str, Value]:
        super()._initial_values()
        r = self._rng
        return {
            "bmsMaster.cycles": r.randrange(5, 120),
            "bmsMaster.packSn": [ord(c) for c in self.sn[:15]] + [0],
            "pd.carUsedTime": r.randrange(1000, 9000),
            "pd.dsgPowerDc": r.randrange(100, 900),
            "pd.typccUsedTime": r.randrange(1000, 9000),
            "pd.usbUsedTime": r.randrange(10_000, 300_000),
            "pd.usbqcUsedTime": r.randrange(1000, 9000),
        }


class DeltaMax(DeltaPro):
    """DELTA Max (2 kWh NCM, 14 cells): the DELTA Pro's protocol generation, keys and envelope."""

    product_slug = "delta_max"
    template = templates.DELTA_MAX
    float_keys = templates.DELTA_MAX_FLOATS
    build = Build(
        cells=14,
        full_ah=39.1,
        strings=(PvString(800.0, 70.0, 84.0),),
        cell_volts=ncm_cell_volts,
        nominal_cell_v=3.6,
    )

    def _pack_wh(self) -> float:
        return Station._pack_wh(self)

    def _initial_values(self) -> dict[str, Value]:
        values = super()._initial_values()
        return {key: value for key, value in values.items() if key in self.template}


_DELTA_2_MODULES: Final = {
    "pd": ("pdStatus", 1),
    "bms_bmsStatus": ("bmsStatus", 2),
    "bms_emsStatus": ("emsStatus", 2),
    "bms_kitInfo": ("kitInfo", 2),
    "inv": ("invStatus", 3),
    "mppt": ("mpptStatus", 5),
}

_DELTA_2_LAYOUT: Final[dict[str, Source]] = {
    **_delta_family("bms_bmsStatus", "bms_emsStatus", 5939),
    "bms_bmsStatus.chgState": "state",
    "bms_emsStatus.sysChgDsgState": "state",
    "inv.cfgAcOutVol": "rated_v",
    "mppt.cfgAcOutVol": "rated_v",
    "mppt.cfgAcOutFreq": "rated_hz",
    "pd.chgDsgState": lambda q: 2 if q["bat_w"] > 0 else 1,
    "pd.typec1Watts": "usb_w",
    "pd.dsgPowerAC": "ac_out_wh",
}


class Delta2(Station):
    """DELTA 2 (1 kWh LFP, 16 cells): one XT60 solar input; MQTT reports one module per message."""

    product_slug = "delta_2"
    heartbeat_keys = ("pd.soc", "pd.wattsInSum", "pd.wattsOutSum")
    template = templates.DELTA_2
    float_keys = templates.DELTA_2_FLOATS
    report_modules = _DELTA_2_MODULES
    build = Build(cells=16, full_ah=19.9, strings=(PvString(400.0, 36.0, 44.0),), usb_w=18.0)
    limit_keys = ("bms_emsStatus.maxChargeSoc", "bms_emsStatus.minDsgSoc")
    ac_switch = "inv.cfgAcEnabled"
    layout: ClassVar[Mapping[str, Source]] = _DELTA_2_LAYOUT

    def _initial_values(self) -> dict[str, Value]:
        super()._initial_values()
        # the captures' AC output was off: on here (the household load is the point)
        on: dict[str, Value] = {"inv.cfgAcEnabled": 1, "mppt.cfgAcEnabled": 1, "pd.acEnabled": 1}
        on["bms_bmsStatus.packSn"] = self.sn
        return {key: value for key, value in on.items() if key in self.template}


class Delta2Max(Delta2):
    """DELTA 2 Max (2 kWh LFP): two solar inputs (PV2 in other units than PV1, as the catalog says)."""

    product_slug = "delta_2_max"
    template = templates.DELTA_2_MAX
    float_keys = templates.DELTA_2_MAX_FLOATS
    build = Build(
        cells=16, full_ah=39.8, strings=(PvString(500.0, 41.0, 49.0), PvString(500.0, 40.0, 48.5)), usb_w=18.0
    )
    layout: ClassVar[Mapping[str, Source]] = {
        **{k: v for k, v in _DELTA_2_LAYOUT.items() if k not in ("mppt.cfgAcOutVol", "mppt.cfgAcOutFreq")},
        "mppt.pv2InVol": "pv2_v",
        "mppt.pv2InAmp": "pv2_a",
        "mppt.pv2InWatts": "pv2_w",
        "mppt.pv2MpptTemp": "mppt_t",
        "mppt.pv2ChgState": lambda q: (1 if q["charging"] else 2) if q["pv2_w"] > 0 else 0,
        "pd.pv1ChargeWatts": "pv1_w",
        "pd.pv2ChargeWatts": "pv2_w",
        "pd.invOutWatts": "load_w",
    }

    def _initial_values(self) -> dict[str, Value]:
        values = super()._initial_values()
        values["bms_kitInfo.watts"] = [
            {**kit, "curPower": 0} for kit in self.template["bms_kitInfo.watts"]
        ]  # the capture's extra battery stands idle: the physics has no flow through the port
        return values


_RIVER_ABSENT: Final = (  # DELTA 2 keys the RIVER 2 Pro does not report
    "bms_bmsStatus.cellVol",
    "bms_bmsStatus.maxVolDiff",
    "bms_bmsStatus.actSoc",
    "bms_bmsStatus.targetSoc",
    "bms_bmsStatus.cellTemp",
    "bms_bmsStatus.sysState",
    "bms_bmsStatus.chgState",
    "bms_emsStatus.sysChgDsgState",
)


class River2Pro(Delta2):
    """RIVER 2 Pro (768 Wh LFP, a 19.2 V pack): the DELTA 2's key family and envelope, fewer BMS keys."""

    product_slug = "river_2_pro"
    template = templates.RIVER_2_PRO
    float_keys = templates.RIVER_2_PRO_FLOATS
    build = Build(cells=6, full_ah=40.0, strings=(PvString(220.0, 36.0, 44.0),), usb_w=18.0)
    layout: ClassVar[Mapping[str, Source]] = {
        k: v for k, v in _DELTA_2_LAYOUT.items() if k not in _RIVER_ABSENT
    }


# ----------------------------------------------------------------------------- flat-key products


class DeltaPro3(Station):
    """DELTA Pro 3 (4 kWh LFP): a high- and a low-voltage solar input; flat keys, floats in W, V, A."""

    product_slug = "delta_pro_3"
    heartbeat_keys = ("cmsBattSoc", "powInSumW", "powOutSumW")
    template = templates.DELTA_PRO_3
    float_keys = templates.DELTA_PRO_3_FLOATS | {"bmsFullCapMah", "bmsRemainCapMah"}
    report_cmd = (2, 2)
    report_prefixed = False
    report_addr = "hs_yj751_pd_backend_addr"
    build = Build(
        cells=16,
        full_ah=79.8,
        strings=(PvString(1600.0, 150.0, 180.0), PvString(400.0, 33.0, 40.0)),
        load_w=150.0,
        ac_limit_w=4000.0,
        usb_w=20.0,
    )
    limit_keys = ("cmsMaxChgSoc", "cmsMinDsgSoc")
    layout: ClassVar[Mapping[str, Source]] = {
        "cmsBattSoc": "soc",
        "bmsBattSoc": "soc",
        "cmsChgDsgState": "state",
        "bmsChgDsgState": "state",
        "cmsChgRemTime": lambda q: q["to_full_s"] or 0.0,
        "cmsDsgRemTime": lambda q: q["to_empty_s"] or 0.0,
        "bmsChgRemTime": lambda q: q["to_full_s"] or 0.0,
        "bmsDsgRemTime": lambda q: q["to_empty_s"] or 0.0,
        "bmsRemainCapMah": "remain_ah",
        "bmsFullCapMah": "full_ah",
        "bmsBattVol": "pack_v",
        "bmsBattAmp": "pack_a",
        "bmsOutputWatts": lambda q: -q["bat_w"],
        "bmsMaxCellVol": "cell_v_max",
        "bmsMinCellVol": "cell_v_min",
        "bmsMaxCellTemp": "cell_t_max",
        "bmsMinCellTemp": "cell_t_min",
        "bmsMaxMosTemp": lambda q: q["mos_t"] + 0.6,
        "bmsMinMosTemp": "mos_t",
        "powInSumW": "pv_in_w",
        "powOutSumW": "out_w",
        "powGetAc": "load_w",
        "powGetAcHvOut": "load_w",
        "powGetAcIn": lambda q: 0.0,
        "powGetLlc": lambda q: 0.0,
        "powGetTypec1": "usb_w",
        "powGetPvH": "pv1_w",
        "powGetPvHVol": "pv1_v",
        "powGetPvHAmp": "pv1_a",
        "powGetPvL": "pv2_w",
        "powGetPvLVol": "pv2_v",
        "powGetPvLAmp": "pv2_a",
        "inLvMpptVol": "pv2_v",
        "inLvMpptAmp": "pv2_a",
        "plugInInfoPvHFlag": lambda q: int(q["pv1_w"] > 0),
        "plugInInfoPvLFlag": lambda q: int(q["pv2_w"] > 0),
        "mpptHvTemp": "mppt_t",
        "mpptLvTemp": lambda q: q["mppt_t"] - 2.0,
        "pcsAcTemp": "inv_t",
        "pcsDcTemp": lambda q: q["inv_t"] - 1.0,
        "pdTemp": "pd_t",
        "fanState": lambda q: int(q["fan"] > 0),
        "pcsFanLevel": "fan",
        "acOutFreq": "rated_hz",
        "plugInInfoAcInFeq": "rated_hz",
    }


class Stream(Station):
    """STREAM Ultra (1.9 kWh LFP, 6 cells; solar inputs 1 and 2 used): a home battery behind a socket.
    Its AC port serves the household's load up to 800 W; the rest comes from the grid."""

    product_slug = "stream"
    heartbeat_keys = ("cmsBattSoc", "powGetSysGrid", "powGetSysLoad")
    template = templates.STREAM
    float_keys = templates.STREAM_FLOATS | {"powGetPv3", "powGetPv4"}
    build = Build(
        cells=6,
        full_ah=100.0,
        strings=(PvString(450.0, 38.5, 46.0), PvString(450.0, 38.0, 45.5)),
        load_w=250.0,
        ac_limit_w=800.0,
        inverter_efficiency=0.94,
        inverter_idle_w=8.0,
    )
    limit_keys = ("cmsMaxChgSoc", "cmsMinDsgSoc")
    layout: ClassVar[Mapping[str, Source]] = {
        "cmsBattSoc": "soc",
        "bmsBattSoc": "soc",
        "f32ShowSoc": "soc",
        "actSoc": "soc",
        "cascadeSysSoc": "soc",
        "v1p0.lcdShowSoc": "soc",
        "v1p0.f32LcdShowSoc": "soc",
        "v1p0.chgRemainTime": raw_if_none("to_full_s", 5939),
        "v1p0.dsgRemainTime": raw_if_none("to_empty_s", 5939),
        "v1p0.chgVol": lambda q: q["pack_v"] + (2.0 if q["charging"] else 0.0),
        "bmsChgRemTime": raw_if_none("to_full_s", 5939),
        "bmsDsgRemTime": raw_if_none("to_empty_s", 5939),
        "chgDsgState": "state",
        "cmsChgDsgState": "state",
        "bmsChgDsgState": "state",
        "v1p3.sysChgDsgState": "state",
        "inputWatts": "bat_in_w",
        "outputWatts": "bat_out_w",
        "vBat": "pack_v",
        "remainCap": "remain_ah",
        "temp": "pack_t",
        "powGetPvSum": "pv_in_w",
        "powGetPv": "pv1_w",
        "powGetPv2": "pv2_w",
        "powGetPv3": lambda q: 0.0,
        "powGetPv4": lambda q: 0.0,
        "plugInInfoPvVol": "pv1_v",
        "plugInInfoPvAmp": "pv1_a",
        "plugInInfoPv2Vol": "pv2_v",
        "plugInInfoPv2Amp": "pv2_a",
        "powGetBpCms": "bat_w",
        "powGetSysLoad": "house_w",
        "powGetSysGrid": "grid_w",
        "powGetSysLoadFromGrid": "grid_w",
        "powGetSysLoadFromPv": lambda q: min(q["pv_in_w"], q["load_w"]),
        "powGetSysLoadFromBp": lambda q: q["load_w"] - min(q["pv_in_w"], q["load_w"]),
        "gridConnectionPower": "load_w",
        "cloudMetter.phaseAPower": "grid_w",
        "ongridVinRms": "ac_v",
        "ongridVoutRms": "ac_v",
    }

    def _pack_wh(self) -> float:
        return self.station.full_ah * 19.2
