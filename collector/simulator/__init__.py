"""A faithful local EcoFlow cloud, for tests, the demo and benchmarks.

- :mod:`~collector.simulator.cloud`: the signed HTTP Open API (`CloudServer`), checked and
  answered like EcoFlow's, with fault injection;
- :mod:`~collector.simulator.devices`: the simulated products (physics in SI over an injectable
  clock; :mod:`~collector.simulator.station` for the power stations), sent in the catalog's key
  space and units through :mod:`~collector.simulator.codec`;
- :mod:`~collector.simulator.publisher`: the devices' MQTT side (reports, status, `/set` replies);
- :mod:`~collector.simulator.accounts`, :mod:`~collector.simulator.broker`: keys, MQTT users;
- :mod:`~collector.simulator.server`: `LocalCloud`, everything wired together.
"""

from collector.simulator.accounts import Account, AccountBook
from collector.simulator.broker import BrokerInfo, register_users
from collector.simulator.clock import ManualClock, ScaledClock, wall_clock
from collector.simulator.cloud import CloudServer, RequestRecord
from collector.simulator.devices import DeltaPro, DeviceSpec, PowerStream, SimDevice, Site, make_devices
from collector.simulator.publisher import Publisher, PublisherError, PublishRecord
from collector.simulator.server import LocalCloud

__all__ = [
    "Account",
    "AccountBook",
    "BrokerInfo",
    "CloudServer",
    "DeltaPro",
    "DeviceSpec",
    "LocalCloud",
    "ManualClock",
    "PowerStream",
    "PublishRecord",
    "Publisher",
    "PublisherError",
    "RequestRecord",
    "ScaledClock",
    "SimDevice",
    "Site",
    "make_devices",
    "register_users",
    "wall_clock",
]
