"""Everything the Open API client raises; each message says what to do about it.

    ApiError
    ├── ApiCodeError            the cloud answered with a non-"0" code (HTTP 200, as EcoFlow does)
    │   ├── SignatureRejected   8521: wrong secret key, or this machine's clock is off
    │   ├── AccessKeyRejected   8513: unknown access key, or a key of another region
    │   ├── PermissionDenied    8512: the key may not do this (device not bound to the account, ...)
    │   └── DeviceReadDenied    1006: this device never allows reads; remembered, not asked again
    ├── TransportError          timeouts, connection errors, HTTP 5xx/429 after the retries
    │   └── RetryBudgetExhausted  the process-wide retry budget is spent or the circuit is open
    ├── ResponseError           an answer that is not the documented JSON envelope / data shape
    └── SettingValueError       a set request refused locally: unknown setting, value out of range

`str()` of every one is a single line that never contains a secret.
"""

from __future__ import annotations

from collector.config import REGIONS


class ApiError(Exception):
    """Base of everything the EcoFlow Open API client raises."""


class ApiCodeError(ApiError):
    """A non-"0" envelope: `code`, the cloud's `message` and its trace id (for EcoFlow support)."""

    hint = ""

    def __init__(self, code: str, message: str, trace_id: str | None = None, hint: str | None = None) -> None:
        self.code = code
        self.message = message
        self.trace_id = trace_id
        text = hint if hint is not None else self.hint
        said = f"{message!r}" if message else "no message"
        trace = f", trace id {trace_id}" if trace_id else ""
        if text:
            super().__init__(f"{text} [EcoFlow code {code}: {said}{trace}]")
        else:
            super().__init__(f"EcoFlow API error {code}: {said}{trace}")


class SignatureRejected(ApiCodeError):
    hint = "signature rejected: check the secret key and this machine's clock"


class AccessKeyRejected(ApiCodeError):
    """8513; the hint is built per client because it names the regions not in use."""


class PermissionDenied(ApiCodeError):
    hint = (
        "no permission: this access key may not do that (is the device bound to the account "
        "the key belongs to, and is the key's developer access approved?)"
    )


class DeviceReadDenied(ApiCodeError):
    hint = "this device does not allow reads (permanent for this device; it will not be asked again)"

    def __init__(self, code: str, message: str, trace_id: str | None = None, sn: str | None = None) -> None:
        self.sn = sn
        super().__init__(code, message, trace_id, f"{sn}: {self.hint}" if sn else None)


class TransportError(ApiError):
    """The cloud could not be reached or kept failing (after the retries the budget allowed)."""


class RetryBudgetExhausted(TransportError):
    """Failing fast: too many retries in the last minute, or the circuit is open after repeated failures."""


class ResponseError(ApiError):
    """The cloud answered, but not with the documented shape (not JSON, no code, data of the wrong type)."""


class SettingValueError(ApiError):
    """A setting request that cannot be built; the message names the setting, what is allowed and the unit."""


def region_hint(api_url: str) -> str:
    """The 8513 advice: the documented region URLs other than the one in use."""
    current = api_url.rstrip("/")
    others = [url for url in REGIONS.values() if url != current]
    return (
        f"access key invalid, or it belongs to another region: try api_url = {' or '.join(others)} "
        f"(now {current})"
    )


def code_error(
    code: str, message: str, trace_id: str | None, *, api_url: str, sn: str | None
) -> ApiCodeError:
    """The exception for one non-"0" envelope."""
    if code == "8521":
        return SignatureRejected(code, message, trace_id)
    if code == "8513":
        return AccessKeyRejected(code, message, trace_id, region_hint(api_url))
    if code == "8512":
        return PermissionDenied(code, message, trace_id)
    if code == "1006":
        return DeviceReadDenied(code, message, trace_id, sn)
    return ApiCodeError(code, message, trace_id)
