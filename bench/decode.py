"""Decode benchmark: messages/s through decode + normalize + line protocol, beside bare JSON parsing.

    python3 bench/decode.py [--seconds 2]

The floor (issue 2): the whole path costs no more than 4x bare `json.loads` of the same bytes.
Payloads are the project's own fixtures (tests/fixtures): a PowerStream heartbeat in the MQTT
shape and a Delta Pro quota/all answer (246 keys).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from collector.catalog import default_catalog
from collector.decoding import TopicKind
from collector.logs import configure
from collector.pipeline import Pipeline
from collector.points import Device

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
CASES = [
    ("powerstream heartbeat (MQTT)", "powerstream", FIXTURES / "powerstream" / "heartbeat_param.json"),
    ("delta_pro quota/all (HTTP)", "delta_pro", FIXTURES / "delta_pro" / "quota_all.json"),
    (
        "delta_pro quota report (MQTT, strings)",
        "delta_pro",
        FIXTURES / "delta_pro" / "mqtt_quota_strings.json",
    ),
]


TIME_MS = 1_700_000_000_000


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of fn, best of three runs of `seconds` / 3."""
    best = 0.0
    for _ in range(3):
        count, start = 0, time.perf_counter()
        deadline = start + seconds / 3
        while True:
            for _ in range(200):
                fn()
            count += 200
            now = time.perf_counter()
            if now >= deadline:
                break
        best = max(best, count / (now - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="time per measurement")
    args = parser.parse_args()
    configure("warning")
    catalog = default_catalog()
    pipeline = Pipeline()
    header = "{:40} {:>6} {:>6} {:>13} {:>10} {:>12} {:>7}".format(
        "payload", "bytes", "fields", "json.loads/s", "orjson/s", "full path/s", "x json"
    )
    print(header)
    print("-" * len(header))
    for label, product, path in CASES:
        payload = path.read_bytes()
        device = Device.resolve(catalog, "BENCH00000000001", "bench", product)

        def full_path(payload: bytes = payload, device: Device = device) -> str:
            _, points = pipeline.process(device, payload, TopicKind.QUOTA, TIME_MS)
            return "\n".join(p.to_line() for p in points)

        fields = sum(len(p.fields) for p in pipeline.process(device, payload, TopicKind.QUOTA, TIME_MS)[1])
        json_rate = rate(lambda payload=payload: json.loads(payload), args.seconds)
        orjson_rate = rate(lambda payload=payload: orjson.loads(payload), args.seconds)
        full_rate = rate(full_path, args.seconds)
        row = (label, len(payload), fields, json_rate, orjson_rate, full_rate, json_rate / full_rate)
        print("{:40} {:6} {:6} {:13,.0f} {:10,.0f} {:12,.0f} {:7.2f}".format(*row))


if __name__ == "__main__":
    main()
