"""Home backup systems: the DELTA Pro Ultra (inverter and stacked packs) and the Smart Home Panel
(a transfer switch with ten circuits and a DELTA Pro battery). Physics in SI, sent through the
catalog like every simulated product (:mod:`~collector.simulator.codec`); what else each reports is
in :mod:`~collector.simulator.templates`.

MQTT: both report in the `{"id","version","timestamp","params":{..}}` envelope with their quota/all
keys (the DELTA Pro Ultra's `hs_yj751_pd_appshow_addr.soc`, ...; the Open API document refers its
quota reports to the quota/all fields), except the panel's channel powers, which its channelPower
report carries as bare `infoList` (tests/fixtures/smart_home_panel/mqtt_channel_power.json).
"""

from __future__ import annotations

import math
import time
from typing import Any, ClassVar, Final

from collector.simulator import templates
from collector.simulator.base import SimDevice
from collector.simulator.codec import Raw, Value
from collector.simulator.physics import DAY_S, PvString, clamp, drift, fridge_w, household_w

__all__ = ["DeltaProUltra", "PowerOcean", "SmartHomePanel"]

REMAIN_CAP_S: Final = 100 * DAY_S  # remaining times: at most 100 days (the catalog's range)

# ----------------------------------------------------------------------------- DELTA Pro Ultra

_SHOW: Final = "hs_yj751_pd_appshow_addr."
_SET: Final = "hs_yj751_pd_app_set_info_addr."
_BACKEND: Final = "hs_yj751_pd_backend_addr."


class DeltaProUltra(SimDevice):
    """DELTA Pro Ultra: a 7.2 kW inverter over `packs` stacked 6144 Wh LFP packs, a high- and a
    low-voltage solar input, AC charging on the C20 inlet, a house on its AC outputs.

    Loads: the household on the first outlet circuit (L1-1), a fridge on the second (L1-2), a water
    heater cycling on the L14-30 port, an electric car charging from the TT-30 port in the late
    evening (240 V split phase on a 120 V site), a laptop on USB-C and a phone on USB-A. The packs
    take what solar gives beyond the loads up to the charge limit `chgMaxSoc` (solar is curtailed
    there), the outputs stop at the discharge limit `dsgMinSoc`, and the C20 inlet charges from the
    grid at `chgC20SetWatts` once the SoC falls below the backup reserve `sysBackupSoc`, until it is
    10 % above it. wattsInSum and wattsOutSum are the sums of the reported port powers, as on the
    real device.
    """

    product_slug = "delta_pro_ultra"
    heartbeat_keys = (f"{_SHOW}soc", f"{_SHOW}wattsInSum", f"{_SHOW}wattsOutSum")
    template = templates.DELTA_PRO_ULTRA
    float_keys = templates.DELTA_PRO_ULTRA_FLOATS

    PACK_WH: ClassVar[float] = 6144.0
    INVERTER_W: ClassVar[float] = 7200.0
    INVERTER_EFFICIENCY: ClassVar[float] = 0.94
    IDLE_W: ClassVar[float] = 25.0
    MPPT_EFFICIENCY: ClassVar[float] = 0.97
    CHARGER_EFFICIENCY: ClassVar[float] = 0.93

    def __init__(
        self,
        sn: str,
        name: str,
        *,
        packs: int = 2,
        pv_peak_w: float | None = None,
        load_w: float = 220.0,
        **kwargs: Any,
    ) -> None:
        if not 1 <= packs <= 5:
            raise ValueError("a DELTA Pro Ultra stacks 1 to 5 battery packs")
        self.packs = packs
        self.load_w = load_w
        strings: tuple[PvString, ...] = (PvString(2400.0, 300.0, 360.0), PvString(800.0, 40.0, 49.0))
        if pv_peak_w is not None:
            scale = pv_peak_w / sum(s.peak_w for s in strings)
            strings = tuple(PvString(s.peak_w * scale, s.vmp, s.voc) for s in strings)
        self._strings = strings
        self._pv_temp = 0.0
        self._grid_charging = False
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        site = self.site
        self._pv_temp = site.ambient(self._noise, self._t)
        low_voltage = site.grid_v < 200.0  # the C20 inlet takes 1800 W at 120 V, 3000 W at 230 V
        c20_max = 1800.0 if low_voltage else 3000.0
        return {
            f"{_SHOW}bpNum": self.packs,
            f"{_SHOW}c20ChgMaxWatts": c20_max,
            f"{_SET}chgC20SetWatts": min(1500.0, c20_max),
            f"{_SET}acOutFreq": site.grid_hz,
        }

    def _compute(self, t: float, dt: float) -> None:
        site, noise, put, quantize = self.site, self._noise, self._put, self.codec.quantize
        max_soc, min_soc = self._setting(f"{_SET}chgMaxSoc"), self._setting(f"{_SET}dsgMinSoc")
        reserve = self._setting(f"{_SET}sysBackupSoc")
        hour = site.local_hour(t)
        pack_wh = self.PACK_WH * self.packs

        # the grid charges below the backup reserve, up to 10 % above it
        if self._soc < reserve:
            self._grid_charging = True
        elif self._soc >= min(reserve + 10.0, max_soc):
            self._grid_charging = False
        ac_on = self._soc > min_soc or self._grid_charging
        split_phase = site.grid_v < 200.0
        ac_v = site.grid_v + 1.2 * (noise(91, t, 120.0) - 0.5)
        outputs: dict[str, float] = dict.fromkeys(templates.DELTA_PRO_ULTRA_AC_OUTPUTS, 0.0)
        if ac_on:
            outputs["outAcL11"] = household_w(site, noise, 80, t, self.load_w)
            outputs["outAcL12"] = fridge_w(noise, 82, t)
            outputs["outAcL14"] = 1150.0 + 200.0 * noise(85, t, 300.0) if noise(84, t, 1800.0) > 0.78 else 0.0
            ev_hours = 1.0 + 1.5 * noise(87, t, DAY_S)  # the car charges from 21:30 for 1-2.5 h
            outputs["outAcTt"] = 2400.0 if 21.5 <= hour < 21.5 + ev_hours else 0.0
        usb = {
            "outTypec1": 12.0 + 33.0 * noise(88, t, 600.0) if 7.0 <= hour < 23.0 else 0.0,
            "outTypec2": 0.0,
            "outUsb1": 2.0 + 8.0 * noise(89, t, 900.0),
            "outUsb2": 0.0,
            "outAds": 0.0,
            "outPr": 0.0,
        }
        if not ac_on:
            usb = dict.fromkeys(usb, 0.0)
        ac_w = sum(outputs.values())
        dc_draw = (ac_w / self.INVERTER_EFFICIENCY + self.IDLE_W if ac_on else 0.0) + sum(usb.values()) / 0.95

        grid_w = min(self._setting(f"{_SET}chgC20SetWatts"), self._setting(f"{_SHOW}c20ChgMaxWatts"))
        c20_w = grid_w if self._grid_charging and self._soc < max_soc else 0.0
        available = [
            s.peak_w * site.solar(noise, 92 + i, t) * (1.0 - 0.04 * i) for i, s in enumerate(self._strings)
        ]
        offered = sum(available)
        if self._soc >= max_soc:  # full: solar covers the outputs at most (the MPPT moves off its maximum)
            pv_in = min(offered, max(0.0, dc_draw - c20_w * self.CHARGER_EFFICIENCY) / self.MPPT_EFFICIENCY)
        else:
            pv_in = offered
        bat_w = pv_in * self.MPPT_EFFICIENCY + c20_w * self.CHARGER_EFFICIENCY - dc_draw  # + = charging
        if dt:
            self._soc = clamp(self._soc + 100.0 * bat_w * dt / 3600.0 / pack_wh, 0.0, 100.0)

        ambient = site.ambient(noise, t)
        self._pv_temp = drift(
            self._pv_temp, ambient + 25.0 * offered / sum(s.peak_w for s in self._strings), dt, 900.0
        )
        inputs_sent = 0.0
        for i, (port, string) in enumerate(zip(("inHvMppt", "inLvMppt"), self._strings, strict=True)):
            used = available[i] * pv_in / offered if offered > 0 else 0.0
            volts, amps = string.operate(available[i], used, self._pv_temp)
            put(f"{_SHOW}{port}Pwr", used)
            put(f"{_BACKEND}{port}Vol", volts)
            put(f"{_BACKEND}{port}Amp", amps)
            inputs_sent += quantize(f"{_SHOW}{port}Pwr", used)
        grid_v = site.grid_v + 1.5 * (noise(93, t, 120.0) - 0.5)  # the C20 inlet stays plugged in
        put(f"{_SHOW}inAcC20Pwr", c20_w)
        put(f"{_BACKEND}inAcC20Vol", grid_v)
        put(f"{_BACKEND}inAcC20Amp", c20_w / 0.99 / grid_v)
        inputs_sent += quantize(f"{_SHOW}inAcC20Pwr", c20_w)
        for port in ("inAc5p8",):  # the POWER IN/OUT port: no Smart Home Panel 2 behind it
            put(f"{_SHOW}{port}Pwr", 0.0)
            put(f"{_BACKEND}{port}Vol", 0.0)
            put(f"{_BACKEND}{port}Amp", 0.0)
        put(f"{_SHOW}wattsInSum", inputs_sent)

        outputs_sent = 0.0
        power_factor = 0.95 + 0.04 * noise(94, t, 600.0)
        live = ("outAcL11", "outAcL12")  # the outlet circuits show their voltage while the AC is on
        hz = self._setting(f"{_SET}acOutFreq") if ac_on else 0.0
        for port, watts in outputs.items():
            volts = 0.0
            if ac_on and (port in live or watts > 0):
                volts = 2.0 * ac_v if port == "outAcTt" and split_phase else ac_v
            put(f"{_SHOW}{port}Pwr", watts)
            put(f"{_BACKEND}{port}Vol", volts)
            put(f"{_BACKEND}{port}Amp", watts / power_factor / volts if volts else 0.0)
            if port != "outAc5p8":
                put(f"{_BACKEND}{port}Pf", hz)
            outputs_sent += quantize(f"{_SHOW}{port}Pwr", watts)
        for port, watts in usb.items():
            put(f"{_SHOW}{port}Pwr", watts)
            outputs_sent += quantize(f"{_SHOW}{port}Pwr", watts)
        put(f"{_SHOW}wattsOutSum", outputs_sent)

        put(f"{_SHOW}soc", self._soc)
        remain = 0.0
        if bat_w > 1.0:
            remain = max(0.0, max_soc - self._soc) / 100.0 * pack_wh / bat_w * 3600.0
        elif bat_w < -1.0:
            remain = max(0.0, self._soc - min_soc) / 100.0 * pack_wh / -bat_w * 3600.0
        put(f"{_SHOW}remainTime", min(REMAIN_CAP_S, remain))


# ----------------------------------------------------------------------------- Smart Home Panel

_HB: Final = "heartbeat."
_CIRCUITS: Final = 10
_CHANNELS: Final = 12  # circuits 1-10, then battery channels 1 and 2
# per circuit: base load (W), and whether it follows the household's daily rhythm
_CIRCUIT_LOADS: Final = (
    (0.0, False),  # 1: the fridge (its compressor's cycle)
    (25.0, True),  # 2: lights
    (60.0, True),  # 3: kitchen
    (35.0, True),  # 4: living room
    (45.0, False),  # 5: office, by day
    (0.0, False),  # 6: water heater (cycles, 1.5-2 kW)
    (15.0, True),  # 7: bedroom
    (0.0, False),  # 8: washing machine (runs now and then)
    (5.0, False),  # 9: garage
    (9.0, False),  # 10: network and standby
)
_EFFICIENCY: Final = 0.87  # battery output to what the panel measures on its channel (T: 173.8 W of 203 W)
_TOPUP_W: Final = 1200.0  # grid charging of a battery through its channel


class SmartHomePanel(SimDevice):
    """Smart Home Panel: ten household circuits between the grid and a DELTA Pro (with an extra
    battery: 7.2 kWh) on battery channel 1; channel 2's slot is empty.

    With the grid on, the circuits whose `loadCmdChCtrlInfos.ctrlSta` is 1 run from the battery while
    it is above `backupChaDiscCfg.discLower`, the others from the grid; below it, the grid charges
    the battery through its channel until `discLower` + 30 % (at most `forceChargeHigh`). Grid
    outages come now and then (seeded): the circuits the emergency strategy keeps
    (`emergencyStrategy.chSta.isEnable`) run from the battery, the others are off, and all of them
    go dark at `discLower`. Solar charges the DELTA Pro by day up to `forceChargeHigh`. The day
    energies and hourly tables integrate the channel powers and restart at local midnight.
    """

    product_slug = "smart_home_panel"
    heartbeat_keys = (f"{_HB}backupBatPer", f"{_HB}gridSta", "channelPower.infoList")
    template = templates.SMART_HOME_PANEL
    float_keys = templates.SMART_HOME_PANEL_FLOATS
    report_keys: ClassVar[dict[str, str]] = {"channelPower.infoList": "infoList"}

    BATTERY_WH: ClassVar[float] = 7200.0  # a DELTA Pro and one extra battery
    SOLAR: ClassVar[PvString] = PvString(800.0, 70.0, 84.0)  # on the DELTA Pro's solar input

    def __init__(self, sn: str, name: str, *, outage_share: float = 0.08, **kwargs: Any) -> None:
        self.outage_share = outage_share  # about this share of the time the grid is down
        self._day = ""
        self._mains = [[0.0] * 24 for _ in range(_CIRCUITS)]
        self._backup = [[0.0] * 24 for _ in range(_CIRCUITS)]
        self._topup = [[0.0] * 24 for _ in range(2)]
        self._work_s = 0.0
        self._bat_temp = 0.0
        self._topping_up = False
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        r, site = self._rng, self.site
        self._work_s = r.uniform(2.0, 60.0) * DAY_S
        self._bat_temp = site.ambient(self._noise, self._t) + 4.0
        self._day = self._date(self._t)
        return {
            "gridInfo.gridVol": float(round(site.grid_v)),
            "gridInfo.gridFreq": site.grid_hz,
            "selfCheck.vIn": [site.grid_v + r.uniform(-1.5, 2.5) for _ in range(_CIRCUITS)],
        }

    def _date(self, t: float) -> str:
        local = time.gmtime(t + self.site.utc_offset_h * 3600.0)
        return f"{local.tm_year}-{local.tm_mon}-{local.tm_mday}"

    def _circuit_w(self, index: int, t: float) -> float:
        noise, hour = self._noise, self.site.local_hour(t)
        channel = 100 + 3 * index
        if index == 0:
            return fridge_w(noise, channel, t)
        if index == 4:
            return 45.0 + 90.0 * noise(channel, t, 900.0) if 8.0 <= hour < 18.0 else 4.0
        if index == 5:
            return 1500.0 + 400.0 * noise(channel, t, 300.0) if noise(channel + 1, t, 1800.0) > 0.8 else 0.0
        if index == 7:
            return 450.0 + 250.0 * noise(channel, t, 600.0) if noise(channel + 1, t, 5400.0) > 0.85 else 1.0
        base, daily = _CIRCUIT_LOADS[index]
        if daily:
            return household_w(self.site, noise, channel, t, base) * base / 60.0
        return base * (0.8 + 0.4 * noise(channel, t, 600.0))

    def _compute(self, t: float, dt: float) -> None:
        site, noise, put, values = self.site, self._noise, self._put, self._values
        low, high = (
            self._setting("backupChaDiscCfg.discLower"),
            self._setting("backupChaDiscCfg.forceChargeHigh"),
        )
        grid_on = noise(130, t, 7200.0) < 1.0 - self.outage_share
        day = self._date(t)
        if day != self._day:  # local midnight: the day's energies and tables restart
            self._day = day
            self._mains = [[0.0] * 24 for _ in range(_CIRCUITS)]
            self._backup = [[0.0] * 24 for _ in range(_CIRCUITS)]
            self._topup = [[0.0] * 24 for _ in range(2)]
        hour = int(site.local_hour(t))

        controls = values[f"{_HB}loadCmdChCtrlInfos"]
        kept = values["emergencyStrategy.chSta"]
        usable = self._soc > low
        circuits: list[tuple[float, int]] = []  # (W, powType 0 grid / 1 battery)
        for i in range(_CIRCUITS):
            demand = self._circuit_w(i, t)
            if grid_on:
                on_battery = usable and controls[i]["ctrlSta"] == 1
                circuits.append((demand, 1 if on_battery else 0))
            else:
                keep = usable and kept[i]["isEnable"] == 1
                circuits.append((demand if keep else 0.0, 1))
        from_battery = sum(w for w, source in circuits if source == 1)

        if not grid_on or self._soc >= min(high, low + 30.0):
            self._topping_up = False
        elif self._soc < low:
            self._topping_up = True
        topup = _TOPUP_W if self._topping_up else 0.0
        solar_offered = self.SOLAR.peak_w * site.solar(noise, 131, t)
        solar = solar_offered if self._soc < high else 0.0
        output = from_battery / _EFFICIENCY
        bat_w = 0.97 * solar + 0.92 * topup - output / 0.92  # + = charging
        if dt:
            self._soc = clamp(self._soc + 100.0 * bat_w * dt / 3600.0 / self.BATTERY_WH, 0.0, 100.0)
            self._work_s += dt
            for i, (watts, source) in enumerate(circuits):
                (self._backup if source == 1 else self._mains)[i][hour] += watts * dt / 3600.0
            self._topup[0][hour] += topup * dt / 3600.0

        battery_channel = (
            {"chWatt": from_battery, "powType": 1} if from_battery > 0 else {"chWatt": topup, "powType": 0}
        )
        info = [{"chWatt": w, "powType": source} for w, source in circuits]
        info += [battery_channel, {"chWatt": 0.0, "powType": 0}]
        put("channelPower.infoList", info)

        charging, discharging = bat_w > 1.0, bat_w < -1.0
        to_full = (high - self._soc) / 100.0 * self.BATTERY_WH / bat_w * 3600.0 if charging else 0.0
        to_low = (self._soc - low) / 100.0 * self.BATTERY_WH / -bat_w * 3600.0 if discharging else 0.0
        to_full, to_low = clamp(to_full, 0.0, REMAIN_CAP_S), clamp(to_low, 0.0, REMAIN_CAP_S)
        self._bat_temp = drift(self._bat_temp, site.ambient(noise, t) + 4.0 + abs(bat_w) / 120.0, dt, 3600.0)
        slots = templates.SMART_HOME_PANEL[f"{_HB}energyInfos"]  # SI, as the battery is built
        first: dict[str, Value] = {
            **slots[0],
            "batteryPercentage": self._soc,
            "chargeTime": to_full,
            "dischargeTime": to_low,
            "emsBatTemp": self._bat_temp,
            "emsChgFlag": int(charging),
            "lcdInputWatts": solar + topup,
            "outputPower": output,
            "stateBean": {
                "isAcOpen": 1,
                "isConnect": 1,
                "isEnable": 1,
                "isGridCharge": int(topup > 0),
                "isMpptCharge": int(solar > 0),
                "isPowerOutput": int(output > 0),
            },
        }
        put(f"{_HB}energyInfos", [first, slots[1]])
        put(f"{_HB}backupBatPer", self._soc)
        # no unit fits both real panels (the catalog stores it raw): sent as the battery's
        # dischargeTime is, as the panels of the fixture and of T (2025) send it
        put(f"{_HB}backupChaTime", Raw(self.codec.encode(f"{_HB}energyInfos[0].dischargeTime", to_low)))
        put(f"{_HB}gridSta", int(grid_on))
        put(f"{_HB}gridDayWatth", sum(map(sum, self._mains)) + sum(map(sum, self._topup)))
        put(f"{_HB}backupDayWatth", sum(map(sum, self._backup)))
        put(f"{_HB}workTime", self._work_s)
        put("mainsLoadWatt.watth", [list(row) for row in self._mains])
        put("backupLoadWatt.watth", [list(row) for row in self._backup])
        put("topupLoadWatt.watth", [list(row) for row in self._topup])
        for table in ("mainsLoadWatt", "backupLoadWatt", "topupLoadWatt"):
            put(f"{table}.rtc", day)
        local = time.gmtime(t + site.utc_offset_h * 3600.0)
        clock = {
            "year": local.tm_year,
            "month": local.tm_mon,
            "day": local.tm_mday,
            "hour": local.tm_hour,
            "min": local.tm_min,
            "sec": local.tm_sec,
            "week": (local.tm_wday + 1) % 7,  # Sunday 0 (the fixture's Friday 2025-03-14 is 5)
        }
        for name, value in clock.items():
            put(f"{_HB}time.{name}", value)
            put(f"channelPower.time.{name}", value)


# ----------------------------------------------------------------------------- PowerOcean

_PHASES: Final = ("pcsAPhase", "pcsBPhase", "pcsCPhase")


class PowerOcean(SimDevice):
    """PowerOcean: a three-phase hybrid inverter with two PV strings and `packs` 5 kWh LFP packs in a
    household, the grid meter at the connection, a PowerGlow heating rod, a PowerHeat heat pump's
    temperatures and a PowerPulse EV charger reported through it.

    Self-consumption: the battery takes what solar gives beyond the household's load (up to
    `BATTERY_W`, until full) and gives what the load needs beyond solar (until `MIN_SOC`); the heating
    rod soaks up the surplus once the battery is full; the car charges some evenings. The reported
    figures balance as the document's sample does: mpptPwr + sysGridPwr - bpPwr = sysLoadPwr (import
    and charging positive); the inverter's phases carry mpptPwr - bpPwr, negative while it supplies
    the house (the sign of the document's samples).
    """

    product_slug = "powerocean"
    heartbeat_keys = ("bpSoc", "bpPwr", "sysGridPwr")
    template = templates.POWEROCEAN
    float_keys = templates.POWEROCEAN_FLOATS

    PACK_WH: ClassVar[float] = 5120.0
    BATTERY_W: ClassVar[float] = 5000.0
    MIN_SOC: ClassVar[float] = 5.0
    ROD_W: ClassVar[float] = 3000.0
    EV_W: ClassVar[float] = 7400.0
    EFFICIENCY: ClassVar[float] = 0.95  # AC to the cells and back, each way

    def __init__(
        self,
        sn: str,
        name: str,
        *,
        packs: int = 2,
        pv_peak_w: float = 9000.0,
        load_w: float = 450.0,
        **kwargs: Any,
    ) -> None:
        if not 1 <= packs <= 9:
            raise ValueError("a PowerOcean stacks 1 to 9 battery packs")
        self.packs = packs
        self.load_w = load_w
        self._strings = (PvString(pv_peak_w * 0.55, 360.0, 440.0), PvString(pv_peak_w * 0.45, 340.0, 420.0))
        self._pv_temp = 0.0
        self._water_c = 45.0
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        self._pv_temp = self.site.ambient(self._noise, self._t)
        self._water_c = 40.0 + 10.0 * self._rng.random()
        return {}

    def _compute(self, t: float, dt: float) -> None:
        site, noise, put, quantize = self.site, self._noise, self._put, self.codec.quantize
        hour = site.local_hour(t)
        pack_wh = self.PACK_WH * self.packs

        # solar, string by string (the MPPTs take all the sun offers: the surplus goes to the grid)
        ambient = site.ambient(noise, t)
        available = [
            s.peak_w * site.solar(noise, 150 + i, t) * (1.0 - 0.03 * i) for i, s in enumerate(self._strings)
        ]
        peak = sum(s.peak_w for s in self._strings)
        self._pv_temp = drift(self._pv_temp, ambient + 25.0 * sum(available) / peak, dt, 900.0)
        strings = []
        pv_w = 0.0
        for i, string in enumerate(self._strings):
            volts, amps = string.operate(available[i], available[i], self._pv_temp)
            strings.append({"vol": volts, "amp": amps, "pwr": volts * amps})
            pv_w += quantize(f"mpptHeartBeat[0].mpptPv[{i}].pwr", volts * amps)
        put("mpptHeartBeat", [{"mpptPv": strings}])

        # loads: the household, the car some evenings, the heating rod on a full battery's surplus
        house = household_w(site, noise, 151, t, self.load_w)
        ev = self.EV_W if 18.0 <= hour < 19.5 and noise(152, t, 86400.0) > 0.5 else 0.0
        surplus = pv_w - house - ev
        rod = clamp(surplus - 100.0, 0.0, self.ROD_W) if self._soc >= 99.0 else 0.0
        load = house + ev + rod

        # the battery covers the difference within its power and SoC limits
        want = pv_w - load
        if want > 0.0:
            bat_w = min(want, self.BATTERY_W) if self._soc < 100.0 else 0.0
        else:
            bat_w = max(want, -self.BATTERY_W) if self._soc > self.MIN_SOC else 0.0
        if dt:
            cells = bat_w * self.EFFICIENCY if bat_w > 0 else bat_w / self.EFFICIENCY
            self._soc = clamp(self._soc + 100.0 * cells * dt / 3600.0 / pack_wh, 0.0, 100.0)

        put("mpptPwr", pv_w)
        put("bpPwr", bat_w)
        put("sysLoadPwr", load)
        put("evPwr", ev)
        put("chargingStatus", "EV_CHG_STS_CHARGING" if ev else "EV_CHG_STS_AVAILABLE")
        sent = quantize("mpptPwr", pv_w) - quantize("bpPwr", bat_w)
        put("sysGridPwr", quantize("sysLoadPwr", load) - sent)  # import positive: the balance closes
        put("bpSoc", self._soc)

        # the inverter's three phases carry solar minus the battery, negative while supplying the house
        inverter_w = pv_w - bat_w
        power_factor = 0.96 + 0.03 * noise(153, t, 600.0)
        for n, phase in enumerate(_PHASES):
            share = inverter_w / 3.0 * (0.97 + 0.06 * noise(154 + n, t, 300.0))
            volts = site.grid_v + 3.0 * (noise(157 + n, t, 120.0) - 0.5)
            apparent = abs(share) / power_factor
            reactive = math.sqrt(max(0.0, apparent**2 - share**2))
            values = {"vol": volts, "amp": apparent / volts, "actPwr": -share, "reactPwr": reactive}
            put(phase, {**values, "apparentPwr": apparent})

        # PowerGlow: the tank warms with the rod and cools slowly; PowerHeat: its zones and water
        target = 65.0 if rod > 0 else 20.0
        self._water_c = drift(self._water_c, target, dt, 7200.0 if rod > 0 else 40000.0)
        put("hrEnergyStream", [{"temp": self._water_c, "hrPwr": rod}])
        put("sectorA.tempCurr", 21.0 + 1.5 * noise(160, t, 3600.0))
        put("sectorB.tempCurr", 20.5 + 1.5 * noise(161, t, 3600.0))
        put("sectorDhw.tempCurr", 47.0 + 4.0 * noise(162, t, 3600.0))
        flow = 30.0 + 8.0 * noise(163, t, 1800.0)
        put("hpMaster.tempInlet", flow)
        put("hpMaster.tempOutlet", flow + 4.0 + noise(164, t, 600.0))
        put("hpMaster.tempAmbient", ambient)
