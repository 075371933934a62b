"""The Grafana alerting provisioning (grafana/provisioning/alerting/, made by grafana/alerting.py), checked
the ways that stand in for a Grafana server (none can run here):

- the files are what grafana/alerting.py generates, parse as YAML and have the keys Grafana's file
  provisioning (apiVersion 1) requires: rule groups, contact point, notification policies, templates;
- every `$` outside a query/expression model is a ${VAR} that docker-compose.yml passes to Grafana
  (Grafana interpolates those fields with os.ExpandEnv and never interpolates `model`);
- one error-code rule per error_code field of the catalog (not arrays or pattern keys: their length
  is unknown), nothing hand-copied;
- every rule's InfluxQL runs against a real InfluxDB, twice or more: with scenario data written here
  (line protocol, the catalog's and docs/schema.md's field names) where the rule must fire, and with
  normal data where it must not; the rule's reduce/threshold/math expressions are evaluated the way
  Grafana's server-side expressions do (per series, labels = the GROUP BY tags, math joined on
  identical labels, noDataState when no query returns a series).
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from collector.catalog import default_catalog
from collector.catalog.model import Kind
from collector.testbed import InfluxServer
from tests.test_grafana import GRAFANA, ROOT, load_script, need_yaml

ALERTING_DIR = GRAFANA / "provisioning" / "alerting"


ALERTING = load_script(GRAFANA / "alerting.py", "grafana_alerting")


def load(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = need_yaml().safe_load(path.read_text(encoding="utf-8"))
    return data


def all_rules() -> list[dict[str, Any]]:
    return [r for g in load(ALERTING_DIR / "rules.yaml")["groups"] for r in g["rules"]]


def compose_grafana_env() -> dict[str, str]:
    compose = load(ROOT / "docker-compose.yml")
    env: dict[str, str] = compose["services"]["grafana"]["environment"]
    return env


# ------------------------------------------------------------------------------------ static checks
def test_the_files_are_what_alerting_py_generates_and_build_py_calls_it() -> None:
    assert ALERTING.stale(write=False) == [], "run python3 grafana/build.py"
    made = {p.relative_to(GRAFANA).as_posix() for p in ALERTING.build()}
    assert made == {
        "provisioning/alerting/rules.yaml",
        "provisioning/alerting/contact-points.yaml",
        "provisioning/alerting/policies.yaml",
        "provisioning/alerting/templates.yaml",
        "alerting-extras/telegram.yaml",
        "alerting-extras/email.yaml",
    }
    # Grafana refuses the whole folder when a file in it is not YAML/JSON provisioning
    assert sorted(p.name for p in ALERTING_DIR.iterdir()) == [
        "contact-points.yaml",
        "policies.yaml",
        "rules.yaml",
        "templates.yaml",
    ]
    build = (GRAFANA / "build.py").read_text(encoding="utf-8")
    assert "alerting.stale(write=not args.check)" in build


def test_rule_groups_have_the_keys_grafana_requires() -> None:
    data = load(ALERTING_DIR / "rules.yaml")
    assert data["apiVersion"] == 1
    groups = data["groups"]
    assert [g["name"] for g in groups] == ["EcoFlow devices", "EcoFlow device errors", "EcoFlow collector"]
    uids, titles = [], []
    for group in groups:
        assert group["orgId"] == 1 and group["folder"] == "EcoFlow" and group["interval"] == "1m"
        assert group["rules"], group["name"]
        for rule in group["rules"]:
            uids.append(rule["uid"])
            titles.append(rule["title"])
            where = rule["uid"]
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rule["uid"]), where
            refs = [d["refId"] for d in rule["data"]]
            assert len(refs) == len(set(refs)), where
            assert rule["condition"] == refs[-1], where
            assert rule["noDataState"] in ("OK", "Alerting") and rule["execErrState"] == "Error", where
            assert re.fullmatch(r"\$\{ALERT_\w+_FOR\}", rule["for"]), where
            assert set(rule["annotations"]) == {"summary", "description"}, where
            assert rule["labels"]["source"] == "ecoflow-collector", where
            assert rule["labels"]["severity"] in ("warning", "critical"), where
            assert rule["isPaused"] is False
            queries = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
            assert queries, where
            for query in queries:
                assert query["datasourceUid"] == ALERTING.DATASOURCE_UID, where
                assert query["relativeTimeRange"]["from"] > 0 and query["relativeTimeRange"]["to"] == 0
                model = query["model"]
                assert model["refId"] == query["refId"] and model["rawQuery"] is True, where
                assert model["resultFormat"] == "time_series", where
                assert model["datasource"] == {"type": "influxdb", "uid": ALERTING.DATASOURCE_UID}
                assert "$timeFilter" in model["query"], where
                assert re.findall(r"\$\w+", model["query"]) == ["$timeFilter"], where
            for expr in rule["data"][len(queries) :]:
                assert expr["datasourceUid"] == "__expr__", where
                model = expr["model"]
                assert model["datasource"] == {"type": "__expr__", "uid": "__expr__"}
                assert model["type"] in ("reduce", "threshold", "math"), where
                sources = (
                    re.findall(r"\$(\w+)", model["expression"])
                    if model["type"] == "math"
                    else [model["expression"]]
                )
                earlier = refs[: refs.index(expr["refId"])]
                assert sources and set(sources) <= set(earlier), f"{where}: {model}"
                if model["type"] == "reduce":
                    assert model["reducer"] in ("last", "max", "min", "mean", "sum")
                    assert model["settings"] == {"mode": "dropNN"}
                if model["type"] == "threshold":
                    (condition,) = model["conditions"]
                    assert condition["evaluator"]["type"] in ("gt", "lt")
                    assert len(condition["evaluator"]["params"]) == 1
    assert len(uids) == len(set(uids)) and len(titles) == len(set(titles))
    kinds = {r["labels"]["alert_kind"] for r in all_rules()}
    assert kinds == set(ALERTING.FOR_ENV)


def _outside_models(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key != "model":
                yield from _outside_models(value, f"{path}.{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _outside_models(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


def test_every_dollar_outside_a_model_is_an_environment_variable_compose_passes() -> None:
    """Grafana runs os.ExpandEnv over these fields: a `$labels` there would become ''."""
    env = compose_grafana_env()
    files = [*ALERTING_DIR.glob("*.yaml"), *(GRAFANA / "alerting-extras").glob("*.yaml")]
    used = set()
    for path in files:
        for where, text in _outside_models(load(path)):
            without = re.sub(r"\$\{(\w+)\}", "", text)
            assert "$" not in without, f"{path.name}{where}: {text!r}"
            used |= set(re.findall(r"\$\{(\w+)\}", text))
    expected = {env for env, _default in ALERTING.FOR_ENV.values()} | set(ALERTING.CONTACT_ENV)
    assert used == expected
    assert used <= set(env), f"docker-compose.yml does not pass {sorted(used - set(env))} to Grafana"


def test_one_error_rule_per_error_code_field_of_the_catalog() -> None:
    catalog = default_catalog()
    expected = {
        (slug, spec.key)
        for slug, product in catalog.products.items()
        for spec in product.all_fields()
        if spec.kind is Kind.ERROR_CODE and not spec.array and "#" not in spec.key
    }
    rules = [r for r in all_rules() if r["labels"]["alert_kind"] == "error_code"]
    found = {(r["labels"]["product"], r["labels"]["field"]) for r in rules}
    assert found == expected and len(rules) == len(expected)
    assert ("powerstream", "20_1.invErrCode") in found and ("delta_pro", "pd.errCode") in found
    for rule in rules:
        slug, key = rule["labels"]["product"], rule["labels"]["field"]
        (query,) = [d for d in rule["data"] if d["datasourceUid"] != "__expr__"]
        assert query["model"]["query"] == (
            f'SELECT last("{key}") AS "value" FROM "{slug}" WHERE $timeFilter GROUP BY "sn", "name"'
        )
        normal = ALERTING.NORMAL_CODES.get((slug, key), ())
        math_model = rule["data"][-1]["model"]
        assert math_model["expression"] == " && ".join(["$B != 0", *(f"$B != {n}" for n in normal)])
        for code in normal:  # a code treated as normal is one the catalog documents as normal
            spec = catalog.products[slug].lookup(key)
            assert spec is not None and str(code) in spec.desc


def test_battery_rules_cover_every_product_with_a_state_of_charge() -> None:
    catalog = default_catalog()
    with_soc = {slug for slug, p in catalog.products.items() if "soc_percent" in p.summary}
    rules = [r for r in all_rules() if r["labels"]["alert_kind"] == "battery_low"]
    assert {r["labels"]["product"] for r in rules} == with_soc
    assert {"powerstream", "delta_pro"} <= with_soc


def test_contact_point_policies_and_templates() -> None:
    points = load(ALERTING_DIR / "contact-points.yaml")
    assert points["apiVersion"] == 1
    (point,) = points["contactPoints"]
    assert point["name"] == ALERTING.CONTACT_POINT and point["orgId"] == 1
    (webhook,) = point["receivers"]
    assert webhook["type"] == "webhook" and webhook["uid"] == "ecoflow-webhook"
    assert webhook["settings"]["url"] == "${ALERT_WEBHOOK_URL}"
    assert webhook["settings"]["title"] == '{{ template "ecoflow.title" . }}'
    assert webhook["settings"]["message"] == '{{ template "ecoflow.message" . }}'
    extras = {p.name: load(p) for p in (GRAFANA / "alerting-extras").glob("*.yaml")}
    telegram = extras["telegram.yaml"]["contactPoints"][0]
    email = extras["email.yaml"]["contactPoints"][0]
    assert telegram["name"] == email["name"] == ALERTING.CONTACT_POINT  # same name: added to the point
    assert telegram["receivers"][0]["settings"]["bottoken"] == "${ALERT_TELEGRAM_BOT_TOKEN}"
    assert telegram["receivers"][0]["settings"]["chatid"] == "${ALERT_TELEGRAM_CHAT_ID}"
    assert email["receivers"][0]["settings"]["addresses"] == "${ALERT_EMAIL_ADDRESSES}"
    policies = load(ALERTING_DIR / "policies.yaml")
    (root,) = policies["policies"]
    assert root["receiver"] == ALERTING.CONTACT_POINT and root["orgId"] == 1
    assert root["group_by"] == ["alertname", "sn", "instance"]
    templates = load(ALERTING_DIR / "templates.yaml")
    (template,) = templates["templates"]
    text = template["template"]
    assert template["name"] == "ecoflow"
    assert re.findall(r'\{\{ define "([\w.]+)" \}\}', text) == ["ecoflow.title", "ecoflow.message"]
    opened = len(re.findall(r"\{\{-? (?:define|if|range|with) ", text))
    assert opened == len(re.findall(r"\{\{-? end -?\}\}", text))
    for needle in (".Labels.name", ".Labels.sn", ".Annotations.summary", ".Labels.instance"):
        assert needle in text
    # every device rule's summary names the device and shows a value
    for rule in all_rules():
        summary = rule["annotations"]["summary"]
        assert re.search(r"\.Values\.[A-Z]\.Value", summary), rule["uid"]
        has_sn = '"sn"' in rule["data"][0]["model"]["query"]
        assert ("{{ .Labels.name }} ({{ .Labels.sn }})" in summary) == has_sn, rule["uid"]
        assert ("{{ .Labels.instance }}" in summary) == (not has_sn), rule["uid"]


def test_compose_gives_the_durations_defaults_equal_to_alerting_py() -> None:
    env = compose_grafana_env()
    for name, default in ALERTING.FOR_ENV.values():
        assert env[name] == f"${{{name}:-{default}}}", name


# ------------------------------------------------------------------------------------ evaluation
Labels = frozenset[tuple[str, str]]
NODATA = "nodata"


@dataclass
class Evaluation:
    values: dict[str, dict[Labels, float]]  # refId of an expression -> labels -> number
    nodata: bool

    def firing(self, condition: str) -> set[Labels]:
        return {labels for labels, v in self.values[condition].items() if not math.isnan(v) and v != 0}


def run_query(influx: InfluxServer, db: str, query: dict[str, Any]) -> list[tuple[Labels, list[float]]]:
    """The query as Grafana runs it for the rule: $timeFilter = the relative time range, up to now."""
    seconds = query["relativeTimeRange"]["from"]
    text = query["model"]["query"].replace("$timeFilter", f"time >= now() - {seconds}s AND time <= now()")
    result = influx.query(db, text)
    out = []
    for series in result["results"][0].get("series", []):
        columns = series["columns"]
        # one value column per series: several would give Grafana series with identical labels
        assert len(columns) == 2 and columns[0] == "time", text
        labels = frozenset(series.get("tags", {}).items())
        out.append((labels, [row[1] for row in series["values"] if row[1] is not None]))
    return out


REDUCERS: dict[str, Callable[[list[float]], float]] = {
    "last": lambda v: v[-1],
    "max": max,
    "min": min,
    "mean": lambda v: sum(v) / len(v),
    "sum": sum,
}
MATH_TOKENS = re.compile(r"\s*(\$[A-Z]|\d+(?:\.\d+)?|==|!=|<=|>=|<|>|&&|\|\||\(|\))")


def math_python(expression: str) -> str:
    """A Grafana math expression of the forms alerting.py writes, as Python over `v`."""
    out, pos = [], 0
    while pos < len(expression):
        match = MATH_TOKENS.match(expression, pos)
        assert match, f"unexpected math at {expression[pos:]!r}"
        token = match.group(1)
        out.append({"&&": "and", "||": "or"}.get(token, f"v[{token[1]!r}]" if token[0] == "$" else token))
        pos = match.end()
    return " ".join(out)


def evaluate(influx: InfluxServer, db: str, rule: dict[str, Any]) -> Evaluation:
    series: dict[str, list[tuple[Labels, list[float]]]] = {}
    values: dict[str, dict[Labels, float]] = {}
    for item in rule["data"]:
        model, ref = item["model"], item["refId"]
        if item["datasourceUid"] != "__expr__":
            series[ref] = run_query(influx, db, item)
        elif model["type"] == "reduce":
            # mode dropNN: nulls are dropped (run_query dropped them); an empty series reduces to NaN
            fn = REDUCERS[model["reducer"]]
            values[ref] = {labels: fn(v) if v else math.nan for labels, v in series[model["expression"]]}
        elif model["type"] == "threshold":
            evaluator = model["conditions"][0]["evaluator"]
            limit, above = float(evaluator["params"][0]), evaluator["type"] == "gt"
            values[ref] = {
                labels: float(x > limit if above else x < limit)
                for labels, x in values[model["expression"]].items()
            }
        else:
            refs = sorted(set(re.findall(r"\$(\w+)", model["expression"])))
            code = math_python(model["expression"])
            common = set.intersection(*(set(values[r]) for r in refs))  # joined on identical labels
            out = {}
            for labels in common:
                operands = {r: values[r][labels] for r in refs}
                if any(math.isnan(x) for x in operands.values()):
                    out[labels] = math.nan
                else:
                    out[labels] = float(eval(code, {"__builtins__": {}}, {"v": operands}))
            values[ref] = out
    nodata = all(not s for s in series.values())
    return Evaluation(values, nodata)


# ------------------------------------------------------------------------------------ scenario data
PS = {"sn": "HW51ZZTEST000001", "name": "Balcony"}
PS2 = {"sn": "HW51ZZTEST000002", "name": "Shed"}
DP = {"sn": "DCABZZTEST000001", "name": "Garage"}
DP2 = {"sn": "DCABZZTEST000002", "name": "Cabin"}


def labels_of(device: dict[str, str], *keys: str) -> Labels:
    return frozenset((k, device[k]) for k in (keys or ("sn", "name")))


def lp_key(text: str) -> str:
    return re.sub(r"([ ,=])", r"\\\1", text)


class Lines:
    """Line protocol, times in seconds before now."""

    def __init__(self) -> None:
        self.now = int(time.time())
        self.lines: list[str] = []

    def add(self, measurement: str, tags: dict[str, str], fields: dict[str, float], ago: float) -> None:
        tag_text = ",".join(f"{lp_key(k)}={lp_key(v)}" for k, v in sorted(tags.items()))
        field_text = ",".join(f"{lp_key(k)}={float(v)!r}" for k, v in fields.items())
        self.lines.append(f"{measurement},{tag_text} {field_text} {self.now - int(ago)}")

    def every(
        self,
        measurement: str,
        tags: dict[str, str],
        start: float,
        stop: float,
        step: float,
        fields: Callable[[float], dict[str, float]],
    ) -> None:
        """Points from `start` to `stop` seconds ago (inclusive), every `step` seconds."""
        ago = start
        while ago >= stop:
            self.add(measurement, tags, fields(ago), ago)
            ago -= step


@dataclass
class Scenario:
    name: str
    lines: Lines
    expect: set[Labels] | str  # the firing label sets, or NODATA (noDataState decides)
    evaluated: set[Labels] | None = None  # label sets the condition must have a value for


def offline_scenarios() -> list[Scenario]:
    firing, normal = Lines(), Lines()
    m = "ecoflow_status"
    firing.every(m, PS, 2400, 960, 60, lambda a: {"online": 1, "state": 2})
    firing.every(m, PS, 900, 0, 60, lambda a: {"online": 0, "state": 1})  # assumed offline since 15 min
    firing.every(m, DP, 2400, 0, 60, lambda a: {"online": 1, "state": 2})
    firing.every(m, DP2, 2400, 0, 60, lambda a: {"online": 0, "state": 0 if a < 600 else 2})
    normal.every(m, PS, 2400, 0, 60, lambda a: {"online": 1, "state": 2})
    normal.every(m, DP, 2400, 0, 60, lambda a: {"online": 1, "state": 1 if 1200 < a < 1800 else 2})
    both = {labels_of(PS), labels_of(DP), labels_of(DP2)}
    return [
        Scenario("one assumed offline, one offline", firing, {labels_of(PS), labels_of(DP2)}, both),
        Scenario("all online now", normal, set(), {labels_of(PS), labels_of(DP)}),
    ]


def falling_to(key: str, end: float) -> Callable[[float], dict[str, float]]:
    """A value that falls by 1 per 100 s to `end` now."""
    return lambda ago: {key: end + ago / 100}


def code_since(key: str, code: float, since: float) -> Callable[[float], dict[str, float]]:
    """0, then `code` for the last `since` seconds."""
    return lambda ago: {key: code if ago < since else 0}


def battery_scenarios(product: str, limit: float) -> list[Scenario]:
    devices = {"powerstream": (PS, PS2), "delta_pro": (DP, DP2)}
    device, other = devices.get(product, ({"sn": "X1", "name": "X"}, {"sn": "X2", "name": "Y"}))
    foreign = DP if product != "delta_pro" else PS  # a device of another product, as low: not this rule's
    foreign_product = "delta_pro" if product != "delta_pro" else "powerstream"
    m = "ecoflow_summary"
    firing, normal = Lines(), Lines()
    for lines, low in ((firing, True), (normal, False)):
        now_soc = limit - 3 if low else limit + 3
        lines.every(m, {**device, "product": product}, 1500, 0, 60, falling_to("soc_percent", now_soc))
        lines.every(m, {**other, "product": product}, 1500, 0, 60, lambda a: {"soc_percent": limit + 20})
        lines.every(m, {**foreign, "product": foreign_product}, 1500, 0, 60, lambda a: {"soc_percent": 1})
    evaluated = {labels_of(device), labels_of(other)}
    return [
        Scenario(f"{product} at {limit - 3:g} %", firing, {labels_of(device)}, evaluated),
        Scenario(f"{product} at {limit + 3:g} %", normal, set(), evaluated),
    ]


def delta_pro_outage_scenarios() -> list[Scenario]:
    m = "delta_pro"

    def write(
        lines: Lines, device: dict[str, str], watts: Callable[[float], float], volts: Callable[[float], float]
    ) -> None:
        lines.every(m, device, 1500, 0, 30, lambda a: {"inv.inputWatts": watts(a), "inv.acInVol": volts(a)})

    outage, charging, idle = Lines(), Lines(), Lines()
    write(outage, DP, lambda a: 500 if a > 180 else 0, lambda a: 231 if a > 180 else 0)
    write(outage, DP2, lambda a: 500, lambda a: 231)  # still charging: no alert
    write(charging, DP, lambda a: 500, lambda a: 231)
    write(idle, DP, lambda a: 0, lambda a: 231 if a > 600 else 0)  # unplugged while not charging
    both = {labels_of(DP), labels_of(DP2)}
    return [
        Scenario("grid lost while charging", outage, {labels_of(DP)}, both),
        Scenario("charging from AC", charging, set(), {labels_of(DP)}),
        Scenario("AC gone while not charging", idle, set(), {labels_of(DP)}),
    ]


def powerstream_outage_scenarios() -> list[Scenario]:
    m = "powerstream"
    k = "20_1."

    def write(
        lines: Lines,
        device: dict[str, str],
        output: Callable[[float], float],
        pv_volts: float = 35.2,
        soc: float = 80,
        priority: float = 0,
        load: float = 100,
    ) -> None:
        lines.every(
            m,
            device,
            1500,
            0,
            20,
            lambda a: {
                f"{k}invOutputWatts": output(a),
                f"{k}pv1InputVolt": pv_volts,
                f"{k}pv2InputVolt": pv_volts - 1,
                f"{k}batSoc": soc,
            },
        )
        # settings: in the heartbeat every few minutes (quota/all every 15 min)
        lines.every(
            m, device, 3000, 0, 300, lambda a: {f"{k}permanentWatts": load, f"{k}supplyPriority": priority}
        )

    drop = lambda a: 150.0 if a > 180 else 0.0  # noqa: E731 - fed 150 W, 0 W for the last 3 minutes
    outage, feeding, night, storage, empty, no_load = (Lines() for _ in range(6))
    write(outage, PS, drop)
    write(outage, PS2, lambda a: 150)
    write(feeding, PS, lambda a: 150)
    write(night, PS, drop, pv_volts=0.4)
    write(storage, PS, drop, priority=1)
    write(empty, PS, drop, soc=12)
    write(no_load, PS, drop, load=0)
    both = {labels_of(PS), labels_of(PS2)}
    one = {labels_of(PS)}
    return [
        Scenario("output 0 W in daylight with a charged battery", outage, one, both),
        Scenario("feeding", feeding, set(), one),
        Scenario("output 0 W at night", night, set(), one),
        Scenario("output 0 W with supply priority 'power storage'", storage, set(), one),
        Scenario("output 0 W with the battery at 12 %", empty, set(), one),
        Scenario("output 0 W with no custom load", no_load, set(), one),
    ]


def error_scenarios(product: str, key: str) -> list[Scenario]:
    device = PS if product == "powerstream" else DP
    other = PS2 if product == "powerstream" else DP2
    firing, cleared = Lines(), Lines()
    firing.every(product, device, 3000, 0, 60, lambda a: {key: 3 if a < 600 else 0})
    firing.every(product, other, 3000, 0, 60, lambda a: {key: 0})
    cleared.every(product, device, 3000, 0, 60, lambda a: {key: 0 if a < 600 else 3})  # fixed 10 min ago
    both = {labels_of(device), labels_of(other)}
    out = [
        Scenario(f"{key} = 3", firing, {labels_of(device)}, both),
        Scenario(f"{key} back to 0", cleared, set(), {labels_of(device)}),
    ]
    for code in ALERTING.NORMAL_CODES.get((product, key), ()):
        quiet = Lines()
        quiet.every(product, device, 3000, 0, 60, code_since(key, code, 600))
        out.append(Scenario(f"{key} = {code} (documented as normal)", quiet, set(), {labels_of(device)}))
    return out


A, B = {"instance": "open-aaaa"}, {"instance": "open-bbbb"}
C = "ecoflow_collector"


def collector_scenarios(kind: str) -> list[Scenario]:
    la, lb = frozenset(A.items()), frozenset(B.items())
    first, second, third = Lines(), Lines(), Lines()
    if kind == "collector_silent":
        first.every(C, A, 3000, 480, 30, lambda a: {"mqtt_connected": 1})  # silent for 8 minutes
        first.every(C, B, 3000, 0, 30, lambda a: {"mqtt_connected": 1})
        second.every(C, A, 3000, 0, 30, lambda a: {"mqtt_connected": 1})
        second.every(C, B, 3000, 60, 30, lambda a: {"mqtt_connected": 0})  # a minute late is fine
        return [
            Scenario("one instance silent for 8 minutes", first, {la}, {la, lb}),
            Scenario("no collector point in the past hour", third, NODATA),
            Scenario("both writing", second, set(), {la, lb}),
        ]
    if kind == "mqtt_disconnected":
        first.every(C, A, 900, 0, 30, lambda a: {"mqtt_connected": 0 if a < 420 else 1})
        first.every(C, B, 900, 0, 30, lambda a: {"mqtt_connected": 1})
        second.every(C, A, 900, 0, 30, lambda a: {"mqtt_connected": 1 if a < 120 else 0})  # reconnected
        return [
            Scenario("disconnected", first, {la}, {la, lb}),
            Scenario("connected again", second, set(), {la}),
        ]
    if kind == "spool_growing":
        first.every(
            C, A, 1200, 0, 30, lambda a: {"spool_points": 5000 - 4 * a, "spool_bytes": 250e3 - 200 * a}
        )
        first.every(C, B, 1200, 0, 30, lambda a: {"spool_points": 0, "spool_bytes": 0})
        second.every(C, A, 1200, 0, 30, lambda a: {"spool_points": 4 * a, "spool_bytes": 200 * a})  # draining
        third.every(C, A, 1200, 0, 30, lambda a: {"spool_points": 0, "spool_bytes": 0})
        return [
            Scenario("spool growing", first, {la}, {la, lb}),
            Scenario("spool draining", second, set(), {la}),
            Scenario("spool empty", third, set(), {la}),
        ]
    assert kind == "points_dropped"
    first.every(C, A, 1200, 0, 30, lambda a: {"points_dropped": 40 if a > 300 else 160})
    first.every(C, B, 1200, 0, 30, lambda a: {"points_dropped": 7})
    second.every(C, A, 1200, 0, 30, lambda a: {"points_dropped": 40})  # drops long ago
    third.every(C, A, 1200, 0, 30, lambda a: {"points_dropped": 40 if a > 300 else 0})  # restarted
    return [
        Scenario("120 points dropped", first, {la}, {la, lb}),
        Scenario("no new drops", second, set(), {la}),
        Scenario("counter reset by a restart", third, set(), {la}),
    ]


def scenarios(rule: dict[str, Any]) -> list[Scenario]:
    kind, labels = rule["labels"]["alert_kind"], rule["labels"]
    if kind == "device_offline":
        return offline_scenarios()
    if kind == "battery_low":
        threshold = rule["data"][-1]["model"]["conditions"][0]["evaluator"]["params"][0]
        return battery_scenarios(labels["product"], threshold)
    if kind == "power_outage":
        return (
            delta_pro_outage_scenarios()
            if labels["product"] == "delta_pro"
            else powerstream_outage_scenarios()
        )
    if kind == "error_code":
        return error_scenarios(labels["product"], labels["field"])
    return collector_scenarios(kind)


@pytest.fixture
def database(influx_server: InfluxServer) -> Iterator[Callable[[], str]]:
    made: list[str] = []

    def make() -> str:
        name = f"alert_{uuid.uuid4().hex[:12]}"
        influx_server.create_database(name)
        made.append(name)
        return name

    try:
        yield make
    finally:
        for name in made:
            influx_server.drop_database(name)


RULES = all_rules()


@pytest.mark.parametrize("rule", RULES, ids=[r["uid"] for r in RULES])
def test_the_rule_fires_on_its_condition_and_not_on_normal_data(
    rule: dict[str, Any], influx_server: InfluxServer, database: Callable[[], str]
) -> None:
    cases = scenarios(rule)
    assert any(c.expect for c in cases) and any(c.expect == set() for c in cases)
    for case in cases:
        db = database()
        if case.lines.lines:
            influx_server.write_lines(db, case.lines.lines, precision="s")
        result = evaluate(influx_server, db, rule)
        where = f"{rule['uid']} / {case.name}"
        if case.expect == NODATA:
            assert result.nodata, where
            assert rule["noDataState"] == "Alerting", f"{where}: no data must alert"
            continue
        assert not result.nodata, f"{where}: the queries found nothing"
        condition = result.values[rule["condition"]]
        assert set(condition) == case.evaluated, f"{where}: evaluated {set(condition)}"
        assert result.firing(rule["condition"]) == case.expect, f"{where}: {condition}"
