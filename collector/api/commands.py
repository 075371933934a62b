"""Catalog settings -> Open API set requests (and the read-back that shows their effect).

A user names a setting of the product's catalog (`permanent-watts`) and a value in the setting's
unit (`120`, or a word from its choices such as `on`). The value is checked against the catalog's
min/max here, before anything is sent, then scaled to what the device takes (120 W -> 1200) and
put in the body of the product's command style:

- PowerStream: `{"sn": .., "cmdCode": "WN511_SET_PERMANENT_WATTS_PACK", "params": {"permanentWatts": 1200}}`
- Delta Pro:   `{"sn": .., "params": {"cmdSet": 32, "id": 66, "enabled": 1, "xboost": 255}}`

The read-back is a quota read of the setting's `read_quotas` (Delta Pro adds cmdSet/id).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from collector.api.errors import SettingValueError
from collector.catalog import Product, Setting
from collector.catalog.model import SettingEntry


@dataclass(frozen=True, slots=True)
class ReadRequest:
    """A quota read: `client.quota_get(sn, quotas, extra_params)`."""

    quotas: tuple[str, ...]
    extra_params: dict[str, int]


@dataclass(frozen=True, slots=True)
class SetRequest:
    """One validated set command and how to read its result back."""

    sn: str
    setting: Setting
    value: float  # what the user asked for, in the setting's unit
    sent: int  # what the device is sent for `param`
    body: dict[str, Any]  # the PUT body
    read_back: ReadRequest


def _canonical(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def find_setting(product: Product, name: str) -> Setting:
    """The product's setting called `name` (`permanent_watts` works as well as `permanent-watts`)."""
    for setting in product.settings.values():
        if _canonical(setting.name) == _canonical(name):
            return setting
    known = ", ".join(sorted(product.settings)) or "none"
    raise SettingValueError(f"{product.slug} has no setting {name!r}; it has: {known}")


def _number(value: float) -> str:
    return f"{value:g}"


def allowed_text(entry: SettingEntry) -> str:
    """`0-600 W`, `0-100 %, or auto (128)`, `off (0), on (1)`: what a user may type."""
    unit = f" {entry.unit}" if entry.unit else ""
    words = ", ".join(f"{word} ({value})" for word, value in entry.choices.items())
    integers = range(math.ceil(entry.min), math.floor(entry.max) + 1)
    if words and len(integers) <= len(entry.choices) and all(n in entry.choices.values() for n in integers):
        return words  # the words name every allowed value (off/on)
    numeric = f"{_number(entry.min)}-{_number(entry.max)}{unit}"
    return f"{numeric}, or {words}" if words else numeric


def parse_value(setting: Setting, text: str) -> float:
    """A choice word or a number in the setting's unit, checked against the catalog's range."""
    entry = setting.entry
    word = text.strip().lower()
    for choice, named in entry.choices.items():
        if choice.lower() == word:
            return float(named)  # named by the catalog: allowed even outside min/max (auto = 128)
    try:
        value = float(word)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise SettingValueError(f"{setting.name}: {text!r} is not a number; allowed: {allowed_text(entry)}")
    if value in entry.choices.values():
        return value
    if not entry.min <= value <= entry.max:
        unit = f" {entry.unit}" if entry.unit else ""
        raise SettingValueError(
            f"{setting.name}: {_number(value)}{unit} is out of range; allowed: {allowed_text(entry)}"
        )
    return value


def _sent_value(setting: Setting, value: float) -> int:
    entry = setting.entry
    scaled = value * entry.scale
    sent = round(scaled)
    if not math.isclose(scaled, sent, abs_tol=1e-6):
        unit = f" {entry.unit}" if entry.unit else ""
        step = _number(1 / entry.scale)
        raise SettingValueError(
            f"{setting.name}: {_number(value)}{unit} is finer than the device takes (steps of {step}{unit})"
        )
    return sent


def command_params(entry: SettingEntry) -> dict[str, int]:
    """`cmdSet`/`id` for Delta Pro style commands, nothing for `cmdCode` ones."""
    if entry.cmd_set is not None and entry.cmd_id is not None:
        return {"cmdSet": entry.cmd_set, "id": entry.cmd_id}
    return {}


def read_request(setting: Setting) -> ReadRequest:
    return ReadRequest(tuple(setting.entry.read_quotas), command_params(setting.entry))


def build_set_request(product: Product, sn: str, name: str, text: str) -> SetRequest:
    """The validated set request for `name = text` on device `sn`; SettingValueError before any I/O."""
    setting = find_setting(product, name)
    value = parse_value(setting, text)
    sent = _sent_value(setting, value)
    entry = setting.entry
    params: dict[str, Any] = {**command_params(entry), entry.param: sent, **entry.fixed}
    body: dict[str, Any] = {"sn": sn}
    if entry.cmd_code is not None:
        body["cmdCode"] = entry.cmd_code
    body["params"] = params
    return SetRequest(sn, setting, value, sent, body, read_request(setting))


def settings_table(product: Product) -> list[dict[str, Any]]:
    """One record per setting: what a user may type, and the command it becomes."""
    rows: list[dict[str, Any]] = []
    for name in sorted(product.settings):
        entry = product.settings[name].entry
        command = entry.cmd_code or f"cmdSet {entry.cmd_set} id {entry.cmd_id}"
        rows.append(
            {
                "product": product.slug,
                "setting": name,
                "unit": entry.unit,
                "min": entry.min,
                "max": entry.max,
                "choices": dict(entry.choices),
                "allowed": allowed_text(entry),
                "scale": entry.scale,
                "command": command,
                "param": entry.param,
                "fixed": dict(entry.fixed),
                "read_quotas": list(entry.read_quotas),
                "description": entry.desc,
            }
        )
    return rows
