"""The EcoFlow Open API over signed HTTP (urllib3).

Endpoints (base URL per region, `https://api-e.ecoflow.com` by default):

- `GET  /iot-open/sign/certification`        -> MQTT account, password, host, port, protocol
- `GET  /iot-open/sign/device/list`          -> [{sn, deviceName?, online, productName?}]
- `GET  /iot-open/sign/device/quota/all?sn=` -> {flat quota keys} (may succeed with no `data`)
- `POST /iot-open/sign/device/quota`         -> {key: value} for `{"sn", "params": {"quotas": [...]}}`
- `PUT  /iot-open/sign/device/quota`         -> sets a value (`cmdCode` or `cmdSet`/`id` bodies)

Every request is signed (`collector.api.signing`): GET its query, POST/PUT its JSON body.
Errors come as HTTP 200 with a non-"0" code; they map to `collector.api.errors`.

Failures that may pass (timeouts, connection errors, HTTP 5xx and 429) are retried with
exponential backoff and full jitter, but only within ONE `RequestBudget` shared by every client of
the process: a token bucket caps retries per minute, and a circuit opens after consecutive failed
attempts so that callers fail fast until a cool-down has passed (then one probe request decides).
A long outage therefore costs a handful of requests, not a retry storm.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlencode

import structlog
import urllib3
from pydantic import TypeAdapter, ValidationError

from collector.api.errors import (
    DeviceReadDenied,
    ResponseError,
    RetryBudgetExhausted,
    TransportError,
    code_error,
)
from collector.api.models import QUOTA_VALUES, Certification, DeviceInfo, Envelope, QuotaValues
from collector.api.signing import Signer
from collector.config import REGIONS, ConfigError, EcoflowSection, describe_errors

log = structlog.get_logger("collector.api")

DEFAULT_API_URL: Final = REGIONS["europe"]
CERTIFICATION_PATH: Final = "/iot-open/sign/certification"
DEVICE_LIST_PATH: Final = "/iot-open/sign/device/list"
QUOTA_ALL_PATH: Final = "/iot-open/sign/device/quota/all"
QUOTA_PATH: Final = "/iot-open/sign/device/quota"
JSON_CONTENT_TYPE: Final = "application/json;charset=UTF-8"
RETRY_STATUSES: Final = frozenset({429, 500, 502, 503, 504})

_DEVICE_LIST: TypeAdapter[list[DeviceInfo]] = TypeAdapter(list[DeviceInfo])


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per call: how many attempts and how long to wait between them (full jitter)."""

    max_attempts: int = 4  # the first try included
    base_delay_s: float = 0.5  # retry n waits uniform(0, min(max_delay_s, base_delay_s * 2**n))
    max_delay_s: float = 8.0  # also the longest Retry-After honoured; longer ones end the call

    def delay(self, retry: int, unit_random: float) -> float:
        return unit_random * min(self.max_delay_s, self.base_delay_s * 2.0**retry)


class RequestBudget:
    """Process-wide retry budget and circuit breaker, shared by every client (thread-safe).

    - token bucket: at most `retries_per_minute` retries per minute (bursts up to that many);
    - circuit: `failures_to_open` failed attempts in a row open it; while open every request fails
      fast with RetryBudgetExhausted; after `cooldown_s` one probe request may go, and its result
      closes the circuit or opens it for another cool-down.
    """

    def __init__(
        self,
        retries_per_minute: int = 20,
        failures_to_open: int = 8,
        cooldown_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.retries_per_minute = retries_per_minute
        self.failures_to_open = failures_to_open
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens = float(retries_per_minute)
        self._refilled_at = clock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._last_failure = ""

    def admit(self) -> None:
        """Before each attempt: RetryBudgetExhausted while the circuit is open (or a probe is out)."""
        with self._lock:
            if self._opened_at is None:
                return
            wait = self._opened_at + self.cooldown_s - self._clock()
            if wait <= 0 and not self._probing:
                self._probing = True
                return
            ahead = f"next try in {wait:.0f} s" if wait > 0 else "a probe request is deciding"
            message = (
                f"EcoFlow API failing fast after {self._failures} failed requests in a row ({ahead}); "
                f"last failure: {self._last_failure}"
            )
        raise RetryBudgetExhausted(message)

    def take_retry(self) -> bool:
        """One retry token, if the bucket has one."""
        with self._lock:
            now = self._clock()
            rate = self.retries_per_minute / 60.0
            self._tokens = min(
                float(self.retries_per_minute), self._tokens + (now - self._refilled_at) * rate
            )
            self._refilled_at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def succeeded(self) -> None:
        with self._lock:
            was_open, failures = self._opened_at is not None, self._failures
            self._failures = 0
            self._opened_at = None
            self._probing = False
        if was_open:
            log.info("api.circuit_closed", failures=failures)

    def failed(self, reason: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_failure = reason
            if self._probing or self._failures >= self.failures_to_open:
                # one warning when it opens (and `api.circuit_closed` when it closes); a failed probe
                # keeps it open, at debug
                if self._opened_at is None or self._probing:
                    (log.warning if self._opened_at is None else log.debug)(
                        "api.circuit_open", failures=self._failures, cooldown_s=self.cooldown_s, reason=reason
                    )
                self._opened_at = self._clock()
                self._probing = False

    @property
    def is_open(self) -> bool:
        with self._lock:
            return self._opened_at is not None


DEFAULT_BUDGET: Final = RequestBudget()
"""The one budget every client uses unless a test passes its own."""


@dataclass(frozen=True, slots=True)
class PreparedRequest:
    """A signed request, ready to send (or to print for `--dry-run`: it holds no secret key)."""

    method: str
    path: str
    url: str
    headers: dict[str, str]
    body: bytes | None

    def describe(self) -> dict[str, Any]:
        body = json.loads(self.body) if self.body is not None else None
        return {"method": self.method, "url": self.url, "headers": dict(self.headers), "body": body}


class _Retryable(Exception):
    """One failed attempt that a later attempt may get past."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date: rare from API gateways; the jittered backoff applies


class EcoflowClient:
    """Signed calls to the Open API; one instance per process is enough (it is thread-safe)."""

    def __init__(
        self,
        api_url: str = DEFAULT_API_URL,
        access_key: str = "",
        secret_key: str = "",
        timeout_s: float = 10.0,
        *,
        signer: Signer | None = None,
        clock_ms: Callable[[], int] | None = None,
        retry: RetryPolicy | None = None,
        budget: RequestBudget | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        unit_random: Callable[[], float] = random.random,
    ) -> None:
        if signer is None:
            if not access_key or not secret_key:
                raise ValueError("EcoflowClient needs access_key and secret_key (or a signer)")
            signer = Signer(access_key, secret_key)
            if clock_ms is not None:
                signer.clock_ms = clock_ms
        self.api_url = api_url.rstrip("/")
        self.timeout_s = timeout_s
        self.retry = retry or RetryPolicy()
        self._signer = signer
        self.budget = budget or DEFAULT_BUDGET
        self._sleep = sleep
        self._monotonic = monotonic
        self._unit_random = unit_random
        self._read_denied: dict[str, tuple[str, str | None]] = {}  # sn -> the 1006 answer
        # maxsize: the daemon polls from a few threads at once; each keeps its connection alive
        self._pool = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=timeout_s), maxsize=8)

    @classmethod
    def from_settings(cls, section: EcoflowSection, **kwargs: Any) -> Self:
        """A client for the `[ecoflow]` config section; ConfigError names the keys when any is missing."""
        access_key = section.access_key.get_secret_value() if section.access_key else ""
        secret_key = section.secret_key.get_secret_value() if section.secret_key else ""
        if not access_key or not secret_key:  # an empty value is as good as none
            missing = [
                name for name, value in (("access_key", access_key), ("secret_key", secret_key)) if not value
            ]
            envs = " and ".join(f"ECOFLOW_COLLECTOR_ECOFLOW__{name.upper()}" for name in missing)
            raise ConfigError(
                f"no EcoFlow {' and '.join(missing)}: set [ecoflow] {' and '.join(missing)} in the config "
                f"file or the environment variable{'s' if len(missing) > 1 else ''} {envs} "
                "(keys from the EcoFlow developer portal)"
            )
        return cls(section.api_url, access_key, secret_key, section.timeout_s, **kwargs)

    # --- endpoints -----------------------------------------------------------------------------

    def certification(self) -> Certification:
        data = self._call("GET", CERTIFICATION_PATH).data
        try:
            return Certification.model_validate(data)
        except ValidationError as exc:
            raise ResponseError(
                f"{CERTIFICATION_PATH}: unexpected data: {describe_errors(exc, 'data')}"
            ) from None

    def device_list(self) -> list[DeviceInfo]:
        data = self._call("GET", DEVICE_LIST_PATH).data
        try:
            return _DEVICE_LIST.validate_python([] if data is None else data)
        except ValidationError as exc:
            raise ResponseError(
                f"{DEVICE_LIST_PATH}: unexpected data: {describe_errors(exc, 'data')}"
            ) from None

    def quota_all(self, sn: str) -> QuotaValues:
        """Every quota of a device; `{}` when the cloud answers without data."""
        self._check_readable(sn)
        return self._quota_data(QUOTA_ALL_PATH, self._call("GET", QUOTA_ALL_PATH, query={"sn": sn}, sn=sn))

    def quota_get(
        self, sn: str, quotas: list[str] | tuple[str, ...], extra_params: Mapping[str, Any] | None = None
    ) -> QuotaValues:
        """The named quotas; `extra_params` go before `quotas` (Delta Pro wants `cmdSet`/`id`)."""
        self._check_readable(sn)
        body = {"sn": sn, "params": {**(extra_params or {}), "quotas": list(quotas)}}
        return self._quota_data(QUOTA_PATH, self._call("POST", QUOTA_PATH, body=body, sn=sn))

    def quota_set(self, sn: str, body: Mapping[str, Any]) -> None:
        """Send a set command (body as built by `collector.api.commands`); returns when accepted."""
        if body.get("sn") != sn:
            raise ValueError(f"set body is for {body.get('sn')!r}, not {sn!r}")
        self._call("PUT", QUOTA_PATH, body=body, sn=sn)

    # --- plumbing ------------------------------------------------------------------------------

    def prepare(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
    ) -> PreparedRequest:
        """Sign a request: fresh nonce and timestamp each time (so every retry is signed anew)."""
        url = self.api_url + path
        if body is not None:
            headers = {**self._signer.headers(body), "Content-Type": JSON_CONTENT_TYPE}
            # compact, and in the order it was given; the signature sorts keys by itself
            data = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
            return PreparedRequest(method, path, url, headers, data)
        params = dict(query or {})
        if params:
            url += "?" + urlencode(params)
        return PreparedRequest(method, path, url, self._signer.headers(params), None)

    def _check_readable(self, sn: str) -> None:
        denied = self._read_denied.get(sn)
        if denied is not None:
            raise DeviceReadDenied("1006", *denied, sn=sn)

    def _quota_data(self, path: str, envelope: Envelope) -> QuotaValues:
        try:
            return {} if envelope.data is None else QUOTA_VALUES.validate_python(envelope.data)
        except ValidationError:
            kind = type(envelope.data).__name__
            raise ResponseError(f"{path}: data is a {kind}, expected an object of quotas") from None

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: Mapping[str, Any] | None = None,
        sn: str | None = None,
    ) -> Envelope:
        retry = 0
        while True:
            self.budget.admit()
            request = self.prepare(method, path, query=query, body=body)
            try:
                envelope = self._attempt(request, retry)
            except _Retryable as failure:
                self.budget.failed(f"{method} {path}: {failure.reason}")
                retry += 1
                delay = self._delay(retry, failure, method, path)
                self._sleep(delay)
                continue
            except ResponseError:
                self.budget.succeeded()  # it answered: the cloud is reachable
                raise
            except BaseException as exc:
                # every admitted attempt reports back, or a probe would hold the circuit forever
                self.budget.failed(f"{method} {path}: {exc}")
                raise
            self.budget.succeeded()
            if envelope.ok:
                return envelope
            error = code_error(
                envelope.code, envelope.message, envelope.trace_id, api_url=self.api_url, sn=sn
            )
            if isinstance(error, DeviceReadDenied) and sn is not None:
                self._read_denied[sn] = (envelope.message, envelope.trace_id)
            raise error

    def _delay(self, retry: int, failure: _Retryable, method: str, path: str) -> float:
        """The wait before retry number `retry`, or TransportError when no retry is allowed."""
        what = f"{method} {path}: {failure.reason}"
        if retry >= self.retry.max_attempts:
            raise TransportError(f"EcoFlow API {what} (gave up after {retry} attempts)")
        if failure.retry_after_s is not None and failure.retry_after_s > self.retry.max_delay_s:
            raise TransportError(f"EcoFlow API {what}; asked to retry after {failure.retry_after_s:.0f} s")
        if not self.budget.take_retry():
            raise RetryBudgetExhausted(
                f"EcoFlow API {what}; no retry left in the process budget "
                f"({self.budget.retries_per_minute} retries per minute)"
            )
        delay = self.retry.delay(retry - 1, self._unit_random())
        if failure.retry_after_s is not None:
            delay = max(delay, failure.retry_after_s)
        # per request, so at debug: a request that fails for good is logged by its caller, and a
        # cloud that keeps failing opens the circuit (one warning)
        log.debug("api.retry", method=method, path=path, reason=failure.reason, retry=retry, delay_s=delay)
        return delay

    def _attempt(self, request: PreparedRequest, retry: int) -> Envelope:
        started = self._monotonic()
        try:
            response = self._pool.request(
                request.method,
                request.url,
                body=request.body,
                headers=request.headers,
                redirect=False,
                preload_content=True,
            )
        except urllib3.exceptions.SSLError as exc:
            # a certificate problem does not pass by itself: do not retry it
            raise TransportError(f"EcoFlow API {request.method} {request.path}: TLS error: {exc}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        duration_ms = round((self._monotonic() - started) * 1000, 1)
        status = response.status
        fields = {
            "method": request.method,
            "path": request.path,
            "status": status,
            "duration_ms": duration_ms,
        }
        if status in RETRY_STATUSES:
            log.debug("api.request", **fields, retry=retry)
            raise _Retryable(f"HTTP {status}", _retry_after(response.headers.get("Retry-After")))
        envelope = _envelope(response.data)
        code = envelope.code if envelope else None
        # one line per call, at debug: an error answer reaches the caller, which logs what it means
        log.debug("api.request", **fields, code=code, retry=retry)
        what = f"EcoFlow API {request.method} {request.path}: HTTP {status}"
        if 200 <= status < 300:
            if envelope is None:
                raise ResponseError(f"{what}, not a JSON envelope")
            return envelope
        if envelope is not None and not envelope.ok:
            return envelope  # an API error that came with an HTTP error status: report its code
        # 3xx/4xx: retrying will not help; a wrong api_url is the usual cause
        raise TransportError(f"{what} (is api_url {self.api_url} right?)")

    def close(self) -> None:
        self._pool.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _envelope(data: bytes) -> Envelope | None:
    try:
        return Envelope.model_validate_json(data)
    except ValidationError:
        return None
