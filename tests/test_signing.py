"""Request signing as EcoFlow documents it, pinned bit for bit."""

from __future__ import annotations

import hashlib
import hmac
import json

from freezegun import freeze_time

from collector.api.signing import Signer, flatten_params, sign, string_to_sign

# The worked example of EcoFlow's developer documentation.
DOC_ACCESS_KEY = "Fp4SvIprYSDPXtYJidEtUAd1o"
DOC_SECRET_KEY = "WIbFEKre0s6sLnh4ei7SPUeYnptHG6V"
DOC_NONCE = "345164"
DOC_TIMESTAMP = "1671171709428"
DOC_BODY = '{"sn":"123456789","params":{"cmdSet":11,"id":24,"eps":0}}'
DOC_STRING = (
    "params.cmdSet=11&params.eps=0&params.id=24&sn=123456789"
    "&accessKey=Fp4SvIprYSDPXtYJidEtUAd1o&nonce=345164&timestamp=1671171709428"
)
DOC_SIGN = "07c13b65e037faf3b153d51613638fa80003c4c38d2407379a7f52851af1473e"


def test_official_example_bit_for_bit() -> None:
    params = json.loads(DOC_BODY)
    assert string_to_sign(params, DOC_ACCESS_KEY, DOC_NONCE, DOC_TIMESTAMP) == DOC_STRING
    assert sign(params, DOC_ACCESS_KEY, DOC_SECRET_KEY, DOC_NONCE, DOC_TIMESTAMP) == DOC_SIGN
    # and the same digest computed independently of the module
    expected = hmac.new(DOC_SECRET_KEY.encode(), DOC_STRING.encode(), hashlib.sha256).hexdigest()
    assert expected == DOC_SIGN


def test_signer_headers_reproduce_the_example() -> None:
    signer = Signer(
        DOC_ACCESS_KEY, DOC_SECRET_KEY, clock_ms=lambda: int(DOC_TIMESTAMP), nonce=lambda: DOC_NONCE
    )
    assert signer.headers(json.loads(DOC_BODY)) == {
        "accessKey": DOC_ACCESS_KEY,
        "nonce": DOC_NONCE,
        "timestamp": DOC_TIMESTAMP,
        "sign": DOC_SIGN,
    }


def test_nested_objects_flatten_with_dots() -> None:
    params = {"sn": "X", "params": {"a": {"b": {"c": 1}}, "z": "t"}}
    assert sorted(flatten_params(params)) == [("params.a.b.c", "1"), ("params.z", "t"), ("sn", "X")]


def test_arrays_flatten_with_indexes() -> None:
    params = {"sn": "X", "params": {"quotas": ["20_1.a", "20_1.b"], "ids": [3, 1]}}
    text = string_to_sign(params, "AK", "1", "2")
    assert text == (
        "params.ids[0]=3&params.ids[1]=1&params.quotas[0]=20_1.a&params.quotas[1]=20_1.b&sn=X"
        "&accessKey=AK&nonce=1&timestamp=2"
    )


def test_arrays_of_objects_flatten_index_then_key() -> None:
    params = {"list": [{"id": 1, "name": "a"}, {"id": 2, "deep": {"x": [7]}}]}
    assert string_to_sign(params, "AK", "1", "2") == (
        "list[0].id=1&list[0].name=a&list[1].deep.x[0]=7&list[1].id=2&accessKey=AK&nonce=1&timestamp=2"
    )


def test_booleans_and_null_are_json_words() -> None:
    params = {"on": True, "off": False, "none": None, "zero": 0, "one": 1}
    assert string_to_sign(params, "AK", "1", "2") == (
        "none=null&off=false&on=true&one=1&zero=0&accessKey=AK&nonce=1&timestamp=2"
    )


def test_keys_sort_in_ascii_order() -> None:
    # upper case sorts before lower case, `.` before letters, `[` after upper case letters
    params = {"b": 1, "B": 2, "a.b": 3, "a": {"c": 4}, "_": 5}
    keys = [part.split("=")[0] for part in string_to_sign(params, "AK", "1", "2").split("&")[:-3]]
    assert keys == sorted(keys) == ["B", "_", "a.b", "a.c", "b"]


def test_get_without_params_signs_only_key_nonce_timestamp() -> None:
    assert (
        string_to_sign({}, "AK", "123456", "1700000000000")
        == "accessKey=AK&nonce=123456&timestamp=1700000000000"
    )
    expected = hmac.new(
        b"SK", b"accessKey=AK&nonce=123456&timestamp=1700000000000", hashlib.sha256
    ).hexdigest()
    assert sign({}, "AK", "SK", "123456", "1700000000000") == expected


def test_signature_depends_on_the_secret() -> None:
    params = json.loads(DOC_BODY)
    assert sign(params, DOC_ACCESS_KEY, DOC_SECRET_KEY + "x", DOC_NONCE, DOC_TIMESTAMP) != DOC_SIGN


def test_signer_uses_the_wall_clock_in_milliseconds() -> None:
    with freeze_time("2022-12-16T06:21:49.428Z"):
        headers = Signer(DOC_ACCESS_KEY, DOC_SECRET_KEY, nonce=lambda: DOC_NONCE).headers(
            json.loads(DOC_BODY)
        )
    assert headers["timestamp"] == DOC_TIMESTAMP
    assert headers["sign"] == DOC_SIGN


def test_signer_nonce_is_fresh_and_six_digits() -> None:
    signer = Signer("AK", "SK")
    nonces = {signer.headers({})["nonce"] for _ in range(50)}
    assert len(nonces) > 40
    assert all(len(n) == 6 and n.isdigit() for n in nonces)


def test_secret_never_in_headers_or_repr() -> None:
    signer = Signer("AK", "very-secret-key")
    assert "very-secret-key" not in repr(signer)
    assert "very-secret-key" not in json.dumps(signer.headers({"sn": "X"}))
