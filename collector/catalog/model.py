"""Catalog files (one TOML file per product) and the frozen objects they compile to.

A catalog file is validated with pydantic (it is an edge: hand-written data), then
compiled into plain frozen dataclasses that the hot path reads.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collector.catalog.units import DEVICE_UNITS, DeviceUnit


class Kind(StrEnum):
    MEASUREMENT = "measurement"  # a physical reading (V, A, W, °C, %)
    ENUM = "enum"  # one of a set of states
    FLAGS = "flags"  # a bit field
    COUNTER = "counter"  # monotonically growing (energy totals, cycles, restarts)
    ERROR_CODE = "error_code"  # 0 = fine, anything else is a device fault code
    SETTING = "setting"  # a value the user configures (limits, brightness, timeouts)
    IDENTIFIER = "identifier"  # versions, addresses, ids: stored, but not a quantity


SUMMARY_FIELDS = (
    "soc_percent",
    "input_w",
    "output_w",
    "pv_input_w",
    "battery_w",
    "battery_soh_percent",
    "battery_cycles",
)
SummaryField = Literal[
    "soc_percent",
    "input_w",
    "output_w",
    "pv_input_w",
    "battery_w",
    "battery_soh_percent",
    "battery_cycles",
]
# what a field says about a battery's health over the years (rolled up, shown in the energy dashboard)
HealthMarker = Literal["soh", "cycles", "full_capacity", "design_capacity"]
TextEncoding = Literal["ascii2"]

# Rows a product dashboard may put panels in without declaring them; a product file may name more (and
# their order) in `[dashboard] rows`. The generated rows "Errors" and "Energy" hold no field panels.
ROWS = (
    "Power",
    "Solar input",
    "Battery",
    "Inverter",
    "Outputs",
    "Grid",
    "Temperatures",
    "Measurements",
    "Settings",
)
# where a panel goes when neither its fields nor `[dashboard.panels]` name a row
DEFAULT_ROW = "Measurements"
DEFAULT_STATE_ROW = "Settings"
GENERATED_ROWS = ("Errors", "Energy")
# kinds a panel hint may name: numbers over time (measurement, counter), states (enum, setting)
PLOTTED_KINDS = frozenset({"measurement", "counter", "enum", "setting"})

# Patterns (the slug's) are matched with Python's `re`, not pydantic-core's Rust regex engine: its
# first use costs 0.7 MB of RSS (docs/benchmarks.md). A slug ending in a newline, which `$` lets
# through in Python, is refused anyway: it must be the file's name.
_STRICT = ConfigDict(extra="forbid", frozen=True, regex_engine="python-re")


class FieldEntry(BaseModel):
    model_config = _STRICT

    unit: str = ""
    kind: Kind
    desc: str = Field(min_length=1)
    sentinels: tuple[float, ...] = ()
    range: tuple[float, float] | None = None  # plausible values, in stored units
    array: bool = False  # the value is a list; element i is stored as `key[i]`
    values: dict[str, str] = {}  # labels of enum values
    text: TextEncoding | None = None  # how to show the number as text (e.g. two ASCII letters)
    evidence: str | None = None  # why the unit is what it is, where sources disagree
    health: HealthMarker | None = None  # a state-of-health field of a pack
    # dashboard hints (optional; see CONTRIBUTING.md): the panel(s) the field is plotted in (by title;
    # fields naming the same panel share it), the row of those panels, the series name in them
    panel: tuple[str, ...] = ()
    row: str | None = None
    label: str | None = Field(default=None, min_length=1)
    hide: bool = False  # leave it out of the default panels (a product file without panel hints)

    @field_validator("panel", mode="before")
    @classmethod
    def _one_or_more_panels(cls, value: object) -> object:
        return (value,) if isinstance(value, str) else value

    @field_validator("panel")
    @classmethod
    def _panel_titles(cls, panels: tuple[str, ...]) -> tuple[str, ...]:
        if any(not title.strip() for title in panels):
            raise ValueError("a panel title is empty")
        if len(set(panels)) != len(panels):
            raise ValueError(f"panel {panels} names a panel twice")
        return panels

    @field_validator("unit")
    @classmethod
    def _known_unit(cls, unit: str) -> str:
        if unit not in DEVICE_UNITS:
            raise ValueError(f"unknown unit {unit!r}; known: {', '.join(sorted(DEVICE_UNITS))}")
        return unit

    @model_validator(mode="after")
    def _range_ordered(self) -> FieldEntry:
        if self.range is not None and self.range[0] > self.range[1]:
            raise ValueError(f"range {self.range} is not ordered low, high")
        if self.row is not None and not self.panel:
            raise ValueError(f"row {self.row!r} without a panel: name the panel the field goes in")
        if self.row is not None and len(self.panel) > 1:
            raise ValueError(
                f"row {self.row!r} with several panels: give each panel its row in [dashboard.panels]"
            )
        if self.panel and self.kind.value not in PLOTTED_KINDS:
            raise ValueError(
                f"a {self.kind.value} field takes no panel hint (error codes go to the error table by "
                "themselves; identifiers and flags are not plotted)"
            )
        if self.label and self.kind.value not in PLOTTED_KINDS | {"error_code"}:
            raise ValueError(f"a {self.kind.value} field is not shown: it takes no label")
        if self.hide and self.panel:
            raise ValueError("hide with a panel: a field is either in a panel or hidden")
        if self.panel and self.array:
            raise ValueError("an array field takes no panel hint (its length is only known at run time)")
        return self


class GroupEntry(BaseModel):
    """Fields shared by several key prefixes (e.g. bmsMaster / bmsSlave1 / bmsSlave2)."""

    model_config = _STRICT

    prefixes: tuple[str, ...] = Field(min_length=1)
    fields: dict[str, FieldEntry] = Field(min_length=1)
    hide: bool = False  # every field's `hide` (scheduled tasks, configuration records: not plotted)

    @model_validator(mode="after")
    def _hidden_fields_have_no_panel(self) -> GroupEntry:
        if self.hide and any(entry.panel for entry in self.fields.values()):
            raise ValueError("hide with a panel: a hidden group's fields take no panel")
        return self


class SettingEntry(BaseModel):
    """A value the user can set, and how the Open API request for it is built."""

    model_config = _STRICT

    desc: str = Field(min_length=1)
    unit: str = ""  # the unit the user types the value in
    min: float
    max: float
    scale: float = 1.0  # sent value = round(user value * scale)
    choices: dict[str, int] = {}  # words a user may type instead of numbers (on/off ...)
    cmd_code: str | None = None  # PowerStream style: {"cmdCode": ..., "params": {param: v}}
    cmd_set: int | None = None  # Delta Pro style: {"params": {"cmdSet": .., "id": .., param: v}}
    cmd_id: int | None = None
    param: str = Field(min_length=1)
    fixed: dict[str, int] = {}  # other parameters the command needs, sent as they are
    read_quotas: tuple[str, ...] = Field(min_length=1)  # quota keys that show the result

    @model_validator(mode="after")
    def _one_command_style(self) -> SettingEntry:
        has_code = self.cmd_code is not None
        has_set = self.cmd_set is not None and self.cmd_id is not None
        if has_code == has_set:
            raise ValueError("give either cmd_code, or both cmd_set and cmd_id")
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


class PanelEntry(BaseModel):
    """Options of one panel of the product dashboard, by its title (`[dashboard.panels."PV power"]`)."""

    model_config = _STRICT

    row: str | None = None  # instead of a `row` on its fields
    description: str | None = Field(default=None, min_length=1)  # default: its fields' descriptions
    stack: bool = False  # stack the series (parts of one total: output by port)
    order: int = 0  # lower first within its row; equal: in the order the file names the panels


class DashboardEntry(BaseModel):
    model_config = _STRICT

    rows: tuple[str, ...] = ()  # the rows in this order first, and names beyond ROWS
    panels: dict[str, PanelEntry] = {}

    @field_validator("rows")
    @classmethod
    def _rows_unique(cls, rows: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(rows)) != len(rows):
            raise ValueError(f"rows {rows} names a row twice")
        if set(rows) & set(GENERATED_ROWS):
            raise ValueError(f"rows {', '.join(GENERATED_ROWS)} are generated, not declared")
        return rows


class ProductInfo(BaseModel):
    model_config = _STRICT

    slug: str = Field(pattern=r"^[a-z0-9]+(_[a-z0-9]+)*$")
    name: str
    aliases: tuple[str, ...] = ()  # productName values of the device list that mean this product
    serial_prefixes: tuple[str, ...] = ()


class ProductFile(BaseModel):
    model_config = _STRICT

    product: ProductInfo
    summary: dict[SummaryField, tuple[str, ...]] = {}
    groups: tuple[GroupEntry, ...] = Field(min_length=1)
    settings: dict[str, SettingEntry] = {}
    dashboard: DashboardEntry = DashboardEntry()

    @model_validator(mode="after")
    def _dashboard_hints(self) -> ProductFile:
        """Every row a hint names exists, every `[dashboard.panels]` entry is some field's panel, and
        the fields of one panel agree on its row, show one Grafana unit and one kind of panel."""
        rows = set(ROWS) | set(self.dashboard.rows)
        known = ", ".join([*self.dashboard.rows, *(r for r in ROWS if r not in self.dashboard.rows)])
        members: dict[str, list[tuple[str, FieldEntry]]] = {}
        for group in self.groups:
            for suffix, entry in group.fields.items():
                if entry.row is not None and entry.row not in rows:
                    raise ValueError(
                        f"field {suffix}: row {entry.row!r} is not a dashboard row; known: {known} "
                        "(or declare it in [dashboard] rows)"
                    )
                for title in entry.panel:
                    for prefix in group.prefixes:
                        members.setdefault(title, []).append(
                            (f"{prefix}.{suffix}" if prefix else suffix, entry)
                        )
        for title, panel in self.dashboard.panels.items():
            if title not in members:
                raise ValueError(f"[dashboard.panels] {title!r}: no field names this panel")
            if panel.row is not None and panel.row not in rows:
                raise ValueError(
                    f"[dashboard.panels] {title!r}: row {panel.row!r} is not a dashboard row; known: {known}"
                )
        for title, fields in members.items():
            options = self.dashboard.panels.get(title)
            named = {e.row for _k, e in fields if e.row is not None}
            if options is not None and options.row is not None:
                named.add(options.row)
            if len(named) > 1:
                raise ValueError(f"panel {title!r} is put in rows {sorted(named)}: give it one row")
            states = {e.kind is Kind.ENUM for _k, e in fields}
            numbers = {e.kind in (Kind.MEASUREMENT, Kind.COUNTER) for _k, e in fields}
            if True in states and True in numbers:
                raise ValueError(
                    f"panel {title!r} mixes enum fields (a state timeline) with measurements (a graph)"
                )
            units = {DEVICE_UNITS[e.unit].grafana for _k, e in fields}
            if len(units) > 1:
                keys = ", ".join(k for k, _e in fields)
                raise ValueError(
                    f"panel {title!r} mixes Grafana units {sorted(units)} ({keys}): one unit a panel"
                )
        return self


# --- compiled, hot-path objects -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FieldSpec:
    key: str  # full quota key; `#` stands for a number in pattern keys (20_134.task#.type)
    unit: DeviceUnit
    kind: Kind
    desc: str
    sentinels: frozenset[float]
    range: tuple[float, float] | None
    array: bool
    values: dict[str, str]
    text: TextEncoding | None
    evidence: str | None
    health: HealthMarker | None
    panels: tuple[str, ...]  # dashboard hints (FieldEntry)
    row: str | None
    label: str | None
    hide: bool
    group: str  # the first prefix of its [[groups]] entry: default panels are per group
    # stored = sent * mul / div: dividing by 10 instead of multiplying by 0.1 keeps 691 -> 69.1 exact
    mul: float
    div: float


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    entry: SettingEntry


_INDEX = re.compile(r"\[\d+\]")
# what `Product.deferred` leaves to be compiled on first use, and the lock of that compilation
_COMPILED = ("fields", "patterns", "summary", "settings", "dashboard", "cmd_prefix")
_COMPILING = threading.Lock()


@dataclass(slots=True)
class Product:
    slug: str
    name: str
    aliases: tuple[str, ...]
    serial_prefixes: tuple[str, ...]
    fields: dict[str, FieldSpec]
    patterns: tuple[tuple[re.Pattern[str], FieldSpec], ...]
    summary: dict[str, tuple[tuple[str, float], ...]]  # summary field -> (key, sign) terms
    settings: dict[str, Setting]
    dashboard: DashboardEntry = field(default_factory=DashboardEntry)  # dashboard hints of the file
    resolved: dict[str, FieldSpec | None] = field(default_factory=dict, repr=False)  # lookup's cache
    # key -> divisor of resolved fields that only divide (0.1 V, mV, ...; 1 for V, W) and have no
    # sentinels: the normalizer's fast path, one division per value
    divisors: dict[str, float] = field(default_factory=dict, repr=False)
    # keys of cmdFunc/cmdId MQTT reports carry `{cmdFunc}_{cmdId}.` (PowerStream `20_1.`), as the
    # catalog's own keys show; the DELTA Pro 3 sends the same envelope around flat quota/all keys
    cmd_prefix: bool = True
    # a deferred product's compiler (its catalog file, read again): None once compiled
    _compile: Callable[[], Product] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def deferred(
        cls,
        slug: str,
        name: str,
        aliases: tuple[str, ...],
        serial_prefixes: tuple[str, ...],
        compile: Callable[[], Product],
    ) -> Product:
        """A product known by its identity (what `Catalog` looks products up by) whose fields,
        patterns, summary, settings, dashboard and cmd_prefix `compile()` builds when one of them is
        first read (from any thread; once). Its file was validated: a catalog of many products
        builds the hot-path structures of those a device of which appears only."""
        product = cls.__new__(cls)
        product.slug, product.name, product.aliases = slug, name, aliases
        product.serial_prefixes = serial_prefixes
        product.resolved, product.divisors = {}, {}
        product._compile = compile
        return product

    if not TYPE_CHECKING:  # for mypy, every attribute is the declared one

        def __getattr__(self, name: str) -> object:
            """Reached only when an attribute is not set: the compiled ones of a deferred product."""
            if name not in _COMPILED:
                raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
            with _COMPILING:
                if self._compile is not None:  # else another thread compiled it meanwhile
                    built = self._compile()
                    for attr in _COMPILED:
                        setattr(self, attr, getattr(built, attr))
                    self._compile = None
            return object.__getattribute__(self, name)

    def lookup(self, key: str) -> FieldSpec | None:
        """The spec of a flattened quota key (array elements resolve to their array)."""
        try:
            return self.resolved[key]
        except KeyError:
            pass
        base = _INDEX.sub("", key) if "[" in key else key
        spec = self.fields.get(base)
        if spec is None:
            for pattern, candidate in self.patterns:
                if pattern.fullmatch(base):
                    spec = candidate
                    break
        if len(self.resolved) < 100_000:  # bounded: hostile payloads may invent keys forever
            self.resolved[key] = spec
            if spec is not None and not spec.sentinels and spec.mul == 1.0:
                self.divisors[key] = spec.div
        return spec

    def all_fields(self) -> list[FieldSpec]:
        return [*self.fields.values(), *(spec for _, spec in self.patterns)]
