"""Configuration: one TOML file, every value overridable by environment variables.

Environment variables are named `ECOFLOW_COLLECTOR_<SECTION>__<KEY>` (upper case), e.g.
`ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY`, `ECOFLOW_COLLECTOR_INFLUXDB__TOKEN`; the device list is
`ECOFLOW_COLLECTOR_DEVICES` as JSON. Environment beats the file. Secrets are `SecretStr`: they print
as `**********` and never appear in errors.

Several EcoFlow accounts: `[[accounts]]` (see :class:`AccountEntry`); `[ecoflow]` alone is the
one-account form, the account named `default`. An account's keys come from the environment by
its name: `ECOFLOW_COLLECTOR_ACCOUNTS__<NAME>__<KEY>` (`<NAME>` upper case, e.g.
`ECOFLOW_COLLECTOR_ACCOUNTS__HOME__SECRET_KEY`; `..._ACCOUNTS__HOME__MQTT__PASSWORD` for a key of its
`mqtt` table; a list such as `devices` as JSON), merged into the `[[accounts]]` entry of that name,
or making a new account when the file has none of that name.
"""

from __future__ import annotations

import fnmatch
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "ECOFLOW_COLLECTOR_"
REGIONS = {
    "europe": "https://api-e.ecoflow.com",
    "americas": "https://api-a.ecoflow.com",
    "global": "https://api.ecoflow.com",
}

# Patterns are matched with Python's `re` (already loaded), not pydantic-core's Rust regex engine,
# whose first use costs 0.7 MB of RSS (docs/benchmarks.md); `\Z`: the end of the text, as the Rust
# engine's `$` (Python's `$` also matches before a final newline)
_SECTION = ConfigDict(extra="forbid", regex_engine="python-re")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the reason."""


class EnvironmentValueError(ValueError):
    """An `ECOFLOW_COLLECTOR_*` variable that must be JSON (a list or a table) does not parse."""

    def __init__(self, variable: str) -> None:
        super().__init__(f"{variable} is not valid JSON")
        self.variable = variable


class EcoflowSection(BaseModel):
    model_config = _SECTION

    api_url: str = Field(REGIONS["europe"], pattern=r"^https?://[^/\s]+/?\Z")
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    timeout_s: float = Field(10.0, gt=0, le=120)


class MqttSection(BaseModel):
    """Optional overrides of what the certification endpoint hands out."""

    model_config = _SECTION

    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool | None = None  # default: as the certification endpoint says (protocol mqtts = TLS)
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(None, min_length=1, max_length=64)
    ca_file: Path | None = None
    keepalive_s: int = Field(60, ge=5, le=3600)
    watchdog_s: float = Field(300.0, ge=10)
    reconnect_max_s: float = Field(300.0, ge=1)

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path


class InfluxSection(BaseModel):
    model_config = _SECTION

    url: str = Field("http://localhost:8086", pattern=r"^https?://\S+\Z")
    token: SecretStr = SecretStr("")
    org: str = "ecoflow"
    bucket: str = Field("ecoflow", min_length=1)
    batch_size: int = Field(5000, ge=1, le=100_000)
    flush_interval_s: float = Field(1.0, gt=0, le=300)
    timeout_s: float = Field(10.0, gt=0, le=300)
    gzip: bool = True  # compress write requests (off saves CPU where the network is fast)


class CollectorSection(BaseModel):
    model_config = _SECTION

    state_dir: Path = Path("state")
    spool_max_bytes: int = Field(512 * 1024 * 1024, ge=1024 * 1024)
    max_payload_bytes: int = Field(256 * 1024, ge=1024)
    stale_after_s: float = Field(120.0, gt=0)
    offline_after_s: float = Field(600.0, gt=0)
    quota_all_interval_s: float = Field(900.0, gt=0)
    device_list_interval_s: float = Field(1800.0, gt=0)
    status_interval_s: float = Field(60.0, gt=0)
    telemetry_interval_s: float = Field(30.0, gt=0)
    summary_interval_s: float = Field(900.0, ge=10, le=86_400)  # the one-line `collector.summary` at info
    healthz_port: int | None = Field(None, ge=0, le=65535)
    healthz_host: str = "127.0.0.1"  # 0.0.0.0 to let other machines (or a container runtime) probe it
    # "i/N": this instance takes the i-th of N shares of the devices; "auto": i from the pod's
    # ordinal (POD_NAME or HOSTNAME ending in -<ordinal>, as a StatefulSet names them) and N from
    # ECOFLOW_COLLECTOR_SHARD_COUNT (see deploy/kubernetes/)
    shard: str | None = Field(None, pattern=r"^(\d+/\d+|auto)\Z")
    # N > 1: `run` supervises N worker processes, each taking a share of this instance's devices
    # (collector/supervisor.py): all cores of one machine
    workers: int = Field(1, ge=1, le=64)

    @model_validator(mode="after")
    def _stale_before_offline(self) -> CollectorSection:
        if self.stale_after_s >= self.offline_after_s:
            raise ValueError(
                f"stale_after_s ({self.stale_after_s:g}) must be below offline_after_s "
                f"({self.offline_after_s:g}): a device is polled over HTTP when its MQTT data is stale, "
                "and counted offline later"
            )
        return self


class EnergySection(BaseModel):
    """Energy counters (`ecoflow_energy`): see docs/history.md for the math."""

    model_config = _SECTION

    interval_s: float = Field(60.0, ge=1, le=3600)  # how often the counters are written and persisted
    max_gap_s: float = Field(300.0, gt=0, le=86_400)  # a longer silence is a gap, not integrated


class HistorySection(BaseModel):
    """Hourly rollups (`<measurement>_1h`) and the calendar of reports."""

    model_config = _SECTION

    bucket: str | None = Field(None, min_length=1)  # where rollups go; default: [influxdb] bucket
    interval_s: float = Field(900.0, ge=60, le=86_400)  # how often the rollup job runs
    timezone: str | None = None  # calendar of `report` (IANA name); default: the machine's

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, name: str | None) -> str | None:
        if name is not None:
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {name!r} (an IANA name such as Europe/Berlin)") from None
        return name


class LoggingSection(BaseModel):
    model_config = _SECTION

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class DeviceEntry(BaseModel):
    model_config = _SECTION

    sn: str = Field(pattern=r"^[A-Za-z0-9*_-]{4,40}\Z")
    name: str | None = Field(None, min_length=1, max_length=100)
    product: str | None = None  # a catalog slug (powerstream, delta_pro) or a product name


DEFAULT_ACCOUNT = "default"  # the name of the one-account form ([ecoflow])
ACCOUNTS_ENV = ENV_PREFIX + "ACCOUNTS__"
_ACCOUNT_NAME = r"^[A-Za-z0-9_]{1,40}\Z"  # usable in an environment variable's name


class AccountMqtt(BaseModel):
    """Per-account overrides of the certification answer (the `[mqtt]` keys of that kind); what
    is not set here comes from `[mqtt]`, then from the certification endpoint."""

    model_config = _SECTION

    host: str | None = None
    port: int | None = Field(None, ge=1, le=65535)
    tls: bool | None = None
    username: str | None = None
    password: SecretStr | None = None
    client_id: str | None = Field(None, min_length=1, max_length=64)
    ca_file: Path | None = None

    @field_validator("ca_file")
    @classmethod
    def _ca_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"no such file: {path}")
        return path


class AccountEntry(BaseModel):
    """One `[[accounts]]` entry: an EcoFlow developer account with its own keys, MQTT session
    (and persisted client id), retry budget and circuit breaker.

    Devices: `devices` (like `[[devices]]`: when given, exactly these), and/or `include` / `exclude`
    serial patterns (shell-style, `HW51*`): a device is collected when it is in `devices` (or
    there is no such list), matches an `include` pattern (or there is none), and matches no
    `exclude` pattern."""

    model_config = _SECTION

    name: str = Field(pattern=_ACCOUNT_NAME)
    api_url: str | None = Field(None, pattern=r"^https?://[^/\s]+/?\Z")  # default: [ecoflow] api_url
    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    timeout_s: float | None = Field(None, gt=0, le=120)  # default: [ecoflow] timeout_s
    mqtt: AccountMqtt = AccountMqtt()
    devices: list[DeviceEntry] = []
    include: list[str] = []
    exclude: list[str] = []


@dataclass(frozen=True)
class AccountSettings:
    """One account as the collector runs it: `[[accounts]]` merged over `[ecoflow]` and `[mqtt]`."""

    name: str
    ecoflow: EcoflowSection
    mqtt: MqttSection
    devices: tuple[DeviceEntry, ...] = ()
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    from_ecoflow: bool = True  # the one-account form ([ecoflow]), not an [[accounts]] entry

    def wants(self, sn: str) -> bool:
        """Whether a serial of the account's device list is collected (devices, include, exclude)."""
        if self.devices and all(d.sn != sn for d in self.devices):
            return False
        if self.include and not any(fnmatch.fnmatchcase(sn, p) for p in self.include):
            return False
        return not any(fnmatch.fnmatchcase(sn, p) for p in self.exclude)

    def env_name(self, key: str) -> str:
        """The environment variable of one of its keys (`access_key` -> ..._ACCESS_KEY)."""
        if self.from_ecoflow:
            return f"{ENV_PREFIX}ECOFLOW__{key.upper()}"
        return f"{ACCOUNTS_ENV}{self.name.upper()}__{key.upper()}"

    def where(self) -> str:
        return "[ecoflow]" if self.from_ecoflow else f"[[accounts]] {self.name}"


class Settings(BaseModel):
    """The whole configuration: `Settings(**values)` applies the environment over the values
    (`environment_over`); `settings_from_values` does not."""

    model_config = _SECTION

    ecoflow: EcoflowSection = EcoflowSection()
    mqtt: MqttSection = MqttSection()
    influxdb: InfluxSection = InfluxSection()
    collector: CollectorSection = CollectorSection()
    energy: EnergySection = EnergySection()
    history: HistorySection = HistorySection()
    logging: LoggingSection = LoggingSection()
    devices: list[DeviceEntry] = []
    accounts: list[AccountEntry] = []

    def __init__(self, **values: Any) -> None:
        super().__init__(**environment_over(values, os.environ))

    @model_validator(mode="after")
    def _accounts_or_ecoflow(self) -> Settings:
        if not self.accounts:
            return self
        names = [a.name.lower() for a in self.accounts]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"accounts: the name {twice[0]!r} is used twice (names are case-insensitive)")
        if self.ecoflow.access_key or self.ecoflow.secret_key:
            raise ValueError(
                "[ecoflow] access_key/secret_key and [[accounts]] both given: put the keys of every "
                "account in its [[accounts]] entry (or ECOFLOW_COLLECTOR_ACCOUNTS__<NAME>__...), "
                "or use [ecoflow] alone"
            )
        if self.devices:
            raise ValueError(
                "[[devices]] with [[accounts]]: list each account's devices in its entry (devices)"
            )
        if self.mqtt.client_id:
            raise ValueError(
                "[mqtt] client_id with [[accounts]]: each account's MQTT session needs its own id "
                "(set client_id in the account's mqtt table, or leave it to the collector)"
            )
        seen: dict[str, str] = {}
        for account in self.accounts:
            for device in account.devices:
                if device.sn in seen:
                    raise ValueError(
                        f"device {device.sn} is listed in the accounts {seen[device.sn]} and {account.name}"
                    )
                seen[device.sn] = account.name
        return self

    def account_settings(self) -> list[AccountSettings]:
        """Every account the collector runs, in config order (the one-account form: `default`)."""
        if not self.accounts:
            return [AccountSettings(DEFAULT_ACCOUNT, self.ecoflow, self.mqtt, tuple(self.devices))]
        accounts = []
        for entry in self.accounts:
            ecoflow = self.ecoflow.model_copy(
                update={
                    "api_url": entry.api_url or self.ecoflow.api_url,
                    "access_key": entry.access_key,
                    "secret_key": entry.secret_key,
                    "timeout_s": entry.timeout_s or self.ecoflow.timeout_s,
                }
            )
            overrides = entry.mqtt.model_dump(exclude_unset=True)
            mqtt = self.mqtt.model_copy(update=overrides)
            accounts.append(
                AccountSettings(
                    entry.name,
                    ecoflow,
                    mqtt,
                    tuple(entry.devices),
                    tuple(entry.include),
                    tuple(entry.exclude),
                    from_ecoflow=False,
                )
            )
        return accounts

    @model_validator(mode="after")
    def _watchdog_before_offline(self) -> Settings:
        if self.mqtt.watchdog_s >= self.collector.offline_after_s:
            raise ValueError(
                f"mqtt.watchdog_s ({self.mqtt.watchdog_s:g}) must be below collector.offline_after_s "
                f"({self.collector.offline_after_s:g}): the watchdog is for sessions gone silent while "
                "devices are still counted online"
            )
        return self


def _json(text: str, variable: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise EnvironmentValueError(variable) from None


def _deep_update(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """`base` with `update` over it: tables are merged key by key, anything else is replaced."""
    merged = dict(base)
    for key, value in update.items():
        old = merged.get(key)
        merged[key] = _deep_update(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    return merged


def environment_values(environ: Mapping[str, str]) -> dict[str, Any]:
    """The `ECOFLOW_COLLECTOR_*` variables but the accounts' (`merge_account_env`), as values of
    `Settings`. Names are case-insensitive. `ECOFLOW_COLLECTOR_<FIELD>` (a section, `DEVICES`) is
    JSON; `ECOFLOW_COLLECTOR_<FIELD>__<KEY>[__<KEY>...]` sets one key (its text, which pydantic
    converts), merged into `<FIELD>`'s JSON table if that is given too (not into a JSON list).
    Variables of no field are ignored; keys no section has are refused by its validation."""
    prefix = ENV_PREFIX.lower()
    whole: dict[str, Any] = {}
    keyed: dict[str, dict[str, Any]] = {}
    for variable, text in environ.items():
        name = variable.lower()
        if not name.startswith(prefix):
            continue
        field, _, rest = name[len(prefix) :].partition("__")
        if field == "accounts" or field not in Settings.model_fields:
            continue
        if not rest:
            whole[field] = _json(text, ENV_PREFIX + field.upper())
            continue
        *path, last = rest.split("__")
        node: Any = keyed.setdefault(field, {})
        for key in path:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):  # `..._MQTT__PORT` and `..._MQTT__PORT__X`: the first stays
                break
        else:
            node[last] = text
    values = dict(whole)
    for field, tree in keyed.items():
        table = whole.get(field)
        if table is None:
            values[field] = tree
        elif isinstance(table, dict):
            values[field] = _deep_update(table, tree)
    return values


def environment_over(values: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """`values` (the file's) with the environment over them: the accounts' variables merged into
    `accounts` by name (`merge_account_env`), then the other variables (`environment_values`)
    merged key by key."""
    data = dict(values)
    accounts = merge_account_env(data.get("accounts", []), environ)
    if accounts:
        data["accounts"] = accounts
    return _deep_update(data, environment_values(environ))


def _env_value(text: str, variable: str) -> Any:
    stripped = text.strip()
    return _json(stripped, variable) if stripped[:1] in ("[", "{") else text


def merge_account_env(accounts: Any, environ: Mapping[str, str]) -> Any:
    """`ECOFLOW_COLLECTOR_ACCOUNTS` (a JSON list) replaces the file's `[[accounts]]`; then each
    `ECOFLOW_COLLECTOR_ACCOUNTS__<NAME>__<KEY>[__<KEY>]` sets a key of the account of that name
    (case-insensitive), which is added when there is none."""
    whole = next((v for k, v in environ.items() if k.upper() == ENV_PREFIX + "ACCOUNTS"), None)
    if whole is not None:
        accounts = _env_value(whole, ENV_PREFIX + "ACCOUNTS")
    keyed = sorted((k.upper(), v) for k, v in environ.items() if k.upper().startswith(ACCOUNTS_ENV))
    if not keyed:
        return accounts
    entries = [
        dict(e) if isinstance(e, dict) else e for e in (accounts if isinstance(accounts, list) else [])
    ]
    for variable, value in keyed:
        parts = variable[len(ACCOUNTS_ENV) :].split("__")
        if len(parts) < 2 or not all(parts):
            continue
        name, path = parts[0], [p.lower() for p in parts[1:]]
        entry = next(
            (e for e in entries if isinstance(e, dict) and str(e.get("name", "")).upper() == name), None
        )
        if entry is None:
            entry = {"name": name.lower()}
            entries.append(entry)
        target = entry
        for key in path[:-1]:
            inner = target.get(key)
            target[key] = inner = dict(inner) if isinstance(inner, dict) else {}
            target = inner
        target[path[-1]] = _env_value(value, variable)
    return entries


class _ValuesOnly(Settings):
    def __init__(self, **values: Any) -> None:
        BaseModel.__init__(self, **values)


def settings_from_values(data: dict[str, Any]) -> Settings:
    """Settings from these values alone, whatever the environment says: for the demo (which
    must never write simulated devices into the InfluxDB a production config points at)."""
    return _ValuesOnly(**data)


def describe_errors(exc: ValidationError, whole: str = "(top level)") -> str:
    """`key.path: reason; ...`: location and message only, since pydantic's `input` may be a secret."""
    return "; ".join(
        f"{'.'.join(str(part) for part in err['loc']) or whole}: {err['msg']}" for err in exc.errors()
    )


def load_settings(path: Path | None) -> Settings:
    """Read the TOML file (if any), apply the environment, validate; ConfigError on any problem."""
    data: dict[str, Any] = {}
    source = str(path) if path is not None else "environment"
    if path is not None:
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as exc:
            raise ConfigError(f"config file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path}: not valid TOML: {exc}") from None
    try:
        settings = Settings(**data)
    except EnvironmentValueError as exc:  # an environment variable that does not parse (e.g. bad JSON)
        raise ConfigError(f"config {source}: {exc}") from None
    except ValidationError as exc:
        env_keys = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))
        hint = f" (environment overrides in effect: {', '.join(env_keys)})" if env_keys else ""
        raise ConfigError(f"config {source}: {describe_errors(exc)}{hint}") from None
    seen: set[str] = set()
    for device in [d for account in settings.account_settings() for d in account.devices]:
        if device.sn in seen:
            raise ConfigError(f"config {source}: devices: serial {device.sn} is listed twice")
        seen.add(device.sn)
    return settings
