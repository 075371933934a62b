"""Decode benchmark: messages/s through decode + normalize + line protocol, beside bare JSON parsing.

    python3 bench/decode.py [--seconds 2] [--before DIR]

The floor (issue "Fleets", part 4): the whole path costs no more than 2x bare `json.loads` of the
same bytes, on every payload kind. Payloads are the project's own fixtures (tests/fixtures): a
PowerStream heartbeat (MQTT), Delta Pro quota/all (HTTP) and MQTT with numbers as text, DELTA 2
`typeCode` module reports, a Smart Plug heartbeat and a STREAM push.

`--before DIR`: DIR holds an older `collector` package (e.g. `git archive REV collector | tar -x -C
DIR`); its path is measured in the same rounds, so the two compare under the same conditions.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.util
import itertools
import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from collector.catalog import default_catalog
from collector.decoding import TopicKind
from collector.logs import configure
from collector.pipeline import Pipeline
from collector.points import Device

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CASES = [
    ("powerstream heartbeat (MQTT)", "powerstream", FIXTURES / "powerstream" / "heartbeat_param.json", False),
    (
        "powerstream heartbeat, values varying",
        "powerstream",
        FIXTURES / "powerstream" / "heartbeat_param.json",
        True,
    ),
    ("delta_pro quota/all (HTTP)", "delta_pro", FIXTURES / "delta_pro" / "quota_all.json", False),
    ("delta_pro quota/all, values varying", "delta_pro", FIXTURES / "delta_pro" / "quota_all.json", True),
    (
        "delta_pro MQTT, numbers as strings",
        "delta_pro",
        FIXTURES / "delta_pro" / "mqtt_quota_strings.json",
        False,
    ),
    (
        "delta_pro MQTT strings, values varying",
        "delta_pro",
        FIXTURES / "delta_pro" / "mqtt_quota_strings.json",
        True,
    ),
    (
        "delta_2 pdStatus (MQTT typeCode)",
        "delta_2",
        FIXTURES / "delta_2" / "mqtt_pd_status_discharging.json",
        False,
    ),
    (
        "delta_2 bmsStatus, values varying",
        "delta_2",
        FIXTURES / "delta_2" / "mqtt_bms_status_discharging.json",
        True,
    ),
    ("smart_plug heartbeat (MQTT)", "smart_plug", FIXTURES / "smart_plug" / "mqtt_heartbeat.json", False),
    (
        "smart_plug heartbeat, values varying",
        "smart_plug",
        FIXTURES / "smart_plug" / "mqtt_heartbeat.json",
        True,
    ),
    ("stream push (MQTT)", "stream", FIXTURES / "stream" / "push_ultra_charging.json", False),
    ("stream push, values varying", "stream", FIXTURES / "stream" / "push_ultra_charging.json", True),
]


class _Renamed(importlib.abc.MetaPathFinder, importlib.abc.SourceLoader):  # type: ignore[misc]
    """Imports `before_collector.*` from DIR/collector, its `collector` imports renamed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, str] = {}

    def find_spec(self, name: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        if name != "before_collector" and not name.startswith("before_collector."):
            return None
        base = self.root.joinpath("collector", *name.split(".")[1:])
        package = base.is_dir()
        file = base / "__init__.py" if package else base.with_suffix(".py")
        if not file.exists():
            return None
        self.files[name] = str(file)
        return importlib.util.spec_from_file_location(
            name, file, loader=self, submodule_search_locations=[str(base)] if package else None
        )

    def get_filename(self, fullname: str) -> str:
        return self.files[fullname]

    def get_data(self, path: str) -> bytes:
        source = Path(path).read_bytes()
        return source.replace(b"from collector", b"from before_collector").replace(
            b"import collector", b"import before_collector"
        )


def before_path(root: Path) -> Callable[[str, str], Callable[[Iterator[bytes]], str]]:
    """The full path of the `collector` package in `root`, for a product and serial."""
    sys.meta_path.insert(0, _Renamed(root))
    catalog_module = importlib.import_module("before_collector.catalog")
    pipeline_module = importlib.import_module("before_collector.pipeline")
    points_module = importlib.import_module("before_collector.points")
    decoding_module = importlib.import_module("before_collector.decoding")
    catalog = catalog_module.default_catalog()
    pipeline = pipeline_module.Pipeline()
    quota = decoding_module.TopicKind.QUOTA

    def make(product: str, sn: str) -> Callable[[Iterator[bytes]], str]:
        device = points_module.Device.resolve(catalog, sn, "bench", product)

        def run(feed: Iterator[bytes]) -> str:
            _, points = pipeline.process(device, next(feed), quota, TIME_MS)
            return "\n".join(p.to_line() for p in points)

        return run

    return make


def vary(value: Any, rng: random.Random) -> Any:
    """The same payload with every number (or number as text) moved a little, types kept."""
    if isinstance(value, dict):
        return {k: vary(v, rng) for k, v in value.items()}
    if isinstance(value, list):
        return [vary(v, rng) for v in value]
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value + rng.randint(0, 40)
    if isinstance(value, float):
        return round(value + rng.uniform(0, 4), 2)
    if isinstance(value, str) and value.isdecimal():
        return str(int(value) + rng.randint(0, 40))
    return value


TIME_MS = 1_700_000_000_000


def per_call_s(fn: Callable[[], object], calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def measure(fns: list[Callable[[], object]], seconds: float) -> list[list[float]]:
    """Seconds per call of each fn, measured in interleaved rounds (this VM's speed drifts by
    2x within seconds, so each round compares the functions under the same conditions)."""
    calls = max(20, int(0.02 / per_call_s(fns[-1], 20)))  # about 20 ms of the slowest per round
    rounds: list[list[float]] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rounds) < 5:
        rounds.append([per_call_s(fn, calls) for fn in fns])
    return rounds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    parser.add_argument("--before", type=Path, help="a directory with an older collector package")
    args = parser.parse_args()
    configure("warning")
    catalog = default_catalog()
    pipeline = Pipeline()
    before = before_path(args.before) if args.before else None
    header = "{:40} {:>6} {:>6} {:>13} {:>10} {:>12} {:>7}".format(
        "payload", "bytes", "fields", "json.loads/s", "orjson/s", "full path/s", "x json"
    )
    if before is not None:
        header += " {:>10} {:>8}".format("before/s", "x json")
    print(header)
    print("-" * len(header))
    for label, product, path, varying in CASES:
        payload = path.read_bytes()
        device = Device.resolve(catalog, "BENCH00000000001", "bench", product)
        variants = [payload]
        if varying:  # distinct values in every message, as a live device sends them
            rng = random.Random(1)
            original = orjson.loads(payload)
            body = next((k for k in ("params", "param", "data") if original.get(k)), None)
            if body is None:  # a bare push (STREAM): the whole object is the body
                variants = [orjson.dumps(vary(original, rng)) for _ in range(2000)]
            else:
                variants = [orjson.dumps({**original, body: vary(original[body], rng)}) for _ in range(2000)]
        feed = itertools.cycle(variants)

        def full_path(feed: Iterator[bytes] = feed, device: Device = device) -> str:
            _, points = pipeline.process(device, next(feed), TopicKind.QUOTA, TIME_MS)
            return "\n".join(p.to_line() for p in points)

        fields = sum(len(p.fields) for p in pipeline.process(device, payload, TopicKind.QUOTA, TIME_MS)[1])

        def json_path(feed: Iterator[bytes] = feed) -> Any:
            return json.loads(next(feed))

        def orjson_path(feed: Iterator[bytes] = feed) -> Any:
            return orjson.loads(next(feed))

        fns: list[Callable[[], object]] = [json_path, orjson_path, full_path]
        if before is not None:
            old = before(product, "BENCH00000000001")
            fns.append(lambda old=old, feed=feed: old(feed))  # type: ignore[misc]
        rounds = measure(fns, args.seconds)
        json_s, orjson_s, full_s = (statistics.median(r[i] for r in rounds) for i in range(3))
        ratio = statistics.median(r[2] / r[0] for r in rounds)
        row = (label, len(payload), fields, 1 / json_s, 1 / orjson_s, 1 / full_s, ratio)
        line = "{:40} {:6} {:6} {:13,.0f} {:10,.0f} {:12,.0f} {:7.2f}".format(*row)
        if before is not None:
            before_s = statistics.median(r[3] for r in rounds)
            line += f" {1 / before_s:10,.0f} {statistics.median(r[3] / r[0] for r in rounds):8.2f}"
        print(line)
    print("rates: medians over interleaved rounds; x json: median of the per-round ratios")


if __name__ == "__main__":
    main()
