"""Per-device memory, online tracking, the state directory and sharding."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from collector.catalog import default_catalog
from collector.daemon import shard_of
from collector.pipeline import Pipeline
from collector.points import Device
from collector.state import FieldMemory, KeyTable, Online, Registry
from collector.statedir import StateDir, StateDirError


def test_memory_keeps_last_value_per_field() -> None:
    memory = FieldMemory(KeyTable())
    memory.merge({"a": 1.0, "b": 2.0}, 1_000_000)
    view = memory.merge({"b": 3.0}, 2_000_000)
    assert view.get("a") == 1.0 and view.get("b") == 3.0 and view.get("c") is None
    assert sorted(memory.items()) == [("a", 1.0), ("b", 3.0)]


def test_registry_memory_keeps_only_the_summary_keys() -> None:
    """The summary is the one feature that reads earlier values: nothing else is kept."""
    catalog = default_catalog()
    state = Registry().add(Device.resolve(catalog, "DCABZ1", None, "delta_pro"))
    state.memory.merge({"pd.wattsInSum": 296.0, "pd.beepState": 1.0}, 1000)
    state.memory.merge({"ems.f32LcdShowSoc": 80.0}, 2000)
    summary_keys = {key for terms in catalog.products["delta_pro"].summary.values() for key, _ in terms}
    assert {key for key, _ in state.memory.items()} == {"pd.wattsInSum", "ems.f32LcdShowSoc"} <= summary_keys
    assert state.memory.get("pd.beepState") is None
    unknown = Registry().add(Device.resolve(catalog, "ZZ1", None, "no such product"))
    assert unknown.memory.merge({"a": 1.0}, 0).items() == []


def test_summary_merges_terms_from_separate_reports() -> None:
    catalog = default_catalog()
    device = Device.resolve(catalog, "DCABZ1", None, "delta_pro")
    state = Registry().add(device)
    pipeline = Pipeline()
    pipeline.process(device, b'{"params": {"pd.wattsInSum": 296}, "version": "1.0"}', None, 1, state.memory)
    _, points = pipeline.process(
        device, b'{"params": {"pd.wattsOutSum": 10}, "version": "1.0"}', None, 2, state.memory
    )
    assert points[1].fields["input_w"] == 296.0 and points[1].fields["output_w"] == 10.0


def test_devices_of_one_product_share_a_key_table_but_not_values() -> None:
    registry = Registry()
    catalog = default_catalog()
    one = registry.add(Device.resolve(catalog, "HW51A", None, "powerstream"))
    two = registry.add(Device.resolve(catalog, "HW51B", None, "powerstream"))
    one.memory.merge({"20_1.batSoc": 50.0}, 1000)
    assert two.memory.get("20_1.batSoc") is None
    two.memory.merge({"20_1.batSoc": 70.0}, 1000)
    assert one.memory.get("20_1.batSoc") == 50.0


def test_key_table_is_bounded() -> None:
    table = KeyTable(limit=2)
    memory = FieldMemory(table)
    memory.merge({"a": 1.0, "b": 2.0, "c": 3.0}, 0)
    assert memory.get("c") is None and len(table.slots) == 2


def test_online_three_states() -> None:
    state = Registry().add(Device("S1", "S1", "x", None))
    assert state.online is Online.ASSUMED_OFFLINE
    assert state.set_online(Online.ONLINE)
    state.last_mqtt_ms = 1_000
    assert not state.update_online(now_ms=60_000, offline_after_ms=600_000)
    assert state.update_online(now_ms=602_000, offline_after_ms=600_000)
    assert state.online is Online.ASSUMED_OFFLINE
    assert state.set_online(Online.OFFLINE) and not state.set_online(Online.OFFLINE)


def test_client_id_is_derived_once_and_kept(tmp_path: Path) -> None:
    first = StateDir(tmp_path).client_id(None)
    assert first.startswith("ecoflow-collector-")
    assert StateDir(tmp_path).client_id(None) == first
    assert StateDir(tmp_path).client_id("mine") == "mine"


def test_second_instance_on_the_same_state_dir_is_refused(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time;from pathlib import Path;from collector.statedir import StateDir;"
            "s=StateDir(Path(sys.argv[1]));s.lock();print('locked',flush=True);time.sleep(30)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateDirError, match=f"another collector \\(pid {holder.pid}\\)"):
            StateDir(tmp_path).lock()
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    again = StateDir(tmp_path)
    again.lock()  # free again once the holder is gone
    again.unlock()


def test_unwritable_state_dir_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("")
        with pytest.raises(StateDirError, match="state_dir"):
            StateDir(blocker / "sub")
    else:
        tmp_path.chmod(0o500)
        with pytest.raises(StateDirError, match="Permission denied"):
            StateDir(tmp_path / "sub")


def test_shards_are_stable_and_cover_every_serial() -> None:
    serials = [f"HW51{i:012d}" for i in range(3000)]
    shards = [shard_of(sn, 3) for sn in serials]
    assert shards == [shard_of(sn, 3) for sn in serials]
    counts = [shards.count(i) for i in range(3)]
    assert sum(counts) == 3000 and min(counts) > 900


def test_points_of_one_device_never_share_a_millisecond() -> None:
    state = Registry().add(Device("S1", "S1", "x", None))
    assert [state.stamp(t) for t in (1000, 1000, 1000, 999, 1005)] == [1000, 1001, 1002, 1003, 1005]
