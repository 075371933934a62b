"""The local cloud's HTTP API: EcoFlow's five `/iot-open/sign/...` endpoints, checked like the real one.

Every request is authenticated before anything else (headers `accessKey`, `nonce`, `timestamp`,
`sign`; GET signs its query parameters, POST/PUT their JSON body). Answers have EcoFlow's
envelope `{"code":"0","message":"Success","data":..,"eagleEyeTraceId":..,"tid":""}`; API errors
come with HTTP 200 and a non-"0" code, as the real cloud sends them:

- `8513` accessKey is invalid: unknown key, or a key of another region;
- `8521` signature is wrong: bad signature, missing header, stale timestamp, replayed nonce;
- `8512` no permission to do it: a serial that is not the account's;
- `1006` current device is not allowed to get device info: a device whose data is denied (reads);
- `1000` Server error / analyse protobuf message failed: a set command the device refuses.

Evidence (real answers seen in public sources): 8521 in tolwi/hassio-ecoflow-cloud #416 and the
Jeedom forum; 8513 "accessKey is invalid" for keys used on the wrong region's API (tolwi #287,
#343, #413); 1006 in a colombod/ecoflow-sdk recording; 1000 "Server error" answering a Delta 2 PUT
(Mark-Hicks/ecoflow-api-examples #4) and "analyse protobuf message failed" a Wave 3 PUT
(commonsguy/Wave3API). 8512 appears in a public API log and, beside 1006, for quota reads
(tolwi #540); no source shows the answer for a serial outside the account, and 8512 is the real
message that fits. No source shows a dedicated code for an old timestamp or a reused nonce;
users report "signature is wrong" for stale timestamps (snell-evan-itt/hassio-ecoflow-cloud-US
PR #38), so both answer 8521. Why a request was refused is kept in
:attr:`CloudServer.requests` for tests.

A replay is the same nonce *and* timestamp again within the window: clients draw 6-digit
random nonces, so unrelated requests share a nonce often enough (a collector polling a
thousand devices does within minutes) that refusing those would invent failures.
"""

from __future__ import annotations

import contextlib
import hmac
import secrets
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Final, Self, cast
from urllib.parse import parse_qsl

import orjson
import structlog

from collector.api.signing import sign
from collector.catalog import Catalog, default_catalog
from collector.simulator.accounts import Account, AccountBook
from collector.simulator.broker import BrokerInfo
from collector.simulator.clock import Clock, wall_clock
from collector.simulator.commands import CommandError, resolve
from collector.simulator.devices import SimDevice, wire_values

log = structlog.get_logger("collector.simulator.cloud")

API_PREFIX: Final = "/iot-open/sign"
JSON_TYPE: Final = "application/json;charset=UTF-8"
MAX_BODY_BYTES: Final = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ErrorCode:
    code: str
    message: str


ACCESS_KEY_INVALID: Final = ErrorCode("8513", "accessKey is invalid")
SIGNATURE_WRONG: Final = ErrorCode("8521", "signature is wrong")
NO_PERMISSION: Final = ErrorCode("8512", "no permission to do it")
DEVICE_NOT_ALLOWED: Final = ErrorCode("1006", "current device is not allowed to get device info")
SERVER_ERROR: Final = ErrorCode("1000", "Server error")
PROTOBUF_FAILED: Final = ErrorCode("1000", "analyse protobuf message failed")


class Refused(Exception):
    """The cloud answers this request with an error envelope; `reason` says why (kept, not sent)."""

    def __init__(self, error: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.error = error
        self.reason = reason


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One request as the server saw it; `reason` says why it was refused (empty if it was not)."""

    method: str
    path: str
    http_status: int
    code: str | None  # the envelope's code; None when no envelope was sent (HTTP error, fault)
    reason: str


class Faults:
    """Failures to inject into the next requests (whatever they are), for retry tests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fail: deque[int] = deque()
        self._delay: deque[float] = deque()

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        """The next `count` requests get HTTP `status` with no envelope."""
        with self._lock:
            self._fail.extend([status] * count)

    def delay_next(self, count: int = 1, seconds: float = 30.0) -> None:
        """The next `count` requests are answered only after `seconds` (clients time out)."""
        with self._lock:
            self._delay.extend([seconds] * count)

    def clear(self) -> None:
        with self._lock:
            self._fail.clear()
            self._delay.clear()

    def take(self) -> tuple[int | None, float]:
        with self._lock:
            status = self._fail.popleft() if self._fail else None
            delay = self._delay.popleft() if self._delay else 0.0
        return status, delay


_NO_DATA: Final = object()  # a handler's answer that has no `data` key at all
Handler = Callable[[Account, Mapping[str, Any]], Any]


class CloudServer:
    """EcoFlow's Open API on 127.0.0.1 (port 0 = any free port); :attr:`url` is its base URL.

    `region` is the region this server stands for; accounts of other regions are refused like
    unknown keys. `auth_clock` (seconds) judges timestamps; it is wall time unless a test wants
    otherwise, independent of the clock that drives the devices.
    """

    def __init__(
        self,
        accounts: AccountBook,
        *,
        region: str = "europe",
        broker: BrokerInfo | None = None,
        catalog: Catalog | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        timestamp_window_s: float = 300.0,
        auth_clock: Clock = wall_clock,
        log_limit: int = 100_000,
    ) -> None:
        self.accounts = accounts
        self.region = region
        self.broker = broker
        self.catalog = catalog or default_catalog()
        self.timestamp_window_s = timestamp_window_s
        self.auth_clock = auth_clock
        self.faults = Faults()
        self.requests: deque[RequestRecord] = deque(maxlen=log_limit)
        self.counts: Counter[str] = Counter()  # requests per path, faults included
        # answers that found the client gone (it timed out and closed or reset the connection)
        self.clients_gone = 0
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, str, str], float] = {}  # (key, nonce, timestamp) -> expiry
        self._next_prune = 0.0
        self._stopping = threading.Event()
        self._httpd: _HttpServer | None = None
        self._thread: threading.Thread | None = None
        self._routes: dict[tuple[str, str], Handler] = {
            ("GET", f"{API_PREFIX}/certification"): self._certification,
            ("GET", f"{API_PREFIX}/device/list"): self._device_list,
            ("GET", f"{API_PREFIX}/device/quota/all"): self._quota_all,
            ("POST", f"{API_PREFIX}/device/quota"): self._quota_get,
            ("PUT", f"{API_PREFIX}/device/quota"): self._quota_set,
        }

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("the cloud server is not started")
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def request_count(self) -> int:
        return sum(self.counts.values())

    def start(self) -> None:
        if self._httpd is not None:
            raise RuntimeError("the cloud server is already started")
        self._stopping.clear()
        self._httpd = _HttpServer((self._host, self._port), _RequestHandler, self)
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sim-cloud-http", daemon=True)
        self._thread.start()
        log.info("cloud.started", url=self.url, region=self.region)

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        self._stopping.set()  # delayed (fault-injected) requests give up waiting
        httpd.shutdown()
        # kept-alive connections would keep their handler threads (and sockets) past the stop
        left = httpd.close_connections(timeout=5.0)
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        log.info("cloud.stopped", connections_left=left)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ request handling
    def handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> tuple[int, bytes]:
        """Answer one request: (HTTP status, body); header names in `headers` are lower case."""
        path, _, query = target.partition("?")
        with self._lock:
            self.counts[path] += 1
        status, delay = self.faults.take()
        if delay and self._stopping.wait(delay):
            return self._record(method, path, 503, None, "server stopping"), b""
        if status is not None:
            return self._record(method, path, status, None, "injected fault"), _phrase(status)
        route = self._routes.get((method, path))
        if route is None:
            if any(p == path for _, p in self._routes):
                return self._record(method, path, 405, None, "method not allowed"), b""
            return self._record(method, path, 404, None, "no such endpoint"), b""
        try:
            params = self._params(method, query, body)
            account = self._authenticate(headers, params)
            data = route(account, params)
        except Refused as exc:
            log.info("cloud.refused", method=method, path=path, code=exc.error.code, reason=exc.reason)
            self._record(method, path, 200, exc.error.code, exc.reason)
            return 200, _envelope(exc.error.code, exc.error.message, _NO_DATA)
        self._record(method, path, 200, "0", "")
        return 200, _envelope("0", "Success", data)

    def client_gone(self) -> None:
        """An answer could not be sent: the client had closed or reset the connection."""
        with self._lock:
            self.clients_gone += 1
            first = self.clients_gone == 1
        if first:  # once: a client giving up is what delay faults are for, not news
            log.info("cloud.client_gone", hint="an answer reached a client that had given up")

    def _record(self, method: str, path: str, status: int, code: str | None, reason: str) -> int:
        self.requests.append(RequestRecord(method, path, status, code, reason))
        return status

    @staticmethod
    def _params(method: str, query: str, body: bytes) -> Mapping[str, Any]:
        if method == "GET":
            return dict(parse_qsl(query, keep_blank_values=True))
        try:
            params = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            params = None
        if not isinstance(params, dict):
            raise Refused(SERVER_ERROR, "the body is not a JSON object")
        return params

    def _authenticate(self, headers: Mapping[str, str], params: Mapping[str, Any]) -> Account:
        access_key = headers.get("accesskey") or ""
        account = self.accounts.by_access_key(access_key)
        if account is None:
            raise Refused(ACCESS_KEY_INVALID, "unknown access key" if access_key else "no accessKey header")
        if account.region != self.region:
            raise Refused(ACCESS_KEY_INVALID, f"access key of region {account.region}")
        nonce, timestamp, signature = (headers.get(h) or "" for h in ("nonce", "timestamp", "sign"))
        if not (nonce and timestamp and signature):
            raise Refused(SIGNATURE_WRONG, "nonce, timestamp or sign header missing")
        if not timestamp.isdigit():
            raise Refused(SIGNATURE_WRONG, "timestamp is not a number of milliseconds")
        now = self.auth_clock()
        if abs(now - int(timestamp) / 1000) > self.timestamp_window_s:
            raise Refused(SIGNATURE_WRONG, "timestamp outside the allowed window")
        expected = sign(params, access_key, account.secret_key, nonce, timestamp)
        if not hmac.compare_digest(expected, signature):
            raise Refused(SIGNATURE_WRONG, "signature mismatch")
        self._remember_nonce((access_key, nonce, timestamp), now)
        return account

    def _remember_nonce(self, key: tuple[str, str, str], now: float) -> None:
        with self._lock:
            if now >= self._next_prune:
                self._seen = {k: expiry for k, expiry in self._seen.items() if expiry > now}
                self._next_prune = now + min(self.timestamp_window_s, 60.0)
            expiry = self._seen.get(key)
            if expiry is not None and expiry > now:
                raise Refused(SIGNATURE_WRONG, "nonce reused (replayed request)")
            # the timestamp may be up to one window old or ahead: keep it for two windows
            self._seen[key] = now + 2 * self.timestamp_window_s

    # ------------------------------------------------------------------ endpoints
    def _certification(self, account: Account, params: Mapping[str, Any]) -> Any:
        if self.broker is None:
            raise Refused(SERVER_ERROR, "this local cloud has no MQTT broker")
        return self.broker.certification(account)

    def _device_list(self, account: Account, params: Mapping[str, Any]) -> Any:
        return [device.list_entry() for device in account.devices.values()]

    def _device(self, account: Account, sn: Any) -> SimDevice:
        device = account.devices.get(sn) if isinstance(sn, str) else None
        if device is None:
            raise Refused(NO_PERMISSION, f"serial {sn!r} is not a device of this account")
        return device

    def _readable(self, account: Account, sn: Any) -> SimDevice:
        device = self._device(account, sn)
        if device.read_denied:
            raise Refused(DEVICE_NOT_ALLOWED, f"{device.sn} is configured as read denied")
        return device

    def _quota_all(self, account: Account, params: Mapping[str, Any]) -> Any:
        device = self._readable(account, params.get("sn"))
        if device.quota_all_no_data:
            return _NO_DATA
        return wire_values(device, device.snapshot())

    def _quota_get(self, account: Account, body: Mapping[str, Any]) -> Any:
        device = self._readable(account, body.get("sn"))
        params = body.get("params")
        quotas = params.get("quotas") if isinstance(params, dict) else None
        if not isinstance(quotas, list) or not all(isinstance(q, str) for q in quotas):
            raise Refused(SERVER_ERROR, "params.quotas must be a list of quota keys")
        values = device.snapshot()
        return wire_values(device, {key: values[key] for key in quotas if key in values})

    def _quota_set(self, account: Account, body: Mapping[str, Any]) -> Any:
        device = self._device(account, body.get("sn"))
        product = self.catalog.products[device.product_slug]
        try:
            changes = resolve(product, body.get("cmdCode"), body.get("params"))
        except CommandError as exc:
            refused = PROTOBUF_FAILED if body.get("cmdCode") is not None else SERVER_ERROR
            raise Refused(refused, str(exc)) from None
        for change in changes:
            device.set_quota(change.key, change.value)
        log.info("cloud.setting_applied", sn=device.sn, changes={c.key: c.value for c in changes})
        return _NO_DATA


def _phrase(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


def _envelope(code: str, message: str, data: Any) -> bytes:
    envelope: dict[str, Any] = {"code": code, "message": message}
    if data is not _NO_DATA:
        envelope["data"] = data
    envelope["eagleEyeTraceId"] = secrets.token_hex(16)
    envelope["tid"] = ""
    return orjson.dumps(envelope)


class _HttpServer(ThreadingHTTPServer):
    """Keeps the connections it serves, so that a stop can end them (and their threads)."""

    daemon_threads = True  # a delayed request must not hold up stop()
    block_on_close = False

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], cloud: CloudServer):
        self.cloud = cloud
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_changed:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)  # closes it
        with self._connections_changed:
            self._connections.discard(request)
            self._connections_changed.notify_all()

    def close_connections(self, timeout: float) -> int:
        """Shut every open connection down (its handler sees the end, closes it and returns); wait
        up to ``timeout`` for that. Returns how many are still open."""
        with self._connections_changed:
            for connection in list(self._connections):
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections_changed.wait_for(lambda: not self._connections, timeout)
            return len(self._connections)


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as clients with connection pools expect
    server_version = "ecoflow-local-cloud"
    # headers and body leave in two writes: without TCP_NODELAY the client's delayed ACK holds
    # the body back ~40 ms on a kept-alive connection
    disable_nagle_algorithm = True

    def _serve(self) -> None:
        started = time.perf_counter()
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY_BYTES:
            self.send_error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return
        body = self.rfile.read(length) if length else b""
        cloud = cast(_HttpServer, self.server).cloud
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, payload = cloud.handle(self.command, self.path, headers, body)
        self.send_response(status)
        self.send_header("Content-Type", JSON_TYPE if status == 200 else "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
        log.debug(
            "cloud.request",
            method=self.command,
            path=self.path.partition("?")[0],
            status=status,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )

    do_GET = do_POST = do_PUT = do_DELETE = _serve

    def handle(self) -> None:
        """http.server's loop, minus the traceback on stderr when the client is gone (a delayed
        fault answer reaching a client that timed out): counted on the cloud instead."""
        try:
            super().handle()
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True
            cloud = cast(_HttpServer, self.server).cloud
            if not cloud._stopping.is_set():  # at a stop it is the server that ended the connection
                cloud.client_gone()

    def log_message(self, format: str, *args: Any) -> None:
        """Silences http.server's own stderr lines; requests are logged by `_serve`."""
