"""Shared pieces of the end-to-end benchmark, the soak and the sharding test.

- :class:`CollectorProcess`: ``python -m collector run`` as a separate process, with its CPU time
  and memory read from ``/proc/<pid>/stat`` and ``/proc/<pid>/status``;
- :func:`collector_config`: a TOML config pointing a collector at a local cloud and an InfluxDB;
- :class:`RawPublisher`: a minimal MQTT 3.1.1 QoS 1 publisher over a plain socket. It sends
  pre-built PUBLISH packets in bulk and counts the broker's PUBACKs on a reader thread, so one
  Python process publishes several times faster than through paho;
- :class:`ReportPool`: pre-built quota reports of one simulated device (first one full, then
  incremental, in the simulator's exact wire shapes), each sent with a marker appended to its
  values: ``benchSeq`` (1, 2, 3... per device) and ``benchUs`` (publish time, microseconds since
  the epoch). The collector stores them as two extra float fields (unknown keys are kept), so
  what InfluxDB holds can be matched message by message against what was published:
  per device, ``COUNT``, ``COUNT(DISTINCT)``, ``MIN`` and ``MAX`` of ``benchSeq`` equal to
  ``n, n, 1, n`` prove that each of the ``n`` published reports is there exactly once;
- :func:`marker_counts`: those four aggregates per device, from InfluxDB.

Everything talks to 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from collector.simulator.devices import PRODUCTS, SimDevice
from collector.simulator.publisher import report_payload
from collector.simulator.server import LocalCloud
from collector.testbed import InfluxServer

SEQ_KEY = "benchSeq"
TIME_KEY = "benchUs"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


# ----------------------------------------------------------------------------- the collector


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None) + "}"
    return json.dumps(str(value))


def write_config(path: Path, settings: dict[str, Any]) -> Path:
    lines: list[str] = []
    for section, body in settings.items():
        if isinstance(body, list):
            for item in body:
                lines.append(f"[[{section}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in item.items() if v is not None]
        else:
            lines.append(f"[{section}]")
            lines += [f"{k} = {toml_value(v)}" for k, v in body.items() if v is not None]
    path.write_text("\n".join(lines) + "\n")
    return path


def collector_config(
    path: Path,
    cloud: LocalCloud,
    influx: InfluxServer,
    db: str,
    state_dir: Path,
    *,
    healthz_port: int,
    influxdb: dict[str, Any] | None = None,
    mqtt: dict[str, Any] | None = None,
    devices: Sequence[SimDevice] | None = None,
    accounts: bool = False,
    **collector: Any,
) -> Path:
    """A config for `cloud`'s first account; `devices` (default: all of the account's) are listed
    explicitly, so the start-up seeds each once and the device list adds nothing. `accounts`:
    every account of the cloud as an `[[accounts]]` entry (`a0`, `a1`, ...) listing its devices."""
    settings = cloud.collector_settings()
    if devices is not None:
        settings["devices"] = [
            {"sn": d.sn, "name": d.device_name, "product": d.product_slug} for d in devices
        ]
    if accounts:
        settings.pop("devices", None)
        settings["ecoflow"] = {"api_url": cloud.url}
        settings["accounts"] = [
            {
                "name": f"a{index}",
                "access_key": account.access_key,
                "secret_key": account.secret_key,
                "devices": [
                    {"sn": d.sn, "name": d.device_name, "product": d.product_slug}
                    for d in account.devices.values()
                ],
            }
            for index, account in enumerate(cloud.accounts)
        ]
    settings["mqtt"] = {**settings.get("mqtt", {}), "reconnect_max_s": 2, **(mqtt or {})}
    settings["influxdb"] = {"url": influx.url, "bucket": db, "token": "t", **(influxdb or {})}
    settings["collector"] = {"state_dir": str(state_dir), "healthz_port": healthz_port, **collector}
    settings["logging"] = {"level": "info", "format": "json"}
    return write_config(path, settings)


@dataclass(frozen=True, slots=True)
class ProcSample:
    cpu_s: float  # user + system
    rss_kb: int  # VmRSS
    hwm_kb: int  # VmHWM: peak resident set


def proc_sample(pid: int) -> ProcSample | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_bytes()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat[stat.rfind(b")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
    memory = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            memory[key] = int(value.split()[0])
    return ProcSample(cpu, memory.get("VmRSS", 0), memory.get("VmHWM", 0))


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (all cores)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return (total - idle) / _CLK_TCK, total / _CLK_TCK


class CpuMeter:
    """CPU seconds used by named processes and by the whole machine between two readings."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self._start = self._read()

    def _read(self) -> tuple[dict[str, float], tuple[float, float]]:
        used = {}
        for name, pids in self.pids.items():
            samples = [proc_sample(pid) for pid in pids]
            used[name] = sum(s.cpu_s for s in samples if s is not None)
        return used, machine_cpu_s()

    def shares(self) -> dict[str, float]:
        """Cores used since the start, per name, plus `machine` (all of it) and `other`."""
        (before, (busy0, total0)), (after, (busy1, total1)) = self._start, self._read()
        cores = os.cpu_count() or 1
        elapsed = (total1 - total0) / cores
        out = {name: (after[name] - before[name]) / elapsed for name in self.pids}
        out["machine"] = (busy1 - busy0) / elapsed
        out["other"] = out["machine"] - sum(out[name] for name in self.pids)
        return out


def child_pids(pid: int) -> list[int]:
    """The live children of a process (from /proc/*/stat's parent pid)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_bytes()
        except OSError:
            continue
        if int(stat[stat.rfind(b")") + 2 :].split()[1]) == pid:
            out.append(int(entry.name))
    return out


class CollectorProcess:
    """``python -m collector run --config F``, its output appended to `log`. `source`: run the
    collector of another source tree (a baseline for side-by-side figures)."""

    def __init__(
        self, config: Path, log: Path, env: dict[str, str] | None = None, source: Path | None = None
    ) -> None:
        self.config = config
        self.log = log
        self.env = dict(env or {})
        if source is not None:
            self.env["PYTHONPATH"] = str(source)
        self.source = source
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def pids(self) -> list[int]:
        """The process and its children (the workers of a supervisor)."""
        return [self.pid, *child_pids(self.pid)] if self.running() else []

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "collector", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env} if self.env else None,
                cwd=self.source,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def sample(self) -> ProcSample | None:
        """CPU and memory of the process and its workers: CPU and RSS summed, VmHWM summed (the
        peaks of the processes, which need not have been at the same moment)."""
        if not self.running():
            return None
        samples = [s for s in map(proc_sample, self.pids()) if s is not None]
        if not samples:
            return None
        return ProcSample(
            sum(s.cpu_s for s in samples), sum(s.rss_kb for s in samples), sum(s.hwm_kb for s in samples)
        )

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.process is not None
        self.process.terminate()
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL, and wait for the process to be gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        out = []
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue
        return out


def health(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
    except OSError:
        return 0, {}


def wait_for(condition: Any, timeout: float = 30.0, what: str = "condition", interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# ----------------------------------------------------------------------------- MQTT load


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


class MqttRefused(Exception):
    pass


class RawPublisher:
    """MQTT 3.1.1 over plain TCP: CONNECT, then QoS 1 PUBLISH packets sent in bulk.

    ``sent`` counts messages handed to the socket, ``acked`` the broker's PUBACKs; at most
    ``window`` messages are unacknowledged at a time (:meth:`publish` waits). After the connection
    drops, :meth:`publish` raises ConnectionError and ``sent - acked`` messages are in doubt.
    """

    def __init__(
        self, host: str, port: int, username: str, password: str, client_id: str, window: int = 4000
    ) -> None:
        self.host, self.port = host, port
        self.username, self.password, self.client_id = username, password, client_id
        self.window = window
        self.sent = 0
        self.acked = 0
        self.connected = False
        self._acked_mids: list[int] = []  # packet ids acknowledged, in order (for callers that track)
        self._cond = threading.Condition()
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._mid = 0
        self._last_send = 0.0

    def connect(self, timeout: float = 5.0) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        body = (
            _string("MQTT")
            + bytes([4, 0xC2])  # level 4; username, password, clean session
            + struct.pack("!H", 60)
            + _string(self.client_id)
            + _string(self.username)
            + _string(self.password)
        )
        sock.sendall(b"\x10" + _remaining_length(len(body)) + body)
        answer = b""
        while len(answer) < 4:
            chunk = sock.recv(4 - len(answer))
            if not chunk:
                raise ConnectionError("the broker closed the connection before CONNACK")
            answer += chunk
        if answer[0] != 0x20 or answer[3] != 0:
            sock.close()
            raise MqttRefused(f"CONNACK return code {answer[3]}")
        sock.settimeout(None)
        self._sock = sock
        self.connected = True
        self._last_send = time.monotonic()
        self._reader = threading.Thread(target=self._read, args=(sock,), name="raw-mqtt-reader", daemon=True)
        self._reader.start()

    def _read(self, sock: socket.socket) -> None:
        buffer = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
                acks = 0
                position = 0
                while len(buffer) - position >= 2:
                    command = buffer[position]
                    length, shift, i = 0, 0, position + 1
                    while i < len(buffer):
                        length |= (buffer[i] & 0x7F) << shift
                        shift += 7
                        i += 1
                        if not buffer[i - 1] & 0x80:
                            break
                    else:
                        break
                    if len(buffer) - i < length:
                        break
                    if command == 0x40:
                        acks += 1
                    position = i + length
                buffer = buffer[position:]
                if acks:
                    with self._cond:
                        self.acked += acks
                        self._cond.notify_all()
        except OSError:
            pass
        finally:
            with self._cond:
                self.connected = False
                self._cond.notify_all()

    def publish(self, messages: Iterable[tuple[bytes, bytes]]) -> int:
        """Send QoS 1 PUBLISH packets for (topic, payload) pairs in one write; returns how many."""
        packets = []
        mid = self._mid
        for topic, payload in messages:
            mid = mid % 65535 + 1
            body_length = 2 + len(topic) + 2 + len(payload)
            packets.append(
                b"\x32"
                + _remaining_length(body_length)
                + struct.pack("!H", len(topic))
                + topic
                + struct.pack("!H", mid)
                + payload
            )
        if not packets:
            return 0
        with self._cond:
            while self.connected and self.sent - self.acked + len(packets) > self.window:
                self._cond.wait(0.5)
            if not self.connected or self._sock is None:
                raise ConnectionError("not connected")
            self.sent += len(packets)
        self._mid = mid
        try:
            self._sock.sendall(b"".join(packets))
        except OSError as exc:
            raise ConnectionError(str(exc)) from exc
        self._last_send = time.monotonic()
        return len(packets)

    def ping_if_idle(self, idle_s: float = 20.0) -> None:
        if self._sock is not None and self.connected and time.monotonic() - self._last_send > idle_s:
            try:
                self._sock.sendall(b"\xc0\x00")
            except OSError:
                return
            self._last_send = time.monotonic()

    def wait_acked(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.acked < self.sent and self.connected:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(min(left, 0.5))
            return self.acked >= self.sent

    def close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._reader is not None:
            self._reader.join(5)


# ----------------------------------------------------------------------------- reports


@dataclass(frozen=True, slots=True)
class DeviceRef:
    """Enough to rebuild a simulated device in another process (the same seed: the same values)."""

    sn: str
    name: str
    product: str
    seed: int
    numbers_as_strings: bool = False

    @classmethod
    def of(cls, device: SimDevice) -> DeviceRef:
        return cls(device.sn, device.device_name, device.product_slug, device.seed, device.numbers_as_strings)

    def build(self, clock: Any) -> SimDevice:
        return PRODUCTS[self.product](
            self.sn, self.name, clock=clock, seed=self.seed, numbers_as_strings=self.numbers_as_strings
        )


def marker_field(product: str) -> tuple[str, str]:
    """The stored names of the two marker fields (PowerStream report keys get their `20_1.`)."""
    cls = PRODUCTS[product]
    prefix = f"{cls.report_cmd[0]}_{cls.report_cmd[1]}." if cls.report_cmd else ""
    return prefix + SEQ_KEY, prefix + TIME_KEY


class ReportPool:
    """`size` quota reports of one device as sent over MQTT, minus the closing ``}}``: a full report
    every `full_every`, incremental reports of up to `incremental_keys` changed keys between them,
    the simulated clock moving `step_s` seconds from one to the next. :meth:`next` appends the
    marker and closes the JSON; a device starts at a random place in the cycle."""

    def __init__(
        self,
        ref: DeviceRef,
        account: str,
        *,
        size: int = 40,
        full_every: int = 20,
        incremental_keys: int = 6,
        step_s: float = 7.0,
        seed: int = 0,
    ) -> None:
        now = [time.time() - size * step_s]
        device = ref.build(lambda: now[0])
        rng = random.Random(seed ^ ref.seed)
        # where in the rhythm the device is: a fleet's full reports do not all come first
        self.offset = rng.randrange(size)
        self.sn = ref.sn
        self.product = ref.product
        self.topic = f"/open/{account}/{ref.sn}/quota".encode()
        self.bodies: list[bytes] = []
        self.fields: list[int] = []  # device fields per report (the marker not counted)
        for index in range(size):
            now[0] += step_s
            full = index % full_every == 0
            values = device.full_report() if full else device.incremental_report(incremental_keys)
            data = orjson.dumps(report_payload(device, values, rng, lambda: now[0]))
            assert data.endswith(b"}}"), "the values must close the report"
            self.bodies.append(data[:-2])
            self.fields.append(len(values))
        self.count = 0  # reports sent so far (the next one's benchSeq is count + 1)

    def next(self, time_us: int) -> tuple[bytes, int]:
        """The next report with its marker, and how many device fields it carries."""
        index = (self.offset + self.count) % len(self.bodies)
        self.count += 1
        marker = b',"%s":%d,"%s":%d}}' % (SEQ_KEY.encode(), self.count, TIME_KEY.encode(), time_us)
        return self.bodies[index] + marker, self.fields[index]


# ----------------------------------------------------------------------------- counting


@dataclass(slots=True)
class MarkerCount:
    count: int = 0
    distinct: int = 0
    low: int = 0
    high: int = 0

    def exact(self, published: int) -> bool:
        """True when the stored reports are exactly 1..published, each once."""
        if published == 0:
            return self.count == 0
        return (self.count, self.distinct, self.low, self.high) == (published, published, 1, published)


def marker_counts(
    influx: InfluxServer, db: str, products: Iterable[str], since_ms: int = 0
) -> dict[str, MarkerCount]:
    """Per device serial: COUNT, COUNT(DISTINCT), MIN, MAX of the benchSeq field."""
    out: dict[str, MarkerCount] = {}
    for product in sorted(set(products)):
        seq, _ = marker_field(product)
        query = (
            f'SELECT COUNT("{seq}"), COUNT(DISTINCT("{seq}")), MIN("{seq}"), MAX("{seq}") '
            f'FROM "{product}" WHERE time >= {since_ms}ms GROUP BY "sn"'
        )
        for row in influx.rows(db, query, epoch="ms"):  # a device with no report yet: 0, 0, None, None
            values = [int(row[k] or 0) for k in ("count", "count_1", "min", "max")]
            out[row["sn"]] = MarkerCount(*values)
    return out


def marker_counts_between(
    influx: InfluxServer, db: str, products: Iterable[str], first_us: int, last_us: int
) -> dict[str, MarkerCount]:
    """Like :func:`marker_counts`, for the reports published between two times (their benchUs)."""
    out: dict[str, MarkerCount] = {}
    for product in sorted(set(products)):
        seq, stamp = marker_field(product)
        query = (
            f'SELECT COUNT("{seq}"), COUNT(DISTINCT("{seq}")), MIN("{seq}"), MAX("{seq}") FROM "{product}" '
            f'WHERE time >= {first_us // 1000 - 1000}ms AND "{stamp}" >= {first_us} '
            f'AND "{stamp}" <= {last_us} GROUP BY "sn"'
        )
        for row in influx.rows(db, query, epoch="ms"):
            values = [int(row[k] or 0) for k in ("count", "count_1", "min", "max")]
            out[row["sn"]] = MarkerCount(*values)
    return out


def marker_values(influx: InfluxServer, db: str, products: Iterable[str]) -> dict[str, list[int]]:
    """Per device serial: every stored benchSeq value (for exact loss and duplicate reports)."""
    out: dict[str, list[int]] = {}
    for product in sorted(set(products)):
        seq, _ = marker_field(product)
        for row in influx.rows(db, f'SELECT "{seq}" FROM "{product}" GROUP BY "sn"', epoch="ms"):
            if row.get(seq) is not None:
                out.setdefault(row["sn"], []).append(int(row[seq]))
    return out


@dataclass
class Percentiles:
    values: list[float] = field(default_factory=list)

    def at(self, q: float) -> float | None:
        if not self.values:
            return None
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


# ----------------------------------------------------------------------------- profiles


# leaves of threads that wait (py-spy counts some blocking C calls as running)
_IDLE_FRAMES = (
    "(select)",
    "wait (threading",
    "select (selectors",
    "_wait_for_tstate",
    "accept (socket",
    "QuotaPoller._work (",
    "_pause (",  # the MQTT source's read coalescing: a sleep
    # on this VM py-spy counts a thread blocked in select()/recv() as running: paho's loop waiting
    # for the broker (the self time of Client._loop is its select), the writer waiting for InfluxDB
    "Client._loop (",
    "SocketIO.readinto (",
    "concurrent/futures/thread.py",  # an idle thread pool worker, blocked on its queue
)


def profile_summary(path: Path, top: int = 25) -> str:
    """Where the samples of a py-spy raw (collapsed) profile went: per thread, and the functions
    with the most samples on the stack (inclusive) and at its top (self), busy samples only."""
    threads: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        leaf = frames[-1]
        if any(idle in leaf for idle in _IDLE_FRAMES):
            continue  # an idle thread's sample
        total += count
        thread = frames[0]
        threads[thread] = threads.get(thread, 0) + count
        for frame in set(frames[1:]):
            name = frame.split(" (")[0] + " (" + frame.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
            inclusive[name] = inclusive.get(name, 0) + count
        name = leaf.split(" (")[0] + " (" + leaf.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1]
        own[name] = own.get(name, 0) + count
    lines = [f"busy samples: {total}"]
    for title, table in (("threads", threads), ("inclusive", inclusive), ("self", own)):
        lines.append(f"-- {title}")
        for name, count in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"{count / max(total, 1) * 100:6.1f}%  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(profile_summary(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 25))
