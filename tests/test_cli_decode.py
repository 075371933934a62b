"""`decode` and `schema` as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from collector.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
CAPTURES = ROOT.parent / "shared" / "captures"
PRODUCTS = {
    "delta_2",
    "delta_2_max",
    "delta_max",
    "delta_pro",
    "delta_pro_3",
    "delta_pro_ultra",
    "powerocean",
    "powerstream",
    "river_2_pro",
    "smart_home_panel",
    "smart_meter",
    "smart_plug",
    "stream",
}  # every catalog product


def field_map(line: str) -> dict[str, float]:
    _, fields, _ = line.split(" ")
    return {k: float(v) for k, v in (pair.split("=") for pair in fields.split(","))}


def test_decode_delta_pro_quota_all(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "decode",
            "--product",
            "delta_pro",
            "--sn",
            "DCABZ1",
            "--time-ms",
            "1700000000000",
            str(FIXTURES / "delta_pro" / "quota_all.json"),
        ]
    )
    lines = capsys.readouterr().out.splitlines()
    assert status == 0
    assert lines[0].startswith("delta_pro,name=DCABZ1,sn=DCABZ1 ")
    assert lines[0].endswith(" 1700000000000")
    fields = field_map(lines[0])
    assert len(fields) > 200
    assert lines[1].startswith("ecoflow_summary,name=DCABZ1,product=delta_pro,sn=DCABZ1 ")


def test_decode_reads_stdin_and_uses_the_name(monkeypatch: pytest.MonkeyPatch) -> None:
    payload = (FIXTURES / "powerstream" / "heartbeat_param.json").read_bytes()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "collector",
            "decode",
            "--product",
            "PowerStream",
            "--sn",
            "HW51A",
            "--name",
            "Balcony",
            "-",
        ],
        input=payload,
        capture_output=True,
        check=True,
    )
    first = result.stdout.decode().splitlines()[0]
    assert first.startswith("powerstream,name=Balcony,sn=HW51A ")
    assert "20_1.pv1InputVolt=" in first


@pytest.mark.parametrize(
    ("payload", "reason"),
    [(b"{oops", "not JSON"), (b"[1,2]", "expected a JSON object"), (b'{"a":"b"}', "no numeric fields")],
)
def test_decode_bad_payload_exits_2_with_one_line(tmp_path: Path, payload: bytes, reason: str) -> None:
    path = tmp_path / "p.json"
    path.write_bytes(payload)
    result = subprocess.run(
        ["ecoflow-collector", "decode", "--product", "delta_pro", "--sn", "X", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1 and reason in result.stderr


def test_decode_unknown_product_keeps_numbers(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = tmp_path / "wave3.json"
    path.write_text(json.dumps({"params": {"bms_bmsStatus.soc": 57, "pd.wattsOutSum": 12}, "version": "1.0"}))
    assert main(["decode", "--product", "WAVE 3", "--sn", "AC71X", "--time-ms", "5", str(path)]) == 0
    out = capsys.readouterr().out.strip()
    assert out == "wave_3,name=AC71X,sn=AC71X bms_bmsStatus.soc=57.0,pd.wattsOutSum=12.0 5"


def test_decode_delta_2_quota_all_in_si_units(capsys: pytest.CaptureFixture[str]) -> None:
    fixture = FIXTURES / "delta_2" / "quota_all_charging.json"
    assert main(["decode", "--product", "DELTA 2", "--sn", "R331X", "--time-ms", "5", str(fixture)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("delta_2,name=R331X,sn=R331X ")
    fields = field_map(lines[0])
    assert fields["bms_bmsStatus.vol"] == 53.016
    assert fields["mppt.inVol"] == 38.45
    assert lines[1].startswith("ecoflow_summary,name=R331X,product=delta_2,sn=R331X ")
    assert field_map(lines[1]) == {
        "soc_percent": 63.4,
        "input_w": 200.0,
        "output_w": 18.0,
        "pv_input_w": 200.0,
        "battery_w": 182.0,
        "battery_soh_percent": 100.0,
        "battery_cycles": 41.0,
    }


def test_decode_real_delta_pro_capture_prints_about_300_si_fields(capsys: pytest.CaptureFixture[str]) -> None:
    capture = CAPTURES / "deltapro_rustyy-fixture_1.json"
    if not capture.exists():
        pytest.skip("../shared/captures is not present")
    assert main(["decode", "--product", "delta_pro", "--sn", "X", str(capture)]) == 0
    fields = field_map(capsys.readouterr().out.splitlines()[0])
    assert len(fields) >= 300
    assert fields["mppt.inVol"] == 69.1 and fields["mppt.inAmp"] == 4.28 and fields["mppt.inWatts"] == 296.0
    assert abs(fields["mppt.inVol"] * fields["mppt.inAmp"] - fields["mppt.inWatts"]) < 2.0
    assert fields["inv.cfgAcOutVoltage"] == 120.0
    assert "bmsMaster.totalDsgCap" not in fields  # 4294967295: unset


def test_schema_json_lists_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--json"]) == 0
    records = json.loads(capsys.readouterr().out)
    by_key = {(r["product"], r["source_key"]): r for r in records}
    assert by_key[("delta_pro", "mppt.inVol")] | {"description": ""} == {
        "product": "delta_pro",
        "source_key": "mppt.inVol",
        "measurement": "delta_pro",
        "field": "mppt.inVol",
        "unit": "V",
        "sent_unit": "0.1V",
        "factor": 0.1,
        "kind": "measurement",
        "sentinels": [],
        "health": None,
        "description": "",
    }
    assert by_key[("delta_pro", "bmsMaster.soh")]["health"] == "soh"
    assert by_key[("powerstream", "20_1.permanentWatts")]["unit"] == "W"
    assert {r["product"] for r in records} == PRODUCTS


def test_schema_unknown_product_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema", "--product", "toaster"]) == 2
    known = ", ".join(sorted(PRODUCTS))
    assert f"unknown product 'toaster'; the catalog has: {known}" in capsys.readouterr().err
