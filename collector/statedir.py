"""The state directory: the persisted MQTT client id and the single-instance lock.

EcoFlow's broker allows only about 10 distinct client ids per account per day and kicks a session
whose id is used elsewhere: so the id is derived once and kept, and a second instance on the same
state directory is refused instead of fighting the first one for the session.
"""

from __future__ import annotations

import fcntl
import os
import secrets
from pathlib import Path
from typing import IO


class StateDirError(Exception):
    """The state directory cannot be used (not writable, or locked by another instance)."""


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_file: IO[str] | None = None
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StateDirError(f"state_dir {path}: {exc.strerror}") from None

    def lock(self) -> None:
        """Hold an exclusive lock for the life of the process; refuse if another instance has it."""
        lock_path = self.path / "collector.lock"
        handle = lock_path.open("a+", encoding="ascii")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise StateDirError(
                f"another collector (pid {holder}) is running with state_dir {self.path}; "
                "two instances with the same state would share one MQTT client id and kick each other"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._lock_file = handle

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing releases the flock
            self._lock_file = None

    def client_id(self, configured: str | None, account: str | None = None) -> str:
        """The configured id, else the one derived on the first start and kept since: one per
        account, in `mqtt_client_id` for the one-account form (`account` None or "default": the
        file of every install from before accounts existed) and `mqtt_client_id.<account>` else."""
        if configured:
            return configured
        name = "mqtt_client_id" if account in (None, "default") else f"mqtt_client_id.{account.lower()}"
        path = self.path / name
        try:
            existing = path.read_text(encoding="ascii").strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        client_id = f"ecoflow-collector-{secrets.token_hex(8)}"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(client_id + "\n", encoding="ascii")
        os.replace(tmp, path)
        return client_id


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves the old file or the new one, never a mix:
    write a temporary file beside it, fsync it, rename it over the old one, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)
