"""Developer accounts of the local cloud: API keys, region, MQTT credentials and devices.

Like EcoFlow's: an access key / secret key pair belongs to one region's cloud (a key used on
another region's API is "accessKey is invalid"), and each account has one MQTT user
(`certificateAccount` = `open-` + 32 hex digits, `certificatePassword` = 32 hex digits) whose
topics are `/open/{certificateAccount}/{sn}/...`.
"""

from __future__ import annotations

import random
import string
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from collector.simulator.devices import SimDevice

_KEY_ALPHABET = string.ascii_letters + string.digits


def _token(rng: random.Random, length: int, alphabet: str = _KEY_ALPHABET) -> str:
    return "".join(rng.choice(alphabet) for _ in range(length))


@dataclass(eq=False)
class Account:
    access_key: str
    secret_key: str = field(repr=False)
    certificate_account: str
    certificate_password: str = field(repr=False)
    region: str = "europe"
    devices: dict[str, SimDevice] = field(default_factory=dict)

    @classmethod
    def generate(
        cls,
        rng: random.Random,
        region: str = "europe",
        *,
        access_key: str | None = None,
        secret_key: str | None = None,
        certificate_account: str | None = None,
        certificate_password: str | None = None,
    ) -> Account:
        """An account with made-up credentials (deterministic for a seeded `rng`) unless given."""
        return cls(
            access_key=access_key or _token(rng, 32),
            secret_key=secret_key or _token(rng, 32),
            certificate_account=certificate_account or "open-" + _token(rng, 32, "0123456789abcdef"),
            certificate_password=certificate_password or _token(rng, 32, "0123456789abcdef"),
            region=region,
        )

    def add_device(self, device: SimDevice) -> None:
        self.devices[device.sn] = device


class AccountBook:
    """Every account of the local cloud, found by access key or by device serial."""

    def __init__(self) -> None:
        self._by_key: dict[str, Account] = {}
        self._by_sn: dict[str, Account] = {}
        self._lock = threading.Lock()

    def add(self, account: Account) -> Account:
        with self._lock:
            if account.access_key in self._by_key:
                raise ValueError(f"access key {account.access_key[:6]}... is already in use")
            taken = [sn for sn in account.devices if sn in self._by_sn]
            if taken:
                raise ValueError(f"device {taken[0]} already belongs to another account")
            self._by_key[account.access_key] = account
            for sn in account.devices:
                self._by_sn[sn] = account
        return account

    def bind(self, account: Account, device: SimDevice) -> None:
        """A device newly bound to an account (it shows in that account's device list)."""
        with self._lock:
            if device.sn in self._by_sn:
                raise ValueError(f"device {device.sn} already belongs to an account")
            account.add_device(device)
            self._by_sn[device.sn] = account

    def by_access_key(self, access_key: str) -> Account | None:
        return self._by_key.get(access_key)

    def owner(self, sn: str) -> Account | None:
        return self._by_sn.get(sn)

    def __iter__(self) -> Iterator[Account]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    def devices(self) -> list[SimDevice]:
        return [device for account in self for device in account.devices.values()]
