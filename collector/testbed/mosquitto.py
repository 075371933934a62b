"""A private Mosquitto 2.0 broker with a plain and a TLS listener, password auth and an ACL.

Like EcoFlow's broker: no anonymous access, users with passwords (``certificateAccount`` /
``certificatePassword``), and by default each user may only use topics under ``/open/{user}/#``.
Note that Mosquitto 2.0's ACL grants every SUBSCRIBE (SUBACK carries the requested QoS even for
another user's topics) and filters at delivery: a denied subscription simply receives nothing,
and a denied PUBLISH is dropped silently (it is still acknowledged at QoS 1).

Run as root, mosquitto would drop to the ``mosquitto`` user before reading the TLS key and the
password file; the config written here says ``user root`` in that case, so everything in the
private 0700 work directory stays readable (mosquitto logs a warning about running as root).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from collector.testbed._process import (
    ManagedProcess,
    ServerNotInstalledError,
    TestbedError,
    find_binary,
    log_tail,
    make_workdir,
    register_atexit,
    unregister_atexit,
)
from collector.testbed.ports import free_port, port_accepts
from collector.testbed.tls import TlsFiles, make_tls_files

__all__ = ["DEFAULT_ACL_PATTERNS", "MosquittoServer", "ServerNotInstalledError"]

#: Topics a user may read and write when the ACL is on (``%u`` is the user name).
DEFAULT_ACL_PATTERNS: tuple[str, ...] = ("/open/%u/#",)

_USER_RE = re.compile(r"^[^\s:#+/]+$")


class MosquittoServer:
    """Mosquitto on two free 127.0.0.1 ports: :attr:`port` (plain) and :attr:`tls_port` (TLS).

    Both listeners need a user name and password from ``users``. With ``acl=True`` each user may
    read and write only topics matching ``acl_patterns`` (default ``/open/%u/#``). Clients verify
    the TLS listener with :attr:`ca_file`; the server certificate is valid for ``localhost`` and
    ``127.0.0.1``. Ports are kept for the life of the object (:meth:`restart` uses the same ones).
    """

    def __init__(
        self,
        users: Mapping[str, str] | None = None,
        *,
        acl: bool = True,
        acl_patterns: Sequence[str] = DEFAULT_ACL_PATTERNS,
        workdir: Path | None = None,
        host: str = "127.0.0.1",
        mosquitto_bin: str | os.PathLike[str] | None = None,
        mosquitto_passwd_bin: str | os.PathLike[str] | None = None,
        startup_timeout: float = 15.0,
        keep_workdir: bool = False,
    ) -> None:
        self.users: dict[str, str] = {}
        for name, password in (users or {}).items():
            self._check_user(name, password)
            self.users[name] = password
        self.acl = acl
        self.acl_patterns = tuple(acl_patterns)
        for pattern in self.acl_patterns:
            if "\n" in pattern or not pattern:
                raise ValueError(f"bad ACL pattern {pattern!r}")
        self.host = host
        self.startup_timeout = startup_timeout
        self.keep_workdir = keep_workdir
        self._mosquitto_bin = find_binary("mosquitto", mosquitto_bin)
        self._passwd_bin = find_binary("mosquitto_passwd", mosquitto_passwd_bin)
        self._given_workdir = workdir
        self._workdir: Path | None = None
        self._tls: TlsFiles | None = None
        self._ports_fixed = False
        self.port = free_port(host)
        self.tls_port = free_port(host)
        self._proc: ManagedProcess | None = None

    def __repr__(self) -> str:
        return (
            f"<MosquittoServer {self.host} port={self.port} tls_port={self.tls_port} "
            f"running={self.is_running()}>"
        )

    @staticmethod
    def _check_user(name: str, password: str) -> None:
        if not _USER_RE.match(name):
            raise ValueError(f"unsupported MQTT user name {name!r}")
        if "\n" in password or "\x00" in password or not password:
            raise ValueError("password must be non-empty and contain no newline")

    # ------------------------------------------------------------------ properties
    @property
    def workdir(self) -> Path:
        if self._workdir is None:
            raise TestbedError("MosquittoServer has not been started")
        return self._workdir

    @property
    def tls_files(self) -> TlsFiles:
        if self._tls is None:
            raise TestbedError("MosquittoServer has not been started")
        return self._tls

    @property
    def ca_file(self) -> Path:
        """PEM file of the throwaway CA that signed the TLS listener's certificate."""
        return self.tls_files.ca_cert

    @property
    def log_file(self) -> Path:
        return self.workdir / "mosquitto.log"

    @property
    def password_file(self) -> Path:
        return self.workdir / "passwd"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.is_running() else None

    def is_running(self) -> bool:
        return self._proc is not None and self._proc.is_running()

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
        """Start the broker; return once both ports accept connections."""
        if self.is_running():
            raise TestbedError("MosquittoServer is already started")
        self._prepare_workdir()
        register_atexit(self, self.stop)
        attempts = 1 if self._ports_fixed else 4
        for attempt in range(attempts):
            try:
                self._start_process()
            except _PortInUse:
                if attempt == attempts - 1:
                    self.stop()
                    raise TestbedError(f"ports {self.port}/{self.tls_port} stayed in use") from None
                self.port, self.tls_port = free_port(self.host), free_port(self.host)
                continue
            except BaseException:
                self.stop()
                raise
            self._ports_fixed = True
            return

    def stop(self) -> None:
        """Stop the broker (SIGTERM, SIGKILL after a timeout); delete the temporary work directory
        unless ``keep_workdir`` or a ``workdir`` was given. Safe to call more than once."""
        unregister_atexit(self)
        if self._proc is not None:
            self._proc.stop(timeout=5.0)
        if self._workdir is not None and self._given_workdir is None and not self.keep_workdir:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
            self._tls = None

    def kill(self) -> None:
        """SIGKILL the broker (clients see their connections drop); :meth:`restart` brings it back."""
        if self._proc is not None:
            self._proc.kill()

    def restart(self) -> None:
        """Start the broker again on the same ports with the same users, ACL and certificates."""
        if self._workdir is None:
            self.start()
            return
        if self._proc is not None:
            self._proc.stop(timeout=5.0)
        self._start_process()

    # ------------------------------------------------------------------ users
    def add_user(self, name: str, password: str) -> None:
        """Add (or change) a user: rewrites the password file and reloads a running broker."""
        self._check_user(name, password)
        self.users[name] = password
        self._refresh_users()

    def remove_user(self, name: str) -> None:
        """Remove a user (existing connections stay); rewrites the password file and reloads."""
        self.users.pop(name, None)
        self._refresh_users()

    def _refresh_users(self) -> None:
        if self._workdir is None:
            return
        self._write_password_file()
        if self.is_running():
            self.reload()

    def reload(self, timeout: float = 10.0) -> None:
        """SIGHUP the broker (re-reads password and ACL files); waits for its "Reloading" log line."""
        proc = self._proc
        if proc is None or not proc.is_running():
            raise TestbedError("mosquitto is not running")
        before = self._log_text().count("Reloading config")
        proc.send_signal(1)  # SIGHUP
        deadline = time.monotonic() + timeout
        while self._log_text().count("Reloading config") <= before:
            if time.monotonic() >= deadline:
                raise TestbedError("mosquitto did not log a reload; log:\n" + log_tail(self.log_file))
            time.sleep(0.02)
        # The line is logged before the files are read again; give it a moment to finish.
        time.sleep(0.05)

    # ------------------------------------------------------------------ internals
    def _log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""

    def _prepare_workdir(self) -> None:
        if self._workdir is None:
            if self._given_workdir is not None:
                self._workdir = self._given_workdir.resolve()
                self._workdir.mkdir(parents=True, exist_ok=True)
            else:
                self._workdir = make_workdir("testbed-mosquitto-")
        if any(ch in str(self._workdir) for ch in ("\n", " ")):
            raise ValueError(f"unsupported character in testbed path {self._workdir!s}")
        if self._tls is None:
            self._tls = make_tls_files(self._workdir / "tls")
        self._write_password_file()
        self._write_acl_file()

    def _write_password_file(self) -> None:
        target = self.password_file
        tmp = target.with_name(f".passwd.{secrets.token_hex(4)}")
        tmp.write_text("")
        try:
            for name, password in self.users.items():
                result = subprocess.run(
                    [self._passwd_bin, "-b", str(tmp), name, password],
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=30,
                    check=False,
                )
                if result.returncode != 0:
                    raise TestbedError(
                        f"mosquitto_passwd failed for {name!r}: "
                        + (result.stderr or result.stdout).decode("utf-8", "replace")
                    )
            os.chmod(tmp, 0o600)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    def _write_acl_file(self) -> None:
        lines = ["# written by collector.testbed", *(f"pattern readwrite {p}" for p in self.acl_patterns)]
        (self.workdir / "acl").write_text("\n".join(lines) + "\n")

    def _config(self) -> str:
        wd = self.workdir
        tls = self.tls_files
        lines = [
            "# written by collector.testbed",
            "user root" if os.geteuid() == 0 else "",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {wd / 'passwd'}",
            f"acl_file {wd / 'acl'}" if self.acl else "",
            "persistence false",
            f"log_dest file {wd / 'mosquitto.log'}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "",
            f"listener {self.port} {self.host}",
            "",
            f"listener {self.tls_port} {self.host}",
            f"cafile {tls.ca_cert}",
            f"certfile {tls.server_cert}",
            f"keyfile {tls.server_key}",
            "",
        ]
        return "\n".join(lines)

    def _start_process(self) -> None:
        wd = self.workdir
        conf = wd / "mosquitto.conf"
        conf.write_text(self._config())
        stdout_log = wd / "stdout.log"
        proc = ManagedProcess("mosquitto", [self._mosquitto_bin, "-c", str(conf)], stdout_log, cwd=wd)
        self._proc = proc
        log_offset = len(self._log_text())
        proc.start()
        deadline = time.monotonic() + self.startup_timeout
        while True:
            new_log = self._log_text()[log_offset:]
            if not proc.is_running():
                if "address already in use" in new_log.lower() and not self._ports_fixed:
                    raise _PortInUse()
                raise TestbedError(
                    f"mosquitto exited at start (code {proc.returncode}); log {self.log_file}:\n"
                    + log_tail(self.log_file)
                    + "\n"
                    + log_tail(stdout_log)
                )
            if (
                " running" in new_log
                and port_accepts(self.host, self.port)
                and port_accepts(self.host, self.tls_port)
            ):
                return
            if time.monotonic() >= deadline:
                proc.kill()
                raise TestbedError(
                    f"mosquitto did not listen on {self.port}/{self.tls_port} within "
                    f"{self.startup_timeout:.0f} s; log {self.log_file}:\n"
                    + log_tail(self.log_file)
                    + "\n"
                    + log_tail(stdout_log)
                )
            time.sleep(0.05)


class _PortInUse(Exception):
    pass
