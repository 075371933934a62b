"""EcoFlow Open API request signing, exactly as EcoFlow documents it.

1. Flatten the parameters: nested objects as `a.b`, arrays as `ids[0]`, arrays of objects as
   `list[0].id`; JSON true/false/null are written `true`/`false`/`null`.
2. Sort by key (ASCII order) and join as `k=v&k=v`.
3. Append `accessKey=..&nonce=..&timestamp=..` (with no parameters, only that).
4. HMAC-SHA256 with the secret key, lower-case hex.
Headers: `accessKey`, `nonce`, `timestamp` (ms), `sign`. GET signs its query parameters,
POST/PUT sign their JSON body.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


def _text(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    return str(value)


def flatten_params(params: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The (key, text) pairs that are signed, before sorting."""
    pairs: list[tuple[str, str]] = []

    def walk(value: Any, key: str) -> None:
        if isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                walk(sub_value, f"{key}.{sub_key}" if key else str(sub_key))
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                walk(item, f"{key}[{index}]")
        else:
            pairs.append((key, _text(value)))

    walk(params, "")
    return pairs


def string_to_sign(params: Mapping[str, Any], access_key: str, nonce: str, timestamp: str) -> str:
    parts = [f"{k}={v}" for k, v in sorted(flatten_params(params), key=lambda pair: pair[0])]
    parts.append(f"accessKey={access_key}&nonce={nonce}&timestamp={timestamp}")
    return "&".join(parts)


def sign(params: Mapping[str, Any], access_key: str, secret_key: str, nonce: str, timestamp: str) -> str:
    message = string_to_sign(params, access_key, nonce, timestamp)
    return hmac.new(secret_key.encode(), message.encode(), hashlib.sha256).hexdigest()


def _wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _random_nonce() -> str:
    return str(100_000 + secrets.randbelow(900_000))


@dataclass(slots=True)
class Signer:
    """Adds the signature headers to a request; clock and nonce are injectable for tests."""

    access_key: str
    secret_key: str = field(repr=False)
    clock_ms: Callable[[], int] = _wall_clock_ms
    nonce: Callable[[], str] = _random_nonce

    def headers(self, params: Mapping[str, Any]) -> dict[str, str]:
        nonce = self.nonce()
        timestamp = str(self.clock_ms())
        return {
            "accessKey": self.access_key,
            "nonce": nonce,
            "timestamp": timestamp,
            "sign": sign(params, self.access_key, self.secret_key, nonce, timestamp),
        }
