"""Per-device state: what each device last reported that a feature needs, and whether it is online.

MQTT reports are incremental. The only feature that needs a device's earlier values is the fleet
summary (`ecoflow_summary`, and the energy counters fed from it): its fields are sums of quota keys
that arrive in different reports (a Delta Pro's `pd.wattsInSum` and `bmsMaster.soc` come in separate
MQTT messages), so the last value of each key a summary term names is kept. Nothing else reads a
device's earlier values: every other field is written as it arrives, and not remembered.

Memory matters for fleets (10,000 devices): the values live in one flat array per device, indexed
through one key table per product (the summary's keys, a handful), not in a dict per device. The
time of each value is not kept (no feature reads it); `DeviceState` keeps the clocks the online
tracking and the HTTP polls need. bench/memory.py measures bytes per device.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum

from collector import points
from collector.points import Device

NO_VALUE = math.nan


class Online(IntEnum):
    """Three-state online tracking; the number is what `ecoflow_status.state` stores."""

    OFFLINE = points.OFFLINE  # /status 0, or the device list says so
    ASSUMED_OFFLINE = points.ASSUMED_OFFLINE  # silent past the threshold (or never heard from)
    ONLINE = points.ONLINE  # recent MQTT data, or /status 1


class KeyTable:
    """Field key -> slot, shared by all devices of one product.

    `grow=False` (the registry's tables): only the reserved keys (the fleet summary's) have slots.
    `grow=True`: any key gets a slot on first sight, up to `limit` (bounded against invented keys;
    the reserved keys come first, so invented keys cannot crowd them out)."""

    def __init__(self, reserved: Iterable[str] = (), limit: int = 1024, grow: bool = True) -> None:
        self.slots: dict[str, int] = {key: index for index, key in enumerate(dict.fromkeys(reserved))}
        self.limit = max(limit, len(self.slots)) if grow else len(self.slots)
        self.grow = grow

    def slot(self, key: str) -> int | None:
        index = self.slots.get(key)
        if index is None and len(self.slots) < self.limit:
            index = self.slots[key] = len(self.slots)
        return index


class FieldMemory:
    """The last value of each field of one device that its key table has a slot for."""

    __slots__ = ("_table", "_values")

    def __init__(self, table: KeyTable) -> None:
        self._table = table
        self._values = array("d")

    def merge(self, fields: dict[str, float], time_ms: int) -> FieldMemory:
        """Take a report's fields (`time_ms` is not kept: nothing reads it)."""
        values, table = self._values, self._table
        if not table.grow:  # the few reserved keys, looked up in the report
            if len(values) < len(table.slots):
                values.extend([NO_VALUE] * (len(table.slots) - len(values)))
            get = fields.get
            for key, index in table.slots.items():
                value = get(key)
                if value is not None:
                    values[index] = value
            return self
        slot = table.slot
        for key, value in fields.items():
            position = slot(key)
            if position is None:
                continue
            if position >= len(values):
                values.extend([NO_VALUE] * (position + 1 - len(values)))
            values[position] = value
        return self

    def get(self, key: str) -> float | None:
        index = self._table.slots.get(key)
        if index is None or index >= len(self._values):
            return None
        value = self._values[index]
        return None if math.isnan(value) else value

    def items(self) -> list[tuple[str, float]]:
        values = self._values
        return [
            (key, values[i])
            for key, i in self._table.slots.items()
            if i < len(values) and not math.isnan(values[i])
        ]


@dataclass(slots=True)
class DeviceState:
    device: Device
    memory: FieldMemory
    online: Online = Online.ASSUMED_OFFLINE
    last_mqtt_ms: int = 0  # last quota report over MQTT
    last_seen_ms: int = 0  # last sign of life over MQTT: a quota report or /status 1
    last_poll_ms: int = 0  # last quota/all over HTTP (successful or not)
    read_denied: bool = False  # the cloud answered 1006: never poll again
    listed: bool | None = None  # the device list's online flag (None: not known, or outdated)
    last_point_ms: int = 0

    def stamp(self, now_ms: int) -> int:
        """A timestamp for the device's next point, strictly after its last one: two reports in the
        same millisecond would otherwise merge into one point, the older values overwritten."""
        stamp = now_ms if now_ms > self.last_point_ms else self.last_point_ms + 1
        self.last_point_ms = stamp
        return stamp

    def update_online(self, now_ms: int, offline_after_ms: int) -> bool:
        """Recompute the state from the clocks; True when it changed."""
        before = self.online
        if self.online is Online.ONLINE and now_ms - self.last_seen_ms > offline_after_ms:
            self.online = Online.ASSUMED_OFFLINE
        return self.online is not before

    def expected_online(self) -> bool:
        """Online by MQTT's account, or by the device list's: data should be flowing."""
        return self.online is Online.ONLINE or self.listed is True

    def set_online(self, online: Online) -> bool:
        changed = self.online is not online
        self.online = online
        return changed


@dataclass
class Registry:
    """Every device the collector knows, by serial."""

    devices: dict[str, DeviceState] = field(default_factory=dict)
    _tables: dict[str, KeyTable] = field(default_factory=dict)

    def add(self, device: Device) -> DeviceState:
        """Register a device, or update its name and product (a new product starts a new memory)."""
        existing = self.devices.get(device.sn)
        if existing is not None:
            if existing.device.slug != device.slug:
                existing.memory = FieldMemory(self._table(device))
            existing.device = device
            return existing
        state = self.devices[device.sn] = DeviceState(device, FieldMemory(self._table(device)))
        return state

    def _table(self, device: Device) -> KeyTable:
        table = self._tables.get(device.slug)
        if table is None:
            summary_keys = (
                [key for terms in device.product.summary.values() for key, _ in terms]
                if device.product
                else []
            )
            table = self._tables[device.slug] = KeyTable(summary_keys, grow=False)
        return table

    def get(self, sn: str) -> DeviceState | None:
        return self.devices.get(sn)

    def __len__(self) -> int:
        return len(self.devices)

    def states(self) -> list[DeviceState]:
        """A snapshot: other threads may add devices meanwhile."""
        return list(self.devices.values())

    def online_count(self) -> int:
        return sum(1 for s in self.states() if s.online is Online.ONLINE)

    def expected_online_count(self) -> int:
        return sum(1 for s in self.states() if s.expected_online())
