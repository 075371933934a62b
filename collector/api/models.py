"""Open API answers as pydantic models: the edge where the cloud's JSON is checked.

Shapes follow real answers (see docs of the endpoints in `collector.api.client`): codes arrive as
strings but are accepted as numbers too, `eagleEyeTraceId` or only `tid` may be present, the
device list may lack `productName`, and `quota/all` may succeed without any `data`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter, field_validator

QuotaValues = dict[str, Any]
"""Quota keys to values, as the cloud sends them (`20_1.pv1InputWatts`, `pd.soc`, nested task objects)."""

QUOTA_VALUES: TypeAdapter[QuotaValues] = TypeAdapter(QuotaValues)


class Envelope(BaseModel):
    """`{"code": "0", "message": "Success", "data": ..., "eagleEyeTraceId": ..., "tid": ...}`."""

    model_config = ConfigDict(extra="ignore")

    code: str
    message: str = ""
    data: Any | None = None
    eagleEyeTraceId: str | None = None
    tid: str | None = None

    @field_validator("code", mode="before")
    @classmethod
    def _code_as_text(cls, code: Any) -> Any:
        # the cloud writes "8521"; a number means the same code, so do not fail on the type
        return str(code) if isinstance(code, int) and not isinstance(code, bool) else code

    @property
    def ok(self) -> bool:
        return self.code == "0"

    @property
    def trace_id(self) -> str | None:
        return self.eagleEyeTraceId or self.tid or None


class Certification(BaseModel):
    """MQTT credentials from `/iot-open/sign/certification`; the password prints as `**********`."""

    model_config = ConfigDict(extra="ignore")

    certificateAccount: str = Field(min_length=1)
    certificatePassword: SecretStr
    url: str = Field(min_length=1)
    port: str  # a string on the wire ("8883")
    protocol: str = "mqtts"

    @field_validator("port", mode="before")
    @classmethod
    def _port_as_text(cls, port: Any) -> Any:
        return str(port) if isinstance(port, int) and not isinstance(port, bool) else port

    @field_validator("port")
    @classmethod
    def _port_number(cls, port: str) -> str:
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"not a TCP port: {port!r}")
        return port

    @property
    def port_number(self) -> int:
        return int(self.port)


class DeviceInfo(BaseModel):
    """One entry of `/iot-open/sign/device/list`; unknown keys are kept."""

    model_config = ConfigDict(extra="allow")

    sn: str = Field(min_length=1)
    deviceName: str | None = None
    online: int = 0
    productName: str | None = None

    @field_validator("online", mode="before")
    @classmethod
    def _online_flag(cls, online: Any) -> Any:
        # documented as 0/1; true/false and "0"/"1" carry the same meaning, so accept them
        if isinstance(online, bool):
            return int(online)
        return int(online) if isinstance(online, str) and online.strip() in ("0", "1") else online

    @property
    def is_online(self) -> bool:
        return self.online == 1
