"""The spool: FIFO order, transactions, the max_bytes bound, repair on open, and kill -9 safety."""

from __future__ import annotations

import os
import random
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

import pytest
from structlog.testing import capture_logs

from collector.sink.spool import MAGIC, Spool, SpoolBatch, SpoolClosedError, SpoolError

ROOT = Path(__file__).resolve().parents[1]


def _batch(i: int, points: int = 3) -> bytes:
    return "\n".join(f"m,sn=S{i} v={j}.5 {1_700_000_000_000 + i}" for j in range(points)).encode()


def _drain(spool: Spool, max_points: int | None = None) -> list[bytes]:
    """Every record left, committing as it goes (records split back out of coalesced batches)."""
    out: list[bytes] = []
    while (batch := spool.peek(max_points=max_points)) is not None:
        out.extend(_split(batch))
        spool.commit(batch)
    return out


def _split(batch: SpoolBatch) -> list[bytes]:
    lines = batch.payload.split(b"\n")
    out: list[bytes] = []
    for _, points, _size in batch.parts:
        out.append(b"\n".join(lines[:points]))
        lines = lines[points:]
    assert not lines
    return out


def _segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_fifo_roundtrip_and_stats(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 10 * 1024 * 1024) as spool:
        assert spool.peek() is None
        for i in range(5):
            spool.append(_batch(i, points=i + 1), i + 1)
        stats = spool.stats()
        assert (stats.batches, stats.points, len(spool)) == (5, 15, 5)
        assert stats.bytes == sum(12 + len(_batch(i, i + 1)) for i in range(5))
        assert _drain(spool) == [_batch(i, i + 1) for i in range(5)]
        assert (spool.stats().batches, spool.stats().points, spool.stats().bytes) == (0, 0, 0)


def test_peek_coalesces_up_to_max_points_and_uncommitted_batches_come_back(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 10 * 1024 * 1024) as spool:
        for i in range(6):
            spool.append(_batch(i, points=4), 4)
        first = spool.peek(max_points=10)
        assert first is not None
        assert (first.records, first.points) == (2, 8)
        assert first.payload == _batch(0, 4) + b"\n" + _batch(1, 4)
        # no commit (a failed write): the same records again
        again = spool.peek(max_points=10)
        assert again == first
        spool.commit(first)
        # a record bigger than the limit still comes out, alone
        big = spool.peek(max_points=1)
        assert big is not None and big.records == 1 and big.payload == _batch(2, 4)
        spool.commit(big)
        assert _drain(spool) == [_batch(i, 4) for i in range(3, 6)]


def test_cursor_survives_reopen_and_consumed_segments_are_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, 10 * 1024 * 1024, segment_bytes=300) as spool:
        for i in range(20):
            spool.append(_batch(i), 3)
        assert len(_segments(directory)) > 3
        batch = spool.peek(max_points=21)  # seven records, over more than one segment
        assert batch is not None and batch.records == 7
        spool.commit(batch)
        assert _segments(directory)[0].name != "0000000000000001.seg"
    with Spool(directory, 10 * 1024 * 1024, segment_bytes=300) as spool:
        assert spool.stats().batches == 13
        assert _drain(spool, max_points=5) == [_batch(i) for i in range(7, 20)]
        # everything read: only the newest segment is left, and nothing more comes out after a reopen
        assert len(_segments(directory)) == 1
    with Spool(directory, 10 * 1024 * 1024, segment_bytes=300) as spool:
        assert spool.peek() is None
        spool.append(_batch(99), 3)
        assert _drain(spool) == [_batch(99)]


@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(lambda rec: rec[:7], id="torn-header"),
        pytest.param(lambda rec: rec[: len(rec) - 5], id="torn-payload"),
        pytest.param(lambda rec: rec[:-1] + bytes([rec[-1] ^ 0x40]), id="bad-crc"),
        pytest.param(lambda rec: struct.pack("<III", 0, 0, 0) + rec, id="zero-length"),
        pytest.param(lambda rec: b"\0" * 4096, id="zero-filled"),
    ],
)
def test_torn_or_corrupt_tail_is_truncated_on_open(tmp_path: Path, tail: Callable[[bytes], bytes]) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, 10 * 1024 * 1024) as spool:
        for i in range(3):
            spool.append(_batch(i), 3)
    segment = _segments(directory)[-1]
    good_size = segment.stat().st_size
    payload = _batch(3)
    header_fields = struct.pack("<II", len(payload), 3)
    record = struct.pack("<III", len(payload), 3, zlib.crc32(payload, zlib.crc32(header_fields))) + payload
    with segment.open("ab") as fh:
        fh.write(tail(record))
    with capture_logs() as logs, Spool(directory, 10 * 1024 * 1024) as spool:
        assert segment.stat().st_size == good_size
        assert spool.stats().batches == 3
        spool.append(_batch(4), 3)  # appends go on normally
        assert _drain(spool) == [_batch(0), _batch(1), _batch(2), _batch(4)]
    assert [entry["event"] for entry in logs if entry["log_level"] == "warning"] == ["spool.tail_truncated"]


def test_crash_leftovers_do_not_break_the_next_start(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, 10 * 1024 * 1024, segment_bytes=200) as spool:
        for i in range(6):
            spool.append(_batch(i), 3)
        batch = spool.peek(max_points=3)
        assert batch is not None
        spool.commit(batch)
    last_id = int(_segments(directory)[-1].stem)
    (directory / "cursor.tmp").write_bytes(b'{"segm')  # crash while replacing the cursor
    (directory / f"{last_id + 1:016d}.seg").write_bytes(MAGIC[:3])  # crash while creating a segment
    (directory / f"{last_id + 2:016d}.seg").write_bytes(b"")
    with Spool(directory, 10 * 1024 * 1024, segment_bytes=200) as spool:
        assert not (directory / "cursor.tmp").exists()
        assert int(_segments(directory)[-1].stem) == last_id
        assert _drain(spool) == [_batch(i) for i in range(1, 6)]


def test_unreadable_cursor_replays_from_the_oldest_segment(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, 10 * 1024 * 1024) as spool:
        for i in range(3):
            spool.append(_batch(i), 3)
        batch = spool.peek(max_points=3)
        assert batch is not None
        spool.commit(batch)
    (directory / "cursor").write_text("garbage")
    with capture_logs() as logs, Spool(directory, 10 * 1024 * 1024) as spool:
        # at-least-once: the committed batch comes again rather than anything being lost
        assert _drain(spool) == [_batch(i) for i in range(3)]
    assert "spool.cursor_unreadable" in [entry["event"] for entry in logs]


def test_foreign_file_is_moved_aside(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "0000000000000001.seg").write_bytes(b"not a spool segment at all")
    with Spool(directory, 10 * 1024 * 1024) as spool:
        spool.append(_batch(1), 3)
        assert _drain(spool) == [_batch(1)]
    assert (directory / "0000000000000001.seg.corrupt").exists()


def test_max_bytes_drops_oldest_and_counts(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    max_bytes = 8192
    with capture_logs() as logs, Spool(directory, max_bytes, segment_bytes=1024) as spool:
        for i in range(100):
            spool.append(_batch(i, 5), 5)
            assert sum(p.stat().st_size for p in _segments(directory)) <= max_bytes
        stats = spool.stats()
        assert stats.disk_bytes <= max_bytes
        assert stats.dropped_batches > 0
        assert stats.dropped_batches + stats.batches == 100
        assert stats.dropped_points == 5 * stats.dropped_batches
        assert stats.dropped_bytes == sum(12 + len(_batch(i, 5)) for i in range(stats.dropped_batches))
        remaining = _drain(spool)
    # the newest survive, in order, with nothing missing between them
    assert remaining == [_batch(i, 5) for i in range(100 - len(remaining), 100)]
    warnings = [entry for entry in logs if entry["event"] == "spool.overflow_dropped_oldest"]
    assert warnings and all(entry["log_level"] == "warning" for entry in warnings)
    assert sum(entry["points"] for entry in warnings) == stats.dropped_points


def test_overflow_while_a_batch_is_out_then_commit(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 4096, segment_bytes=512) as spool:
        for i in range(4):
            spool.append(_batch(i), 3)
        out = spool.peek(max_points=6)
        assert out is not None and out.records == 2
        for i in range(4, 60):  # the records handed out are dropped meanwhile
            spool.append(_batch(i), 3)
        before = spool.stats()
        spool.commit(out)  # must neither go backwards nor count anything twice
        assert spool.stats() == before
        remaining = _drain(spool)
        assert remaining == [_batch(i) for i in range(60 - len(remaining), 60)]


def test_batch_larger_than_the_bound_is_dropped_and_counted(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", 4096) as spool:
        spool.append(_batch(1), 3)
        spool.append(b"x" * 5000, 7)
        stats = spool.stats()
        assert (stats.batches, stats.dropped_batches, stats.dropped_points) == (1, 1, 7)
        assert _drain(spool) == [_batch(1)]


def test_corrupt_record_in_an_older_segment_drops_the_rest_of_it(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, 10 * 1024 * 1024, segment_bytes=400) as spool:
        for i in range(12):
            spool.append(_batch(i), 3)
    first = _segments(directory)[0]
    per_segment = (first.stat().st_size - len(MAGIC)) // (12 + len(_batch(0)))
    assert 2 <= per_segment < 12
    data = bytearray(first.read_bytes())
    second_record = len(MAGIC) + 12 + len(_batch(0))
    data[second_record + 20] ^= 0xFF  # bit rot in the second record's payload
    first.write_bytes(bytes(data))
    with capture_logs() as logs, Spool(directory, 10 * 1024 * 1024, segment_bytes=400) as spool:
        records = _drain(spool)
        stats = spool.stats()
    assert records == [_batch(0)] + [_batch(i) for i in range(per_segment, 12)]
    assert (stats.dropped_batches, stats.dropped_points) == (per_segment - 1, 3 * (per_segment - 1))
    assert [entry["event"] for entry in logs if entry["log_level"] == "error"] == ["spool.corrupt_record"]


def test_segment_deleted_behind_the_spools_back_is_skipped(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, 10 * 1024 * 1024, segment_bytes=300) as spool:
        for i in range(10):
            spool.append(_batch(i), 3)
        first = _segments(directory)[0]
        lost = (first.stat().st_size - len(MAGIC)) // (12 + len(_batch(0)))
        first.unlink()
        with capture_logs() as logs:
            assert _drain(spool) == [_batch(i) for i in range(lost, 10)]
        assert spool.stats().dropped_batches == lost
    assert "spool.corrupt_record" in [entry["event"] for entry in logs]


def test_one_process_at_a_time_and_closed_spool_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", 10 * 1024 * 1024)
    code = (
        "import sys; from pathlib import Path; from collector.sink.spool import Spool, SpoolError\n"
        "try:\n    Spool(Path(sys.argv[1]), 10 * 1024 * 1024)\nexcept SpoolError:\n    sys.exit(3)\n"
    )
    child = subprocess.run([sys.executable, "-c", code, str(tmp_path / "spool")], cwd=ROOT, timeout=60)
    assert child.returncode == 3
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path / "spool", 10 * 1024 * 1024)
    spool.close()
    with pytest.raises(SpoolClosedError):
        spool.append(_batch(1), 3)
    with pytest.raises(SpoolClosedError):
        spool.peek()
    Spool(tmp_path / "spool", 10 * 1024 * 1024).close()  # the lock went with close()


def test_appends_from_other_threads_while_reading(tmp_path: Path) -> None:
    per_thread = 200
    seen: list[bytes] = []
    with Spool(tmp_path / "spool", 64 * 1024 * 1024, segment_bytes=8192) as spool:

        def producer(tag: str) -> None:
            for i in range(per_thread):
                spool.append(f"{tag} {i}".encode(), 1)

        threads = [threading.Thread(target=producer, args=(tag,)) for tag in ("a", "b")]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 60
        while len(seen) < 2 * per_thread and time.monotonic() < deadline:
            batch = spool.peek(max_points=random.randint(1, 30))
            if batch is None:
                time.sleep(0.001)
                continue
            seen.extend(batch.payload.split(b"\n"))
            spool.commit(batch)
        for thread in threads:
            thread.join()
        assert spool.peek() is None
    for tag in ("a", "b"):
        assert [line for line in seen if line.startswith(tag.encode())] == [
            f"{tag} {i}".encode() for i in range(per_thread)
        ]


# A child process appends numbered batches (and a second thread consumes some) until it is
# SIGKILLed. It reports "A <n>" after append(n) returned and "C <n> ..." just BEFORE committing
# batches, so the parent knows what must survive: every acknowledged batch not announced for commit.
_CHILD = r"""
import random, sys, threading
from pathlib import Path
from collector.sink.spool import Spool

directory, start, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)
spool = Spool(directory, 64 * 1024 * 1024, segment_bytes=2048)
lock = threading.Lock()

def say(text):
    with lock:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

def consume():
    while True:
        batch = spool.peek(max_points=rng.randint(1, 60))
        if batch is not None and rng.random() < 0.5:
            ids = sorted({line.split(b" ")[0].split(b"=")[1].decode() for line in batch.payload.split(b"\n")})
            say("C " + " ".join(ids))
            spool.commit(batch)

say("READY")
threading.Thread(target=consume, daemon=True).start()
n = start
while True:
    points = rng.randint(1, 40)
    payload = "\n".join(f"m,id={n} v={j}i {n}" for j in range(points)).encode()
    spool.append(payload, points)
    say(f"A {n}")
    n += 1
"""


def _collect(stream: IO[bytes], out: list[str], first_line: threading.Event) -> None:
    for raw in iter(stream.readline, b""):
        out.append(raw.decode().strip())
        first_line.set()


def test_kill_9_at_random_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    rng = random.Random(int(os.environ.get("SPOOL_SEED", "20240501")))  # SPOOL_SEED=n explores others
    acked: list[int] = []
    announced: set[int] = set()
    for round_no in range(10):
        lines: list[str] = []
        first_id = round_no * 1_000_000  # above anything an earlier child appended
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(directory), str(first_id), str(rng.randrange(1 << 30))],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert child.stdout is not None
        ready = threading.Event()
        reader = threading.Thread(target=_collect, args=(child.stdout, lines, ready))
        reader.start()
        if round_no % 4 == 3:
            time.sleep(rng.uniform(0.0, 0.6))  # anywhere, opening and recovery included
        else:
            assert ready.wait(60), "child did not start"
            time.sleep(rng.uniform(0.02, 0.4))
        os.kill(child.pid, signal.SIGKILL)
        child.wait(30)
        reader.join(30)
        child.stdout.close()
        for line in lines:
            kind, _, rest = line.partition(" ")
            if kind == "A":
                acked.append(int(rest))
            elif kind == "C":
                announced.update(int(x) for x in rest.split())
    assert len(acked) > 50, "the children hardly appended anything"

    with Spool(directory, 64 * 1024 * 1024, segment_bytes=2048) as spool:
        stats = spool.stats()
        found: list[int] = []
        while (batch := spool.peek(max_points=500)) is not None:
            for record in _split(batch):
                lines_ = record.split(b"\n")
                ids = {line.split(b" ")[0].split(b"=")[1] for line in lines_}
                assert len(ids) == 1, "a record mixes batches"
                n = int(ids.pop())
                # whole batches only: every line of it, values 0..points-1, nothing torn
                assert lines_ == [f"m,id={n} v={j}i {n}".encode() for j in range(len(lines_))]
                found.append(n)
            spool.commit(batch)
    assert stats.dropped_batches == 0
    assert found == sorted(found), "order changed"
    assert len(found) == len(set(found)), "a batch came out twice"
    missing = set(acked) - announced - set(found)
    assert not missing, f"acknowledged batches lost: {sorted(missing)[:20]}"
