"""The MQTT login of one account: `[mqtt]` overrides merged over the certification endpoint's answer.

Each of host, port, user name, password and TLS may be set in the config; what is not set comes from
`/iot-open/sign/certification` (which is not even asked when the config gives host, user name and
password). Used by the MQTT source (at start and after "Not authorized") and by `check`.
"""

from __future__ import annotations

from collections.abc import Callable

from collector.api.models import Certification
from collector.config import MqttSection
from collector.sources.mqtt import MqttCredentials


def mqtt_credentials(overrides: MqttSection, certification: Callable[[], Certification]) -> MqttCredentials:
    """The credentials to log in with; `certification` (an API call) only when the config does
    not give them all. Raises what `certification` raises (ApiError)."""
    m = overrides
    if m.host and m.username and m.password:
        tls = m.tls if m.tls is not None else True
        return MqttCredentials(
            m.host, m.port or 8883, m.username, m.password.get_secret_value(), tls, m.ca_file
        )
    cert = certification()
    return MqttCredentials(
        host=m.host or cert.url,
        port=m.port or cert.port_number,
        username=m.username or cert.certificateAccount,
        password=m.password.get_secret_value() if m.password else cert.certificatePassword.get_secret_value(),
        tls=m.tls if m.tls is not None else cert.protocol != "mqtt",
        ca_file=m.ca_file,
    )


def credentials_provider(
    overrides: MqttSection, certification: Callable[[], Certification]
) -> Callable[[], MqttCredentials]:
    """A provider for :class:`~collector.sources.mqtt.MqttSource`: fresh credentials on each call."""
    return lambda: mqtt_credentials(overrides, certification)
