"""Every payload shape maps into the quota/all key space; bad input gets a one-line reason."""

from __future__ import annotations

import orjson
import pytest

from collector.catalog import default_catalog
from collector.decoding import MAX_DEPTH, PayloadError, TopicKind, decode_bytes, decode_object, flatten
from collector.pipeline import Pipeline
from collector.points import Device

HEARTBEAT = {"batSoc": 80, "pv1InputVolt": 391, "20_134.task1": {"taskIndex": 0}}


def test_powerstream_param_shape_gets_cmd_prefix() -> None:
    decoded = decode_object({"cmdId": 1, "cmdFunc": 20, "param": HEARTBEAT})
    assert decoded.kind is TopicKind.QUOTA
    assert decoded.values == {"20_1.batSoc": 80, "20_1.pv1InputVolt": 391, "20_134.task1.taskIndex": 0}


def test_powerstream_newer_params_shape_is_the_same() -> None:
    old = decode_object({"cmdId": 1, "cmdFunc": 20, "param": HEARTBEAT})
    new = decode_object({"cmdId": 1, "cmdFunc": 20, "addr": "iot", "params": HEARTBEAT})
    assert old.values == new.values


def test_cmd_envelope_around_flat_keys_keeps_them_flat() -> None:
    payload = {"cmdId": 2, "cmdFunc": 2, "addr": "x", "params": {"inLvMpptVol": 33.3, "pdTemp": 24}}
    assert decode_object(payload, cmd_prefix=False).values == {"inLvMpptVol": 33.3, "pdTemp": 24}
    assert decode_object(payload).values == {"2_2.inLvMpptVol": 33.3, "2_2.pdTemp": 24}


@pytest.mark.parametrize("cmd_prefix", [True, False])
def test_empty_params_gives_way_to_param(cmd_prefix: bool) -> None:
    payload = {"cmdId": 21, "cmdFunc": 254, "param": {"evChgManualCtrl": False, "runState": 3}, "params": {}}
    prefix = "254_21." if cmd_prefix else ""
    assert decode_object(payload, cmd_prefix=cmd_prefix).values == {
        f"{prefix}evChgManualCtrl": 0,
        f"{prefix}runState": 3,
    }


def test_empty_params_alone_is_an_empty_report() -> None:
    assert decode_object({"cmdId": 1, "cmdFunc": 2, "params": {}}).values == {}


def test_the_pipeline_decodes_into_the_products_key_space() -> None:
    catalog = default_catalog()
    assert catalog.products["powerstream"].cmd_prefix and catalog.products["smart_plug"].cmd_prefix
    assert not catalog.products["delta_pro_3"].cmd_prefix  # no key of its catalog carries `2_2.`
    payload = b'{"cmdId":2,"cmdFunc":2,"params":{"inLvMpptVol":33.3,"inLvMpptAmp":1.2}}'
    device = Device.resolve(catalog, "MR51X", product="delta_pro_3")
    _, points = Pipeline().process(device, payload, TopicKind.QUOTA, 1)
    assert points[0].fields == {"inLvMpptVol": 33.3, "inLvMpptAmp": 1.2}
    unknown = Device.resolve(catalog, "ZZ99X", product="no such product")
    _, points = Pipeline().process(unknown, payload, TopicKind.QUOTA, 1)
    assert points[0].fields == {"2_2.inLvMpptVol": 33.3, "2_2.inLvMpptAmp": 1.2}


def test_powerocean_mqtt_shapes_decode_into_its_quota_all_key_space() -> None:
    """The PowerOcean's reports (tests/fixtures/powerocean): the Open API document's envelope (id,
    version, time, moduleType, needAck; no typeCode) and the cmdFunc 96 envelope tolwi's keys show,
    both with nested phases and the MPPT heartbeat list, give the keys of its quota/all answer."""
    catalog = default_catalog()
    product = catalog.products["powerocean"]
    assert not product.cmd_prefix  # flat quota/all keys: no `96_1.` in front of them
    phase = {"vol": 230.4, "amp": 2.11, "actPwr": -476.3, "reactPwr": 98.7, "apparentPwr": 486.4}
    body = {"bpPwr": -104, "pcsAPhase": phase, "mpptHeartBeat": [{"mpptPv": [{"vol": 318.4, "pwr": 557.9}]}]}
    quota = decode_object({"code": "0", "message": "Success", "data": body}).values
    documented = {"id": 1, "version": "1.0", "time": 2, "moduleType": 1, "needAck": 1, "params": body}
    cmd = {"cmdId": 1, "cmdFunc": 96, "param": body}
    for payload in (documented, cmd):
        values = decode_object(payload, TopicKind.QUOTA, product.cmd_prefix).values
        assert values == quota
    assert set(quota) == {
        "bpPwr",
        *(f"pcsAPhase.{name}" for name in phase),
        "mpptHeartBeat[0].mpptPv[0].vol",
        "mpptHeartBeat[0].mpptPv[0].pwr",
    }
    assert all(product.lookup(key) is not None for key in quota)
    device = Device.resolve(catalog, "HJ31X", product="powerocean")
    _, points = Pipeline().process(device, orjson.dumps(cmd), TopicKind.QUOTA, 1)
    assert points[0].fields["pcsAPhase.vol"] == 230.4 and points[0].fields["bpPwr"] == -104


@pytest.mark.parametrize("pack", [1, 2])
def test_extra_battery_reports_get_their_quota_all_prefix(pack: int) -> None:
    payload = {
        "moduleType": 4,
        "typeCode": f"bmsSlaveStatus_{pack}",
        "params": {"soc": 63, "outputWatts": 36, "cellVol": [3301, 3302]},
        "version": "1.0",
    }
    prefix = f"bms_slave_bmsSlaveStatus_{pack}."
    assert decode_object(payload).values == {
        f"{prefix}soc": 63,
        f"{prefix}outputWatts": 36,
        f"{prefix}cellVol[0]": 3301,
        f"{prefix}cellVol[1]": 3302,
    }


def test_delta_pro_mqtt_numbers_as_strings_become_numbers() -> None:
    payload = {
        "id": 7,
        "version": "1.0",
        "timestamp": 1700000000000,
        "params": {"pd.soc": "80", "mppt.inVol": "691.5"},
    }
    decoded = decode_object(payload)
    assert decoded.values == {"pd.soc": 80, "mppt.inVol": 691.5}
    assert type(decoded.values["pd.soc"]) is int


def test_quota_all_envelope_and_bare_data_agree() -> None:
    data = {"pd.soc": 80, "bmsMaster.cellVol": [3300, 3301], "inv.cfgAcEnabled": True}
    enveloped = decode_object({"code": "0", "message": "Success", "data": data})
    assert enveloped.values == decode_object(data).values
    assert enveloped.values == {
        "pd.soc": 80,
        "bmsMaster.cellVol[0]": 3300,
        "bmsMaster.cellVol[1]": 3301,
        "inv.cfgAcEnabled": 1,
    }


def test_envelope_without_data_is_an_empty_quota() -> None:
    decoded = decode_object({"code": "0", "message": "Success", "eagleEyeTraceId": "x", "tid": ""})
    assert decoded.kind is TopicKind.QUOTA and decoded.values == {}


def test_envelope_error_code_is_a_payload_error() -> None:
    with pytest.raises(PayloadError, match="API error 1006: current device is not allowed"):
        decode_object({"code": "1006", "message": "current device is not allowed to get device info"})


@pytest.mark.parametrize("status", [0, 1, "1"])
def test_status_message(status: object) -> None:
    payload = {"id": "1", "version": "1.0", "timestamp": 1, "params": {"status": status}}
    decoded = decode_object(payload)
    assert decoded.kind is TopicKind.STATUS
    assert decoded.online == int(str(status))


def test_status_topic_rejects_other_values() -> None:
    with pytest.raises(PayloadError, match="status must be 0 or 1"):
        decode_object({"params": {"status": 7}}, TopicKind.STATUS)


def test_set_reply() -> None:
    decoded = decode_object({"data": {"ack": 0}, "id": 5}, TopicKind.SET_REPLY)
    assert decoded.kind is TopicKind.SET_REPLY and decoded.values == {"ack": 0}


def test_nested_arrays_of_objects_flatten_with_index_then_dot() -> None:
    assert flatten({"list": [{"id": 1}, {"id": 2}], "a": {"b": {"c": 3}}}) == {
        "list[0].id": 1,
        "list[1].id": 2,
        "a.b.c": 3,
    }


def test_null_values_are_skipped_and_text_is_kept_for_the_normalizer() -> None:
    assert flatten({"a": None, "b": "V1.2", "c": "12"}) == {"b": "V1.2", "c": 12}


def test_non_finite_and_oversized_numbers_stay_text() -> None:
    assert flatten({"a": "nan", "b": "1e999", "c": str(2**70)}) == {"a": "nan", "b": "1e999", "c": str(2**70)}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"", "not JSON"),
        (b"[1, 2]", "expected a JSON object, got list"),
        (b'"text"', "expected a JSON object, got str"),
        (b'{"name": "only text"}', "no numeric fields"),
        (b"{}", "no numeric fields"),
        (b'{"cmdId": 1, "cmdFunc": 20}', "without a 'param' or 'params' object"),
        (b'{"cmdId": "x y", "cmdFunc": 20, "param": {"a": 1}}', "must be integers"),
        (b'{"code": "0", "data": [1]}', "'data' must be an object"),
    ],
)
def test_unknown_shapes_get_a_one_line_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(PayloadError, match=reason) as info:
        decode_bytes(payload)
    assert "\n" not in str(info.value)


def test_deep_nesting_is_refused() -> None:
    payload = b'{"a":' * (MAX_DEPTH + 2) + b"1" + b"}" * (MAX_DEPTH + 2)
    with pytest.raises(PayloadError, match="nested deeper"):
        decode_bytes(payload)


def test_deep_arrays_are_refused() -> None:
    payload = b'{"a":' + b"[" * (MAX_DEPTH + 2) + b"1" + b"]" * (MAX_DEPTH + 2) + b"}"
    with pytest.raises(PayloadError, match="nested deeper"):
        decode_bytes(payload)


def test_too_many_fields_are_refused() -> None:
    payload = orjson.dumps({f"k{i}": i for i in range(20_000)})
    with pytest.raises(PayloadError, match="more than"):
        decode_bytes(payload)


def test_absurdly_long_keys_are_refused() -> None:
    with pytest.raises(PayloadError, match="key longer than"):
        decode_bytes(orjson.dumps({"x" * 1000: 1}))
