"""The spool: a durable on-disk FIFO of line-protocol batches, in transactions.

What the writer cannot deliver goes here, and it is replayed from here, oldest first. The promise:
a ``kill -9`` (or a power cut, given a disk that honours fsync) at any moment loses nothing that
:meth:`Spool.append` returned for, and leaves nothing that stops the next start.

On disk, in the spool directory::

    lock                     flock(2)ed while a process has the spool open (one user at a time)
    0000000000000007.seg     segments, oldest (lowest id) first
    0000000000000008.seg
    cursor                   JSON {"segment": 7, "offset": 4096}: where the oldest unread record is

A segment is the 8-byte magic ``ECSPOOL1`` followed by records::

    u32 length | u32 points | u32 crc | payload (length bytes: UTF-8 lines joined by "\\n")

all little-endian; ``crc`` is CRC-32 over the first 8 header bytes and the payload, so a torn
header is caught as surely as a torn payload. A record is written with one ``write`` and made
durable with ``fdatasync`` before :meth:`Spool.append` returns; a reader never sees a record
before that. A segment is closed for appends once it reaches ``segment_bytes``.

:meth:`Spool.peek` returns the oldest records (a :class:`SpoolBatch`) without consuming them;
:meth:`Spool.commit` advances the cursor past them, replacing the cursor file atomically (write
``cursor.tmp``, fsync, rename, fsync the directory), then deletes segments read to the end.
Not committing leaves the records for the next ``peek``: delivery is at-least-once.

On open, leftovers of a crash are repaired: a temp cursor is deleted, a segment too short to hold
its magic is deleted (one with a wrong magic is renamed ``*.corrupt``), every segment's records
are walked by their lengths and the newest segment's also CRC-checked, a torn or corrupt tail is
truncated away (with a warning), segments before the cursor are deleted. Appends then go to a new
segment: nothing is ever written after data an earlier process left. A CRC error (or a missing
segment file) found later while reading drops the rest of that segment, with an error log, instead
of blocking the spool for ever.

The spool is bounded by ``max_bytes`` on disk: an append that would exceed it first deletes the
oldest segments (unread records in them are counted in ``dropped_points``/``dropped_bytes`` and
logged), so the newest data survives a long outage.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import structlog

__all__ = ["Spool", "SpoolBatch", "SpoolClosedError", "SpoolError", "SpoolStats"]

log = structlog.get_logger("collector.spool")

MAGIC: Final = b"ECSPOOL1"
_HEADER: Final = struct.Struct("<III")  # length, points, crc
# Far above any batch the writer makes (100k points of a few hundred bytes); a length beyond it is
# a torn or foreign header, not a record.
MAX_RECORD_BYTES: Final = 256 * 1024 * 1024
_SEGMENT_SUFFIX: Final = ".seg"
_CURSOR: Final = "cursor"
_CURSOR_TMP: Final = "cursor.tmp"

Position = tuple[int, int]  # (segment id, byte offset in it); ordered like the data


class SpoolError(Exception):
    """The spool cannot be opened or written (in use by another process, I/O error)."""


class SpoolClosedError(SpoolError):
    """The spool was used after :meth:`Spool.close`."""


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """The oldest records, joined: what :meth:`Spool.peek` hands out and :meth:`Spool.commit` takes back."""

    payload: bytes  # the records' payloads joined by b"\n": line protocol ready to send
    points: int
    records: int
    end: Position
    parts: tuple[tuple[Position, int, int], ...]  # (position, points, bytes) of each record, oldest first


@dataclass(frozen=True, slots=True)
class SpoolStats:
    batches: int  # records not yet committed
    points: int
    bytes: int  # bytes of those records, headers included
    disk_bytes: int  # all segment files (what max_bytes bounds)
    segments: int
    dropped_batches: int  # records lost to the max_bytes bound or to corruption, since open
    dropped_points: int
    dropped_bytes: int


@dataclass(slots=True)
class _Segment:
    id: int
    size: int  # bytes of valid data (magic + whole records)
    records: int  # records not yet committed
    points: int
    live_bytes: int  # bytes of those records


def _segment_name(segment_id: int) -> str:
    return f"{segment_id:016d}{_SEGMENT_SUFFIX}"


def _record_crc(length: int, points: int, payload: bytes | memoryview) -> int:
    return zlib.crc32(payload, zlib.crc32(struct.pack("<II", length, points)))


def _fsync_dir(directory: Path, fsync: Callable[[int], None] = os.fsync) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:
        raise OSError(errno.EIO, f"short read: {len(data)} of {size} bytes at offset {offset}")
    return data


class Spool:
    """A durable FIFO of line-protocol batches; thread-safe (one reader, appends from any thread)."""

    def __init__(
        self,
        directory: Path,
        max_bytes: int,
        *,
        segment_bytes: int | None = None,
        fsync: Callable[[int], None] | None = None,
    ) -> None:
        """``fsync``, when given, replaces every ``fdatasync``/``fsync`` of the spool's files and
        directory (it must make the fd's data durable: e.g. a benchmark's slow-disk stand-in that
        sleeps, then calls ``os.fdatasync``)."""
        if max_bytes < 4096:
            raise ValueError("max_bytes must be at least 4096")
        self.directory = directory
        self.max_bytes = max_bytes
        # Overflow deletes whole segments: 1/16 of the bound keeps that loss small without making
        # thousands of files.
        self.segment_bytes = segment_bytes or min(max(max_bytes // 16, 64 * 1024), 64 * 1024 * 1024)
        self._datasync: Callable[[int], None] = fsync or os.fdatasync
        self._fullsync: Callable[[int], None] = fsync or os.fsync
        self._lock = threading.Lock()
        self._closed = False
        self._segments: list[_Segment] = []
        self._cursor: Position = (0, len(MAGIC))
        self._next_id = 1
        self._append_fd: int | None = None  # open on the newest segment while it takes appends
        self._read_fd: tuple[int, int] | None = None  # (segment id, fd)
        self._dropped_batches = 0
        self._dropped_points = 0
        self._dropped_bytes = 0
        directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolError(f"spool {directory} is in use by another process") from None
        try:
            self._recover()
        except BaseException:
            os.close(self._lock_fd)
            raise

    # ------------------------------------------------------------------ opening

    def _recover(self) -> None:
        (self.directory / _CURSOR_TMP).unlink(missing_ok=True)
        cursor = self._read_cursor()
        ids = sorted(
            int(path.name.removesuffix(_SEGMENT_SUFFIX))
            for path in self.directory.glob("*" + _SEGMENT_SUFFIX)
            if path.name.removesuffix(_SEGMENT_SUFFIX).isdigit()
        )
        if cursor is not None:
            for segment_id in [i for i in ids if i < cursor[0]]:
                # read to the end before a crash that came before their deletion
                self._path(segment_id).unlink(missing_ok=True)
                ids.remove(segment_id)
            if ids and ids[0] != cursor[0]:
                # the cursor's segment was deleted (read to the end, or dropped on overflow)
                cursor = (ids[0], len(MAGIC))
        else:
            cursor = (ids[0], len(MAGIC)) if ids else (0, len(MAGIC))
        for index, segment_id in enumerate(ids):
            start = cursor[1] if segment_id == cursor[0] else len(MAGIC)
            scanned = self._scan(segment_id, start, newest=index == len(ids) - 1)
            if scanned is not None:
                self._segments.append(scanned[0])
                if segment_id == cursor[0]:
                    # a cursor is always written on a record boundary; snap one that is not
                    cursor = (segment_id, scanned[1])
        self._next_id = max([cursor[0], *ids]) + 1
        if self._segments and self._segments[0].id != cursor[0]:
            cursor = (self._segments[0].id, len(MAGIC))
        self._cursor = cursor
        self._retire_consumed()
        stats = self._stats()
        if stats.batches:
            log.info(
                "spool.opened",
                directory=str(self.directory),
                batches=stats.batches,
                points=stats.points,
                bytes=stats.bytes,
            )

    def _read_cursor(self) -> Position | None:
        try:
            data = json.loads((self.directory / _CURSOR).read_text(encoding="utf-8"))
            position = (int(data["segment"]), int(data["offset"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Replaying from the oldest segment re-sends some batches: harmless, InfluxDB keeps one
            # copy of a point with the same series and timestamp.
            log.warning("spool.cursor_unreadable", directory=str(self.directory), error=str(exc))
            return None
        if position[0] < 0 or position[1] < len(MAGIC):
            log.warning("spool.cursor_unreadable", directory=str(self.directory), error="out of range")
            return None
        return position

    def _scan(self, segment_id: int, start: int, *, newest: bool) -> tuple[_Segment, int] | None:
        """Check one segment and repair what a crash left in it (None if it had to go)."""
        path = self._path(segment_id)
        with path.open("r+b") as fh:
            size = os.fstat(fh.fileno()).st_size
            if os.pread(fh.fileno(), len(MAGIC), 0) == MAGIC:
                return self._check_records(fh.fileno(), segment_id, size, start, newest=newest)
        if size < len(MAGIC):
            # created, but the crash came before its magic was durable: it never held a record
            path.unlink(missing_ok=True)
            log.info("spool.empty_segment_removed", segment=path.name)
        else:
            path.rename(path.with_name(path.name + ".corrupt"))
            log.error("spool.foreign_segment", segment=path.name, moved_to=path.name + ".corrupt")
        return None

    def _check_records(
        self, fd: int, segment_id: int, size: int, start: int, *, newest: bool
    ) -> tuple[_Segment, int]:
        """Walk a segment's records, counting those at or after ``start``, and truncate a torn or
        corrupt tail. Returns the segment and the offset of its first record at or after ``start``.

        Only the newest segment can hold a torn append, so only its payloads are CRC-checked here
        (older ones are checked as they are read)."""
        segment = _Segment(segment_id, len(MAGIC), 0, 0, 0)
        first_live: int | None = None
        offset = len(MAGIC)
        problem = None
        while offset < size:
            if size - offset < _HEADER.size:
                problem = "torn header"
                break
            length, points, crc = _HEADER.unpack(os.pread(fd, _HEADER.size, offset))
            end = offset + _HEADER.size + length
            if length == 0 or length > MAX_RECORD_BYTES or end > size:
                problem = "bad length"
                break
            if newest and _record_crc(length, points, os.pread(fd, length, offset + _HEADER.size)) != crc:
                problem = "bad crc"
                break
            if offset >= start:
                first_live = offset if first_live is None else first_live
                segment.records += 1
                segment.points += points
                segment.live_bytes += end - offset
            offset = end
        segment.size = offset
        if problem is not None:
            os.ftruncate(fd, offset)
            os.fsync(fd)
            log.warning(
                "spool.tail_truncated",
                segment=_segment_name(segment_id),
                offset=offset,
                removed_bytes=size - offset,
                reason=problem,
            )
        return segment, segment.size if first_live is None else first_live

    # ------------------------------------------------------------------ writing

    def append(self, payload: bytes, points: int) -> None:
        """Store one batch durably (fsync'd before this returns); SpoolError on an I/O error.

        When the spool would outgrow ``max_bytes``, the oldest segments are deleted first; a batch
        larger than the whole bound is itself dropped (both counted and logged).
        """
        if not payload:
            raise ValueError("empty batch")
        record_size = _HEADER.size + len(payload)
        with self._lock:
            self._check_open()
            if len(MAGIC) + record_size > self.max_bytes or len(payload) > MAX_RECORD_BYTES:
                self._count_dropped(1, points, record_size)
                log.warning("spool.batch_too_large", bytes=record_size, points=points, limit=self.max_bytes)
                return
            try:
                # room for a new segment's magic too: making room may delete the segment taking appends
                self._make_room(len(MAGIC) + record_size)
                tail = self._segments[-1] if self._segments else None
                # A segment only takes appends from the process that created it, so nothing is
                # ever written after a tail that an earlier crash may have left.
                if tail is None or self._append_fd is None or tail.size + record_size > self.segment_bytes:
                    self._new_segment()
            except OSError as exc:
                raise SpoolError(f"cannot append to spool {self.directory}: {exc}") from exc
            segment = self._segments[-1]
            assert self._append_fd is not None  # _new_segment opened it, or the tail still takes appends
            header = _HEADER.pack(len(payload), points, _record_crc(len(payload), points, payload))
            try:
                _write_all(self._append_fd, header + payload)
                self._datasync(self._append_fd)
            except OSError as exc:
                # Cut off whatever part of the record reached the file, and start a new segment for
                # the next append so that nothing is ever written after a possibly torn record.
                with contextlib.suppress(OSError):
                    os.ftruncate(self._append_fd, segment.size)
                self._close_append_fd()
                raise SpoolError(f"cannot append to spool {self.directory}: {exc}") from exc
            segment.size += record_size
            segment.records += 1
            segment.points += points
            segment.live_bytes += record_size
            self._retire_consumed()

    def _new_segment(self) -> None:
        self._close_append_fd()
        segment_id = self._next_id
        self._next_id += 1  # also after a failure: never retry a name that is in the way
        path = self._path(segment_id)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            _write_all(fd, MAGIC)
            self._datasync(fd)
            _fsync_dir(self.directory, self._fullsync)
        except OSError:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._append_fd = fd
        self._segments.append(_Segment(segment_id, len(MAGIC), 0, 0, 0))
        if len(self._segments) == 1:
            self._cursor = (segment_id, len(MAGIC))

    def _make_room(self, needed: int) -> None:
        """Delete the oldest segments until ``needed`` more bytes fit under ``max_bytes``."""
        batches = points = size = 0
        while self._segments and self._disk_bytes() + needed > self.max_bytes:
            oldest = self._segments.pop(0)
            if not self._segments:
                self._close_append_fd()
            self._forget_read_fd(oldest.id)
            self._path(oldest.id).unlink(missing_ok=True)
            batches += oldest.records
            points += oldest.points
            size += oldest.live_bytes
        # No cursor write: on open, a cursor naming a deleted segment moves to the next one.
        if not self._segments:
            self._cursor = (self._next_id, len(MAGIC))
        elif self._cursor[0] < self._segments[0].id:
            self._cursor = (self._segments[0].id, len(MAGIC))
        if batches:
            self._count_dropped(batches, points, size)
            log.warning(
                "spool.overflow_dropped_oldest",
                batches=batches,
                points=points,
                bytes=size,
                max_bytes=self.max_bytes,
            )

    # ------------------------------------------------------------------ reading

    def peek(self, max_points: int | None = None, max_bytes: int | None = None) -> SpoolBatch | None:
        """The oldest uncommitted records (at least one, more while both limits allow), or None."""
        with self._lock:
            self._check_open()
            payloads: list[bytes] = []
            parts: list[tuple[Position, int, int]] = []
            points = size = 0
            segment_id, offset = self._cursor
            index = 0
            while index < len(self._segments):
                if self._segments[index].id < segment_id:
                    index += 1
                    continue
                segment = self._segments[index]
                if segment.id != segment_id:
                    segment_id, offset = segment.id, len(MAGIC)
                if offset >= segment.size:
                    index += 1
                    continue
                record = self._read_record(segment, offset)
                if record is None:
                    if payloads:
                        break  # hand out what precedes the damage; the next peek deals with it
                    self._drop_damaged(segment, offset)
                    segment_id, offset = self._cursor
                    index = 0
                    continue
                payload, record_points = record
                if payloads and (
                    (max_points is not None and points + record_points > max_points)
                    or (max_bytes is not None and size + len(payload) > max_bytes)
                ):
                    break
                record_size = _HEADER.size + len(payload)
                payloads.append(payload)
                parts.append(((segment_id, offset), record_points, record_size))
                points += record_points
                size += len(payload) + 1
                offset += record_size
            if not payloads:
                return None
            return SpoolBatch(b"\n".join(payloads), points, len(payloads), (segment_id, offset), tuple(parts))

    def _read_record(self, segment: _Segment, offset: int) -> tuple[bytes, int] | None:
        """(payload, points) of the record at ``offset``, or None if it fails its checks (or its
        segment file was deleted behind the spool's back)."""
        try:
            fd = self._reader(segment.id)
        except FileNotFoundError:
            return None
        length, points, crc = _HEADER.unpack(_pread_exact(fd, _HEADER.size, offset))
        if not 0 < length <= MAX_RECORD_BYTES or offset + _HEADER.size + length > segment.size:
            return None
        payload = _pread_exact(fd, length, offset + _HEADER.size)
        return (payload, points) if _record_crc(length, points, payload) == crc else None

    def _drop_damaged(self, segment: _Segment, offset: int) -> None:
        """Give up the rest of a segment damaged at the cursor (``offset``) rather than block the
        spool for ever: its records can no longer be told apart."""
        log.error(
            "spool.corrupt_record",
            segment=_segment_name(segment.id),
            offset=offset,
            dropped_batches=segment.records,
            dropped_points=segment.points,
        )
        self._count_dropped(segment.records, segment.points, segment.live_bytes)
        segment.records = segment.points = segment.live_bytes = 0
        self._cursor = (segment.id, segment.size)
        if segment is self._segments[-1]:
            self._close_append_fd()  # never append after damage: the next append starts a new segment
        self._retire_consumed()

    def commit(self, batch: SpoolBatch) -> None:
        """Consume ``batch``: advance the cursor past it durably and delete segments read to the end.

        Records of the batch that the ``max_bytes`` bound dropped meanwhile are skipped."""
        with self._lock:
            self._check_open()
            if batch.end <= self._cursor:
                return
            for position, points, record_size in batch.parts:
                segment = self._segment(position[0])
                if position < self._cursor or segment is None:
                    continue
                segment.records -= 1
                segment.points -= points
                segment.live_bytes -= record_size
            self._cursor = batch.end
            retired = self._retire_consumed(delete=False)
            # cursor first: a crash between the two then re-sends nothing
            self._write_cursor()
            for segment_id in retired:
                self._path(segment_id).unlink(missing_ok=True)

    def _retire_consumed(self, *, delete: bool = True) -> list[int]:
        """Drop segments read to the end from the front (never the one taking appends), moving the
        cursor to the next segment; their ids, and the files deleted unless ``delete`` is False."""
        retired: list[int] = []
        while len(self._segments) > 1 and (self._segments[0].id, self._segments[0].size) <= self._cursor:
            segment = self._segments.pop(0)
            self._forget_read_fd(segment.id)
            retired.append(segment.id)
            self._cursor = max(self._cursor, (self._segments[0].id, len(MAGIC)))
        if delete:
            for segment_id in retired:
                self._path(segment_id).unlink(missing_ok=True)
        return retired

    def _write_cursor(self) -> None:
        tmp = self.directory / _CURSOR_TMP
        data = json.dumps({"segment": self._cursor[0], "offset": self._cursor[1]}).encode()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            _write_all(fd, data)
            self._fullsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.directory / _CURSOR)
        _fsync_dir(self.directory, self._fullsync)

    # ------------------------------------------------------------------ state

    def __len__(self) -> int:
        """Batches (records) not yet committed."""
        with self._lock:
            return sum(segment.records for segment in self._segments)

    def stats(self) -> SpoolStats:
        with self._lock:
            return self._stats()

    def _stats(self) -> SpoolStats:
        return SpoolStats(
            batches=sum(segment.records for segment in self._segments),
            points=sum(segment.points for segment in self._segments),
            bytes=sum(segment.live_bytes for segment in self._segments),
            disk_bytes=self._disk_bytes(),
            segments=len(self._segments),
            dropped_batches=self._dropped_batches,
            dropped_points=self._dropped_points,
            dropped_bytes=self._dropped_bytes,
        )

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_append_fd()
            self._forget_read_fd(None)
            os.close(self._lock_fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers

    def _check_open(self) -> None:
        if self._closed:
            raise SpoolClosedError(f"spool {self.directory} is closed")

    def _path(self, segment_id: int) -> Path:
        return self.directory / _segment_name(segment_id)

    def _segment(self, segment_id: int) -> _Segment | None:
        for segment in self._segments:
            if segment.id == segment_id:
                return segment
        return None

    def _disk_bytes(self) -> int:
        return sum(segment.size for segment in self._segments)

    def _count_dropped(self, batches: int, points: int, size: int) -> None:
        self._dropped_batches += batches
        self._dropped_points += points
        self._dropped_bytes += size

    def _reader(self, segment_id: int) -> int:
        if self._read_fd is not None and self._read_fd[0] == segment_id:
            return self._read_fd[1]
        self._forget_read_fd(None)
        fd = os.open(self._path(segment_id), os.O_RDONLY)
        self._read_fd = (segment_id, fd)
        return fd

    def _forget_read_fd(self, segment_id: int | None) -> None:
        """Close the cached read fd (if it is on ``segment_id``, or whatever it is on for None)."""
        if self._read_fd is not None and segment_id in (None, self._read_fd[0]):
            os.close(self._read_fd[1])
            self._read_fd = None

    def _close_append_fd(self) -> None:
        if self._append_fd is not None:
            os.close(self._append_fd)
            self._append_fd = None
