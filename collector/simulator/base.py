"""The simulated device: thread-safe views of its values, settings, and the energy its reports carry.

A device computes its physics in SI units (W, V, A, Wh, °C, s, %) and puts every value through its
product's catalog (:class:`~collector.simulator.codec.Codec`) into the units the real device sends;
product name and serial prefix come from the catalog too. Three views of a device's values:

- :meth:`SimDevice.snapshot`: what HTTP `quota/all` answers (adds the cloud's own keys, such as
  the PowerStream's `20_1.updateTime` text and its `20_134.task*` objects);
- :meth:`SimDevice.full_report`: every key the device itself reports over MQTT;
- :meth:`SimDevice.incremental_report`: a handful of keys whose values changed since they were
  last reported (settings changed by a command first).
"""

from __future__ import annotations

import random
import threading
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping
from typing import ClassVar, Final

from collector.catalog import Catalog, Product, default_catalog
from collector.history.energy import COUNTERS, POWER_FIELDS, flow_powers
from collector.simulator.clock import Clock
from collector.simulator.codec import Codec, Value
from collector.simulator.physics import EUROPE, Noise, Site, clamp

_MAX_STEP_S: Final = 30.0  # integration step: small against every time constant of the physics
_MIN_STEP_S: Final = 1.0  # read more often than this, a device answers its last values (cheap)


class SimDevice(ABC):
    """One simulated device; thread-safe (HTTP threads, the publisher and MQTT callbacks share it)."""

    product_slug: ClassVar[str]  # the catalog file; name and serial prefix are read from it
    heartbeat_keys: ClassVar[tuple[str, ...]]  # sent when nothing else changed
    template: ClassVar[Mapping[str, Value]] = {}  # SI values of the keys physics does not compute
    float_keys: ClassVar[frozenset[str]] = frozenset()  # keys the device sends as floats
    # MQTT envelope (collector/simulator/publisher.py): (cmdFunc, cmdId) of `{"cmdId","cmdFunc",
    # "param"|"params"}` reports, or None for `{"id","version","timestamp","params"}` reports;
    # `report_prefixed`: the catalog's keys carry `{cmdFunc}_{cmdId}.`, which the device leaves out
    report_cmd: ClassVar[tuple[int, int] | None] = None
    report_prefixed: ClassVar[bool] = True
    report_addr: ClassVar[str | None] = None  # the `addr` member a cmdFunc/cmdId report always has
    # DELTA 2 family: one `{"typeCode":..,"moduleType":..,"params":{bare keys}}` message per key
    # prefix (`pd.` -> ("pdStatus", 1)); empty for the other envelopes
    report_modules: ClassVar[Mapping[str, tuple[str, int]]] = {}
    # quota key -> the key the device's MQTT reports carry it under, where the two differ (the Smart
    # Home Panel's channel powers: quota/all `channelPower.infoList`, its MQTT report `infoList`)
    report_keys: ClassVar[Mapping[str, str]] = {}

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
        catalog: Catalog | None = None,
    ) -> None:
        self.product: Product = (catalog or default_catalog()).products[self.product_slug]
        self.product_name = self.product.name  # `productName` of the device list
        self.codec = Codec(self.product, self.float_keys)
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
        self._soc = clamp(soc, 0.0, 100.0)
        recorder = _WriteRecorder(self._encoded({**self.template, **self._initial_values()}))
        self._values: dict[str, Value] = recorder
        self._compute(self._t, 0.0)
        # Only keys the physics writes can change on their own (settings change through
        # set_quota); incremental reports compare just those.
        self._volatile = tuple(recorder.written)
        self._values = dict(recorder)
        self.meter = EnergyMeter(self.product, self._t)
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
        """Every key the device reports over MQTT (under its `report_keys` name); they all count as
        reported afterwards."""
        with self._lock:
            self._advance()
            values = dict(self._values)
            self._reported = dict(values)
            self._pending.clear()
            self._changed, self._stale = [], False
            return self._as_reported(values)

    def incremental_report(self, limit: int = 6) -> dict[str, Value]:
        """Up to `limit` changed keys (changed settings first), heartbeat keys if nothing changed;
        under their `report_keys` names."""
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
            return self._as_reported({key: values[key] for key in chosen})

    def _as_reported(self, values: dict[str, Value]) -> dict[str, Value]:
        renamed = self.report_keys
        if not renamed:
            return values
        return {renamed.get(key, key): value for key, value in values.items()}

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
        """A setting's value in SI (a limit in %, a custom load in W), as the device reads it."""
        return self.codec.decode(key, self._values[key])

    def _put(self, key: str, value: Value) -> None:
        """Set a reported value from its SI value (or :class:`Raw`), encoded as the device sends it."""
        self._values[key] = self.codec.encode(key, value)

    def _put_all(self, values: Mapping[str, Value]) -> None:
        for key, value in values.items():
            self._values[key] = self.codec.encode(key, value)

    def _encoded(self, values: Mapping[str, Value]) -> dict[str, Value]:
        return {key: self.codec.encode(key, value) for key, value in values.items()}

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

    def _initial_values(self) -> dict[str, Value]:
        """SI values (or :class:`Raw`) that replace or add to the product's `template` before the
        first physics step (serials, seeded counters)."""
        return {}

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
