"""`LocalCloud`: accounts, simulated devices, the HTTP API and the MQTT publisher, wired together.

    with MosquittoServer() as broker, LocalCloud("powerstream=1,delta_pro=1", mosquitto=broker) as cloud:
        cloud.url                    # base URL for the collector's `ecoflow.api_url`
        cloud.account.access_key     # ... and its keys
        cloud.set_online(sn, False)  # a /status message goes out

Give a `broker` (host/port/TLS) to publish to any broker, or a testbed `mosquitto` to have each
account's MQTT user registered there first. Without either there is no MQTT side, and the
certification endpoint answers an error.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import structlog

from collector.catalog import Catalog, default_catalog
from collector.simulator.accounts import Account, AccountBook
from collector.simulator.broker import BrokerInfo, register_users
from collector.simulator.clock import Clock, wall_clock
from collector.simulator.cloud import CloudServer
from collector.simulator.devices import SITES, DeviceSpec, SimDevice, Site, make_devices
from collector.simulator.publisher import Publisher

if TYPE_CHECKING:
    from collector.testbed import MosquittoServer

log = structlog.get_logger("collector.simulator")


class LocalCloud:
    """A local EcoFlow cloud for tests, the demo and benchmarks (a context manager).

    `devices` (e.g. `"powerstream=1,delta_pro=1"`) is created for each of `accounts` accounts.
    The first account uses `access_key`/`secret_key`/`certificate_account`/`certificate_password`
    when given; everything else is drawn from `seed`. `publish_rate` is the background report
    rate in messages per second over all devices (None: no background publishing; drive
    :attr:`publisher` yourself).
    """

    def __init__(
        self,
        devices: str | Iterable[DeviceSpec] = "powerstream=1,delta_pro=1",
        *,
        accounts: int = 1,
        region: str = "europe",
        clock: Clock = wall_clock,
        seed: int = 0,
        site: Site | None = None,
        broker: BrokerInfo | None = None,
        mosquitto: MosquittoServer | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        certificate_account: str | None = None,
        certificate_password: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        publish_rate: float | None = 1.0,
        full_every: int = 20,
        incremental_keys: int = 6,
        new_shape_share: float = 0.3,
        timestamp_window_s: float = 300.0,
        catalog: Catalog | None = None,
    ) -> None:
        if accounts < 1:
            raise ValueError("a local cloud needs at least one account")
        self.region = region
        self.clock = clock
        self.site = site or SITES.get(region, SITES["europe"])
        self.catalog = catalog or default_catalog()
        self.mosquitto = mosquitto
        self.publish_rate = publish_rate
        self._rng = random.Random(seed)
        specs = list(devices) if not isinstance(devices, str) else devices
        self.accounts = AccountBook()
        for index in range(accounts):
            given = index == 0
            account = Account.generate(
                self._rng,
                region,
                access_key=access_key if given else None,
                secret_key=secret_key if given else None,
                certificate_account=certificate_account if given else None,
                certificate_password=certificate_password if given else None,
            )
            for device in make_devices(
                specs, clock=clock, rng=self._rng, site=self.site, taken=self._taken, catalog=self.catalog
            ):
                account.add_device(device)
            self.accounts.add(account)
        if broker is None and mosquitto is not None:
            broker = BrokerInfo.from_mosquitto(mosquitto)
        self.broker = broker
        self.cloud = CloudServer(
            self.accounts,
            region=region,
            broker=broker,
            catalog=self.catalog,
            host=host,
            port=port,
            timestamp_window_s=timestamp_window_s,
        )
        self.publisher = (
            Publisher(
                self.accounts,
                broker,
                catalog=self.catalog,
                clock=clock,
                full_every=full_every,
                incremental_keys=incremental_keys,
                new_shape_share=new_shape_share,
                seed=seed,
            )
            if broker is not None
            else None
        )
        self._started = False

    def _taken(self, sn: str) -> bool:
        return self.accounts.owner(sn) is not None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        if self.mosquitto is not None:
            register_users(self.mosquitto, self.accounts)
        self.cloud.start()
        try:
            if self.publisher is not None:
                self.publisher.connect()
                if self.publish_rate is not None:
                    self.publisher.start(rate=self.publish_rate)
        except BaseException:
            self.cloud.stop()
            raise
        self._started = True
        log.info(
            "simulator.started",
            url=self.url,
            region=self.region,
            accounts=len(self.accounts),
            devices=len(self.devices),
            broker=f"{self.broker.host}:{self.broker.port}" if self.broker else None,
        )

    def stop(self) -> None:
        if self.publisher is not None:
            self.publisher.disconnect()
        self.cloud.stop()
        self._started = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    @property
    def url(self) -> str:
        return self.cloud.url

    @property
    def account(self) -> Account:
        """The first account (the one a single-account test or demo uses)."""
        return next(iter(self.accounts))

    @property
    def devices(self) -> list[SimDevice]:
        return self.accounts.devices()

    def device(self, sn: str) -> SimDevice:
        account = self.accounts.owner(sn)
        if account is None:
            raise KeyError(sn)
        return account.devices[sn]

    def add_account(self, region: str | None = None, devices: str | Iterable[DeviceSpec] = ()) -> Account:
        """Another account (e.g. one of another region, to check that its keys are refused here)."""
        account = Account.generate(self._rng, region or self.region)
        for device in make_devices(
            devices, clock=self.clock, rng=self._rng, site=self.site, taken=self._taken, catalog=self.catalog
        ):
            account.add_device(device)
        self.accounts.add(account)
        if self.mosquitto is not None:
            register_users(self.mosquitto, [account])
        return account

    def bind_device(self, devices: str, account: Account | None = None) -> list[SimDevice]:
        """New devices (e.g. `"delta_pro=1"`) bound to an account while the cloud runs, as when a
        user adds one in the app: they show in the device list and publish from then on."""
        owner = account or self.account
        added = make_devices(
            devices, clock=self.clock, rng=self._rng, site=self.site, taken=self._taken, catalog=self.catalog
        )
        for device in added:
            self.accounts.bind(owner, device)
        return added

    def move_broker(self, broker: BrokerInfo, mosquitto: MosquittoServer | None = None) -> None:
        """EcoFlow moves the accounts to another broker: `/certification` names it from now on,
        and the simulated devices publish there (`mosquitto`, if given, gets the accounts' users)."""
        if mosquitto is not None:
            register_users(mosquitto, self.accounts)
            self.mosquitto = mosquitto
        self.broker = broker
        self.cloud.broker = broker
        if self.publisher is not None:
            self.publisher.disconnect()
            self.publisher.broker = broker
            if self._started:
                self.publisher.connect()
        log.info("simulator.broker_moved", broker=f"{broker.host}:{broker.port}")

    def set_online(self, sn: str, online: bool) -> None:
        """Take a device on or off line; a change sends its `/status` message."""
        device = self.device(sn)
        if device.online == online:
            return
        device.online = online
        if self.publisher is not None and self._started:
            self.publisher.publish_status(device)

    def collector_settings(self) -> dict[str, Any]:
        """The collector configuration (as TOML tables) that points at this cloud's first account."""
        account = self.account
        settings: dict[str, Any] = {
            "ecoflow": {
                "api_url": self.url,
                "access_key": account.access_key,
                "secret_key": account.secret_key,
            },
            "devices": [
                {"sn": d.sn, "name": d.device_name, "product": d.product_slug}
                for d in account.devices.values()
            ],
        }
        if self.broker is not None:
            mqtt: dict[str, Any] = {"tls": self.broker.tls}
            if self.broker.ca_file is not None:
                mqtt["ca_file"] = str(self.broker.ca_file)
            settings["mqtt"] = mqtt
        return settings
