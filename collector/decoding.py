"""Decoding: every payload shape EcoFlow sends maps into one flat key space.

The key space is the one of HTTP `quota/all` (`20_1.pv1InputVolt`, `mppt.inVol`, ...):

- PowerStream MQTT `{"cmdId":1,"cmdFunc":20,"param"|"params":{...}}` (whichever is not empty): keys get
  `{cmdFunc}_{cmdId}.` unless they already carry such a prefix, or unless the product's quota/all keys
  have none (`cmd_prefix=False`: the DELTA Pro 3 sends this envelope around its flat keys);
- Delta Pro MQTT `{"id":..,"version":"1.0","timestamp":..,"params":{...}}`;
- DELTA 2 family MQTT `{"moduleType":1,"typeCode":"pdStatus","params":{...}}`: bare keys get the
  `quota/all` prefix of their typeCode (`pdStatus` -> `pd.`, `bmsStatus` -> `bms_bmsStatus.`,
  `bmsSlaveStatus_1` -> `bms_slave_bmsSlaveStatus_1.`, ...);
- HTTP envelopes `{"code":"0","message":..,"data":{...}}` (data may be missing) and bare data objects;
- `/status` messages `{"params":{"status":0|1}}` and `/set_reply` `{"data":{"ack":0},"id":..}`.

Nested objects flatten with `.`, arrays into `key[i]`, booleans into 0/1, and strings that hold
numbers into numbers. Anything else raises PayloadError with a one-line reason.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import orjson

MAX_DEPTH = 16  # real payloads nest 5 deep (20_134.taskN.timeRange.startTime.sec)
MAX_FIELDS = 10_000  # the largest real payload has a few hundred keys
MAX_KEY_LENGTH = 256


class PayloadError(ValueError):
    """A payload that is not JSON or not a known shape; str() is a one-line reason."""


class TopicKind(StrEnum):
    QUOTA = "quota"
    STATUS = "status"
    SET_REPLY = "set_reply"


Scalar = int | float | str


@dataclass(slots=True)
class Decoded:
    kind: TopicKind
    values: Mapping[str, Scalar]  # flattened keys, device units
    online: int | None = None  # for status messages: 1 online, 0 offline


_INT_LIMIT = 2**64  # no device sends wider integers; wider ones would overflow float arithmetic
_DIGITS = frozenset("0123456789")
_CMD_PREFIX = re.compile(r"^\d+_\d+\.")
# typeCode of a DELTA 2 / DELTA 2 Max / RIVER 2 MQTT report -> prefix of its keys in HTTP quota/all
TYPE_CODE_PREFIXES = {
    "pdStatus": "pd",
    "mpptStatus": "mppt",
    "invStatus": "inv",
    "bmsStatus": "bms_bmsStatus",
    "emsStatus": "bms_emsStatus",
    "kitInfo": "bms_kitInfo",
    "bmsInfo": "bms_bmsInfo",
    # extra batteries (moduleType 4, BMS_SLAVE): quota/all answers of a DELTA 2 Max with an extra
    # battery carry `bms_slave_bmsSlaveStatus_1.soc` (public integrations' readings of real answers)
    "bmsSlaveStatus_1": "bms_slave_bmsSlaveStatus_1",
    "bmsSlaveStatus_2": "bms_slave_bmsSlaveStatus_2",
}


def parse_json(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise PayloadError(f"not JSON: {exc}") from None


_numbers: dict[str, int | float | str] = {}  # text -> what _number made of it (bounded memo)


def _number(text: str) -> int | float | str:
    """A string holding a number becomes that number; any other string stays as it is."""
    known = _numbers.get(text)
    if known is not None:
        return known
    result = _parse_number(text)
    # device values repeat (states, limits, cell millivolts): remembering short ones saves the parse
    if len(text) <= 12 and len(_numbers) < 65_536:
        _numbers[text] = result
    return result


def _parse_number(text: str) -> int | float | str:
    head = text[:1]
    if head.isalpha() and head not in "iInN":
        # int() and float() take nothing that starts with a letter but inf, infinity and nan:
        # serials, versions, class names stay text without two failed parses
        return text
    try:
        integer = int(text)
    except ValueError:
        pass
    else:
        return integer if -_INT_LIMIT < integer < _INT_LIMIT else text
    try:
        number = float(text)
    except ValueError:
        return text
    return number if math.isfinite(number) else text


def flatten(obj: dict[str, Any], prefix: str = "", out: dict[str, Scalar] | None = None) -> dict[str, Scalar]:
    """Flatten nested objects and arrays into `a.b` / `a[0]` keys (None values are skipped)."""
    result: dict[str, Scalar] = {} if out is None else out
    _flatten_object(obj, prefix, result, 0)
    return result


def _flatten_object(obj: dict[str, Any], prefix: str, out: dict[str, Scalar], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise PayloadError(f"nested deeper than {MAX_DEPTH} levels at {prefix or 'top level'!r}")
    for key, value in obj.items():
        full = prefix + key
        cls = value.__class__
        if cls is int or cls is float:
            out[full] = value
        elif cls is str:  # numbers as text (Delta Pro MQTT); the memo's hits inline
            known = _numbers.get(value)
            out[full] = known if known is not None else _number(value)
        elif cls is dict:
            _flatten_object(value, full + ".", out, depth + 1)
        else:
            _flatten_other(value, full, out, depth)
    if len(out) > MAX_FIELDS:
        raise PayloadError(f"more than {MAX_FIELDS} fields")


def _flatten_other(value: Any, key: str, out: dict[str, Scalar], depth: int) -> None:
    if value is None:
        return
    if value is True or value is False:
        out[key] = int(value)
    elif value.__class__ is list:
        if depth + 1 > MAX_DEPTH:
            raise PayloadError(f"nested deeper than {MAX_DEPTH} levels at {key!r}")
        names = _element_names.get(key)
        if names is None or len(names) < len(value):
            names = _remember_element_names(key, len(value))
        for index, item in enumerate(value):
            element = names[index]
            cls = item.__class__
            if cls is int or cls is float:
                out[element] = item
            elif cls is str:
                known = _numbers.get(item)
                out[element] = known if known is not None else _number(item)
            elif cls is dict:
                _flatten_object(item, element + ".", out, depth + 2)
            else:
                _flatten_other(item, element, out, depth + 1)
    else:
        raise PayloadError(f"unsupported value of type {type(value).__name__} at {key!r}")


_element_names: dict[str, list[str]] = {}  # "a" -> ["a[0]", "a[1]", ...]: arrays repeat in every report
_ELEMENT_NAMES_LIMIT = 100_000  # names kept in all: hostile payloads may invent arrays forever
_element_names_kept = 0


def _remember_element_names(key: str, count: int) -> list[str]:
    global _element_names_kept
    names = [f"{key}[{index}]" for index in range(count)]
    if _element_names_kept + count <= _ELEMENT_NAMES_LIMIT:
        _element_names_kept += count - len(_element_names.get(key, ()))
        _element_names[key] = names
    return names


def _check_keys(values: dict[str, Scalar]) -> dict[str, Scalar]:
    if values and max(map(len, values)) > MAX_KEY_LENGTH:
        key = max(values, key=len)
        raise PayloadError(f"key longer than {MAX_KEY_LENGTH} characters: {key[:40]!r}...")
    return values


def _cmd_report(obj: dict[str, Any], cmd_prefix: bool) -> Decoded:
    body = obj.get("params")
    if not body:  # missing or empty: the body is in `param` (DELTA Pro 3 sends both, `params` empty)
        body = obj.get("param", body)
    if not isinstance(body, dict):
        raise PayloadError("cmdFunc/cmdId report without a 'param' or 'params' object")
    prefix = f"{obj['cmdFunc']}_{obj['cmdId']}."
    if not _CMD_PREFIX.match(prefix):
        raise PayloadError(f"cmdFunc/cmdId must be integers, got {obj['cmdFunc']!r}/{obj['cmdId']!r}")
    values: dict[str, Scalar] = {}
    if not cmd_prefix:  # the product's quota/all keys are flat (DELTA Pro 3)
        _flatten_object(body, "", values, 1)
        return Decoded(TopicKind.QUOTA, _check_keys(values))
    prefixed = [key for key in body if key[:1] in _DIGITS and _CMD_PREFIX.match(key)]
    if prefixed:  # keys that carry their own prefix (20_134.task1) keep it
        own = {key: body[key] for key in prefixed}
        _flatten_object({k: v for k, v in body.items() if k not in own}, prefix, values, 1)
        _flatten_object(own, "", values, 1)
    else:
        _flatten_object(body, prefix, values, 1)
    return Decoded(TopicKind.QUOTA, _check_keys(values))


def _status(params: dict[str, Any]) -> Decoded:
    status = params.get("status")
    if isinstance(status, str):
        status = _number(status)
    if status not in (0, 1) or isinstance(status, bool):
        raise PayloadError(f"status must be 0 or 1, got {status!r}")
    return Decoded(TopicKind.STATUS, {"status": int(status)}, online=int(status))


def decode_object(obj: Any, topic_kind: TopicKind | None = None, cmd_prefix: bool = True) -> Decoded:
    """Map one parsed payload to its kind and flat values (device units).

    `cmd_prefix`: whether the keys of a cmdFunc/cmdId report get `{cmdFunc}_{cmdId}.`, as the
    product's quota/all keys do (`Product.cmd_prefix`; PowerStream, Smart Plug) or not (DELTA Pro 3).
    """
    if not isinstance(obj, dict):
        raise PayloadError(f"expected a JSON object, got {type(obj).__name__}")
    if topic_kind is TopicKind.SET_REPLY:
        data = obj.get("data")
        return Decoded(TopicKind.SET_REPLY, _check_keys(flatten(data)) if isinstance(data, dict) else {})
    if "cmdFunc" in obj and "cmdId" in obj:
        return _cmd_report(obj, cmd_prefix)
    if "code" in obj and ("message" in obj or "data" in obj):
        code = str(obj["code"])
        if code != "0":
            raise PayloadError(f"API error {code}: {obj.get('message', '')}")
        data = obj.get("data")
        if data is None:
            return Decoded(TopicKind.QUOTA, {})
        if not isinstance(data, dict):
            raise PayloadError(f"envelope 'data' must be an object, got {type(data).__name__}")
        return decode_object(data, topic_kind, cmd_prefix)
    params = obj.get("params")
    if isinstance(params, dict) and ("version" in obj or "id" in obj or len(obj) == 1):
        if topic_kind is TopicKind.STATUS or (topic_kind is None and set(params) == {"status"}):
            return _status(params)
        type_code = obj.get("typeCode")
        if isinstance(type_code, str) and type_code:  # an unknown typeCode is its own prefix
            prefix = TYPE_CODE_PREFIXES.get(type_code, type_code) + "."
            values: dict[str, Scalar] = {}
            for key, value in params.items():  # keys that already carry the prefix keep it
                flatten({key: value}, "" if key.startswith(prefix) else prefix, values)
            return Decoded(TopicKind.QUOTA, _check_keys(values))
        return Decoded(TopicKind.QUOTA, _check_keys(flatten(params)))
    if topic_kind is TopicKind.STATUS:
        raise PayloadError("status message without a 'params' object")
    values = _check_keys(flatten(obj))
    if not any(v.__class__ is not str for v in values.values()):
        raise PayloadError("no numeric fields: not a known payload shape")
    return Decoded(TopicKind.QUOTA, values)


class LazyValues(Mapping[str, Scalar]):
    """The flat values of a quota report the fast path (normalize.FastNormalizer) normalized without
    flattening it: flattened by `decode_object` when first read. Never empty (the fast path takes
    only reports with numbers), so `bool()` costs nothing."""

    __slots__ = ("_cmd_prefix", "_kind", "_obj", "_values")

    def __init__(self, obj: dict[str, Any], kind: TopicKind | None, cmd_prefix: bool) -> None:
        self._obj, self._kind, self._cmd_prefix = obj, kind, cmd_prefix
        self._values: Mapping[str, Scalar] | None = None

    def _flat(self) -> Mapping[str, Scalar]:
        if self._values is None:
            self._values = decode_object(self._obj, self._kind, self._cmd_prefix).values
        return self._values

    def __bool__(self) -> bool:
        return True

    def __getitem__(self, key: str) -> Scalar:
        return self._flat()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._flat())

    def __len__(self) -> int:
        return len(self._flat())

    def __repr__(self) -> str:
        return repr(dict(self._flat()))


_cmd_prefixes: dict[tuple[int, int], str] = {}  # (cmdFunc, cmdId) -> its valid `{cmdFunc}_{cmdId}.`

# how the keys of a report's body map into the quota/all key space (see quota_body)
KEYS_AS_THEY_ARE, CMD_PREFIXED, TYPE_CODE_PREFIXED = 0, 1, 2


def quota_body(
    obj: Any, topic_kind: TopicKind | None, cmd_prefix: bool
) -> tuple[dict[str, Any], int, str, int] | None:
    """Where the values of a quota report are, without flattening them: (body, how its keys map,
    prefix, depth of the body as `decode_object` counts it), or None for anything that is not a
    quota report with a body (status, set_reply, API errors, bad shapes: `decode_object` decides).

    Follows decode_object's branches exactly: a key of the body maps to `prefix + key`, except
    CMD_PREFIXED keys that carry their own `{cmdFunc}_{cmdId}.` (kept, and put after the others) and
    TYPE_CODE_PREFIXED keys that already start with the prefix (kept)."""
    if obj.__class__ is not dict or topic_kind is TopicKind.SET_REPLY:
        return None
    if "cmdFunc" in obj and "cmdId" in obj:
        body = obj.get("params")
        if not body:
            body = obj.get("param", body)
        if body.__class__ is not dict:
            return None
        if not cmd_prefix:
            return body, KEYS_AS_THEY_ARE, "", 1
        func, cmd = obj["cmdFunc"], obj["cmdId"]
        if func.__class__ is int and cmd.__class__ is int:  # ints only: 1 == 1.0 == True as keys
            prefix = _cmd_prefixes.get((func, cmd))
            if prefix is not None:
                return body, CMD_PREFIXED, prefix, 1
        prefix = f"{func}_{cmd}."
        if not _CMD_PREFIX.match(prefix):
            return None
        if func.__class__ is int and cmd.__class__ is int and len(_cmd_prefixes) < 1024:
            _cmd_prefixes[func, cmd] = prefix
        return body, CMD_PREFIXED, prefix, 1
    if "code" in obj and ("message" in obj or "data" in obj):
        data = obj.get("data")
        if data.__class__ is not dict or str(obj["code"]) != "0":
            return None
        return quota_body(data, topic_kind, cmd_prefix)
    params = obj.get("params")
    if params.__class__ is dict and ("version" in obj or "id" in obj or len(obj) == 1):
        if topic_kind is TopicKind.STATUS or (topic_kind is None and len(params) == 1 and "status" in params):
            return None
        type_code = obj.get("typeCode")
        if type_code.__class__ is str and type_code:
            return params, TYPE_CODE_PREFIXED, TYPE_CODE_PREFIXES.get(type_code, type_code) + ".", 0
        return params, KEYS_AS_THEY_ARE, "", 0
    if topic_kind is TopicKind.STATUS:
        return None
    return obj, KEYS_AS_THEY_ARE, "", 0


def decode_bytes(
    data: bytes | str, topic_kind: TopicKind | str | None = None, cmd_prefix: bool = True
) -> Decoded:
    kind = TopicKind(topic_kind) if topic_kind is not None else None
    return decode_object(parse_json(data), kind, cmd_prefix)
