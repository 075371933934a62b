"""MQTT source: EcoFlow's broker pushes `/open/{account}/{sn}/quota|status|set_reply`.

paho-mqtt 2.x (callback API v2) runs its network loop in its own thread and reconnects with a capped
exponential backoff. Credentials come from a provider (the certification endpoint, or `[mqtt]`
overrides); "Not authorized" makes the source ask the provider again, with its own backoff, before
the next attempt. A watchdog (`check_watchdog`, called by the daemon's scheduler) rebuilds the
session when nothing arrived for a long time although devices are online.

The subscription is QoS 0 (:data:`SUBSCRIBE_QOS`, with the argument). On the paho releases it knows,
the source reads the broker connection itself (:class:`_BufferedSocket`, :class:`_Client`): bulk
reads, every whole packet cut out of them at once, a PUBLISH handed over as ``(topic, payload)``
bytes, and a 5 ms pause after a small read that carried reports (read coalescing); the CPU this
saves per report is in docs/benchmarks.md ("Fleets").
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import paho.mqtt
import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.exception import MalformedPacket
from paho.mqtt.reasoncodes import ReasonCode

from collector.decoding import TopicKind

log = structlog.get_logger("collector.mqtt")

_AUTH_FAILURES = {"Not authorized", "Bad user name or password"}
_SUBSCRIBE_CHUNK = 200  # topics per SUBSCRIBE packet

# The subscription's QoS: 0. EcoFlow's sessions are clean sessions (and must be: a persistent
# session would pile up messages on EcoFlow's broker for an id it may blacklist), so QoS 1 would
# buy no redelivery: a broker drops a clean session's unacknowledged messages with the connection,
# and within a connection TCP already delivers every byte in order. Nor would it make anything
# more durable here: the collector acknowledges a report when it is queued for the writer, not
# when it is stored, so a crash loses the same reports either way (at most `flush_interval_s` of
# them; docs/benchmarks.md, "Soak"). What QoS 1 costs: a PUBACK built, queued and sent (a TLS
# record) per report, about a fifth of the collector's CPU per report before this change, and the
# broker's in-flight window (Mosquitto: 20 messages per client) on the way to the collector. What a
# report's own QoS is when devices publish (between device and broker) is EcoFlow's business and
# unchanged; a subscriber gets min(its QoS, the publisher's). Both QoS drop messages a client does
# not read fast enough once the broker's queue for it is full.
SUBSCRIBE_QOS: Final = 0
_TOPIC_CACHE_MAX = 100_000  # topic bytes -> (sn, kind): 3 topics per device


def release_sockets(client: mqtt.Client) -> None:
    """Close the sockets a stopped paho client still holds (call after ``loop_stop`` returned).
    paho closes its loop's wake-up socket pair only in ``Client.__del__``, and where the client is
    part of a reference cycle the garbage collector may finalize those sockets first: an unclosed
    socket's ResourceWarning each. ``_reset_sockets`` is paho's own method for it (2.x)."""
    reset = getattr(client, "_reset_sockets", None)
    if callable(reset):
        reset()


@dataclass(frozen=True)
class MqttCredentials:
    host: str
    port: int
    username: str  # EcoFlow's certificateAccount: also the second topic level
    password: str
    tls: bool
    ca_file: Path | None = None

    def __repr__(self) -> str:  # never show the password
        where = f"host={self.host!r}, port={self.port}, username={self.username!r}, tls={self.tls}"
        return f"MqttCredentials({where})"


MessageHandler = Callable[[str, TopicKind, bytes], None]  # (sn, topic kind, payload)


def _endpoint(credentials: MqttCredentials) -> tuple[str, int, bool, Path | None]:
    return credentials.host, credentials.port, credentials.tls, credentials.ca_file


def topic_filters(account: str, sn: str) -> list[str]:
    return [f"/open/{account}/{sn}/{kind.value}" for kind in TopicKind]


def parse_topic(topic: str) -> tuple[str, TopicKind] | None:
    """`/open/{account}/{sn}/{kind}` -> (sn, kind); None for any other topic."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != "" or parts[1] != "open":
        return None
    try:
        return parts[3], TopicKind(parts[4])
    except ValueError:
        return None


PAHO_VERSION: str = paho.mqtt.__version__
# paho-mqtt releases known to have what _Client builds on: the private Client._create_socket (the
# one place a connection's socket is made) and Client._sock (the socket the loop reads from)
_BUFFERED_SOCKET_PAHO: Final = frozenset({(2, 1), (2, 2)})


def buffered_socket_supported(version: str | None = None) -> bool:
    """Whether :class:`_Client` may wrap paho's socket: the paho version (default: the installed
    one) is one it was made for, and the hooks are there."""
    parts = (version or PAHO_VERSION).split(".")
    try:
        release = (int(parts[0]), int(parts[1]))
    except (ValueError, IndexError):
        return False
    return release in _BUFFERED_SOCKET_PAHO and callable(getattr(mqtt.Client, "_create_socket", None))


_READ_CHUNK = 65536
# Read coalescing: after a read of less than this that carried reports, paho's thread sleeps
# _COALESCE_S before it looks at the socket again, so the reports arriving meanwhile are read,
# parsed and handled in one pass. Without it, reports trickling in one by one (devices publish
# independently) cost a select(), a TLS read and a loop pass each: a third of the collector's CPU
# at 3,000 reports/s. It adds at most _COALESCE_S to a report's way into InfluxDB, next to the
# writer's flush interval of a second; a full read (a backlog) is handled without a pause.
_COALESCE_BELOW = 32768
_COALESCE_S = 0.005
_WRITE_GATHER = 16384  # small writes are held back until paho's loop would wait, or this many bytes


class _BufferedSocket:
    """The broker connection as paho sees it: reads in bulk, small writes gathered.

    paho reads each packet with three ``recv`` calls (command byte, length, body) and handles one
    packet per pass of its network loop, with a ``select`` per pass; it sends each PUBACK with its
    own ``send``. Over TLS every one of those is a TLS record read or written, so a QoS 1 report
    cost ~70 us of paho's time here. This wrapper reads everything the connection holds at once
    (all pending TLS records, up to 64 KiB) and serves paho's small reads from memory, and keeps
    small writes until paho's loop is about to wait for the network: paho asks ``pending()``
    once per pass before its ``select``, and when nothing is left to read that flushes them.
    Bytes go out in the order paho wrote them. With :class:`_Client` a burst of reports costs one
    read and one write (~30 us of paho's time a report).
    """

    __slots__ = ("_buffer", "_out", "_position", "_sock", "_tls")

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._tls = isinstance(sock, ssl.SSLSocket)
        self._buffer = b""
        self._position = 0
        self._out = bytearray()

    def buffered(self) -> int:
        return len(self._buffer) - self._position

    def recv(self, size: int) -> bytes:
        buffer, position = self._buffer, self._position
        if position >= len(buffer):
            buffer = self._fill()
            if not buffer:
                return b""
            position = 0
        end = min(position + size, len(buffer))
        self._position = end
        return buffer[position:end]

    def take(self) -> bytes:
        """Everything not yet read: what is buffered, else whatever the connection holds (raises
        as the socket does when it holds nothing). For :class:`_Client`'s own packet parser."""
        buffer, position = self._buffer, self._position
        if position < len(buffer):
            self._buffer, self._position = b"", 0
            return buffer[position:] if position else buffer
        data = self._fill()
        self._buffer, self._position = b"", 0
        return data

    def _fill(self) -> bytes:
        """Whatever the connection holds (raises as the socket does when it holds nothing)."""
        data: bytes = self._sock.recv(_READ_CHUNK)
        if self._tls and data:  # one TLS record per recv: take the others that are there too
            chunks, size = [data], len(data)
            while size < _READ_CHUNK:
                try:
                    more = self._sock.recv(_READ_CHUNK)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                except OSError:
                    break  # the next recv raises it again, once what was read is handled
                if not more:
                    break
                chunks.append(more)
                size += len(more)
            data = b"".join(chunks)
        self._buffer, self._position = data, 0
        return data

    def pending(self) -> int:
        """paho's probe before it waits in select: bytes readable without waiting. When there
        are none, the gathered writes go out now (paho's loop is about to wait)."""
        left = len(self._buffer) - self._position
        if left:
            return left
        if self._out and not self._flush():
            time.sleep(0.001)  # the send buffer is full: come back soon rather than spin
            return 1
        return int(self._sock.pending()) if self._tls else 0

    def _flush(self) -> bool:
        """Send what was gathered; True when all of it went."""
        try:
            sent = self._sock.send(self._out)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except OSError:
            self._out.clear()  # the connection is gone; paho learns it from its next read
            return True
        del self._out[:sent]
        return not self._out

    def send(self, data: bytes | bytearray) -> int:
        if not self._out and len(data) >= _WRITE_GATHER:
            return int(self._sock.send(data))
        self._out += data
        if len(self._out) >= _WRITE_GATHER:
            self._flush()
        return len(data)

    def close(self) -> None:
        if self._out:
            self._flush()
        self._sock.close()

    def shutdown(self, how: int) -> None:
        self._sock.shutdown(how)

    def fileno(self) -> int:
        return int(self._sock.fileno())

    def setblocking(self, flag: bool) -> None:
        self._sock.setblocking(flag)

    def settimeout(self, value: float | None) -> None:
        self._sock.settimeout(value)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


RawMessageHandler = Callable[[bytes, bytes], None]  # (topic, payload) of a PUBLISH, on paho's thread

_PUBLISH: Final = 0x30


def _pause(seconds: float) -> None:
    """Read coalescing's sleep (its own function, so that profiles can tell it from work)."""
    time.sleep(seconds)


class _Client(mqtt.Client):
    """paho's client on a :class:`_BufferedSocket`, with its own packet reader.

    paho handles one packet per ``loop_read``: three reads, a dict of parser state, and for a
    PUBLISH an :class:`MQTTMessage`, a debug-log call, a topic match against the filters of
    ``message_callback_add`` under a lock, and the ``on_message`` callback under another. Here
    ``loop_read`` takes everything the connection holds at once and cuts it into packets itself:
    a QoS 0/1 PUBLISH goes straight to :attr:`raw_message` as ``(topic, payload)`` bytes (and
    QoS 1 gets its PUBACK, as paho would send it); every other packet (CONNACK, SUBACK, PINGRESP,
    QoS 2 ...) is handed to paho's own handler exactly as paho's reader would. An incomplete packet
    at the end waits for the next read. Without :attr:`raw_message` (or on MQTT 5) paho reads.
    """

    raw_message: RawMessageHandler | None = None
    coalesce_s: float = _COALESCE_S
    _partial: bytes = b""

    def _create_socket(self) -> Any:
        self._partial = b""  # a new connection starts on a packet boundary
        return _BufferedSocket(super()._create_socket())

    def _packet_read(self) -> MQTTErrorCode:
        sock = getattr(self, "_sock", None)
        if (
            self.raw_message is not None
            and isinstance(sock, _BufferedSocket)
            and self._in_packet["command"] == 0
            and self._protocol != mqtt.MQTTv5
        ):
            return self._read_packets(sock)
        return super()._packet_read()

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        sock = getattr(self, "_sock", None)
        rc = super().loop_read(max_packets)
        passes = 0  # bounded, so keepalive and writes get their turn in a long burst
        while rc == mqtt.MQTT_ERR_SUCCESS and isinstance(sock, _BufferedSocket) and passes < 1000:
            if not sock.buffered() or getattr(self, "_sock", None) is not sock:
                break
            rc = super().loop_read(max_packets)
            passes += 1
        return rc

    def _read_packets(self, sock: _BufferedSocket) -> MQTTErrorCode:
        """paho's ``_packet_read`` (called by its ``loop_read``) for every whole packet held."""
        try:
            data = sock.take()
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return MQTTErrorCode.MQTT_ERR_AGAIN
        except OSError:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if not data:
            return MQTTErrorCode.MQTT_ERR_CONN_LOST
        if self._partial:
            data, self._partial = self._partial + data, b""
        with self._msgtime_mutex:
            self._last_bytes_received = mqtt.time_func()
        handler = self.raw_message
        assert handler is not None
        size = len(data)
        position = 0
        reports = False  # only a read that carried reports pauses (never one of CONNACK, SUBACK...)
        while position + 2 <= size:
            command = data[position]
            index = position + 1
            length = 0
            shift = 0
            while True:  # the remaining length: 1-4 bytes, 7 bits each
                if index >= size:
                    self._partial = data[position:]
                    return MQTTErrorCode.MQTT_ERR_SUCCESS
                byte = data[index]
                index += 1
                length |= (byte & 0x7F) << shift
                if not byte & 0x80:
                    break
                shift += 7
                if shift > 21:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
            end = index + length
            if end > size:
                break
            qos = (command >> 1) & 3
            if command & 0xF0 == _PUBLISH and qos < 2:
                if length < 2:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
                body = index + 2 + ((data[index] << 8) | data[index + 1])
                start = body + 2 if qos else body
                if start > end:
                    return MQTTErrorCode.MQTT_ERR_PROTOCOL
                handler(data[index + 2 : body], data[start:end])
                reports = True
                if qos:
                    rc = self._send_puback((data[body] << 8) | data[body + 1])
                    if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                        return rc
            else:
                rc = self._handle_by_paho(command, data[index:end])
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or getattr(self, "_sock", None) is not sock:
                    return rc
            position = end
        if position < size:
            self._partial = data[position:]
        if reports and size < _COALESCE_BELOW and self.coalesce_s > 0:
            _pause(self.coalesce_s)  # let the next reports arrive: one pass for all of them
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def _handle_by_paho(self, command: int, body: bytes) -> MQTTErrorCode:
        """One whole packet through paho's own handler, as its reader would have passed it."""
        packet = self._in_packet  # paho's fresh state (command 0): only what a whole packet sets
        packet["command"] = command
        packet["packet"] = bytearray(body)
        packet["pos"] = 0
        try:
            rc = self._packet_handle()
        except MalformedPacket:
            rc = MQTTErrorCode.MQTT_ERR_PROTOCOL
        finally:
            packet["command"] = 0
            packet["packet"] = bytearray()
            packet["pos"] = 0
        return rc


def tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """System CAs plus the configured one; certificate and host name verification stay on."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


class MqttSource:
    """The MQTT source of one account (a :class:`~collector.sources.Source`): delivers each message
    as ``on_message(sn, kind, payload)`` on paho's network thread."""

    name = "mqtt"

    def __init__(
        self,
        client_id: str,
        credentials: Callable[[], MqttCredentials],
        on_message: MessageHandler,
        clock_ms: Callable[[], int],
        keepalive_s: int = 60,
        reconnect_max_s: float = 300.0,
        on_connected: Callable[[], None] | None = None,
        buffered_socket: bool | None = None,
        subscribe_retry_initial_s: float = 5.0,
        subscribe_retry_max_s: float = 300.0,
        credentials_recheck_s: float = 5.0,
        account: str | None = None,
        qos: int = SUBSCRIBE_QOS,
    ) -> None:
        """``buffered_socket``: None (default) buffers the broker connection (:class:`_BufferedSocket`)
        when the installed paho is a release known to have the private hooks it needs, else uses
        paho's own socket (logged once); True/False force either."""
        self.client_id = client_id
        self.qos = qos
        self._topics: dict[bytes, tuple[str, TopicKind, str]] = {}
        # several accounts: every event names the account (one account: as before)
        self._log = structlog.get_logger("collector.mqtt", account=account) if account else log
        self._buffered_socket = buffered_socket
        self._socket_fallback_logged = False
        self.socket_mode = ""  # "buffered" or "paho" once a client is built
        self._credentials_provider = credentials
        self._handler = on_message
        self._clock_ms = clock_ms
        self._keepalive = keepalive_s
        self._reconnect_max = reconnect_max_s
        self._on_connected = on_connected
        self._lock = threading.Lock()
        self._serials: set[str] = set()
        self._client: mqtt.Client | None = None
        self._credentials: MqttCredentials | None = None
        self._refreshing = threading.Event()
        self._rechecking = threading.Event()
        self._recheck_initial_s = credentials_recheck_s
        self._stopping = threading.Event()
        self._auth_backoff_s = 5.0
        self.connected = False
        self.connected_at_ms = 0
        self.last_message_ms = 0
        self.connects = 0
        self.auth_failures = 0
        # SUBACK refusals (reason code >= 0x80): every refused topic filter, counted, retried with
        # a capped exponential backoff until the broker grants it (or the next connect does)
        self.subscribe_refusals = 0
        self._sub_lock = threading.Lock()
        self._sub_pending: dict[int, list[str]] = {}  # SUBSCRIBE mid -> its topic filters
        self._sub_early: dict[int, list[ReasonCode]] = {}  # SUBACKs that beat subscribe()'s return
        self._refused: set[str] = set()
        self._sub_retry_initial_s = subscribe_retry_initial_s
        self._sub_retry_max_s = subscribe_retry_max_s
        self._sub_backoff_s = subscribe_retry_initial_s
        self._sub_timer: threading.Timer | None = None
        self.messages: dict[str, int] = {kind.value: 0 for kind in TopicKind}
        self._problem: str | None = None  # why it is not connected, once known

    def counters(self) -> dict[str, int]:
        """`messages_<kind>`, `connects`, `auth_failures`, `subscribe_refusals` since start."""
        return {
            **{f"messages_{kind}": n for kind, n in self.messages.items()},
            "connects": self.connects,
            "auth_failures": self.auth_failures,
            "subscribe_refusals": self.subscribe_refusals,
        }

    def problem(self) -> str | None:
        """None while connected; else the last reason known (refused login, credentials failing)."""
        if self.connected:
            return None
        return self._problem or "not connected yet"

    @property
    def account(self) -> str | None:
        return self._credentials.username if self._credentials else None

    def start(self) -> None:
        """Fetch credentials and start connecting in the background. When the credentials cannot
        be had (the certification endpoint is down), keep asking with a backoff: never give up."""
        try:
            credentials = self._credentials_provider()
        except Exception as exc:  # the provider's HTTP errors
            self._problem = f"MQTT credentials: {exc}"
            self._log.error("mqtt.credentials_failed", error=str(exc))
            self._refresh_credentials_later()
            return
        with self._lock:
            old = self._use(credentials)
        self._dispose(old)

    def _use(self, credentials: MqttCredentials) -> mqtt.Client | None:
        """Take fresh credentials (under ``_lock``). A new broker endpoint (host, port, TLS) gets a
        new paho client connecting there; the old one is returned, for :meth:`_dispose` once the
        lock is released. A new user name or password is used at paho's next reconnect."""
        if self._stopping.is_set():
            return None
        before, self._credentials = self._credentials, credentials
        if self._client is None or (before is not None and _endpoint(before) != _endpoint(credentials)):
            old = self._client
            if old is not None and before is not None:
                self._log.info(
                    "mqtt.broker_changed",
                    old=f"{before.host}:{before.port}",
                    new=f"{credentials.host}:{credentials.port}",
                    tls=credentials.tls,
                )
            self._client = self._build(credentials)
            self._client.connect_async(credentials.host, credentials.port, self._keepalive)
            self._client.loop_start()
            return old
        self._client.username_pw_set(credentials.username, credentials.password)
        return None

    def _dispose(self, client: mqtt.Client | None, timeout: float = 2.0) -> None:
        """Disconnect a replaced client and end its thread (bounded; its callbacks are ignored)."""
        if client is None:
            return
        client.disconnect()
        stopper = threading.Thread(target=client.loop_stop, name="mqtt-dispose", daemon=True)
        stopper.start()
        stopper.join(timeout)

    def stop(self, timeout: float = 2.0) -> None:
        """Disconnect; paho's thread gets `timeout` seconds to finish (it may be stuck in a DNS
        lookup or a TLS handshake with an unreachable broker: it is a daemon thread, left behind)."""
        with self._lock:
            self._stopping.set()
            client = self._client
        with self._sub_lock:
            timer, self._sub_timer = self._sub_timer, None
        if timer is not None:
            timer.cancel()
        if client is not None:
            client.disconnect()
            stopper = threading.Thread(target=client.loop_stop, name="mqtt-stop", daemon=True)
            stopper.start()
            stopper.join(timeout)
            if not stopper.is_alive():
                release_sockets(client)
        self.connected = False

    def add_devices(self, serials: Iterable[str]) -> None:
        """Subscribe devices (now if connected, else at the next connect)."""
        with self._lock:
            new = [sn for sn in serials if sn not in self._serials]
            self._serials.update(new)
        if new and self.connected and self._client is not None and self.account:
            self._subscribe(self._client, self.account, new)

    def rebuild(self, reason: str) -> None:
        """Drop the session: shut its socket down, so that paho's own thread sees the connection
        lost and reconnects with its backoff (paho's reconnect() is not safe from another thread)."""
        self._log.warning("mqtt.rebuild", reason=reason)
        client = self._client
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket | ssl.SSLSocket | _BufferedSocket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self.connected = False

    # --- paho plumbing -------------------------------------------------------------------------

    def _build(self, credentials: MqttCredentials) -> mqtt.Client:
        buffered = buffered_socket_supported() if self._buffered_socket is None else self._buffered_socket
        if not buffered and not self._socket_fallback_logged:
            self._socket_fallback_logged = True
            self._log.info(
                "mqtt.buffered_socket_off",
                paho_version=PAHO_VERSION,
                reason="disabled"
                if self._buffered_socket is False
                else "paho-mqtt release not known to have the socket hooks; using paho's own socket",
            )
        self.socket_mode = "buffered" if buffered else "paho"
        client = (_Client if buffered else mqtt.Client)(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        client.username_pw_set(credentials.username, credentials.password)
        if credentials.tls:
            client.tls_set_context(tls_context(credentials.ca_file))
        client.reconnect_delay_set(min_delay=1, max_delay=max(1, int(self._reconnect_max)))
        client.max_queued_messages_set(0)
        client.suppress_exceptions = True  # a callback's bug is logged by paho, never fatal to its loop
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        if isinstance(client, _Client):
            client.raw_message = self._on_raw
        client.on_subscribe = self._on_subscribe
        return client

    def _subscribe(self, client: mqtt.Client, account: str, serials: list[str]) -> None:
        topics = [t for sn in serials for t in topic_filters(account, sn)]
        if self._send_subscribe(client, topics):
            self._log.info("mqtt.subscribed", devices=len(serials))

    def _send_subscribe(self, client: mqtt.Client, topics: list[str]) -> bool:
        """SUBSCRIBE in chunks; each chunk's SUBACK is checked in :meth:`_on_subscribe`."""
        for start in range(0, len(topics), _SUBSCRIBE_CHUNK):
            chunk = topics[start : start + _SUBSCRIBE_CHUNK]
            result, mid = client.subscribe([(t, self.qos) for t in chunk])
            if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
                self._log.warning("mqtt.subscribe_failed", error=mqtt.error_string(result))
                return False
            with self._sub_lock:  # never held while calling paho: its thread takes this lock too
                early = self._sub_early.pop(mid, None)
                if early is None:
                    self._sub_pending[mid] = chunk
            if early is not None:
                self._check_suback(chunk, early)
        return True

    def _on_subscribe(
        self, client: mqtt.Client, _userdata: Any, mid: int, reason_codes: list[ReasonCode], _props: Any
    ) -> None:
        if client is not self._client:
            return
        with self._sub_lock:
            topics = self._sub_pending.pop(mid, None)
            if topics is None:  # the SUBACK came before subscribe() returned its mid
                self._sub_early[mid] = list(reason_codes)
                return
        self._check_suback(topics, list(reason_codes))

    def _check_suback(self, topics: list[str], reason_codes: list[ReasonCode]) -> None:
        """Count and log refused topic filters (a reason code >= 0x80: 0x80 on MQTT 3.1.1, 0x87
        "Not authorized" and others on MQTT 5) and schedule their retry."""
        refused = [(t, rc) for t, rc in zip(topics, reason_codes, strict=False) if rc.is_failure]
        granted = {t for t, rc in zip(topics, reason_codes, strict=False) if not rc.is_failure}
        with self._sub_lock:
            recovered = sorted(granted & self._refused)
            self._refused -= granted
            newly = [(t, rc) for t, rc in refused if t not in self._refused]
            self.subscribe_refusals += len(refused)
            self._refused.update(t for t, _ in refused)
            if not self._refused:
                self._sub_backoff_s = self._sub_retry_initial_s
            retry_in = self._schedule_subscribe_retry_locked() if self._refused else None
        for topic in recovered:
            self._log.info("mqtt.subscribe_granted", topic=topic)
        for topic, rc in newly:  # one warning per refused topic; a refusal repeated on retry is not news
            self._log.warning(
                "mqtt.subscribe_refused",
                topic=topic,
                reason=str(rc),
                reason_code=int(rc.value),
                retry_in_s=retry_in,
            )
        if refused and len(newly) < len(refused):
            self._log.info(
                "mqtt.subscribe_still_refused", topics=len(refused) - len(newly), retry_in_s=retry_in
            )

    def _schedule_subscribe_retry_locked(self) -> float | None:
        """Start the retry timer unless one is waiting; the delay it waits (None when stopping)."""
        if self._stopping.is_set():
            return None
        if self._sub_timer is not None:
            return float(self._sub_timer.interval)
        delay = self._sub_backoff_s
        self._sub_backoff_s = min(delay * 2, self._sub_retry_max_s)
        timer = threading.Timer(delay, self._retry_refused)
        timer.daemon = True
        timer.name = "mqtt-subscribe-retry"
        self._sub_timer = timer
        timer.start()
        return delay

    def _retry_refused(self) -> None:
        with self._sub_lock:
            self._sub_timer = None
            topics = sorted(self._refused)
        client = self._client
        if not topics or self._stopping.is_set() or client is None or not self.connected:
            return  # the next connect subscribes every device again
        self._send_subscribe(client, topics)

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: ReasonCode, _props: Any
    ) -> None:
        if client is not self._client:  # a replaced client that connected before it was stopped
            client.disconnect()
            return
        if reason_code.is_failure:
            self.connected = False
            self._problem = f"the broker {self._host()} refused the login: {reason_code}"
            self._log.error("mqtt.connect_refused", reason=str(reason_code), host=self._host())
            if str(reason_code) in _AUTH_FAILURES:
                self.auth_failures += 1
                self._refresh_credentials_later()
            return
        with self._sub_lock:  # a new session: mids start over
            self._sub_pending.clear()
            self._sub_early.clear()
        self.connected = True
        self._problem = None
        self.connects += 1
        self._auth_backoff_s = 5.0
        self.connected_at_ms = self._clock_ms()
        self._log.info("mqtt.connected", host=self._host(), client_id=self.client_id)
        with self._lock:
            serials = sorted(self._serials)
        try:
            if self.account:
                self._subscribe(client, self.account, serials)
            if self._on_connected is not None:
                self._on_connected()
        except Exception:  # on paho's thread: log, never end its loop
            self._log.exception("mqtt.on_connect_failed")

    def _on_disconnect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: ReasonCode, _props: Any
    ) -> None:
        if client is not self._client:
            return
        was = self.connected
        self.connected = False
        if was and not self._stopping.is_set():
            self._problem = f"disconnected from {self._host()}: {reason_code}"
            self._log.warning("mqtt.disconnected", reason=str(reason_code))
            self._recheck_credentials()

    def _recheck_credentials(self) -> None:
        """While disconnected, ask the certification endpoint again (after ``credentials_recheck_s``,
        then with a doubling backoff capped at ``reconnect_max_s``): when it names another broker
        (EcoFlow moved the account), connect there rather than retrying the old one. A blip that
        paho's own reconnect heals first costs no request. Off paho's thread; ends once connected."""
        if self._rechecking.is_set() or self._stopping.is_set():
            return
        self._rechecking.set()

        def recheck() -> None:
            delay, failures = self._recheck_initial_s, 0
            try:
                while not self._stopping.wait(delay) and not self.connected:
                    delay = min(delay * 2, max(self._reconnect_max, self._recheck_initial_s))
                    try:
                        fresh = self._credentials_provider()
                    except Exception as exc:  # the provider's HTTP errors
                        failures += 1
                        self._problem = f"MQTT credentials: {exc}"
                        if failures == 1:  # once per disconnection; paho keeps retrying meanwhile
                            self._log.warning("mqtt.credentials_recheck_failed", error=str(exc))
                        continue
                    with self._lock:
                        current = self._credentials
                        old = self._use(fresh)
                    if current is not None and (current.username, current.password) != (
                        fresh.username,
                        fresh.password,
                    ):
                        self._log.info("mqtt.credentials_refreshed", username=fresh.username)
                    if old is not None:
                        self._dispose(old)
                        return
            finally:
                self._rechecking.clear()

        threading.Thread(target=recheck, name="mqtt-recheck", daemon=True).start()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        parsed = parse_topic(message.topic)
        if parsed is None:
            return
        sn, kind = parsed
        self.last_message_ms = self._clock_ms()
        self.messages[kind.value] += 1
        try:
            self._handler(sn, kind, bytes(message.payload))
        except Exception:  # the handler counts its own failures; this is the last line of defence
            self._log.exception("mqtt.handler_failed", sn=sn, topic=kind.value)

    def _on_raw(self, topic: bytes, payload: bytes) -> None:
        """A PUBLISH as :class:`_Client` reads it (paho's thread): the topic parsed once per topic."""
        parsed = self._topics.get(topic)
        if parsed is None:
            found = parse_topic(topic.decode("utf-8", "replace"))
            if found is None:
                return
            parsed = (found[0], found[1], found[1].value)
            if len(self._topics) >= _TOPIC_CACHE_MAX:
                self._topics.clear()
            self._topics[topic] = parsed
        sn, kind, name = parsed
        self.last_message_ms = self._clock_ms()
        self.messages[name] += 1
        try:
            self._handler(sn, kind, payload)
        except Exception:  # the handler counts its own failures; this is the last line of defence
            self._log.exception("mqtt.handler_failed", sn=sn, topic=name)

    def _host(self) -> str:
        c = self._credentials
        return f"{c.host}:{c.port}" if c else "?"

    def _refresh_credentials_later(self) -> None:
        """Ask the certification endpoint again after a backoff, off paho's thread."""
        if self._refreshing.is_set() or self._stopping.is_set():
            return
        self._refreshing.set()
        delay = self._auth_backoff_s
        self._auth_backoff_s = min(self._auth_backoff_s * 2, 600.0)

        def refresh() -> None:
            try:
                if self._stopping.wait(delay):
                    return
                fresh = self._credentials_provider()
                self._log.info("mqtt.credentials_refreshed", username=fresh.username)
                with self._lock:
                    old = self._use(fresh)
                self._dispose(old)
            except Exception as exc:  # the provider's HTTP errors
                self._problem = f"MQTT credentials: {exc}"
                self._log.error(
                    "mqtt.credentials_refresh_failed", error=str(exc), retry_in_s=self._auth_backoff_s
                )
            finally:
                self._refreshing.clear()
            if self._client is None:  # no session yet, so no refusal will ask again: ask now
                self._refresh_credentials_later()

        threading.Thread(target=refresh, name="mqtt-credentials", daemon=True).start()


def probe_broker(credentials: MqttCredentials, client_id: str, timeout_s: float = 10.0) -> str | None:
    """Connect once and disconnect: None when the broker accepted us, else what went wrong.
    `client_id` should be stable too: EcoFlow counts every distinct id against a daily limit."""
    outcome: list[str] = []
    done = threading.Event()

    def on_connect(_c: mqtt.Client, _u: Any, _f: Any, reason_code: ReasonCode, _p: Any) -> None:
        outcome.append("" if not reason_code.is_failure else f"refused: {reason_code}")
        done.set()

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv311
    )
    client.username_pw_set(credentials.username, credentials.password)
    if credentials.tls:
        client.tls_set_context(tls_context(credentials.ca_file))
    client.on_connect = on_connect
    try:
        client.connect(credentials.host, credentials.port, keepalive=30)
    except (OSError, ssl.SSLError) as exc:
        return f"cannot connect: {exc}"
    client.loop_start()
    try:
        if not done.wait(timeout_s):
            return f"no answer within {timeout_s:g} s"
        return outcome[0] or None
    finally:
        client.disconnect()
        client.loop_stop()
