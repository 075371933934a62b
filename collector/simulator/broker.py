"""The MQTT broker the local cloud hands out, and its accounts' users on a testbed Mosquitto."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collector.simulator.accounts import Account
    from collector.testbed import MosquittoServer


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """Where the simulated devices publish, and what `/certification` tells clients."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | None = None  # CA of the broker's certificate (TLS); None = system CAs

    @property
    def protocol(self) -> str:
        return "mqtts" if self.tls else "mqtt"

    @classmethod
    def from_mosquitto(cls, server: MosquittoServer, *, tls: bool = True) -> BrokerInfo:
        if tls:
            return cls(server.host, server.tls_port, True, server.ca_file)
        return cls(server.host, server.port)

    def certification(self, account: Account) -> dict[str, str]:
        """The `data` of `/iot-open/sign/certification` (the port is a string, as EcoFlow sends it)."""
        return {
            "certificateAccount": account.certificate_account,
            "certificatePassword": account.certificate_password,
            "url": self.host,
            "port": str(self.port),
            "protocol": self.protocol,
        }


def register_users(server: MosquittoServer, accounts: Iterable[Account]) -> None:
    """Make `server` accept each account's MQTT user (each change reloads the broker once)."""
    for account in accounts:
        if server.users.get(account.certificate_account) != account.certificate_password:
            server.add_user(account.certificate_account, account.certificate_password)
