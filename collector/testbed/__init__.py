"""Managed real servers on free 127.0.0.1 ports, for tests, benchmarks and the ``demo`` command.

- :class:`InfluxServer`: InfluxDB 1.6.7 behind an nginx proxy serving ``/api/v2/write``, ``/health``.
- :class:`MosquittoServer`: Mosquitto 2.0 with a plain and a TLS listener, passwords and an ACL.
- :func:`free_port`: a free TCP port on 127.0.0.1.

Every process is tracked by its PID, logs to files in the server's work directory, and is
stopped on ``stop()``, on leaving a ``with`` block and at interpreter exit.
"""

from collector.testbed._process import INSTALL_HINT, ServerNotInstalledError, TestbedError
from collector.testbed.influxdb import InfluxQueryError, InfluxServer
from collector.testbed.mosquitto import DEFAULT_ACL_PATTERNS, MosquittoServer
from collector.testbed.ports import free_port, free_ports
from collector.testbed.tls import TlsFiles, make_tls_files

__all__ = [
    "DEFAULT_ACL_PATTERNS",
    "INSTALL_HINT",
    "InfluxQueryError",
    "InfluxServer",
    "MosquittoServer",
    "ServerNotInstalledError",
    "TestbedError",
    "TlsFiles",
    "free_port",
    "free_ports",
    "make_tls_files",
]
