"""Simulated EcoFlow devices: physics in SI units, sent in the catalog's key space and units.

Every product is a catalog file (collector/catalog/products/<slug>.toml) plus a simulator class that
computes SI quantities: :class:`PowerStream` (micro-inverter with a battery behind it), the power
stations of :mod:`~collector.simulator.station` (DELTA Pro, DELTA 2, DELTA 2 Max, DELTA Pro 3,
STREAM: one model, a table of keys per product), :class:`SmartPlug`, :class:`SmartMeter`, and the
home backup systems of :mod:`~collector.simulator.home` (DELTA Pro Ultra, Smart Home Panel). What a
value is sent in (0.1 W, mV, min, ...) is the catalog's: the device's codec encodes every value
through it (:mod:`~collector.simulator.codec`); product name and serial prefix are the catalog's.
All randomness is a function of the device's seed and the time, so a run is reproducible.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from collector.catalog import Catalog, default_catalog
from collector.simulator import templates
from collector.simulator.base import EnergyMeter, SimDevice, wire_values
from collector.simulator.clock import Clock
from collector.simulator.codec import Raw, Value
from collector.simulator.home import DeltaProUltra, PowerOcean, SmartHomePanel
from collector.simulator.physics import (
    AMERICAS,
    EUROPE,
    SITES,
    Noise,
    PvString,
    Site,
    clamp,
    drift,
    fridge_w,
    household_w,
)
from collector.simulator.station import (
    REMAIN_CAP_S,
    Delta2,
    Delta2Max,
    DeltaMax,
    DeltaPro,
    DeltaPro3,
    River2Pro,
    Station,
    Stream,
)

__all__ = [
    "AMERICAS",
    "DEVICES_HELP",
    "EUROPE",
    "PRODUCTS",
    "SITES",
    "Delta2",
    "Delta2Max",
    "DeltaMax",
    "DeltaPro",
    "DeltaPro3",
    "DeltaProUltra",
    "DeviceSpec",
    "EnergyMeter",
    "Noise",
    "PowerOcean",
    "PowerStream",
    "River2Pro",
    "SimDevice",
    "Site",
    "SmartHomePanel",
    "SmartMeter",
    "SmartPlug",
    "Station",
    "Stream",
    "make_devices",
    "make_serial",
    "parse_device_specs",
    "wire_values",
]


def _ip_number(a: int, b: int, c: int, d: int) -> int:
    """An IPv4 address as the WN511 devices send it: little-endian, as a signed 32-bit number."""
    number = a | b << 8 | c << 16 | d << 24
    return number - (1 << 32) if number >= 1 << 31 else number


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


class _Tasks:
    """The scheduled tasks task1..task11 of a WN511 device (PowerStream `20_134.`, Smart Plug `2_2.`):
    objects the cloud adds to quota/all; delete-task sends the index (task N has taskIndex N-1)."""

    def __init__(self, group: str) -> None:
        self.group = group
        self.key = re.compile(re.escape(group) + r"\.task\d+")
        self.tasks = {f"{group}.task{i + 1}": _empty_task(i) for i in range(11)}

    def apply(self, key: str, value: Value) -> bool:
        if not self.key.fullmatch(key):
            return False
        index = int(value)
        self.tasks[f"{self.group}.task{index + 1}"] = _empty_task(index)
        return True

    def cloud_values(self, stamp: str) -> dict[str, Value]:
        return {
            **{key: _copy_task(task) for key, task in self.tasks.items()},
            f"{self.group}.updateTime": stamp,
        }


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


# ----------------------------------------------------------------------------- PowerStream

_PS: Final = "20_1."


class PowerStream(SimDevice):
    """PowerStream 800 W micro-inverter with two PV inputs and a battery (a power station) behind it.

    Power balance (as the real heartbeats show): pv1 + pv2 + battery = AC output exactly in the
    reported numbers, battery positive while discharging. With supply priority 0 the inverter
    serves its demand (custom load `permanentWatts` plus smart-plug loads) from PV first, then from
    the battery above `lowerLimit`, and charges the battery with what PV has left, up to
    `upperLimit`; with priority 1 PV charges the battery first.
    """

    product_slug = "powerstream"
    heartbeat_keys = (f"{_PS}batSoc", f"{_PS}invOutputWatts", f"{_PS}batInputWatts")
    template = templates.POWERSTREAM
    float_keys = templates.POWERSTREAM_FLOATS
    report_cmd = (20, 1)

    RATED_W: ClassVar[float] = 800.0
    MAX_CHARGE_W: ClassVar[float] = 600.0

    def __init__(self, sn: str, name: str, *, battery_wh: float = 1024.0, **kwargs: Any) -> None:
        self.battery_wh = battery_wh
        self._pv = (PvString(400.0, 33.0, 40.0), PvString(400.0, 33.5, 40.5))
        self._temps: dict[str, float] = {}
        self._tasks = _Tasks("20_134")
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        r = self._rng
        ambient = self.site.ambient(self._noise, self._t)
        self._temps = {name: ambient + 3.0 for name in ("pv1", "pv2", "bat", "llc", "esp")}
        seeded = {
            "meshId": r.randrange(100_000, 999_999),
            "parentMac": r.randrange(1 << 24),
            "resetCount": r.randrange(10, 400),
            "selfMac": r.randrange(1 << 24),
            "staIpAddr": _ip_number(192, 168, 1, r.randrange(20, 250)),
            "ratedPower": self.RATED_W,
        }
        return {_PS + key: value for key, value in seeded.items()}

    def _apply(self, key: str, value: Value) -> None:
        if not self._tasks.apply(key, value):
            super()._apply(key, value)

    def _cloud_values(self) -> dict[str, Value]:
        stamp = _stamp(self._t)
        return {f"{_PS}updateTime": stamp, **self._tasks.cloud_values(stamp), "2_1": {}, "2_2": {}}

    def _compute(self, t: float, dt: float) -> None:
        site, noise, codec, put = self.site, self._noise, self.codec, self._put
        on = bool(self._setting(_PS + "invOnOff"))
        pv_avail = [
            string.peak_w * site.solar(noise, 1 + i, t) * (1.0 - 0.1 * i) for i, string in enumerate(self._pv)
        ]
        plug_w = fridge_w(noise, 10, t)
        base_w = self._setting(_PS + "permanentWatts")
        demand = min(self.RATED_W, base_w + plug_w) if on else 0.0
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
            self._soc = clamp(self._soc + 100.0 * stored / self.battery_wh, 0.0, 100.0)

        ambient = site.ambient(noise, t)
        pv_sent = 0.0  # PV power as the collector will read it
        for i, string in enumerate(self._pv):
            used = pv_used * pv_avail[i] / pv_total if pv_total > 0 else 0.0
            name = f"pv{i + 1}"
            self._temps[name] = drift(self._temps[name], ambient + 5.0 + used / 25.0, dt, 900.0)
            volts, amps = string.operate(pv_avail[i], used, self._temps[name])
            put(f"{_PS}{name}InputVolt", volts)
            put(f"{_PS}{name}InputCur", amps)
            put(f"{_PS}{name}InputWatts", used)
            put(f"{_PS}{name}OpVolt", volts * (0.99 + 0.004 * noise(20 + i, t, 60.0)))
            put(f"{_PS}{name}Temp", self._temps[name])
            put(f"{_PS}{name}Statue", 4 if volts else 1)
            pv_sent += codec.quantize(f"{_PS}{name}InputWatts", used)

        # the battery closes the reported balance exactly: pv1 + pv2 + battery = AC output
        out_sent = codec.quantize(f"{_PS}invOutputWatts", output)
        bat_sent = out_sent - pv_sent
        bat_volts = 48.0 + 5.5 * self._soc / 100.0 - 0.004 * bat_w  # sags under discharge
        self._temps["bat"] = drift(self._temps["bat"], ambient + 2.0 + abs(bat_w) / 60.0, dt, 1800.0)
        self._temps["llc"] = drift(self._temps["llc"], ambient + 8.0 + output / 12.0, dt, 600.0)
        self._temps["esp"] = drift(self._temps["esp"], ambient + 22.0, dt, 600.0)
        put(f"{_PS}invOutputWatts", out_sent)
        put(f"{_PS}batInputWatts", bat_sent)
        put(f"{_PS}batInputVolt", bat_volts)
        put(f"{_PS}batInputCur", bat_sent / bat_volts)
        put(f"{_PS}batOpVolt", bat_volts + 0.2 + 0.002 * max(0.0, -bat_w))
        put(f"{_PS}batTemp", self._temps["bat"])
        put(f"{_PS}batSoc", self._soc)
        put(f"{_PS}bmsReqChgAmp", 4.444 if charge > 0 else 0.0)
        wh_per_percent = self.battery_wh / 100.0
        to_full = (upper - self._soc) * wh_per_percent / charge * 3600.0 if charge > 1 else None
        to_empty = (self._soc - lower) * wh_per_percent / from_bat * 3600.0 if from_bat > 1 else None
        put(f"{_PS}chgRemainTime", Raw(5939) if to_full is None else min(REMAIN_CAP_S, to_full))
        put(f"{_PS}dsgRemainTime", Raw(5999) if to_empty is None else min(REMAIN_CAP_S, to_empty))

        grid_v = site.grid_v + 6.0 * (noise(30, t, 120.0) - 0.5)
        # RMS current includes the output filter's standing ~0.45 A of reactive current
        amps = math.hypot(output / grid_v, 0.45) if on else 0.0
        to_other = min(base_w, output)
        put(f"{_PS}invOpVolt", grid_v)
        put(f"{_PS}invOutputCur", amps)
        put(f"{_PS}invFreq", site.grid_hz + 0.1 * (noise(31, t, 60.0) - 0.5))
        put(f"{_PS}invStatue", 6 if on else 1)
        put(f"{_PS}invInputVolt", 467.0 + 2.0 * noise(32, t, 60.0))
        put(f"{_PS}llcOpVolt", 424.0 + 10.0 * noise(33, t, 60.0))
        put(f"{_PS}llcTemp", self._temps["llc"])
        put(f"{_PS}espTempsensor", self._temps["esp"])
        put(f"{_PS}pvToInvWatts", pv_sent)
        put(f"{_PS}invDemandWatts", demand)
        put(f"{_PS}spaceDemandWatts", demand)
        put(f"{_PS}invToOtherWatts", to_other)
        put(f"{_PS}invToPlugWatts", output - to_other)
        put(f"{_PS}dynamicWatts", plug_w)
        put(f"{_PS}plugTotalWatts", plug_w)
        put(f"{_PS}consWatt", -plug_w)
        put(f"{_PS}geneWatt", output * 1.02)  # the mesh counts a little above the AC output
        put(f"{_PS}gridConsWatts", codec.quantize(f"{_PS}plugTotalWatts", plug_w) - out_sent)
        put(f"{_PS}wifiRssi", -58 + 8 * noise(34, t, 300.0))


# ----------------------------------------------------------------------------- Smart Plug

_PLUG: Final = "2_1."


class SmartPlug(SimDevice):
    """Smart Plug with a fridge behind it: the load follows the compressor while the relay is on; the
    current is the load's apparent power (power factor 0.6-0.9) plus the plug's own ~0.3 A, so
    V x A >= W as on real plugs, which report a current with the relay off too."""

    product_slug = "smart_plug"
    heartbeat_keys = (f"{_PLUG}watts", f"{_PLUG}current", f"{_PLUG}volt")
    template = templates.SMART_PLUG
    float_keys = templates.SMART_PLUG_FLOATS
    report_cmd = (2, 1)

    def __init__(self, sn: str, name: str, **kwargs: Any) -> None:
        self._temp = 0.0
        self._run_s = 0.0
        self._tasks = _Tasks("2_2")
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        r = self._rng
        self._temp = self.site.ambient(self._noise, self._t) + 8.0
        self._run_s = r.uniform(1e4, 4e6)  # since the last restart
        seeded = {
            "meshId": r.randrange(10_000, 99_999),
            "parentMac": r.randrange(1 << 24),
            "selfMac": r.randrange(1 << 24),
            "staIpAddr": _ip_number(192, 168, 1, r.randrange(20, 250)),
            "resetCount": r.randrange(1, 40),
        }
        return {_PLUG + key: value for key, value in seeded.items()}

    def _apply(self, key: str, value: Value) -> None:
        if not self._tasks.apply(key, value):
            super()._apply(key, value)

    def _cloud_values(self) -> dict[str, Value]:
        stamp = _stamp(self._t)
        return {f"{_PLUG}updateTime": stamp, **self._tasks.cloud_values(stamp)}

    def _compute(self, t: float, dt: float) -> None:
        site, noise, put = self.site, self._noise, self._put
        on = bool(self._setting(_PLUG + "switchSta"))
        watts = fridge_w(noise, 50, t) if on else 0.0
        volts = site.grid_v + 6.0 * (noise(52, t, 120.0) - 0.5)
        power_factor = 0.6 + 0.3 * noise(53, t, 600.0)
        amps = watts / power_factor / volts + 0.3
        self._temp = drift(self._temp, site.ambient(noise, t) + 8.0 + watts / 20.0, dt, 900.0)
        put(_PLUG + "watts", watts)
        put(_PLUG + "consWatt", -watts)
        put(_PLUG + "volt", volts)
        put(_PLUG + "current", amps)
        put(_PLUG + "freq", site.grid_hz)
        put(_PLUG + "temp", self._temp)
        self._run_s += dt
        put(_PLUG + "runTime", self._run_s)
        put(_PLUG + "utcTime", t)
        put(_PLUG + "parentWifiRssi", -60 + 10 * noise(54, t, 300.0))


# ----------------------------------------------------------------------------- Smart Meter


class SmartMeter(SimDevice):
    """Smart Meter on a household's three-phase grid connection: each phase carries part of the
    household load (import positive); energy records integrate it."""

    product_slug = "smart_meter"
    heartbeat_keys = ("powGetSysGrid", "gridConnectionPowerL1")
    template = templates.SMART_METER
    float_keys = templates.SMART_METER_FLOATS
    SHARES: ClassVar[tuple[float, float, float]] = (0.55, 0.3, 0.15)  # the household's phases

    def __init__(self, sn: str, name: str, *, load_w: float = 400.0, **kwargs: Any) -> None:
        self.load_w = load_w
        self._wh = [0.0, 0.0, 0.0]
        self._varh = 0.0
        super().__init__(sn, name, **kwargs)

    def _initial_values(self) -> dict[str, Value]:
        r = self._rng
        self._wh = [r.uniform(2e6, 5e6) * share for share in self.SHARES]
        self._varh = r.uniform(5e3, 2e4)
        return {}

    def _compute(self, t: float, dt: float) -> None:
        site, noise, put = self.site, self._noise, self._put
        house = household_w(site, noise, 60, t, self.load_w)
        power_factor = 0.9 + 0.08 * noise(61, t, 600.0)
        total = 0.0
        for phase, share in enumerate(self.SHARES):
            n = phase + 1
            watts = house * share * (0.8 + 0.4 * noise(62 + phase, t, 240.0))
            volts = site.grid_v + 4.0 * (noise(65 + phase, t, 120.0) - 0.5)
            total += watts
            if dt:
                self._wh[phase] += watts * dt / 3600.0
            put(f"gridConnectionPowerL{n}", watts)
            put(f"gridConnectionVolL{n}", volts)
            put(f"gridConnectionAmpL{n}", watts / power_factor / volts)
            put(f"gridConnectionDataRecord.todayActiveL{n}", self._wh[phase])
        if dt:
            self._varh += total * math.tan(math.acos(power_factor)) * dt / 3600.0
        put("powGetSysGrid", total)
        put("gridConnectionPowerFactor", power_factor)
        put("gridConnectionDataRecord.totalActiveEnergy", sum(self._wh))
        put("gridConnectionDataRecord.todayActive", sum(self._wh))
        put("gridConnectionDataRecord.totalReactiveEnergy", self._varh)


# ----------------------------------------------------------------------------- building devices

PRODUCTS: Final[Mapping[str, type[SimDevice]]] = {
    cls.product_slug: cls
    for cls in (
        PowerStream,
        DeltaPro,
        DeltaMax,
        Delta2,
        Delta2Max,
        DeltaPro3,
        River2Pro,
        Stream,
        SmartPlug,
        SmartMeter,
        DeltaProUltra,
        SmartHomePanel,
        PowerOcean,
    )
}
_SERIAL_ALPHABET: Final = "ABCDEFGHJKLMNPQRSTUVWXYZ0123456789"
# the `--devices` help of the demo and simulate commands
DEVICES_HELP: Final = (
    f"simulated devices, e.g. delta_2=1,smart_plug=2 (products: {', '.join(sorted(PRODUCTS))})"
)


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
    catalog: Catalog | None = None,
) -> list[SimDevice]:
    """Devices for `specs`, with serials, names and seeds drawn from `rng` (reproducible); product
    names and serial prefixes are the catalog's."""
    catalog = catalog or default_catalog()
    devices: list[SimDevice] = []
    seen: set[str] = set()
    for spec in parse_device_specs(specs) if isinstance(specs, str) else specs:
        cls = PRODUCTS[spec.product]
        product = catalog.products[cls.product_slug]
        for _ in range(spec.count):
            sn = make_serial(product.serial_prefixes[0], rng)
            while sn in seen or taken(sn):
                sn = make_serial(product.serial_prefixes[0], rng)
            seen.add(sn)
            name = f"{product.name}-{rng.randrange(1000, 10_000)}"
            options = {"soc": rng.uniform(35.0, 75.0), "catalog": catalog, **spec.options}
            devices.append(cls(sn, name, clock=clock, seed=rng.getrandbits(63), site=site, **options))
    return devices
