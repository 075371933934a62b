"""Process handling shared by the testbed servers.

Every server process is started with :class:`subprocess.Popen` (so its real PID is known, never a
shell's), in a session and process group of its own (``start_new_session=True``, so a Ctrl-C in a
terminal does not reach it and its children can be killed as a group), with stdin from /dev/null
and stdout/stderr appended to a log file (never a pipe: a daemon holding a pipe hangs readers).

Stopping sends a signal, waits with a timeout, then SIGKILLs the whole process group. A process
in state ``Z`` (zombie) counts as stopped: PID 1 on these machines reaps orphans only every ~2 s.

All processes that are still running when the interpreter exits are stopped by an ``atexit``
hook, and so are the servers registered with :func:`register_atexit`. When a process is started
from the main thread and util-linux ``setpriv`` exists, it is also started through
``setpriv --pdeathsig KILL`` (which execs the server, so the PID stays the server's): the kernel
then kills it if the Python process dies without running ``atexit`` (SIGKILL, SIGHUP, SIGTERM).
Not from other threads: the parent-death signal fires when the *thread* that forked exits.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "ManagedProcess",
    "ServerNotInstalledError",
    "TestbedError",
    "find_binary",
    "group_members",
    "is_pid_alive",
    "log_tail",
    "make_workdir",
    "register_atexit",
    "unregister_atexit",
]


INSTALL_HINT = "run `.ci/install-servers.sh` (as root) to install the test servers"


class TestbedError(RuntimeError):
    """A testbed server could not be started, stopped or used."""

    __test__ = False  # not a pytest test class, despite the name


class ServerNotInstalledError(TestbedError):
    """A server binary (influxd, nginx, mosquitto, ...) is not installed."""


def find_binary(name: str, explicit: str | os.PathLike[str] | None = None) -> str:
    """Path of an executable: ``explicit`` if given, else PATH, else /usr/sbin and /usr/bin."""
    if explicit is not None:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ServerNotInstalledError(f"{path} is not an executable file; {INSTALL_HINT}")
        return str(path)
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise ServerNotInstalledError(f"{name} not found in PATH, /usr/sbin or /usr/bin; {INSTALL_HINT}")


def _proc_state(pid: int) -> str | None:
    """The one-letter state of ``pid`` from /proc (``None`` when there is no such process)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    # Format: "pid (comm) S ppid pgrp ..."; comm may contain spaces and parentheses.
    end = data.rfind(b")")
    if end < 0:
        return None
    fields = data[end + 2 :].split()
    return fields[0].decode() if fields else None


def is_pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie (``Z``) or dead (``X``)."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """PIDs of live (non-zombie) processes whose process group is ``pgid``."""
    members: list[int] = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return members
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        end = data.rfind(b")")
        if end < 0:
            continue
        fields = data[end + 2 :].split()
        # fields: state ppid pgrp ...
        if len(fields) < 3:
            continue
        if int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry))
    return members


def log_tail(path: Path, max_lines: int = 40, max_chars: int = 6000) -> str:
    """The last lines of a log file, for error messages (empty string when unreadable)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_chars))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = text.splitlines()[-max_lines:]
    return "\n".join(lines)


_SETPRIV: list[str | None] = []


def _setpriv() -> str | None:
    """Path of a ``setpriv`` that knows ``--pdeathsig`` (util-linux >= 2.33), else ``None``."""
    if not _SETPRIV:
        found = shutil.which("setpriv") or shutil.which("setpriv", path="/usr/bin:/bin")
        if found is not None:
            try:
                helptext = subprocess.run(
                    [found, "--help"], capture_output=True, timeout=10, check=False, stdin=subprocess.DEVNULL
                ).stdout
            except (OSError, subprocess.SubprocessError):
                helptext = b""
            if b"--pdeathsig" not in helptext:
                found = None
        _SETPRIV.append(found)
    return _SETPRIV[0]


_OWNER_FILE = "testbed-owner.pid"


def make_workdir(prefix: str) -> Path:
    """A new private (0700) temporary directory ``<tmp>/<prefix>XXXX`` owned by this process.

    Directories with the same prefix left behind by a process that no longer exists (one that
    was SIGKILLed, say) are deleted first.
    """
    base = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for old in base.glob(f"{prefix}*"):
            try:
                owner = int((old / _OWNER_FILE).read_text().strip())
            except (OSError, ValueError):
                continue
            if owner != os.getpid() and not is_pid_alive(owner):
                shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=prefix)).resolve()
    (path / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    return path


class ManagedProcess:
    """One server process, tracked by its real PID and process group."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        die_with_parent: bool = True,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.cwd = cwd
        self.env = dict(env) if env is not None else None
        self.stop_signal = stop_signal
        self.die_with_parent = die_with_parent
        self._popen: subprocess.Popen[bytes] | None = None

    def __repr__(self) -> str:
        return f"<ManagedProcess {self.name} pid={self.pid} running={self.is_running()}>"

    @property
    def pid(self) -> int | None:
        """PID of the current (or last) process, ``None`` before the first start."""
        return self._popen.pid if self._popen is not None else None

    @property
    def returncode(self) -> int | None:
        return self._popen.poll() if self._popen is not None else None

    def start(self) -> None:
        if self.is_running():
            raise TestbedError(f"{self.name} is already running (pid {self.pid})")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = self.argv
        if self.die_with_parent and threading.current_thread() is threading.main_thread():
            setpriv = _setpriv()
            if setpriv is not None:
                argv = [setpriv, "--pdeathsig", "KILL", "--", *argv]
        with self.log_path.open("ab") as log:
            log.write(f"--- testbed: starting {' '.join(argv)}\n".encode())
            log.flush()
            try:
                self._popen = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.cwd,
                    env=self.env,
                    close_fds=True,
                    start_new_session=True,
                )
            except OSError as exc:
                raise TestbedError(f"cannot start {self.name} ({self.argv[0]}): {exc}") from exc
        _live_processes.add(self)

    def is_running(self) -> bool:
        """True while the process exists and is neither reaped nor a zombie."""
        if self._popen is None or self._popen.poll() is not None:
            return False
        return is_pid_alive(self._popen.pid)

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself (not its group); no-op once it has exited."""
        if self._popen is not None and self._popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._popen.pid, sig)

    def _kill_group(self) -> None:
        if self._popen is None:
            return
        # The PGID equals the leader's PID (start_new_session). The kernel does not reuse a PID
        # while it still names a process group, so this cannot hit an unrelated process.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._popen.pid, signal.SIGKILL)

    def _wait_group_gone(self, timeout: float) -> None:
        if self._popen is None:
            return
        deadline = time.monotonic() + timeout
        while group_members(self._popen.pid) and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, timeout: float = 10.0, sig: int | None = None) -> None:
        """Ask the process to end (``sig``, default its stop signal); SIGKILL the group on timeout.

        Leftover members of its process group (e.g. nginx workers) are SIGKILLed afterwards.
        """
        popen = self._popen
        if popen is None:
            return
        try:
            if popen.poll() is None:
                self.send_signal(self.stop_signal if sig is None else sig)
                try:
                    popen.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self._kill_group()
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        popen.wait(timeout=10.0)
            if group_members(popen.pid):
                self._kill_group()
                self._wait_group_gone(5.0)
        finally:
            if popen.poll() is not None:
                _live_processes.discard(self)

    def kill(self) -> None:
        """SIGKILL the process and its group at once and reap it."""
        popen = self._popen
        if popen is None:
            return
        self._kill_group()
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=10.0)
        self._wait_group_gone(5.0)
        if popen.poll() is not None:
            _live_processes.discard(self)

    def wait_exit(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` for the process to exit; its exit code or ``None``."""
        if self._popen is None:
            return None
        try:
            return self._popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None


_live_processes: set[ManagedProcess] = set()
_atexit_callbacks: dict[int, Callable[[], None]] = {}
_lock = threading.Lock()


def register_atexit(key: object, callback: Callable[[], None]) -> None:
    """Run ``callback`` at interpreter exit unless :func:`unregister_atexit` is called first."""
    with _lock:
        _atexit_callbacks[id(key)] = callback


def unregister_atexit(key: object) -> None:
    with _lock:
        _atexit_callbacks.pop(id(key), None)


@atexit.register
def _cleanup_at_exit() -> None:
    with _lock:
        callbacks = list(_atexit_callbacks.values())
        _atexit_callbacks.clear()
    for callback in callbacks:
        with contextlib.suppress(Exception):
            callback()
    for proc in list(_live_processes):
        with contextlib.suppress(Exception):
            proc.stop(timeout=3.0)
