"""Simulated PowerStream and Delta Pro devices: raw quota values in the catalog's key space and units.

Each device integrates simple physics over an injected clock: PV follows a sunrise-to-sunset sine
with slow cloud dips, the battery's charge integrates its power over time and capacity, port
voltages times currents match port powers in device units, temperatures drift towards a target
that depends on the ambient temperature and the power handled. All randomness is a function of
the device's seed and the time (splitmix64 value noise), so a run is reproducible whatever the
order in which devices are read.

Three views of a device's values:

- :meth:`SimDevice.snapshot`: what HTTP `quota/all` answers (adds the cloud's own keys, such as
  the PowerStream's `20_1.updateTime` text and its `20_134.task*` objects);
- :meth:`SimDevice.full_report`: every key the device itself reports over MQTT;
- :meth:`SimDevice.incremental_report`: a handful of keys whose values changed since they were
  last reported (settings changed by a command first).

Units (see collector/catalog/products/*.toml for the evidence): PowerStream `20_1.*` powers in
0.1 W, voltages in 0.1 V (PV operating voltages 0.01 V), currents in 0.1 A (AC output in mA),
temperatures in 0.1 °C; Delta Pro packs in mV / mA / mAh / W / °C, the MPPT board in 0.1 V /
0.01 A / 0.1 W, the inverter in mV / mA / W.
"""

from __future__ import annotations

import math
import random
import re
import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from collector.catalog import Product, default_catalog
from collector.history.energy import COUNTERS, POWER_FIELDS, flow_powers
from collector.simulator.clock import Clock

Value = Any  # int, float, str, list or dict: JSON as the device sends it

_MASK64: Final = (1 << 64) - 1
_MAX_STEP_S: Final = 30.0  # integration step: small against every time constant below
_MIN_STEP_S: Final = 1.0  # read more often than this, a device answers its last values (cheap)
_DAY_S: Final = 86_400.0


# ----------------------------------------------------------------------------- noise and site


def _mix(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _hash01(seed: int, channel: int, knot: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, channel, knot): the same in every process."""
    return (_mix(_mix(_mix(seed & _MASK64) ^ channel) ^ (knot & _MASK64)) >> 11) / float(1 << 53)


class Noise:
    """Smooth value noise in [0, 1) per channel: random knots every `period_s`, eased in between.

    Each channel is used with one period; the current pair of knots is kept, so a device that is
    read many times a second does not hash again.
    """

    __slots__ = ("_knots", "seed")

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._knots: dict[int, tuple[int, float, float]] = {}

    def __call__(self, channel: int, t: float, period_s: float) -> float:
        position = t / period_s
        knot = math.floor(position)
        cached = self._knots.get(channel)
        if cached is None or cached[0] != knot:
            cached = (knot, _hash01(self.seed, channel, knot), _hash01(self.seed, channel, knot + 1))
            self._knots[channel] = cached
        frac = position - knot
        ease = frac * frac * (3.0 - 2.0 * frac)
        return cached[1] + (cached[2] - cached[1]) * ease


@dataclass(frozen=True, slots=True)
class Site:
    """Where the devices stand: sun hours (local solar time), weather, grid."""

    utc_offset_h: float = 0.0  # local solar time = UTC + offset
    sunrise_h: float = 6.0
    sunset_h: float = 18.0
    clouds: float = 0.25  # depth of cloud dips (0 = clear sky all day)
    ambient_c: float = 18.0  # daily mean temperature
    ambient_swing_c: float = 6.0  # half the day-night difference (warmest at 15:00)
    grid_v: float = 230.0
    grid_hz: float = 50.0

    def local_hour(self, t: float) -> float:
        return ((t + self.utc_offset_h * 3600.0) % _DAY_S) / 3600.0

    def solar(self, noise: Noise, channel: int, t: float) -> float:
        """Irradiance as a fraction of a clear noon (0 at night, ~1 at noon on a clear day)."""
        hour = self.local_hour(t)
        if not self.sunrise_h < hour < self.sunset_h:
            return 0.0
        elevation = math.sin(math.pi * (hour - self.sunrise_h) / (self.sunset_h - self.sunrise_h))
        cloud: float = 1.0 - self.clouds * noise(channel, t, 900.0) ** 2
        return float(elevation**1.3 * cloud)

    def ambient(self, noise: Noise, t: float) -> float:
        phase = 2.0 * math.pi * (self.local_hour(t) - 9.0) / 24.0
        return self.ambient_c + self.ambient_swing_c * math.sin(phase) + noise(7, t, 1800.0) - 0.5


EUROPE: Final = Site()
AMERICAS: Final = Site(utc_offset_h=-6.0, grid_v=120.0, grid_hz=60.0)
SITES: Final[Mapping[str, Site]] = {"europe": EUROPE, "americas": AMERICAS, "global": EUROPE}


def _drift(current: float, target: float, dt: float, tau_s: float) -> float:
    """First-order lag: how a temperature follows its target."""
    return target + (current - target) * math.exp(-dt / tau_s)


def _clamp(value: float, low: float, high: float) -> float:
    return low if value < low else high if value > high else value


@dataclass(slots=True)
class PvString:
    """A PV string behind an MPPT input: operating voltage and current for a given power."""

    peak_w: float
    vmp: float  # voltage at the maximum power point, full sun, 25 °C
    voc: float  # open-circuit voltage

    def operate(self, available_w: float, used_w: float, temp_c: float) -> tuple[float, float]:
        """(volts, amps) when `used_w` of the `available_w` the sun offers is taken."""
        if available_w <= 0.5:
            return 0.0, 0.0
        light = min(1.0, available_w / self.peak_w)
        # voltage sags in weak light and in heat; an MPPT taking less than offered moves towards Voc
        vmp = self.vmp * (0.9 + 0.1 * min(1.0, light * 4.0)) * (1.0 - 0.004 * (temp_c - 25.0))
        volts = vmp + (self.voc - vmp) * (1.0 - used_w / available_w) * 0.8
        return volts, used_w / volts


# ----------------------------------------------------------------------------- the device


class SimDevice(ABC):
    """One simulated device; thread-safe (HTTP threads, the publisher and MQTT callbacks share it)."""

    product_slug: ClassVar[str]
    product_name: ClassVar[str]  # `productName` of the device list
    serial_prefix: ClassVar[str]
    heartbeat_keys: ClassVar[tuple[str, ...]]  # sent when nothing else changed
    # MQTT envelope: (cmdFunc, cmdId) of `{"cmdId","cmdFunc","param"}` reports whose keys are bare
    # (`{cmdFunc}_{cmdId}.` stripped), or None for `{"id","version","timestamp","params"}` reports
    report_cmd: ClassVar[tuple[int, int] | None] = None

    def __init__(
        self,
        sn: str,
        name: str,
        *,
        clock: Clock,
        seed: int,
        site: Site = EUROPE,
        soc: float = 60.0,
        online: bool = True,
        list_product_name: bool = True,
        read_denied: bool = False,
        quota_all_no_data: bool = False,
        numbers_as_strings: bool = False,
    ) -> None:
        self.sn = sn
        self.device_name = name
        self.clock = clock
        self.seed = seed
        self.site = site
        self.online = online
        self.list_product_name = list_product_name  # False: the device list omits productName
        self.read_denied = read_denied  # quota reads answer 1006
        self.quota_all_no_data = quota_all_no_data  # quota/all succeeds without a `data` key
        self.numbers_as_strings = numbers_as_strings  # numbers go out as JSON strings
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self._noise = Noise(seed)
        self._t = clock()
        self._soc = _clamp(soc, 0.0, 100.0)
        recorder = _WriteRecorder(self._initial_values())
        self._values: dict[str, Value] = recorder
        self._compute(self._t, 0.0)
        # Only keys the physics writes can change on their own (settings change through
        # set_quota); incremental reports compare just those.
        self._volatile = tuple(recorder.written)
        self._values = dict(recorder)
        self.meter = EnergyMeter(default_catalog().get(self.product_slug), self._t)
        self.meter.update(self._values)
        self._reported: dict[str, Value] = {}
        self._pending: dict[str, None] = {}  # keys to report first (an ordered set)
        self._changed: list[str] = []  # volatile keys not reported with their current value
        self._stale = True  # physics ran since `_changed` was worked out

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sn} soc={self._soc:.1f}%>"

    # -- views ---------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Value]:
        """Every quota key as HTTP quota/all answers it, at the clock's current time."""
        with self._lock:
            self._advance()
            return {**self._values, **self._cloud_values()}

    def full_report(self) -> dict[str, Value]:
        """Every key the device reports over MQTT; they all count as reported afterwards."""
        with self._lock:
            self._advance()
            values = dict(self._values)
            self._reported = dict(values)
            self._pending.clear()
            self._changed, self._stale = [], False
            return values

    def incremental_report(self, limit: int = 6) -> dict[str, Value]:
        """Up to `limit` changed keys (changed settings first); heartbeat keys if nothing changed."""
        with self._lock:
            self._advance()
            values, reported, pending = self._values, self._reported, self._pending
            if self._stale:
                self._changed = [k for k in self._volatile if reported.get(k, _UNSET) != values[k]]
                self._stale = False
            chosen = list(pending)[:limit]
            room = limit - len(chosen)
            if room > 0:
                changed = [k for k in self._changed if k not in pending]
                chosen += self._rng.sample(changed, min(room, len(changed)))
            if not chosen:
                chosen = list(self.heartbeat_keys)
            for key in chosen:
                reported[key] = values[key]
                pending.pop(key, None)
            self._changed = [k for k in self._changed if k not in chosen]
            return {key: values[key] for key in chosen}

    def list_entry(self) -> dict[str, Value]:
        """This device's entry of `/device/list`."""
        entry: dict[str, Value] = {"sn": self.sn, "deviceName": self.device_name, "online": int(self.online)}
        if self.list_product_name:
            entry["productName"] = self.product_name
        return entry

    def energy_totals(self, at: float | None = None) -> dict[str, float]:
        """Wh of each flow the device's reported powers carried since it was created, up to the
        clock's current time, or up to `at` within the last few minutes (the truth a collector's
        energy counters are checked against)."""
        with self._lock:
            self._advance()
            return self.meter.totals(at)

    @property
    def soc(self) -> float:
        with self._lock:
            self._advance()
            return self._soc

    # -- settings ------------------------------------------------------------------------------
    def set_quota(self, key: str, value: Value) -> None:
        """Set a quota key as a command does; physics reading it follows from the next step on."""
        with self._lock:
            self._advance()
            self._apply(key, value)
            if key in self._values:
                self._pending[key] = None
            self._compute(self._t, 0.0)
            self.meter.update(self._values)
            self._stale = True

    def _apply(self, key: str, value: Value) -> None:
        self._values[key] = value

    def _setting(self, key: str) -> float:
        return float(self._values[key])

    # -- physics -------------------------------------------------------------------------------
    def _advance(self) -> None:
        now = self.clock()
        if now - self._t < _MIN_STEP_S:
            return
        self._stale = True
        while now - self._t > 1e-9:
            dt = min(_MAX_STEP_S, now - self._t)
            self.meter.hold(self._t, dt)  # what was reported at self._t holds until the step's end
            self._t += dt
            self._compute(self._t, dt)
            self.meter.update(self._values)

    @abstractmethod
    def _initial_values(self) -> dict[str, Value]:
        """Every reported key with its value before the first physics step."""

    @abstractmethod
    def _compute(self, t: float, dt: float) -> None:
        """Integrate the last `dt` seconds up to `t` and refresh the changing values."""

    def _cloud_values(self) -> dict[str, Value]:
        """Keys the cloud adds to quota/all that the device does not report over MQTT."""
        return {}


_UNSET: Final = object()


class EnergyMeter:
    """Integrates the summary's power flows of a device's reported values, exactly, over simulated
    time: the values computed at one step hold until the next, as a reader of the device sees them.
    Units and summary terms come from the catalog (the simulator restates none)."""

    __slots__ = ("_end", "_powers", "_recent", "_terms", "_wh")

    def __init__(self, product: Product | None, start: float) -> None:
        # summary field -> (quota key, sign x factor to the stored unit)
        self._terms: dict[str, list[tuple[str, float]]] = {}
        if product is not None:
            for name in POWER_FIELDS:
                terms = []
                for key, sign in product.summary.get(name, ()):
                    spec = product.lookup(key)
                    if spec is not None:
                        terms.append((key, sign * spec.mul / spec.div))
                if terms:
                    self._terms[name] = terms
        self._powers: list[float] = [0.0] * len(COUNTERS)
        self._wh: list[float] = [0.0] * len(COUNTERS)
        # (step start, powers, totals at the step start) of the last steps, for totals at a past time
        self._recent: deque[tuple[float, list[float], list[float]]] = deque(maxlen=256)
        self._recent.append((start, list(self._powers), list(self._wh)))
        self._end = start  # the time `_wh` is integrated up to; `_powers` hold from here on

    def update(self, values: Mapping[str, Value]) -> None:
        summary = {
            name: sum(float(values[key]) * factor for key, factor in terms)
            for name, terms in self._terms.items()
        }
        self._powers = [power or 0.0 for power in flow_powers(summary)]

    def hold(self, start: float, dt: float) -> None:
        self._recent.append((start, list(self._powers), list(self._wh)))
        for i, power in enumerate(self._powers):
            self._wh[i] += power * dt / 3600.0
        self._end = start + dt

    def totals(self, at: float | None = None) -> dict[str, float]:
        """The totals now, or at `at`: within a step the power is constant, so the energy grows
        linearly and the value between two steps is exact. ValueError before the steps kept."""
        wh = self._wh
        if at is not None and at >= self._end:
            wh = [w + p * (at - self._end) / 3600.0 for w, p in zip(wh, self._powers, strict=True)]
        elif at is not None:
            for start, powers, before in reversed(self._recent):
                if start <= at:
                    wh = [w + p * (at - start) / 3600.0 for w, p in zip(before, powers, strict=True)]
                    break
            else:
                raise ValueError(f"no energy kept for t={at}: the meter keeps only its last steps")
        return dict(zip(COUNTERS, wh, strict=True))


class _WriteRecorder(dict[str, Value]):
    """A dict that notes which keys are assigned (used once, to find the keys physics writes)."""

    def __init__(self, values: dict[str, Value]) -> None:
        super().__init__(values)
        self.written: dict[str, None] = {}

    def __setitem__(self, key: str, value: Value) -> None:
        self.written[key] = None
        super().__setitem__(key, value)


def wire_values(device: SimDevice, values: Mapping[str, Value]) -> dict[str, Value]:
    """Values as the device puts them on the wire: numbers as strings if it is configured so."""
    if not device.numbers_as_strings:
        return dict(values)
    return {
        k: str(v) if isinstance(v, int | float) and not isinstance(v, bool) else v for k, v in values.items()
    }


def _ip_number(a: int, b: int, c: int, d: int) -> int:
    """An IPv4 address as the PowerStream sends it: little-endian, as a signed 32-bit number."""
    number = a | b << 8 | c << 16 | d << 24
    return number - (1 << 32) if number >= 1 << 31 else number


# ----------------------------------------------------------------------------- PowerStream

_PS: Final = "20_1."
_TASK_KEY = re.compile(r"20_134\.task\d+")


def _empty_task(index: int) -> dict[str, Value]:
    stamp = {"sec": 0, "week": 0, "min": 0, "hour": 0, "month": 0, "year": 0, "day": 0}
    return {
        "taskIndex": index,
        "type": 0,
        "timeRange": {
            "isConfig": False,
            "timeData": 0,
            "timeMode": 0,
            "startTime": dict(stamp),
            "stopTime": dict(stamp),
            "isEnable": False,
        },
    }


class PowerStream(SimDevice):
    """PowerStream 800 W micro-inverter with two PV inputs and a battery (a power station) behind it.

    Power balance (0.1 W, as the real heartbeats show): pv1 + pv2 + battery = AC output, battery
    positive while discharging. With supply priority 0 the inverter serves its demand (custom load
    `permanentWatts` plus smart-plug loads) from PV first, then from the battery above `lowerLimit`,
    and charges the battery with what PV has left, up to `upperLimit`; with priority 1 PV charges
    the battery first.
    """

    product_slug = "powerstream"
    product_name = "PowerStream"
    serial_prefix = "HW51"
    heartbeat_keys = (f"{_PS}batSoc", f"{_PS}invOutputWatts", f"{_PS}batInputWatts")
    report_cmd = (20, 1)

    RATED_W: ClassVar[float] = 800.0
    MAX_CHARGE_W: ClassVar[float] = 600.0

    def __init__(self, sn: str, name: str, *, battery_wh: float = 1024.0, **kwargs: Any) -> None:
        self.battery_wh = battery_wh
        self._pv = (PvString(400.0, 33.0, 40.0), PvString(400.0, 33.5, 40.5))
        self._temps: dict[str, float] = {}
        self._tasks = {f"20_134.task{i + 1}": _empty_task(i) for i in range(11)}
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        r = self._rng
        ambient = self.site.ambient(self._noise, self._t)
        self._temps = {name: ambient + 3.0 for name in ("pv1", "pv2", "bat", "llc", "esp")}
        static: dict[str, Value] = {
            "acOffFlag": 1,
            "acSetWatts": 8000,
            "antiBackFlowFlag": 6000,
            "batErrCode": 0,
            "batErrorInvLoadLimit": 8000,
            "batLoadLimitFlag": 0,
            "batOffFlag": 0,
            "batOutputLoadLimit": 6000,
            "batStatue": 5,
            "batSystem": 0,
            "batWarningCode": 0,
            "bmsReqChgVol": 566820,  # 0.1 mV: 56.68 V, a 16S LFP charge voltage
            "bpType": 2,
            "consNum": 1,
            "feedProtect": 0,
            "geneNum": 1,
            "heartbeatFrequency": 15,
            "heartbeatType2Frequency": 3600,
            "historyBatInputWatts": 0,
            "historyGridConsWatts": 0,
            "historyInvOutputWatts": 0,
            "historyInvToPlugWatts": 0,
            "historyPermanentWatts": 0,
            "historyPlugTotalWatts": 0,
            "historyPvToInvWatts": 0,
            "installCountry": 0x4445,  # "DE"
            "installTown": 0,
            "interfaceConnFlag": 7,
            "invBrightness": 1023,
            "invErrCode": 0,
            "invLoadLimitFlag": 8,
            "invOnOff": 1,
            "invOutputLoadLimit": 6000,
            "invRelayStatus": 8,
            "invTemp": 0,  # 0 in every real capture
            "invWarnCode": 0,
            "llcErrCode": 0,
            "llcInputVolt": 0,  # 0 in every real capture
            "llcOffFlag": 0,
            "llcStatue": 3,
            "llcWarningCode": 0,
            "lowerLimit": 10,
            "meshId": r.randrange(100_000, 999_999),
            "meshLayel": 1,
            "mqttErr": 0,
            "mqttErrTime": 0,
            "mqttLastDisReason": 0,
            "mqttSockErrno": 0,
            "mqttTlsLastErr": 0,
            "mqttTlsStackErr": 0,
            "noiseFloor": -96,
            "parentMac": r.randrange(1 << 24),
            "permanentWatts": 1000,  # 100.0 W custom load
            "pv1CtrlMpptOffFlag": 0,
            "pv1ErrCode": 0,
            "pv1RelayStatus": 0,
            "pv1WarnCode": 0,
            "pv2CtrlMpptOffFlag": 0,
            "pv2ErrCode": 0,
            "pv2RelayStatus": 0,
            "pv2WarningCode": 0,
            "ratedPower": int(self.RATED_W * 10),
            "resetCount": r.randrange(10, 400),
            "resetReason": 1,
            "selfMac": r.randrange(1 << 24),
            "stackFree": 71,
            "stackMinFree": 60,
            "staIpAddr": _ip_number(192, 168, 1, r.randrange(20, 250)),
            "supplyPriority": 0,
            "upperLimit": 95,
            "uwloadLimitFlag": 5,
            "uwlowLightFlag": 0,
            "uwsocFlag": 0,
            "wifiConnectChannel": 1,
            "wifiEncryptMode": 3,
            "wifiErr": 0,
            "wifiErrTime": 0,
            "wifiFirmwareVersion": 11558,
            "wirelessErrCode": 0,
            "wirelessWarnCode": 0,
        }
        return {_PS + key: value for key, value in static.items()}

    def _apply(self, key: str, value: Value) -> None:
        if _TASK_KEY.fullmatch(key):
            # delete-task sends the task's index: task N (taskIndex N-1) is cleared and disabled
            index = int(value)
            self._tasks[f"20_134.task{index + 1}"] = _empty_task(index)
            return
        super()._apply(key, value)

    def _cloud_values(self) -> dict[str, Value]:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(self._t))
        return {
            f"{_PS}updateTime": stamp,
            **{key: _copy_task(task) for key, task in self._tasks.items()},
            "20_134.updateTime": stamp,
            "2_1": {},
            "2_2": {},
        }

    def _plug_load_w(self, t: float) -> float:
        """A fridge on a smart plug: compressor runs ~40 % of the time."""
        return 75.0 + 20.0 * self._noise(11, t, 60.0) if self._noise(10, t, 1200.0) > 0.6 else 1.5

    def _compute(self, t: float, dt: float) -> None:
        v, site, noise = self._values, self.site, self._noise
        pv_avail = [
            string.peak_w * site.solar(noise, 1 + i, t) * (1.0 - 0.1 * i) for i, string in enumerate(self._pv)
        ]
        plug_w = self._plug_load_w(t)
        base_w = self._setting(_PS + "permanentWatts") / 10.0
        demand = min(self.RATED_W, base_w + plug_w) if v[_PS + "invOnOff"] else 0.0
        lower, upper = self._setting(_PS + "lowerLimit"), self._setting(_PS + "upperLimit")
        can_discharge, can_charge = self._soc > lower, self._soc < upper
        pv_total = sum(pv_avail)
        if self._setting(_PS + "supplyPriority") == 0:  # supply first, store what is left
            from_pv = min(pv_total, demand)
            from_bat = min(demand - from_pv, self.RATED_W) if can_discharge else 0.0
            charge = min(pv_total - from_pv, self.MAX_CHARGE_W) if can_charge else 0.0
        else:  # store first, supply what is left
            charge = min(pv_total, self.MAX_CHARGE_W) if can_charge else 0.0
            from_pv = min(pv_total - charge, demand)
            from_bat = 0.0
        output = from_pv + from_bat
        pv_used = from_pv + charge
        bat_w = from_bat - charge  # positive = discharging, as batInputWatts
        if dt:
            stored = -bat_w * (0.96 if bat_w < 0 else 1.0) * dt / 3600.0
            self._soc = _clamp(self._soc + 100.0 * stored / self.battery_wh, 0.0, 100.0)

        ambient = site.ambient(noise, t)
        pv_dw = 0  # PV power in 0.1 W, as reported
        for i, string in enumerate(self._pv):
            used = pv_used * pv_avail[i] / pv_total if pv_total > 0 else 0.0
            name = f"pv{i + 1}"
            self._temps[name] = _drift(self._temps[name], ambient + 5.0 + used / 25.0, dt, 900.0)
            volts, amps = string.operate(pv_avail[i], used, self._temps[name])
            op_volts = volts * (0.99 + 0.004 * noise(20 + i, t, 60.0))
            v[f"{_PS}{name}InputVolt"] = round(volts * 10)
            v[f"{_PS}{name}InputCur"] = round(amps * 10)
            v[f"{_PS}{name}InputWatts"] = round(used * 10)
            v[f"{_PS}{name}OpVolt"] = round(op_volts * 100)
            v[f"{_PS}{name}Temp"] = round(self._temps[name] * 10)
            v[f"{_PS}{name}Statue"] = 4 if volts else 1
            pv_dw += round(used * 10)

        # the battery closes the reported balance exactly: pv1 + pv2 + battery = AC output (0.1 W)
        out_dw = round(output * 10)
        bat_dw = out_dw - pv_dw
        bat_volts = 48.0 + 5.5 * self._soc / 100.0 - 0.004 * bat_w  # sags under discharge
        self._temps["bat"] = _drift(self._temps["bat"], ambient + 2.0 + abs(bat_w) / 60.0, dt, 1800.0)
        self._temps["llc"] = _drift(self._temps["llc"], ambient + 8.0 + output / 12.0, dt, 600.0)
        self._temps["esp"] = _drift(self._temps["esp"], ambient + 22.0, dt, 600.0)
        v[f"{_PS}invOutputWatts"] = out_dw
        v[f"{_PS}batInputWatts"] = bat_dw
        v[f"{_PS}batInputVolt"] = round(bat_volts * 10)
        v[f"{_PS}batInputCur"] = round(bat_dw / bat_volts)  # 0.1 W / V = 0.1 A
        v[f"{_PS}batOpVolt"] = round((bat_volts + 0.2 + 0.002 * max(0.0, -bat_w)) * 10)
        v[f"{_PS}batTemp"] = round(self._temps["bat"] * 10)
        v[f"{_PS}batSoc"] = round(self._soc)
        v[f"{_PS}bmsReqChgAmp"] = 44440 if charge > 0 else 0  # 0.1 mA
        wh_per_percent = self.battery_wh / 100.0
        v[f"{_PS}chgRemainTime"] = (
            min(5938, round((upper - self._soc) * wh_per_percent / charge * 60)) if charge > 1 else 5939
        )
        v[f"{_PS}dsgRemainTime"] = (
            min(5938, round((self._soc - lower) * wh_per_percent / from_bat * 60)) if from_bat > 1 else 5999
        )

        grid_v = site.grid_v + 6.0 * (noise(30, t, 120.0) - 0.5)
        # RMS current includes the output filter's standing ~0.45 A of reactive current
        amps = math.hypot(output / grid_v, 0.45) if v[_PS + "invOnOff"] else 0.0
        to_other = min(base_w, output)
        v[f"{_PS}invOpVolt"] = round(grid_v * 10)
        v[f"{_PS}invOutputCur"] = round(amps * 1000)
        v[f"{_PS}invFreq"] = round((site.grid_hz + 0.1 * (noise(31, t, 60.0) - 0.5)) * 10)
        v[f"{_PS}invStatue"] = 6 if v[_PS + "invOnOff"] else 1
        v[f"{_PS}invInputVolt"] = round((467.0 + 2.0 * noise(32, t, 60.0)) * 10)
        v[f"{_PS}llcOpVolt"] = round((424.0 + 10.0 * noise(33, t, 60.0)) * 10)
        v[f"{_PS}llcTemp"] = round(self._temps["llc"] * 10)
        v[f"{_PS}espTempsensor"] = round(self._temps["esp"])
        v[f"{_PS}pvToInvWatts"] = pv_dw
        v[f"{_PS}invDemandWatts"] = round(demand * 10)
        v[f"{_PS}spaceDemandWatts"] = round(demand * 10)
        v[f"{_PS}invToOtherWatts"] = round(to_other * 10)
        v[f"{_PS}invToPlugWatts"] = round((output - to_other) * 10)
        v[f"{_PS}dynamicWatts"] = round(plug_w * 10)
        v[f"{_PS}plugTotalWatts"] = round(plug_w * 10)
        v[f"{_PS}consWatt"] = -round(plug_w * 10)
        v[f"{_PS}geneWatt"] = round(output * 10.2)  # the mesh counts a little above the AC output
        v[f"{_PS}gridConsWatts"] = round(plug_w * 10) - round(output * 10)
        v[f"{_PS}floadLimitOut"] = 1827
        v[f"{_PS}pvPowerLimitAcPower"] = 7061
        v[f"{_PS}wifiRssi"] = round(-58 + 8 * noise(34, t, 300.0))


def _copy_task(task: dict[str, Value]) -> dict[str, Value]:
    time_range = task["timeRange"]
    return {
        **task,
        "timeRange": {
            **time_range,
            "startTime": dict(time_range["startTime"]),
            "stopTime": dict(time_range["stopTime"]),
        },
    }


# ----------------------------------------------------------------------------- Delta Pro

_CELLS: Final = 15


def _lfp_cell_volts(soc: float) -> float:
    """Open-circuit voltage of an LFP cell: flat in the middle, steep near empty and full."""
    s = soc / 100.0
    return 3.22 + 0.12 * s + 0.2 * s**12 - 0.3 * (1.0 - s) ** 10


class DeltaPro(SimDevice):
    """DELTA Pro power station (3.6 kWh LFP, one pack): solar on the XT60 MPPT input, a household
    load on the AC outlets (morning and evening peaks), charge limited by `ems.maxChargeSoc`
    (PV is curtailed), AC output shut off at `ems.minDsgSoc`.
    """

    product_slug = "delta_pro"
    product_name = "DELTA Pro"
    serial_prefix = "DCABZ"
    heartbeat_keys = ("pd.soc", "pd.wattsInSum", "pd.wattsOutSum")

    FULL_MAH: ClassVar[int] = 76_000
    MPPT_EFFICIENCY: ClassVar[float] = 0.98
    INVERTER_EFFICIENCY: ClassVar[float] = 0.9
    INVERTER_IDLE_W: ClassVar[float] = 12.0

    def __init__(self, sn: str, name: str, *, pv_peak_w: float = 800.0, load_w: float = 60.0, **kwargs: Any):
        self.pv = PvString(pv_peak_w, 70.0, 84.0)
        self.load_w = load_w
        self._energy: dict[str, float] = {}
        self._temps: dict[str, float] = {}
        self._cell_offsets: list[float] = []
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        r = self._rng
        ambient = self.site.ambient(self._noise, self._t)
        self._temps = {name: ambient + 3.0 for name in ("cell", "mos", "inv", "mppt", "dc", "pd")}
        self._cell_offsets = [r.uniform(-2.5, 2.5) for _ in range(_CELLS)]
        self._energy = {
            "chgSunPower": r.uniform(50_000, 150_000),
            "chgPowerAc": r.uniform(20_000, 110_000),
            "dsgPowerAc": r.uniform(40_000, 95_000),
            "mpptUsedTime": r.uniform(1e6, 3e6),
            "invUsedTime": r.uniform(3e6, 8e6),
        }
        ac_volts = round(self.site.grid_v) * 1000
        bms: dict[str, Value] = {
            "allBmsFault": 0,
            "allErrCode": 0,
            "balanceState": 0,
            "bmsFault": 0,
            "bmsHeartbeatVer": 259,
            "bqSysStatReg": 128,
            "calendarSch": 0,
            "cellId": 2,
            "cellNtcNum": 4,
            "cellSeriesNum": _CELLS,
            "cycleSoh": 0,
            "cycles": r.randrange(5, 120),
            "designCap": 80_000,
            "diffSoc": 0,
            "ecloudOcv": 65535,  # u16 all ones: not set (real capture)
            "errCode": 0,
            "fullCap": self.FULL_MAH,
            "hwEdition": [86, 48, 46, 48, 46, 48],  # "V0.0.0"
            "mosState": 3,
            "num": 0,
            "openBmsIdx": 1,
            "packSn": [ord(c) for c in self.sn[:15]] + [0],
            "productDetail": 2,
            "productType": 14,
            "realSoh": 0,
            "soh": 100,
            "sysLoaderVer": 16842762,
            "sysVer": 16843820,
            "totalChgCap": 4294967295,  # u32 all ones: not set (real capture)
            "totalDsgCap": 4294967295,
            "type": 1,
        }
        inv: dict[str, Value] = {
            "acDipSwitch": 1,
            "acInAmp": 0,
            "acInFreq": 0,
            "acInVol": 0,
            "acPassByAutoEn": 0,
            "cfgAcEnabled": 1,
            "cfgAcOutFreq": 1 if self.site.grid_hz == 50 else 2,
            "cfgAcOutVoltage": ac_volts,
            "cfgAcWorkMode": 0,
            "cfgAcXboost": 1,
            "cfgFastChgWatts": 0,
            "cfgSlowChgWatts": 600,
            "cfgStandbyMin": 720,
            "chgPauseFlag": 0,
            "errCode": 0,
            "inputWatts": 0,
            "invType": 0,
            "sysVer": 33620330,
        }
        mppt: dict[str, Value] = {
            "carOutAmp": 0,
            "carOutVol": 0,
            "carOutWatts": 0,
            "carState": 0,
            "carTemp": 0,
            "cfgChgType": 0,
            "cfgDcChgCurrent": 8000,
            "chgPauseFlag": 0,
            "dc24vState": 1,
            "dcdc12vAmp": 0,
            "dcdc12vVol": 0,
            "dcdc12vWatts": 0,
            "faultCode": 0,
            "swVer": 50397223,
            "xt60ChgType": 1,
        }
        pd: dict[str, Value] = {
            "acautooutConfig": 0,
            "acautooutPause": 255,  # 0xff: not set (real capture)
            "beepState": 0,
            "bppowerSoc": 80,
            "brightnessLevel": 3,
            "carState": 0,
            "carTemp": 0,
            "carUsedTime": r.randrange(1000, 9000),
            "carWatts": 0,
            "chgPowerDc": 0,
            "dcInUsedTime": 0,
            "dcOutState": 1,
            "dsgPowerDc": r.randrange(100, 900),
            "errCode": 0,
            "ext3p8Port": 0,
            "ext4p8Port": 0,
            "extRj45Port": 0,
            "hysteresisAdd": 5,
            "kit1": 0,
            "lcdBrightness": 30,
            "lcdOffSec": 300,
            "minAcoutSoc": 255,  # 0xff: not set (real capture)
            "model": 2,
            "qcUsb1Watts": 0,
            "qcUsb2Watts": 0,
            "relayswitchcnt": 0,
            "standByMode": 0,
            "sysVer": 16908436,
            "typccUsedTime": r.randrange(1000, 9000),
            "typec1Watts": 0,
            "typec2Watts": 0,
            "usb1Watts": 0,
            "usb2Watts": 0,
            "usbUsedTime": r.randrange(10_000, 300_000),
            "usbqcUsedTime": r.randrange(1000, 9000),
            "watthisconfig": 0,
            "wifiAutoRcvy": 0,
            "wifiRssi": 0,
            "wifiVer": 196610,
            "wirelessWatts": 0,
            **{f"icon{name}{part}": 0 for name in _ICONS for part in ("Mode", "State")},
        }
        ems: dict[str, Value] = {
            "bms0Online": 3,
            "bms1Online": 0,
            "bms2Online": 0,
            "bmsModel": 2,
            "bmsWarningState": 0,
            "chgAmp": 130_000,
            "dsgCmd": 1,
            "emsIsNormalFlag": 1,
            "maxAvailableNum": 1,
            "maxChargeSoc": 100,
            "maxCloseOilEbSoc": 100,
            "minDsgSoc": 5,
            "minOpenOilEbSoc": 0,
            "openBmsIdx": 1,
            "openUpsFlag": 0,
        }
        empty_kit = {
            "procedureState": 0,
            "appVersion": 0,
            "curPower": 0,
            "productDetail": 0,
            "@type": "com.ecoflow.iot.hub.refactor.protocol.heartbeat.delta.Kit$ProductInfoDetail",
            "f32Soc": 0,
            "soc": 0,
            "protocolAvaiFlag": 0,
            "sn": "",
            "loaderVersion": 0,
            "productType": 0,
        }
        kit: dict[str, Value] = {
            "availableDataLen": 83,
            "maxKitNum": 2,
            "productInfoDetails": [dict(empty_kit), dict(empty_kit)],
            "protocolVersion": 1,
        }
        values: dict[str, Value] = {}
        for prefix, group in (
            ("bmsMaster", bms),
            ("inv", inv),
            ("mppt", mppt),
            ("pd", pd),
            ("ems", ems),
            ("kit", kit),
        ):
            values.update({f"{prefix}.{key}": value for key, value in group.items()})
        return values

    def _ac_load_w(self, t: float) -> float:
        """Household load on the AC outlets: a base load, a morning and an evening peak."""
        hour = self.site.local_hour(t)
        morning = 180.0 * math.exp(-(((hour - 7.5) / 0.8) ** 2))
        evening = 320.0 * math.exp(-(((hour - 20.0) / 1.6) ** 2))
        return self.load_w * (0.8 + 0.4 * self._noise(40, t, 300.0)) + morning + evening

    def _compute(self, t: float, dt: float) -> None:
        v, site, noise = self._values, self.site, self._noise
        ac_on = bool(v["inv.cfgAcEnabled"])
        max_soc, min_soc = self._setting("ems.maxChargeSoc"), self._setting("ems.minDsgSoc")
        if self._soc <= min_soc:
            ac_on = False  # the EMS cuts the AC output at the discharge limit
        load = self._ac_load_w(t) if ac_on else 0.0
        dc_draw = (load / self.INVERTER_EFFICIENCY + self.INVERTER_IDLE_W) if ac_on else 0.0
        pv_avail = self.pv.peak_w * site.solar(noise, 1, t)
        # full: PV covers the load at most (the MPPT moves off its maximum power point)
        pv_in = min(pv_avail, dc_draw / self.MPPT_EFFICIENCY) if self._soc >= max_soc else pv_avail
        pv_out = pv_in * self.MPPT_EFFICIENCY
        bat_w = pv_out - dc_draw  # positive = charging
        if dt:
            self._soc = _clamp(self._soc + 100.0 * bat_w * dt / 3600.0 / self._pack_wh(), 0.0, 100.0)
            hours = dt / 3600.0
            self._energy["chgSunPower"] += pv_out * hours
            self._energy["dsgPowerAc"] += load * hours
            self._energy["mpptUsedTime"] += dt if pv_in > 0 else 0.0
            self._energy["invUsedTime"] += dt if ac_on else 0.0

        ambient = site.ambient(noise, t)
        temps = self._temps
        temps["cell"] = _drift(temps["cell"], ambient + 3.0 + abs(bat_w) / 150.0, dt, 3600.0)
        temps["mos"] = _drift(temps["mos"], ambient + 4.0 + abs(bat_w) / 100.0, dt, 900.0)
        temps["inv"] = _drift(temps["inv"], ambient + 5.0 + load / 40.0, dt, 900.0)
        temps["mppt"] = _drift(temps["mppt"], ambient + 5.0 + pv_in / 30.0, dt, 900.0)
        temps["dc"] = _drift(temps["dc"], ambient + 6.0, dt, 1800.0)
        temps["pd"] = _drift(temps["pd"], ambient + 7.0 + (load + pv_in) / 200.0, dt, 1800.0)

        # pack: 15 LFP cells (mV), current positive while charging (mA)
        cell_v = _lfp_cell_volts(self._soc)
        pack_v_estimate = cell_v * _CELLS
        amps = bat_w / pack_v_estimate
        cells = [round((cell_v + 0.0012 * amps) * 1000 + offset) for offset in self._cell_offsets]
        pack_mv = sum(cells) + 100
        pack_v = pack_mv / 1000.0
        remain = round(self.FULL_MAH * self._soc / 100.0)
        soc_f = round(self._soc, 5)
        cell_temp = [round(temps["cell"] + d) for d in (0.0, 0.2, 0.9, 0.4)]
        state = 2 if bat_w > 1 else 1 if bat_w < -1 else 0
        v["bmsMaster.vol"] = pack_mv
        v["bmsMaster.amp"] = round(bat_w / pack_v * 1000)
        v["bmsMaster.inputWatts"] = round(max(bat_w, 0.0))
        v["bmsMaster.outputWatts"] = round(max(-bat_w, 0.0))
        v["bmsMaster.cellVol"] = cells
        v["bmsMaster.maxCellVol"] = max(cells)
        v["bmsMaster.minCellVol"] = min(cells)
        v["bmsMaster.maxVolDiff"] = max(cells) - min(cells)
        v["bmsMaster.soc"] = round(self._soc)
        v["bmsMaster.f32ShowSoc"] = soc_f
        v["bmsMaster.actSoc"] = round(self._soc)
        v["bmsMaster.targetSoc"] = soc_f
        v["bmsMaster.remainCap"] = remain
        v["bmsMaster.cellTemp"] = cell_temp
        v["bmsMaster.temp"] = round(temps["cell"] + 0.5)
        v["bmsMaster.maxCellTemp"] = max(cell_temp)
        v["bmsMaster.minCellTemp"] = min(cell_temp)
        v["bmsMaster.maxMosTemp"] = round(temps["mos"] + 0.6)
        v["bmsMaster.minMosTemp"] = round(temps["mos"])
        v["bmsMaster.chgDsgState"] = state
        v["bmsMaster.sysState"] = 2 if state == 2 else 1
        v["bmsMaster.tagChgAmp"] = 48_000
        v["bmsMaster.remainTime"] = self._minutes_to(max_soc if bat_w > 0 else min_soc, bat_w) or 0

        # MPPT board: 0.1 V, 0.01 A, 0.1 W
        pv_volts, pv_amps = self.pv.operate(pv_avail, pv_in, temps["mppt"])
        out_volts = pack_v - 0.6 if pv_in > 0 else 0.0
        v["mppt.inVol"] = round(pv_volts * 10)
        v["mppt.inAmp"] = round(pv_amps * 100)
        v["mppt.inWatts"] = round(pv_in * 10)
        v["mppt.outVol"] = round(out_volts * 10)
        v["mppt.outAmp"] = round(pv_out / out_volts * 100) if out_volts else 0
        v["mppt.outWatts"] = round(pv_out * 10)
        v["mppt.mpptTemp"] = round(temps["mppt"])
        v["mppt.dc24vTemp"] = round(temps["dc"])
        v["mppt.chgType"] = 2 if pv_in > 0 else 0
        v["mppt.chgState"] = 1 if pv_in > 0 and bat_w > 0 else 2 if pv_in > 0 else 0

        # inverter: mV, mA, W
        ac_volts = site.grid_v + 1.0 * (noise(41, t, 120.0) - 0.5) if ac_on else 0.0
        v["inv.outputWatts"] = round(load)
        v["inv.invOutVol"] = round(ac_volts * 1000)
        v["inv.invOutAmp"] = round(load / ac_volts * 1000) if ac_volts else 0
        v["inv.invOutFreq"] = round(site.grid_hz) if ac_on else 0
        v["inv.dcInVol"] = round(pack_v * 1000) if ac_on else 0
        v["inv.dcInAmp"] = round(dc_draw / pack_v * 1000) if ac_on else 0
        v["inv.outTemp"] = round(temps["inv"])
        v["inv.dcInTemp"] = round(temps["inv"] - 1.0)
        v["inv.fanState"] = 0 if load < 300 else 1 if load < 800 else 2
        v["inv.chargerType"] = 3 if pv_in > 0 else 0
        v["inv.dischargeType"] = 1 if ac_on else 0

        # PD board and EMS
        minutes = self._minutes_to(max_soc if bat_w > 0 else min_soc, bat_w)
        v["pd.soc"] = round(self._soc)
        v["pd.wattsInSum"] = round(pv_in)
        v["pd.wattsOutSum"] = round(load)
        v["pd.remainTime"] = (minutes if bat_w > 0 else -minutes) if minutes is not None else 5999
        v["pd.sysChgDsgState"] = 2 if bat_w > 0 else 1
        v["pd.typec1Temp"] = v["pd.typec2Temp"] = round(temps["pd"])
        v["pd.iconSolarPanelState"] = int(pv_in > 0)
        v["pd.iconRechgTimeState"] = int(bat_w > 0)
        v["pd.iconAcFreqState"] = (1 if site.grid_hz == 50 else 2) if ac_on else 0
        for key in ("chgSunPower", "chgPowerAc", "dsgPowerAc", "mpptUsedTime", "invUsedTime"):
            v[f"pd.{key}"] = int(self._energy[key])
        v["ems.lcdShowSoc"] = round(self._soc)
        v["ems.f32LcdShowSoc"] = soc_f
        v["ems.chgState"] = 1 if bat_w > 0 else 0
        v["ems.chgCmd"] = int(self._soc < max_soc)
        v["ems.chgVol"] = pack_mv + 1000 if bat_w > 0 else pack_mv
        v["ems.paraVolMin"] = pack_mv - 550
        v["ems.paraVolMax"] = pack_mv + 50
        v["ems.fanLevel"] = v["inv.fanState"]
        v["ems.chgRemainTime"] = minutes if bat_w > 0 and minutes is not None else 5999
        v["ems.dsgRemainTime"] = minutes if bat_w < 0 and minutes is not None else 5999

    def _pack_wh(self) -> float:
        return self.FULL_MAH / 1000.0 * 51.2

    def _minutes_to(self, soc_limit: float, bat_w: float) -> int | None:
        """Minutes until the pack reaches `soc_limit` at `bat_w`; None when (nearly) idle."""
        if abs(bat_w) < 1.0:
            return None
        wh = abs(soc_limit - self._soc) / 100.0 * self._pack_wh()
        return min(5938, round(wh / abs(bat_w) * 60.0))


_ICONS: Final = (
    "RechgTime",
    "Fan",
    "BmsParallel",
    "InvParallel",
    "AcFreq",
    "SocUps",
    "Usb",
    "Typec",
    "Car",
    "Wifi",
    "BmsErr",
    "Overload",
    "HiTemp",
    "LowTemp",
    "WirelessChg",
    "PackHeater",
    "Factory",
    "Bt",
    "Rc",
    "ChgStation",
    "CoGas",
    "TransSw",
    "Eco",
    "WindGen",
    "GasGen",
    "SolarBracket",
    "SolarPanel",
)


# ----------------------------------------------------------------------------- building devices

PRODUCTS: Final[Mapping[str, type[SimDevice]]] = {"powerstream": PowerStream, "delta_pro": DeltaPro}
_SERIAL_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """`count` devices of one product, with options passed to its constructor."""

    product: str
    count: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.product not in PRODUCTS:
            raise ValueError(f"unknown product {self.product!r}; known: {', '.join(PRODUCTS)}")
        if self.count < 0:
            raise ValueError("a device count cannot be negative")


def parse_device_specs(text: str) -> list[DeviceSpec]:
    """`powerstream=2,delta_pro=1` -> specs (a bare product name means one device)."""
    specs: list[DeviceSpec] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        product, _, count = part.partition("=")
        try:
            number = int(count) if count else 1
        except ValueError:
            raise ValueError(f"device count of {product!r} is not a number: {count!r}") from None
        specs.append(DeviceSpec(product.strip(), number))
    return specs


def make_serial(prefix: str, rng: random.Random) -> str:
    """A 16-character serial like the real ones (HW51ZEH4SF5H0990)."""
    body = "".join(rng.choice(_SERIAL_ALPHABET) for _ in range(12 - len(prefix)))
    return f"{prefix}{body}{rng.randrange(10_000):04d}"


def make_devices(
    specs: Iterable[DeviceSpec] | str,
    *,
    clock: Clock,
    rng: random.Random,
    site: Site = EUROPE,
    taken: Callable[[str], bool] = lambda sn: False,
) -> list[SimDevice]:
    """Devices for `specs`, with serials, names and seeds drawn from `rng` (reproducible)."""
    devices: list[SimDevice] = []
    seen: set[str] = set()
    for spec in parse_device_specs(specs) if isinstance(specs, str) else specs:
        cls = PRODUCTS[spec.product]
        for _ in range(spec.count):
            sn = make_serial(cls.serial_prefix, rng)
            while sn in seen or taken(sn):
                sn = make_serial(cls.serial_prefix, rng)
            seen.add(sn)
            name = f"{cls.product_name}-{rng.randrange(1000, 10_000)}"
            options = {"soc": rng.uniform(35.0, 75.0), **spec.options}
            devices.append(cls(sn, name, clock=clock, seed=rng.getrandbits(63), site=site, **options))
    return devices
