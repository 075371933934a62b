"""Set commands checked against the product catalog, as the device firmware would take them.

A command names its setting by `cmdCode` (PowerStream: `WN511_SET_PERMANENT_WATTS_PACK`) or by
`cmdSet` + `id` in its params (Delta Pro: 32 / 66); several settings can share one command
(Delta Pro 32/66 switches AC output and X-Boost), told apart by the parameter they carry. A
parameter that another setting of the same command lists as `fixed` and that is sent as 255
means "leave unchanged". The accepted value becomes the setting's first `read_quotas` key, in
the units it was sent (the catalog's convention).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from collector.catalog import Product, Setting

IGNORED = 255  # a `fixed` parameter sent as 255: "ignored / unchanged" (EcoFlow's 0xff)
_ADDRESS_PARAMS = frozenset({"cmdSet", "id"})


class CommandError(ValueError):
    """The device would refuse the command; str() says why (logged, never sent to the client)."""


@dataclass(frozen=True, slots=True)
class Change:
    setting: Setting
    key: str  # the quota key that shows the value
    value: int | float


def _number(name: str, value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise CommandError(f"parameter {name} must be a number, got {value!r}")
    return value


def _candidates(product: Product, cmd_code: Any, params: Mapping[str, Any]) -> list[Setting]:
    if cmd_code is not None:
        found = [s for s in product.settings.values() if s.entry.cmd_code == cmd_code]
        if not found:
            raise CommandError(f"{product.slug} has no command {cmd_code!r}")
        return found
    cmd_set, cmd_id = params.get("cmdSet"), params.get("id")
    found = [
        s
        for s in product.settings.values()
        if s.entry.cmd_set is not None and (s.entry.cmd_set, s.entry.cmd_id) == (cmd_set, cmd_id)
    ]
    if not found:
        raise CommandError(f"{product.slug} has no command cmdSet={cmd_set!r} id={cmd_id!r}")
    return found


def _check_range(setting: Setting, value: int | float) -> None:
    entry = setting.entry
    if value in entry.choices.values():
        return
    low, high = entry.min * entry.scale, entry.max * entry.scale
    if not low <= value <= high:
        raise CommandError(f"{entry.param}={value} is outside {low:g}..{high:g} ({setting.name})")
    if entry.scale >= 1 and value != int(value):
        raise CommandError(f"{entry.param}={value} must be a whole number ({setting.name})")


def resolve(product: Product, cmd_code: Any, params: Any) -> list[Change]:
    """The quota changes a command makes on a device of `product`; CommandError if refused."""
    if not isinstance(params, Mapping):
        raise CommandError("params must be an object")
    candidates = _candidates(product, cmd_code, params)
    known = {s.entry.param for s in candidates} | {k for s in candidates for k in s.entry.fixed}
    unknown = sorted(set(params) - known - (_ADDRESS_PARAMS if cmd_code is None else set()))
    if unknown:
        raise CommandError(f"unknown parameter(s) {', '.join(unknown)} for this command")
    fixed_params = {k for s in candidates for k in s.entry.fixed}
    changes: list[Change] = []
    matched = False
    for setting in candidates:
        param = setting.entry.param
        if param not in params:
            continue
        matched = True
        value = _number(param, params[param])
        if value == IGNORED and param in fixed_params:
            continue
        _check_range(setting, value)
        changes.append(Change(setting, setting.entry.read_quotas[0], value))
    if not matched:
        wanted = ", ".join(sorted({s.entry.param for s in candidates}))
        raise CommandError(f"the command needs one of the parameters {wanted}")
    return changes
