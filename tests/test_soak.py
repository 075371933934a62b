"""The soak (bench/soak.py) in its CI length: two minutes of load with a SIGKILL of the collector,
HTTP 500s and timeouts, an InfluxDB outage, malformed payloads and a broker outage, then the
proof: every accepted report stored exactly once, spool drained, RSS flat, no traceback."""

from __future__ import annotations

from pathlib import Path

from bench.soak import MALFORMED, run_soak


def test_soak_two_minutes_of_faults_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    result = run_soak(2.0, tmp_path, devices=40, rate=100.0, echo=False)
    report = result.summary() + "\n" + "\n".join(result.log)
    assert result.guaranteed > 8000, report  # most of the run is outside the fault windows
    assert result.lost == [], report
    assert result.duplicates == [], report
    assert result.spool_drained, report
    assert result.tracebacks == 0, report
    assert result.exit_code == 0, report
    assert result.collector_restarts == 1, report
    assert result.rejected_malformed == [MALFORMED], report
    assert result.http_faults_served == result.http_faults_injected > 0, report
    assert result.http_recovered, report
    assert result.final_health.get("mqtt_connected"), report
    # RSS flat: the last minute of the (restarted) collector grows by less than this
    assert abs(result.rss_growth_mb) < 15, report
