"""A private InfluxDB 1.6.7 (Debian's ``influxd``) behind an nginx proxy that speaks ``/api/v2/write``.

InfluxDB 1.6.7 has no ``/api/v2/write`` (influxdb-client's write path), no ``/health`` and no token
auth. :class:`InfluxServer` starts ``influxd`` on free 127.0.0.1 ports with its own config and
data directories, and an nginx in front of it (its own prefix, config, pid and log files) that:

- maps ``POST /api/v2/write?org=..&bucket=B&precision=P`` to ``POST /write?db=B&precision=P``, with
  precision ``ns``->``n``, ``us``->``u``, ``ms``/``s`` unchanged, none->``n``; any other precision is
  answered 400 (1.6.7 would silently store it as nanoseconds). The body goes through unchanged, so
  ``Content-Encoding: gzip`` works (influxd 1.6.7 inflates gzip bodies itself);
- optionally checks ``Authorization: Token <token>`` on ``/api/v2/write`` (401 with
  ``{"code":"unauthorized","message":"unauthorized access"}`` otherwise);
- answers ``GET /health`` (200 ``{"status":"pass",...}`` while influxd answers ``/ping``, else 503
  ``{"status":"fail",...}``) and ``GET /ready``;
- passes everything else (``/ping``, ``/query``, ``/write``, ...) through unchanged;
- answers 502 with a JSON body while influxd is down (see :meth:`InfluxServer.kill`).

Usage::

    with InfluxServer() as server:
        server.create_database("telemetry")
        client = InfluxDBClient(url=server.url, token="anything", org="x")
        ...
        server.query("telemetry", "SELECT * FROM m", epoch="ms")
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from collector.testbed._process import (
    ManagedProcess,
    TestbedError,
    find_binary,
    log_tail,
    make_workdir,
    register_atexit,
    unregister_atexit,
)
from collector.testbed.ports import free_port

__all__ = ["InfluxQueryError", "InfluxServer"]

_BAD_PRECISION = json.dumps(
    {"code": "invalid", "message": "invalid precision; valid precision units are ns, us, ms, and s"},
    separators=(",", ":"),
)
_TOKEN_RE = re.compile(r"^[A-Za-z0-9._~+/=:-]+$")
_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class InfluxQueryError(TestbedError):
    """An InfluxQL query or a write sent by the testbed helpers failed."""


def _check_path(path: Path) -> Path:
    text = str(path)
    if any(ch in text for ch in ('"', "\\", "$", "\n", "'")):
        raise ValueError(f"unsupported character in testbed path {text!r}")
    return path


def _http(
    method: str,
    url: str,
    *,
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request without any proxy from the environment; (status, headers, body)."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _NO_PROXY_OPENER.open(request, timeout=timeout) as response:
            return int(response.status), dict(response.headers.items()), response.read()
    except urllib.error.HTTPError as exc:
        body = exc.read() if exc.fp is not None else b""
        return int(exc.code), dict(exc.headers.items()) if exc.headers else {}, body


def _addr_in_use(text: str) -> bool:
    return "address already in use" in text.lower()


class InfluxServer:
    """InfluxDB 1.6.7 plus an nginx ``/api/v2/write`` proxy on free 127.0.0.1 ports.

    ``url`` is the proxy (give it to influxdb-client); ``direct_url`` is influxd itself. Ports are
    chosen in the constructor and kept for the life of the object, so :meth:`restart` brings
    influxd back on the same address with the same data. When ``workdir`` is ``None`` a temporary
    directory is made at :meth:`start` and deleted at :meth:`stop` (unless ``keep_workdir``); a
    given ``workdir`` is never deleted.
    """

    def __init__(
        self,
        workdir: Path | None = None,
        token: str | None = None,
        *,
        host: str = "127.0.0.1",
        influxd_bin: str | os.PathLike[str] | None = None,
        nginx_bin: str | os.PathLike[str] | None = None,
        startup_timeout: float = 30.0,
        keep_workdir: bool = False,
        influxd_http_log: bool = False,
    ) -> None:
        if token is not None and not _TOKEN_RE.match(token):
            raise ValueError("token may only contain letters, digits and ._~+/=:-")
        self.token = token
        self.host = host
        self.startup_timeout = startup_timeout
        self.keep_workdir = keep_workdir
        self.influxd_http_log = influxd_http_log
        self._influxd_bin = find_binary("influxd", influxd_bin)
        self._nginx_bin = find_binary("nginx", nginx_bin)
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._ports_fixed = False
        self.port, self.influxd_port, self.influxd_rpc_port = self._new_ports()
        self._nonce = secrets.token_hex(8)
        self._influxd: ManagedProcess | None = None
        self._nginx: ManagedProcess | None = None

    # ------------------------------------------------------------------ properties
    def __repr__(self) -> str:
        return f"<InfluxServer url={self.url} direct_url={self.direct_url} running={self.is_running()}>"

    @property
    def url(self) -> str:
        """The proxy's URL: what influxdb-client (and any v2 writer) should use."""
        return f"http://{self.host}:{self.port}"

    @property
    def direct_url(self) -> str:
        """influxd's own URL (v1 API only: /write, /query, /ping)."""
        return f"http://{self.host}:{self.influxd_port}"

    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise TestbedError("InfluxServer has not been started")
        return self._workdir

    @property
    def influxd_log(self) -> Path:
        return self.workdir / "influxd.log"

    @property
    def nginx_error_log(self) -> Path:
        return self.workdir / "nginx" / "error.log"

    @property
    def nginx_access_log(self) -> Path:
        """Access log: ``$request $status $upstream_status ce=$http_content_encoding ...``."""
        return self.workdir / "nginx" / "access.log"

    @property
    def influxd_pid(self) -> int | None:
        return self._influxd.pid if self._influxd is not None and self._influxd.is_running() else None

    @property
    def nginx_pid(self) -> int | None:
        return self._nginx.pid if self._nginx is not None and self._nginx.is_running() else None

    def is_running(self) -> bool:
        """True while both influxd and the proxy run."""
        return self.influxd_running() and self.proxy_running()

    def influxd_running(self) -> bool:
        return self._influxd is not None and self._influxd.is_running()

    def proxy_running(self) -> bool:
        return self._nginx is not None and self._nginx.is_running()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start influxd and the proxy; return once both answer. Raises TestbedError on failure."""
        if self.influxd_running() or self.proxy_running():
            raise TestbedError("InfluxServer is already started")
        self._prepare_workdir()
        register_atexit(self, self.stop)
        attempts = 1 if self._ports_fixed else 4
        for attempt in range(attempts):
            try:
                self._start_influxd()
                self._start_nginx()
            except _PortInUse:
                self._stop_processes()
                if attempt == attempts - 1:
                    self.stop()
                    raise TestbedError(
                        f"ports {self.port}/{self.influxd_port}/{self.influxd_rpc_port} stayed in use"
                    ) from None
                self.port, self.influxd_port, self.influxd_rpc_port = self._new_ports()
                continue
            except BaseException:
                self.stop()
                raise
            self._ports_fixed = True
            return

    def stop(self) -> None:
        """Stop the proxy and influxd cleanly (SIGTERM, then SIGKILL after a timeout).

        Deletes the temporary work directory unless ``keep_workdir`` or a ``workdir`` was given.
        Safe to call more than once.
        """
        unregister_atexit(self)
        self._stop_processes()
        if self._workdir is not None and self._given_workdir is None and not self.keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None

    def kill(self) -> None:
        """SIGKILL influxd only, like a crash. The proxy stays up: clients of :attr:`url` then get
        502 Bad Gateway (JSON body), as from a load balancer in front of a dead server; ``/health``
        answers 503 and ``/ping`` 502. :meth:`restart` brings influxd back with its data."""
        if self._influxd is not None:
            self._influxd.kill()

    def restart(self) -> None:
        """(Re)start influxd on the same ports with the same data directory (data written before,
        even before a :meth:`kill`, is there again); start the proxy too if it is not running."""
        if self._workdir is None:
            self.start()
            return
        if self._influxd is not None:
            self._influxd.stop(timeout=15.0)
        self._start_influxd()
        if not self.proxy_running():
            self._start_nginx()

    def _stop_processes(self) -> None:
        if self._nginx is not None:
            self._nginx.stop(timeout=5.0)
        if self._influxd is not None:
            self._influxd.stop(timeout=15.0)

    def _new_ports(self) -> tuple[int, int, int]:
        return free_port(self.host), free_port(self.host), free_port(self.host)

    def _prepare_workdir(self) -> None:
        if self._workdir is None:
            if self._given_workdir is not None:
                self._workdir = self._given_workdir.resolve()
            else:
                self._workdir = make_workdir("testbed-influx-")
        _check_path(self._workdir)
        for sub in ("meta", "data", "wal", "nginx", "nginx/tmp"):
            (self._workdir / sub).mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ influxd
    def _influxd_config(self) -> str:
        wd = self.workdir

        def q(value: str | Path) -> str:
            return json.dumps(str(value))

        return f"""\
reporting-disabled = true
bind-address = {q(f"{self.host}:{self.influxd_rpc_port}")}

[meta]
  dir = {q(wd / "meta")}
  retention-autocreate = true
  logging-enabled = true

[data]
  dir = {q(wd / "data")}
  wal-dir = {q(wd / "wal")}
  wal-fsync-delay = "0s"
  index-version = "inmem"
  query-log-enabled = false

[monitor]
  store-enabled = false

[subscriber]
  enabled = false

[http]
  enabled = true
  bind-address = {q(f"{self.host}:{self.influxd_port}")}
  auth-enabled = false
  log-enabled = {"true" if self.influxd_http_log else "false"}
  pprof-enabled = false
  unix-socket-enabled = false

[continuous_queries]
  enabled = true
  log-enabled = false

[logging]
  format = "logfmt"
  level = "info"
  suppress-logo = true
"""

    def _start_influxd(self) -> None:
        wd = self.workdir
        conf = wd / "influxd.conf"
        conf.write_text(self._influxd_config())
        # INFLUXDB_* variables override the config file: keep the environment's ones out.
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUXDB_")}
        proc = ManagedProcess(
            "influxd", [self._influxd_bin, "-config", str(conf)], self.influxd_log, cwd=wd, env=env
        )
        self._influxd = proc
        offset = _size(self.influxd_log)
        proc.start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not proc.is_running():
                text = _read_from(self.influxd_log, offset)
                if _addr_in_use(text) and not self._ports_fixed:
                    raise _PortInUse()
                raise TestbedError(
                    f"influxd exited at start (code {proc.returncode}); log {self.influxd_log}:\n"
                    + log_tail(self.influxd_log)
                )
            with contextlib.suppress(OSError):
                status, headers, _ = _http("GET", f"{self.direct_url}/ping", timeout=1.0)
                if status == 204 and any(k.lower() == "x-influxdb-version" for k in headers):
                    return
            if time.monotonic() >= deadline:
                proc.kill()
                raise TestbedError(
                    f"influxd did not answer /ping within {self.startup_timeout:.0f} s; "
                    f"log {self.influxd_log}:\n" + log_tail(self.influxd_log)
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------ nginx
    def _nginx_config(self) -> str:
        nd = self.workdir / "nginx"
        if self.token is not None:
            token_map = (
                "  map $http_authorization $testbed_token_ok {\n"
                "    default 0;\n"
                f'    "Token {self.token}" 1;\n'
                "  }\n"
            )
            token_check = (
                "      if ($testbed_token_ok = 0) {\n"
                '        return 401 \'{"code":"unauthorized","message":"unauthorized access"}\';\n'
                "      }\n"
            )
        else:
            token_map = token_check = ""
        return f"""\
# One process, no master/worker split: it is the PID we track (and the one the parent-death
# signal reaches), and it keeps the user that started it (as root, workers would drop to nobody
# and could not use the temp dirs in the 0700 work directory).
daemon off;
master_process off;
pid "{nd / "nginx.pid"}";
error_log "{nd / "error.log"}" warn;

events {{
  worker_connections 1024;
}}

http {{
  log_format testbed '$time_iso8601 $request_method $request_uri $status '
                     'up=$upstream_status ce=$http_content_encoding len=$request_length '
                     'rt=$request_time';
  access_log "{nd / "access.log"}" testbed;
  client_body_temp_path "{nd / "tmp" / "body"}";
  proxy_temp_path "{nd / "tmp" / "proxy"}";
  fastcgi_temp_path "{nd / "tmp" / "fastcgi"}";
  uwsgi_temp_path "{nd / "tmp" / "uwsgi"}";
  scgi_temp_path "{nd / "tmp" / "scgi"}";
  client_max_body_size 0;
  client_body_buffer_size 16m;
  server_tokens off;
  types {{ application/json json; }}
  default_type application/json;

  upstream testbed_influxd {{
    server {self.host}:{self.influxd_port} max_fails=0;
    keepalive 16;
  }}

  # InfluxDB 2.x precisions -> 1.6.7's (1.6.7 treats unknown ones, e.g. "us", as nanoseconds).
  map $arg_precision $testbed_v1_precision {{
    default invalid;
    ""      n;
    ns      n;
    us      u;
    ms      ms;
    s       s;
  }}
{token_map}
  server {{
    listen {self.host}:{self.port};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_connect_timeout 5s;
    proxy_read_timeout 120s;
    proxy_send_timeout 120s;
    error_page 502 504 = @testbed_influxd_down;

    location = /api/v2/write {{
{token_check}      if ($testbed_v1_precision = invalid) {{
        return 400 '{_BAD_PRECISION}';
      }}
      proxy_pass http://testbed_influxd/write?db=$arg_bucket&precision=$testbed_v1_precision;
    }}

    location = /health {{
      auth_request /_testbed/influxd_ping;
      error_page 401 403 500 502 503 504 = @testbed_unhealthy;
      alias "{nd / "health.json"}";
    }}

    location = /ready {{
      auth_request /_testbed/influxd_ping;
      error_page 401 403 500 502 503 504 = @testbed_unhealthy;
      alias "{nd / "ready.json"}";
    }}

    location = /_testbed/influxd_ping {{
      internal;
      proxy_pass http://testbed_influxd/ping;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
    }}

    location = /_testbed/nginx {{
      return 200 '{self._nonce}';
    }}

    location @testbed_unhealthy {{
      return 503 '{{"status":"fail","name":"influxdb","message":"influxd is not answering /ping"}}';
    }}

    location @testbed_influxd_down {{
      return 502 '{{"code":"unavailable","message":"influxd behind the testbed proxy is unreachable"}}';
    }}

    location / {{
      proxy_pass http://testbed_influxd;
    }}
  }}
}}
"""

    def _start_nginx(self) -> None:
        nd = self.workdir / "nginx"
        (nd / "health.json").write_text(
            json.dumps({"status": "pass", "name": "influxdb", "message": "ready for queries and writes"})
        )
        started = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        (nd / "ready.json").write_text(json.dumps({"status": "ready", "started": started, "up": "0s"}))
        conf = nd / "nginx.conf"
        conf.write_text(self._nginx_config())
        error_log = nd / "error.log"
        stdout_log = nd / "stdout.log"
        argv = [self._nginx_bin, "-p", f"{nd}/", "-c", str(conf), "-e", str(error_log)]
        check = ManagedProcess("nginx -t", [*argv, "-t", "-q"], stdout_log, cwd=nd)
        check.start()
        code = check.wait_exit(30.0)
        if code is None:
            check.kill()
        if code != 0:
            raise TestbedError(
                f"nginx rejected its config {conf} (code {code}):\n"
                + log_tail(stdout_log)
                + "\n"
                + log_tail(error_log)
            )
        proc = ManagedProcess("nginx", argv, stdout_log, cwd=nd)
        self._nginx = proc
        offset = _size(error_log)
        proc.start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            if not proc.is_running():
                text = _read_from(error_log, offset)
                if _addr_in_use(text) and not self._ports_fixed:
                    raise _PortInUse()
                raise TestbedError(
                    f"nginx exited at start (code {proc.returncode}); log {error_log}:\n"
                    + log_tail(error_log)
                    + "\n"
                    + log_tail(stdout_log)
                )
            with contextlib.suppress(OSError):
                status, _, body = _http("GET", f"{self.url}/_testbed/nginx", timeout=1.0)
                if status == 200 and body.decode(errors="replace") == self._nonce:
                    return
            if time.monotonic() >= deadline:
                proc.kill()
                raise TestbedError(
                    f"nginx did not answer within {self.startup_timeout:.0f} s; log {error_log}:\n"
                    + log_tail(error_log)
                )
            time.sleep(0.05)

    # ------------------------------------------------------------------ helpers for tests
    def query(
        self,
        db: str | None,
        influxql: str,
        *,
        epoch: str | None = None,
        via_proxy: bool = False,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Run InfluxQL through ``/query`` (POST) and return the parsed JSON.

        ``epoch`` (``ns``, ``u``, ``ms``, ``s``, ...) makes times integers instead of RFC3339.
        Raises :class:`InfluxQueryError` on an HTTP error or an ``error`` in any result.
        """
        params: dict[str, str] = {"q": influxql}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        base = self.url if via_proxy else self.direct_url
        try:
            status, _, body = _http(
                "POST",
                f"{base}/query",
                data=urllib.parse.urlencode(params).encode(),
                headers={"Content-Type": "application/x-www-form-urlencoded"},
                timeout=timeout,
            )
        except OSError as exc:
            raise InfluxQueryError(f"query {influxql!r} failed: {exc}") from exc
        text = body.decode("utf-8", "replace")
        if status >= 300:
            raise InfluxQueryError(f"query {influxql!r} failed: HTTP {status}: {text[:2000]}")
        try:
            result: dict[str, Any] = json.loads(text)
        except ValueError as exc:
            raise InfluxQueryError(f"query {influxql!r}: answer is not JSON: {text[:2000]}") from exc
        if "error" in result:
            raise InfluxQueryError(f"query {influxql!r} failed: {result['error']}")
        for item in result.get("results", []):
            if "error" in item:
                raise InfluxQueryError(f"query {influxql!r} failed: {item['error']}")
        return result

    def rows(self, db: str, influxql: str, *, epoch: str | None = "ns") -> list[dict[str, Any]]:
        """The rows of the first statement's series as dicts (column -> value), tags included
        when the query groups by them."""
        result = self.query(db, influxql, epoch=epoch)
        out: list[dict[str, Any]] = []
        for series in result["results"][0].get("series", []):
            columns: list[str] = series["columns"]
            tags: dict[str, Any] = series.get("tags", {})
            for values in series["values"]:
                row = dict(zip(columns, values, strict=True))
                row.update(tags)
                out.append(row)
        return out

    def create_database(self, name: str) -> None:
        self.query(None, f"CREATE DATABASE {_ident(name)}")

    def drop_database(self, name: str) -> None:
        self.query(None, f"DROP DATABASE {_ident(name)}")

    def databases(self) -> list[str]:
        result = self.query(None, "SHOW DATABASES")
        series = result["results"][0].get("series", [])
        return [row[0] for s in series for row in s.get("values", [])]

    def write_lines(self, db: str, lines: str | Iterable[str], precision: str = "n") -> None:
        """Write line protocol straight to influxd's v1 ``/write`` (precision n/u/ms/s/m/h)."""
        body = lines if isinstance(lines, str) else "\n".join(lines)
        query = urllib.parse.urlencode({"db": db, "precision": precision})
        status, _, answer = _http("POST", f"{self.direct_url}/write?{query}", data=body.encode())
        if status != 204:
            raise InfluxQueryError(f"write to {db} failed: HTTP {status}: {answer[:2000]!r}")

    def ping(self, via_proxy: bool = True) -> bool:
        """True when ``/ping`` answers 204 (through the proxy by default)."""
        try:
            status, _, _ = _http("GET", f"{self.url if via_proxy else self.direct_url}/ping", timeout=2.0)
        except OSError:
            return False
        return status == 204


class _PortInUse(Exception):
    pass


def _ident(name: str) -> str:
    """An InfluxQL double-quoted identifier."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _read_from(path: Path, offset: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
