"""Decode benchmark: messages/s through decode + normalize + line protocol, beside bare JSON parsing.

    python3 bench/decode.py [--seconds 2]

The floor (issue 2): the whole path costs no more than 4x bare `json.loads` of the same bytes.
Payloads are the project's own fixtures (tests/fixtures): a PowerStream heartbeat in the MQTT
shape and a Delta Pro quota/all answer (246 keys).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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
]


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
    args = parser.parse_args()
    configure("warning")
    catalog = default_catalog()
    pipeline = Pipeline()
    header = "{:44} {:>6} {:>6} {:>13} {:>10} {:>12} {:>7}".format(
        "payload", "bytes", "fields", "json.loads/s", "orjson/s", "full path/s", "x json"
    )
    print(header)
    print("-" * len(header))
    for label, product, path, varying in CASES:
        payload = path.read_bytes()
        device = Device.resolve(catalog, "BENCH00000000001", "bench", product)
        variants = [payload]
        if varying:  # distinct values in every message, as a live device sends them
            rng = random.Random(1)
            original = orjson.loads(payload)
            body = next(k for k in ("param", "params", "data") if k in original)
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

        rounds = measure(
            [json_path, orjson_path, full_path],
            args.seconds,
        )
        json_s, orjson_s, full_s = (statistics.median(r[i] for r in rounds) for i in range(3))
        ratio = statistics.median(r[2] / r[0] for r in rounds)
        row = (label, len(payload), fields, 1 / json_s, 1 / orjson_s, 1 / full_s, ratio)
        print("{:44} {:6} {:6} {:13,.0f} {:10,.0f} {:12,.0f} {:7.2f}".format(*row))
    print("rates: medians over interleaved rounds; x json: median of the per-round ratios")


if __name__ == "__main__":
    main()
