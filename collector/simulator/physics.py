"""Physics building blocks of the simulated devices, all in SI units (W, V, A, Wh, °C, s).

All randomness is a function of a device's seed and the time (splitmix64 value noise), so a run is
reproducible whatever the order in which devices are read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

_MASK64: Final = (1 << 64) - 1
DAY_S: Final = 86_400.0


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
        return ((t + self.utc_offset_h * 3600.0) % DAY_S) / 3600.0

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


def drift(current: float, target: float, dt: float, tau_s: float) -> float:
    """First-order lag: how a temperature follows its target."""
    return target + (current - target) * math.exp(-dt / tau_s)


def clamp(value: float, low: float, high: float) -> float:
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


def lfp_cell_volts(soc: float) -> float:
    """Open-circuit voltage of an LFP cell: flat in the middle, steep near empty and full."""
    s = soc / 100.0
    return 3.22 + 0.12 * s + 0.2 * s**12 - 0.3 * (1.0 - s) ** 10


def ncm_cell_volts(soc: float) -> float:
    """Open-circuit voltage of an NCM cell: 3.05 V empty, 3.85 V at 60 %, 4.2 V full."""
    s = soc / 100.0
    return 3.3 + 0.9 * s - 0.25 * (1.0 - s) ** 8


def household_w(site: Site, noise: Noise, channel: int, t: float, base_w: float) -> float:
    """A household's load: a base load with slow noise, a morning and an evening peak."""
    hour = site.local_hour(t)
    morning = 180.0 * math.exp(-(((hour - 7.5) / 0.8) ** 2))
    evening = 320.0 * math.exp(-(((hour - 20.0) / 1.6) ** 2))
    return base_w * (0.8 + 0.4 * noise(channel, t, 300.0)) + morning + evening


def fridge_w(noise: Noise, channel: int, t: float) -> float:
    """A fridge: the compressor runs ~40 % of the time (75-95 W), else 1.5 W of electronics."""
    return 75.0 + 20.0 * noise(channel + 1, t, 60.0) if noise(channel, t, 1200.0) > 0.6 else 1.5
