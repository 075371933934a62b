"""`[collector] workers = N`: N collector processes under one supervisor, all cores of one machine.

Python runs one thread at a time, so one collector process uses at most one core (paho's network
thread does the MQTT work). With ``workers = N`` (N > 1), ``run`` becomes this supervisor:

- **Devices** are split among the workers by the stable shard function (:func:`collector.daemon.shard_of`).
  Combined with an outer ``shard = "i/M"`` (or ``"auto"``: i from the pod ordinal), worker j of
  instance i takes shard ``j*M + i`` of ``M*N`` (:func:`worker_shard`). Since
  ``(crc % (M*N)) % M == crc % M``, the instance keeps exactly the devices it has without workers:
  changing N on one machine moves devices only among that machine's workers, never between machines.
- **State**: worker j is an ordinary collector (``run --worker j``) whose ``state_dir`` is
  ``<state_dir>/worker-<j>``: its own lock, its own persisted MQTT client id per account (the
  id survives restarts of the worker, so a crash loop never burns EcoFlow's ~10 ids a day), its
  own spool and energy counters. On the first start with workers, worker 0 takes over the
  single-process install's client ids and spool (moved), and every worker starts from a copy of
  its energy file (so counters continue). A configured ``[mqtt] client_id`` gets ``-w<j>`` for
  j > 0 (two sessions with one id would kick each other).
- **Health**: the supervisor alone serves ``healthz_port``: ``/healthz`` asks every worker's own
  ``/healthz`` (on a loopback port it assigns) and is 200 only while every worker is running and
  healthy; the body names the failing workers (``workers_failing``) with the reason, and sums
  devices, points and the spool. ``/livez`` is 200 while the supervisor answers.
- **Restarts**: a worker that exits (crash, SIGKILL, an out-of-memory kill) is started again after
  a capped exponential backoff (1 s, 2 s, 4 s ... 60 s; back to 1 s after a worker ran for a minute).
  A fresh worker seeds its devices over HTTP at start, and replays its spool.
- **Stopping**: SIGTERM/SIGINT to the supervisor is passed to every worker (each writes what is
  pending to InfluxDB or its spool within 8 s); a worker still running after 9.5 s is killed, so
  the whole ends within the 10 s promise. Workers get SIGTERM when the supervisor dies (Linux's
  parent-death signal).
- **Jobs**: the hourly rollups run in worker 0 only; each worker logs its own
  ``collector.summary`` and writes its own ``ecoflow_collector`` point (tagged with its client id).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from collector.config import AccountSettings, Settings

log = structlog.get_logger("collector.supervisor")

WORKER_DIR = "worker-{}"
STOP_WITHIN_S = 9.5  # SIGTERM -> every worker gone (the daemon's promise is 10 s)
RESTART_INITIAL_S = 1.0
RESTART_MAX_S = 60.0
HEALTHY_RUN_S = 60.0  # a worker that ran this long starts its backoff over
_ENV = "ECOFLOW_COLLECTOR_COLLECTOR__"
_PR_SET_PDEATHSIG = 1


def worker_shard(worker: int, workers: int, outer: tuple[int, int] | None) -> tuple[int, int]:
    """(index from 0, count) of worker `worker` of `workers` in an instance with the outer shard
    `outer` (index, count) or none: ``j*M + i`` of ``M*N``, which keeps the instance's devices."""
    index, count = outer if outer is not None else (0, 1)
    return worker * count + index, count * workers


def worker_state_dir(state_dir: Path, worker: int) -> Path:
    return state_dir / WORKER_DIR.format(worker)


def worker_client_id(configured: str | None, worker: int) -> str | None:
    """A configured client id for worker `worker`: as configured for worker 0, ``-w<j>`` after it."""
    if not configured or worker == 0:
        return configured
    return f"{configured}-w{worker}"


def client_id_file(account: str | None) -> str:
    """The name of an account's persisted client id in a state directory (see StateDir.client_id)."""
    return "mqtt_client_id" if account in (None, "default") else f"mqtt_client_id.{account.lower()}"


def adopt_single_process_state(
    state_dir: Path, workers: int, accounts: Sequence[AccountSettings]
) -> list[str]:
    """First start with workers after running as one process: worker 0 takes over the client ids
    (no new id is burned) and the spool (nothing spooled is left behind); every worker starts from
    the energy file. Returns what was taken over (for the log); does nothing the second time."""
    taken: list[str] = []
    first = worker_state_dir(state_dir, 0)
    first.mkdir(parents=True, exist_ok=True)
    for account in accounts:
        name = client_id_file(account.name)
        old, new = state_dir / name, first / name
        if old.exists() and not new.exists():
            shutil.copy2(old, new)
            taken.append(name)
    spool = state_dir / "spool"
    if spool.is_dir() and any(spool.iterdir()) and not (first / "spool").exists():
        os.replace(spool, first / "spool")
        taken.append("spool")
    energy = state_dir / "energy.json"
    if energy.exists():
        for worker in range(workers):
            target = worker_state_dir(state_dir, worker) / "energy.json"
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copy2(energy, target)
        # kept under another name: a later return to one process must not go back to these values
        os.replace(energy, state_dir / "energy.json.before-workers")
        taken.append("energy.json")
    return taken


def loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the worker outlives a killed supervisor
        pass


def describe_exit(code: int) -> dict[str, Any]:
    """Popen's returncode as log fields: `exit_code`, or `signal` (its name) when it was killed."""
    if code < 0:
        try:
            return {"signal": signal.Signals(-code).name}
        except ValueError:
            return {"signal": -code}
    return {"exit_code": code}


@dataclass
class Worker:
    index: int
    shard: tuple[int, int]
    state_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0
    backoff_s: float = RESTART_INITIAL_S
    restart_at: float | None = None
    last_exit: dict[str, Any] = field(default_factory=dict)

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Supervisor:
    """Starts, watches and stops the workers; serves nothing itself (see :meth:`health`)."""

    def __init__(
        self,
        settings: Settings,
        config: Path | None,
        outer_shard: tuple[int, int] | None,
        *,
        command: Sequence[str] | None = None,
        restart_initial_s: float = RESTART_INITIAL_S,
        restart_max_s: float = RESTART_MAX_S,
        log_args: Sequence[str] = (),
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.count = settings.collector.workers
        self._command = list(command or [sys.executable, "-m", "collector"])
        self._log_args = list(log_args)
        self._environ = dict(os.environ if environ is None else environ)
        self._restart_initial_s = restart_initial_s
        self._restart_max_s = restart_max_s
        state_dir = settings.collector.state_dir
        self.workers = [
            Worker(
                j,
                worker_shard(j, self.count, outer_shard),
                worker_state_dir(state_dir, j),
                backoff_s=restart_initial_s,
            )
            for j in range(self.count)
        ]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="supervisor", daemon=True)

    # --- workers -------------------------------------------------------------------------------

    def _spawn(self, worker: Worker) -> None:
        worker.port = loopback_port()  # a new one each start: the old may have been taken meanwhile
        index, count = worker.shard
        env = {
            **self._environ,
            f"{_ENV}WORKERS": "1",
            f"{_ENV}STATE_DIR": str(worker.state_dir),
            f"{_ENV}HEALTHZ_PORT": str(worker.port),
            f"{_ENV}HEALTHZ_HOST": "127.0.0.1",
            f"{_ENV}SHARD": f"{index + 1}/{count}",
        }
        argv = [*self._command, *self._log_args, "run", "--worker", str(worker.index)]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        worker.process = subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent)
        worker.started_at = time.monotonic()
        worker.starts += 1
        worker.restart_at = None
        event = "supervisor.worker_started" if worker.starts == 1 else "supervisor.worker_restarted"
        log.info(
            event,
            worker=worker.index,
            pid=worker.process.pid,
            shard=f"{index + 1}/{count}",
            healthz_port=worker.port,
            **({"restarts": worker.starts - 1} if worker.starts > 1 else {}),
        )

    def _reap(self, worker: Worker, now: float) -> None:
        """A worker ended: log it with its exit code or signal and schedule its restart."""
        assert worker.process is not None
        code = worker.process.returncode
        ran = now - worker.started_at
        if ran >= HEALTHY_RUN_S:
            worker.backoff_s = self._restart_initial_s
        delay = worker.backoff_s
        worker.backoff_s = min(worker.backoff_s * 2, self._restart_max_s)
        worker.restart_at = now + delay
        worker.last_exit = describe_exit(code)
        log.warning(
            "supervisor.worker_exited",
            worker=worker.index,
            pid=worker.process.pid,
            ran_s=round(ran, 1),
            restart_in_s=delay,
            **worker.last_exit,
        )

    def _watch(self) -> None:
        while not self._stopping.wait(0.2):
            now = time.monotonic()
            with self._lock:
                if self._stopping.is_set():
                    return
                for worker in self.workers:
                    if worker.restart_at is None and worker.process is not None and not worker.running():
                        self._reap(worker, now)
                    if worker.restart_at is not None and now >= worker.restart_at:
                        try:
                            self._spawn(worker)
                        except OSError as exc:
                            worker.restart_at = now + worker.backoff_s
                            log.error("supervisor.worker_start_failed", worker=worker.index, error=str(exc))

    def start(self) -> None:
        taken = adopt_single_process_state(
            self.settings.collector.state_dir, self.count, self.settings.account_settings()
        )
        if taken:
            log.info("supervisor.adopted_single_process_state", into=WORKER_DIR.format(0), taken=taken)
        with self._lock:
            for worker in self.workers:
                self._spawn(worker)
        log.info("supervisor.started", workers=self.count, pid=os.getpid())
        self._thread.start()

    def stop(self, within_s: float = STOP_WITHIN_S) -> int:
        """SIGTERM to every worker, SIGKILL to those still running after `within_s`. Returns 0
        when every worker stopped by itself with status 0, else 1."""
        deadline = time.monotonic() + within_s
        with self._lock:
            self._stopping.set()
            running = [w for w in self.workers if w.running()]
            for worker in running:
                assert worker.process is not None
                with contextlib.suppress(OSError):
                    worker.process.send_signal(signal.SIGTERM)
        status = 0
        for worker in running:
            assert worker.process is not None
            try:
                code = worker.process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                code = worker.process.wait(5)
                log.error("supervisor.worker_killed", worker=worker.index, after_s=within_s)
                status = 1
            if code != 0:
                status = 1
        self._thread.join(2)
        log.info("supervisor.stopped", workers=self.count, status=status)
        return status

    # --- health --------------------------------------------------------------------------------

    def health(self, timeout: float = 2.0) -> tuple[bool, dict[str, Any]]:
        """Every worker's /healthz, asked in parallel: healthy while all are running and healthy."""
        answers: dict[int, dict[str, Any]] = {}

        def ask(worker: Worker) -> None:
            answers[worker.index] = self._worker_health(worker, timeout)

        threads = [threading.Thread(target=ask, args=(w,), daemon=True) for w in self.workers]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout + 1)
        details = {
            str(w.index): answers.get(w.index, {"healthy": False, "problem": "no answer in time"})
            for w in self.workers
        }
        failing = sorted((k for k, d in details.items() if not d.get("healthy")), key=int)
        healthy = not failing

        def total(key: str) -> int:
            return sum(int(d.get(key) or 0) for d in details.values())

        return healthy, {
            "workers": details,
            "workers_failing": failing,
            "problem": "; ".join(f"worker {k}: {details[k].get('problem') or 'unhealthy'}" for k in failing)
            or None,
            "mqtt_connected": all(d.get("mqtt_connected") for d in details.values()),
            "devices": total("devices"),
            "devices_online": total("devices_online"),
            "points_written": total("points_written"),
            "spool_points": total("spool_points"),
            "accounts_failing": sorted(
                {name for d in details.values() for name in d.get("accounts_failing") or []}
            ),
        }

    def _worker_health(self, worker: Worker, timeout: float) -> dict[str, Any]:
        with self._lock:
            process, port, restart_at = worker.process, worker.port, worker.restart_at
            base: dict[str, Any] = {
                "pid": process.pid if process is not None else None,
                "shard": f"{worker.shard[0] + 1}/{worker.shard[1]}",
                "restarts": max(worker.starts - 1, 0),
            }
            if process is None or process.poll() is not None or restart_at is not None:
                how = worker.last_exit or (describe_exit(process.returncode) if process is not None else {})
                ended = ", ".join(f"{k} {v}" for k, v in how.items()) or "not started"
                left = max(restart_at - time.monotonic(), 0.0) if restart_at is not None else 0.0
                return {
                    **base,
                    "healthy": False,
                    "running": False,
                    "problem": f"not running ({ended}); restart in {left:.0f} s",
                }
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=timeout) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as error:
            try:
                body = json.loads(error.read())
            except ValueError:
                body = {"healthy": False, "problem": f"its /healthz answered {error.code}"}
        except (OSError, ValueError) as exc:
            return {**base, "healthy": False, "running": True, "problem": f"starting (its /healthz: {exc})"}
        if not body.get("healthy") and not body.get("problem"):
            reasons = []
            if body.get("accounts_failing"):
                reasons.append("accounts failing: " + ", ".join(body["accounts_failing"]))
            if body.get("writer_stuck"):
                reasons.append("InfluxDB writer stuck")
            body["problem"] = "; ".join(reasons) or "unhealthy"
        return {**base, "running": True, **body}


def install_signals(stop: threading.Event, on_signal: Callable[[int], None] | None = None) -> None:
    def handler(signum: int, _frame: Any) -> None:
        if on_signal is not None:
            on_signal(signum)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
