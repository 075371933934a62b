"""The local cloud's fault injection against clients that give up: a delayed answer that reaches a
client which already timed out (and reset its connection) is counted, never a traceback on stderr."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from collector.simulator.server import LocalCloud


def _abandoned_request(url: str, wait_s: float) -> None:
    """A GET whose client waits `wait_s`, then resets the connection (SO_LINGER 0: an RST, as a
    client that timed out and dropped its pooled connection)."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5)
    try:
        sock.sendall(b"GET /iot-open/sign/device/list HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(wait_s)
        with pytest.raises(TimeoutError):
            sock.recv(1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def test_a_delayed_answer_to_a_client_that_gave_up_is_counted_quietly(
    capfd: pytest.CaptureFixture[str],
) -> None:
    with LocalCloud("powerstream=1", publish_rate=None) as cloud:
        server = cloud.cloud
        server.faults.delay_next(3, seconds=0.4)
        for _ in range(3):
            _abandoned_request(cloud.url, wait_s=0.1)
        deadline = time.monotonic() + 10
        while server.clients_gone < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.clients_gone == 3
        assert len(server.requests) == 3  # still recorded, as answered
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenPipe" not in err and "ConnectionReset" not in err, err
