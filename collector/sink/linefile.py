"""A sink that appends line protocol to a file: the demo's stand-in when no InfluxDB is reachable.

The file can be loaded later with `influx write --file F --precision ms` (2.x) or
`curl --data-binary @F 'http://host:8086/write?db=ecoflow&precision=ms'` (1.x).
"""

from __future__ import annotations

import threading
from pathlib import Path

from collector.points import Point
from collector.sink import SinkStats


class LineFileSink:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._file = path.open("a", encoding="utf-8")
        self._points = 0
        self._batches = 0

    def submit(self, points: list[Point]) -> None:
        lines = [point.to_line() for point in points if point.fields]
        with self._lock:
            if self._file.closed:
                return
            self._file.write("".join(line + "\n" for line in lines))
            self._file.flush()
            self._points += len(lines)
            self._batches += 1

    def close(self, timeout: float) -> None:
        with self._lock:
            self._file.close()

    def stats(self) -> SinkStats:
        with self._lock:
            return SinkStats(points_written=self._points, batches_written=self._batches)

    def stuck(self) -> bool:
        return False
