"""Device units and the SI-style units they are stored in.

Standard quantities are defined once here; catalog files name a device unit
("0.1V", "mAh", "min", ...) and everything else (stored unit, factor) follows.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class DeviceUnit:
    symbol: str  # as a catalog file names it: the unit the device sends
    quantity: str  # what is measured (voltage, current, ...)
    stored: str  # the unit written to InfluxDB
    factor: float  # stored value = sent value * factor
    grafana: str  # Grafana unit id for the stored unit


def _u(symbol: str, quantity: str, stored: str, factor: float, grafana: str) -> tuple[str, DeviceUnit]:
    return symbol, DeviceUnit(symbol, quantity, stored, factor, grafana)


DEVICE_UNITS: dict[str, DeviceUnit] = dict(
    [
        _u("", "dimensionless", "", 1.0, "none"),
        _u("V", "voltage", "V", 1.0, "volt"),
        _u("0.1V", "voltage", "V", 0.1, "volt"),
        _u("0.01V", "voltage", "V", 0.01, "volt"),
        _u("mV", "voltage", "V", 0.001, "volt"),
        _u("0.1mV", "voltage", "V", 0.0001, "volt"),
        _u("A", "current", "A", 1.0, "amp"),
        _u("0.1A", "current", "A", 0.1, "amp"),
        _u("0.01A", "current", "A", 0.01, "amp"),
        _u("mA", "current", "A", 0.001, "amp"),
        _u("0.1mA", "current", "A", 0.0001, "amp"),
        _u("W", "power", "W", 1.0, "watt"),
        _u("0.1W", "power", "W", 0.1, "watt"),
        _u("VA", "apparent power", "VA", 1.0, "voltamp"),
        _u("var", "reactive power", "var", 1.0, "voltampreact"),
        _u("Wh", "energy", "Wh", 1.0, "watth"),
        _u("0.1Wh", "energy", "Wh", 0.1, "watth"),
        _u("kWh", "energy", "Wh", 1000.0, "watth"),
        _u("Ah", "charge", "Ah", 1.0, "amph"),
        _u("mAh", "charge", "Ah", 0.001, "amph"),
        _u("°C", "temperature", "°C", 1.0, "celsius"),
        _u("0.1°C", "temperature", "°C", 0.1, "celsius"),
        _u("Hz", "frequency", "Hz", 1.0, "hertz"),
        _u("0.1Hz", "frequency", "Hz", 0.1, "hertz"),
        _u("%", "ratio", "%", 1.0, "percent"),
        _u("0.1%", "ratio", "%", 0.1, "percent"),
        _u("s", "duration", "s", 1.0, "s"),
        _u("ms", "duration", "s", 0.001, "s"),
        _u("min", "duration", "s", 60.0, "s"),
        _u("h", "duration", "s", 3600.0, "s"),
        _u("dBm", "signal", "dBm", 1.0, "dBm"),
        _u("unix_s", "timestamp", "s", 1.0, "none"),
    ]
)
