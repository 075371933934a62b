"""Energy counters: Wh per flow and device, integrated by the collector while it runs.

EcoFlow's Open API keeps no history for these products, so whatever energy the collector does not
integrate while data arrives is lost. The math (docs/history.md):

- Power is a step function of receive time: a report carries only what changed, so the last known
  value of each summary power field (`pv_input_w`, `input_w`, `output_w`, `battery_w`) holds until
  the next piece of data from the device (left Riemann sum over the device's state).
- Between two pieces of data `t0 < t1` the counters grow by `P(t0) * (t1 - t0) / 3600` Wh and
  `covered_s` by `t1 - t0`; when `t1 - t0` exceeds `[energy] max_gap_s`, nothing is integrated and
  `gap_s` grows by `t1 - t0` instead. A clock that jumps backwards integrates nothing (and the next
  interval starts at the new time), so no counter ever goes backwards.
- A device that goes offline stops integrating: what it reported last is not assumed to go on, and
  the time until it reports again is a gap. Data that arrives while the device is not known to be
  online (an HTTP answer carries the last values of an offline device too) starts nothing.
- A power value that is non-finite, negative where the flow cannot be, or outside what the catalog's
  ranges allow for the product is not integrated (that flow is unknown until a valid value comes);
  it is counted (`rejected`) and logged once per device, field and reason.
- The counters persist in `state_dir/energy.json` (atomic writes: at every write interval and at
  stop) and continue after a restart or a SIGKILL; after a restart the interval from the last saved
  time to the next data is a gap (so what a crash lost is a gap, never double-counted energy).

Points: measurement `ecoflow_energy`, tags `name`, `product`, `sn` (and `account` where several
accounts are configured); fields `pv_input_wh`,
`input_wh`, `output_wh`, `battery_charge_wh`, `battery_discharge_wh`, `covered_s`, `gap_s`, stamped
with the time up to which they are integrated.
"""

from __future__ import annotations

import json
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import structlog

from collector.catalog import Product
from collector.history.influxql import InfluxQL, quote_ident
from collector.points import Device, Point
from collector.statedir import write_atomic

log = structlog.get_logger("collector.energy")

ENERGY_MEASUREMENT: Final = "ecoflow_energy"
COUNTERS: Final = ("pv_input_wh", "input_wh", "output_wh", "battery_charge_wh", "battery_discharge_wh")
# summary power field -> whether it may be negative (battery_w: positive = charging)
POWER_FIELDS: Final = {"pv_input_w": False, "input_w": False, "output_w": False, "battery_w": True}
_FILE_VERSION: Final = 1

Powers = tuple[float | None, float | None, float | None, float | None, float | None]
_UNKNOWN: Final[Powers] = (None, None, None, None, None)
_NO_POWERS: Final = (None, None, None, None)  # a summary with none of POWER_FIELDS
_POWER_ITEMS: Final = tuple(POWER_FIELDS.items())  # pv_input_w, input_w, output_w, battery_w


def flow_powers(summary: Mapping[str, float]) -> Powers:
    """The five flows' powers (W) from summary fields; None where the summary has no such field."""
    battery = summary.get("battery_w")
    return (
        summary.get("pv_input_w"),
        summary.get("input_w"),
        summary.get("output_w"),
        None if battery is None else max(battery, 0.0),
        None if battery is None else max(-battery, 0.0),
    )


def summary_limits(product: Product | None) -> dict[str, tuple[float, float]]:
    """The plausible range of each summary power field, by interval arithmetic over the catalog
    ranges of its terms (a field with a term of unknown range has no limit)."""
    limits: dict[str, tuple[float, float]] = {}
    if product is None:
        return limits
    for name in POWER_FIELDS:
        low = high = 0.0
        for key, sign in product.summary.get(name, ()):
            spec = product.lookup(key)
            if spec is None or spec.range is None:
                break
            a, b = sign * spec.range[0], sign * spec.range[1]
            low, high = low + min(a, b), high + max(a, b)
        else:
            if name in product.summary:
                limits[name] = (low, high)
    return limits


@dataclass(slots=True)
class DeviceEnergy:
    """One device's counters and the step function's current values."""

    sn: str
    name: str
    product: str
    account: str | None = None  # the `account` tag (several accounts configured), else none
    wh: list[float] = field(default_factory=lambda: [0.0] * len(COUNTERS))
    covered_s: float = 0.0
    gap_s: float = 0.0
    last_ms: int | None = None  # everything before this time is accounted for (integrated or gap)
    powers: Powers = _UNKNOWN  # what holds from last_ms on; None: not known, not integrated
    dirty: bool = False  # accounted time moved since the last write
    started_ms: int | None = None  # first seen in this run with no counters before: write a zero point
    run_since_ms: int | None = None  # the first data of this run (not persisted)
    # the last summary powers as reported and what they were found to be (not persisted): a
    # report that leaves them as they were (most do) skips the range checks
    checked: tuple[tuple[float | None, ...], Powers] | None = None

    def advance(self, now_ms: int, max_gap_ms: int) -> str | None:
        """Account for [last_ms, now_ms]; returns what happened when it was not integrated."""
        last = self.last_ms
        if last is None:
            self.last_ms = now_ms
            return None
        dt_ms = now_ms - last
        if dt_ms < 0:
            self.last_ms = now_ms  # the clock jumped back: integrate nothing, start again from here
            return "clock_backwards"
        if dt_ms == 0:
            return None
        self.last_ms = now_ms
        self.dirty = True
        dt_s = dt_ms / 1000.0
        known = [(i, p) for i, p in enumerate(self.powers) if p is not None]
        if dt_ms > max_gap_ms or not known:
            self.gap_s += dt_s
            return "gap" if known else None
        for i, power in known:
            self.wh[i] += power * dt_s / 3600.0
        self.covered_s += dt_s
        return None

    def fields(self) -> dict[str, float]:
        values = dict(zip(COUNTERS, self.wh, strict=True))
        values["covered_s"] = self.covered_s
        values["gap_s"] = self.gap_s
        return values

    def to_json(self) -> dict[str, Any]:
        saved: dict[str, Any] = {"name": self.name, "product": self.product, "last_ms": self.last_ms}
        if self.account:  # absent in files of one-account installs, which therefore read as before
            saved["account"] = self.account
        return {**saved, **self.fields()}

    def tags(self) -> tuple[tuple[str, str], ...]:
        account = (("account", self.account),) if self.account else ()
        return (*account, ("name", self.name), ("product", self.product), ("sn", self.sn))

    @classmethod
    def from_json(cls, sn: str, data: Mapping[str, Any]) -> DeviceEnergy:
        """Counters as saved; ValueError when a value is missing, not a number or negative."""
        numbers = [_counter(data, name) for name in (*COUNTERS, "covered_s", "gap_s")]
        last = data.get("last_ms")
        if last is not None and (not isinstance(last, int) or isinstance(last, bool)):
            raise ValueError(f"{sn}: last_ms is not an integer")
        return cls(
            sn=sn,
            name=str(data.get("name") or sn),
            product=str(data.get("product") or "unknown"),
            account=str(data["account"]) if data.get("account") else None,
            wh=numbers[: len(COUNTERS)],
            covered_s=numbers[-2],
            gap_s=numbers[-1],
            last_ms=last,
        )


def _counter(data: Mapping[str, Any], name: str) -> float:
    value = data.get(name)
    if value is None:  # never written (e.g. a product without that flow)
        return 0.0
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} is not a number")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} is {value}: a counter is finite and not negative")
    return float(value)


# Where counters come from when the file is missing or corrupt: the last `ecoflow_energy` row of
# every device in InfluxDB, as {sn: {"name", "product", "time" (ms), counter fields...}}.
Restorer = Callable[[], Mapping[str, Mapping[str, Any]]]


class EnergyCounters:
    """Every device's counters; thread-safe (MQTT, HTTP workers and the scheduler call it)."""

    def __init__(
        self,
        path: Path,
        *,
        max_gap_s: float = 300.0,
        restore: Restorer | None = None,
    ) -> None:
        self.path = path
        self.max_gap_ms = round(max_gap_s * 1000)
        self.rejected: Counter[str] = Counter()  # reason -> power values not integrated
        self.clock_jumps = 0
        self._devices: dict[str, DeviceEnergy] = {}
        self._limits: dict[str, dict[str, tuple[float, float]]] = {}  # product slug -> field limits
        self._logged: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()
        self._load(restore)

    # --- integration ----------------------------------------------------------------------------

    def observe(self, device: Device, summary: Mapping[str, float], now_ms: int, live: bool) -> None:
        """A piece of data from `device` arrived at `now_ms`, its summary (from the device's merged
        state) is `summary`; `live`: the device is known to be online (else nothing starts)."""
        get = summary.get
        raw = (get("pv_input_w"), get("input_w"), get("output_w"), get("battery_w"))
        if raw == _NO_POWERS:
            return
        with self._lock:
            energy = self._devices.get(device.sn)
            if energy is None:  # counters start at zero now: a point says so (the baseline of reports)
                energy = self._devices[device.sn] = DeviceEnergy(
                    device.sn, device.name, device.slug, device.account
                )
                energy.started_ms = now_ms
            energy.name, energy.product, energy.account = device.name, device.slug, device.account
            if energy.run_since_ms is None:
                energy.run_since_ms = now_ms
            self._account(energy, now_ms)
            if not live:
                energy.powers = _UNKNOWN
            elif energy.checked is not None and energy.checked[0] == raw:
                energy.powers = energy.checked[1]
            else:
                energy.powers, clean = self._valid_powers(device, raw)
                # only a clean result is remembered: a rejected value is counted every time it comes
                energy.checked = (raw, energy.powers) if clean else None
            energy.dirty = True

    def offline(self, sn: str, now_ms: int) -> None:
        """The device went offline (or is assumed to be): its last powers stop holding."""
        with self._lock:
            energy = self._devices.get(sn)
            if energy is None or energy.powers == _UNKNOWN:
                return
            self._account(energy, now_ms)
            energy.powers = _UNKNOWN

    def _account(self, energy: DeviceEnergy, now_ms: int) -> None:
        if energy.advance(now_ms, self.max_gap_ms) == "clock_backwards":
            self.clock_jumps += 1
            log.warning("energy.clock_backwards", sn=energy.sn, now_ms=now_ms)

    def _valid_powers(self, device: Device, raw: tuple[float | None, ...]) -> tuple[Powers, bool]:
        """The flows' powers from the summary's POWER_FIELDS values (in that order), each checked
        (finite, sign, the product's range); a value that fails is counted, logged and not used.
        The second value: whether every value passed."""
        limits = self._limits.get(device.slug)
        if limits is None:
            limits = self._limits[device.slug] = summary_limits(device.product)
        values = list(raw)
        clean = True
        for index, (name, signed) in enumerate(_POWER_ITEMS):
            value = values[index]
            if value is None:
                continue
            reason = None
            if not math.isfinite(value):
                reason = "not_finite"
            elif value < 0 and not signed:
                reason = "negative"
            elif name in limits and not limits[name][0] <= value <= limits[name][1]:
                reason = "out_of_range"
            if reason is not None:
                values[index] = None
                clean = False
                self._reject(device.sn, name, reason, value, limits.get(name))
        pv, grid, out, battery = values
        if battery is None:
            return (pv, grid, out, None, None), clean
        return (pv, grid, out, max(battery, 0.0), max(-battery, 0.0)), clean

    def _reject(
        self, sn: str, name: str, reason: str, value: float, limit: tuple[float, float] | None
    ) -> None:
        self.rejected[reason] += 1
        key = (sn, name, reason)
        if key not in self._logged and len(self._logged) < 10_000:
            self._logged.add(key)
            log.warning("energy.value_rejected", sn=sn, field=name, reason=reason, value=value, range=limit)

    # --- output ---------------------------------------------------------------------------------

    def points(self) -> list[Point]:
        """`ecoflow_energy` points of the devices whose counters moved since the last call."""
        out: list[Point] = []
        with self._lock:
            for energy in self._devices.values():
                if not energy.dirty or energy.last_ms is None:
                    continue
                energy.dirty = False
                tags = energy.tags()
                if energy.started_ms is not None and energy.started_ms != energy.last_ms:
                    zeros = dict.fromkeys((*COUNTERS, "covered_s", "gap_s"), 0.0)
                    out.append(Point(ENERGY_MEASUREMENT, tags, zeros, energy.started_ms))
                    energy.started_ms = None
                out.append(Point(ENERGY_MEASUREMENT, tags, energy.fields(), energy.last_ms))
        return out

    def span(self, sn: str) -> tuple[int, int] | None:
        """(first data of this run, last data) of a device in ms: what this run integrated."""
        with self._lock:
            energy = self._devices.get(sn)
            if energy is None or energy.run_since_ms is None or energy.last_ms is None:
                return None
            return energy.run_since_ms, energy.last_ms

    def snapshot(self) -> dict[str, dict[str, float]]:
        """sn -> current counter fields (for tests, reports of a running demo, the health page)."""
        with self._lock:
            return {sn: energy.fields() for sn, energy in self._devices.items()}

    def __len__(self) -> int:
        return len(self._devices)

    # --- persistence ----------------------------------------------------------------------------

    def save(self) -> None:
        """Write every device's counters atomically (never raises: a failed save is logged)."""
        with self._lock:
            data = {
                "version": _FILE_VERSION,
                "devices": {sn: energy.to_json() for sn, energy in self._devices.items()},
            }
        try:
            write_atomic(self.path, json.dumps(data, separators=(",", ":")).encode())
        except OSError as exc:
            log.error("energy.save_failed", path=str(self.path), error=exc.strerror or str(exc))

    def _load(self, restore: Restorer | None) -> None:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            self._restore(restore, "missing")
            return
        except OSError as exc:
            log.error("energy.state_unreadable", path=str(self.path), error=exc.strerror or str(exc))
            self._restore(restore, "unreadable")
            return
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _FILE_VERSION:
                raise ValueError(f"not a version {_FILE_VERSION} energy file")
            devices = data["devices"]
            if not isinstance(devices, dict):
                raise ValueError("devices is not an object")
            loaded = {str(sn): DeviceEnergy.from_json(str(sn), entry) for sn, entry in devices.items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error(
                "energy.state_corrupt",
                path=str(self.path),
                error=str(exc)[:200],
                action="counters continue from InfluxDB's last values, else from zero",
            )
            self._restore(restore, "corrupt")
            return
        self._devices = loaded
        log.info("energy.loaded", devices=len(loaded))

    def _restore(self, restore: Restorer | None, why: str) -> None:
        rows: Mapping[str, Mapping[str, Any]] = {}
        if restore is not None:
            try:
                rows = restore()
            except Exception as exc:  # InfluxDB down or refusing: start from zero, say so
                log.error("energy.restore_failed", error=str(exc)[:200], action="counters start from zero")
        restored: dict[str, DeviceEnergy] = {}
        for sn, row in rows.items():
            try:
                energy = DeviceEnergy.from_json(sn, {**row, "last_ms": _int_or_none(row.get("time"))})
            except ValueError as exc:
                log.error("energy.restore_row_invalid", sn=sn, error=str(exc))
                continue
            restored[sn] = energy
        self._devices = restored
        if why == "missing" and not restored:
            log.info("energy.started", path=str(self.path), devices=0)
        else:
            # loud: counters of a device may now start over (or continue from InfluxDB's last point)
            log.warning("energy.restored", reason=why, from_influxdb=len(restored), path=str(self.path))


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def restore_rows(rows: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """The row with the largest counters per serial (a device renamed has one series per name)."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        sn = row.get("sn")
        if not isinstance(sn, str):
            continue
        current = best.get(sn)
        if current is None or (row.get("covered_s") or 0) + (row.get("gap_s") or 0) > (
            current.get("covered_s") or 0
        ) + (current.get("gap_s") or 0):
            best[sn] = dict(row)
    return best


def influx_restorer(client: InfluxQL, bucket: str) -> Restorer:
    """Counters from InfluxDB: the newest `ecoflow_energy` row of every series, the most advanced
    one per serial (`time` in ms)."""

    def restore() -> dict[str, dict[str, Any]]:
        query = f"SELECT * FROM {quote_ident(ENERGY_MEASUREMENT)} GROUP BY * ORDER BY time DESC LIMIT 1"
        return restore_rows({**row.tags, **row.values} for row in client.rows(bucket, query))

    return restore
