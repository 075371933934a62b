"""Configuration: one TOML file, every value overridable by environment variables.

Environment variables are named `ECOFLOW_COLLECTOR_<SECTION>__<KEY>` (upper case), e.g.
`ECOFLOW_COLLECTOR_ECOFLOW__SECRET_KEY`, `ECOFLOW_COLLECTOR_INFLUXDB__TOKEN`; the device list is
`ECOFLOW_COLLECTOR_DEVICES` as JSON. Environment beats the file. Secrets are `SecretStr`: they print
as `**********` and never appear in errors.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, SettingsError

ENV_PREFIX = "ECOFLOW_COLLECTOR_"
REGIONS = {
    "europe": "https://api-e.ecoflow.com",
    "americas": "https://api-a.ecoflow.com",
    "global": "https://api.ecoflow.com",
}

_SECTION = ConfigDict(extra="forbid")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key and the reason."""


class EcoflowSection(BaseModel):
    model_config = _SECTION

    api_url: str = Field(REGIONS["europe"], pattern=r"^https?://[^/\s]+/?$")
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

    url: str = Field("http://localhost:8086", pattern=r"^https?://\S+$")
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
    shard: str | None = Field(None, pattern=r"^(\d+/\d+|auto)$")

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

    sn: str = Field(pattern=r"^[A-Za-z0-9*_-]{4,40}$")
    name: str | None = Field(None, min_length=1, max_length=100)
    product: str | None = None  # a catalog slug (powerstream, delta_pro) or a product name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    ecoflow: EcoflowSection = EcoflowSection()
    mqtt: MqttSection = MqttSection()
    influxdb: InfluxSection = InfluxSection()
    collector: CollectorSection = CollectorSection()
    energy: EnergySection = EnergySection()
    history: HistorySection = HistorySection()
    logging: LoggingSection = LoggingSection()
    devices: list[DeviceEntry] = []

    @model_validator(mode="after")
    def _watchdog_before_offline(self) -> Settings:
        if self.mqtt.watchdog_s >= self.collector.offline_after_s:
            raise ValueError(
                f"mqtt.watchdog_s ({self.mqtt.watchdog_s:g}) must be below collector.offline_after_s "
                f"({self.collector.offline_after_s:g}): the watchdog is for sessions gone silent while "
                "devices are still counted online"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # the file's values come in as init arguments; the environment overrides them
        return (env_settings, init_settings) if cls.use_environment else (init_settings,)

    use_environment: ClassVar[bool] = True


class _ValuesOnly(Settings):
    use_environment: ClassVar[bool] = False


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
    except SettingsError as exc:  # an environment variable that does not parse (e.g. bad JSON)
        field = re.search(r'field "(\w+)"', str(exc))
        variable = ENV_PREFIX + field.group(1).upper() if field else f"one of {ENV_PREFIX}*"
        raise ConfigError(f"config {source}: {variable} is not valid JSON") from None
    except ValidationError as exc:
        env_keys = sorted(k for k in os.environ if k.upper().startswith(ENV_PREFIX))
        hint = f" (environment overrides in effect: {', '.join(env_keys)})" if env_keys else ""
        raise ConfigError(f"config {source}: {describe_errors(exc)}{hint}") from None
    seen: set[str] = set()
    for device in settings.devices:
        if device.sn in seen:
            raise ConfigError(f"config {source}: devices: serial {device.sn} is listed twice")
        seen.add(device.sn)
    return settings
