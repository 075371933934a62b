"""Generates grafana/provisioning/alerting/*.yaml and grafana/alerting-extras/*.yaml (Grafana alerting
as code; grafana/build.py calls `write()` / `check()`, so `python3 grafana/build.py` regenerates both).

The files use Grafana's file-provisioning format for alerting (apiVersion 1): rule groups, a contact
point, the notification policy tree and notification templates. Every rule queries the InfluxQL data
source of the dashboards (uid ecoflow-influxdb) and ends in server-side expressions (`__expr__`):
reduce, threshold or math.

What Grafana takes from its environment when it reads the files (os.ExpandEnv on these fields only):
a rule's `for` (ALERT_*_FOR below), contact point settings (ALERT_WEBHOOK_URL, ...). It deliberately
does NOT interpolate a rule's query/expression `model` (grafana/grafana#82774), so the numeric
thresholds live in THRESHOLDS here: change one, run `python3 grafana/build.py`. No `$` appears in the
files outside `model` except those ${ALERT_...} references (annotation and notification templates use
`.Labels` / `.Values`, never `$labels`), so no other text can be eaten by the interpolation.
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))

from collector.catalog import Catalog, Product, default_catalog  # noqa: E402
from collector.catalog.model import Kind  # noqa: E402

PROVISIONING = ROOT / "provisioning" / "alerting"
EXTRAS = ROOT / "alerting-extras"
DATASOURCE_UID = "ecoflow-influxdb"  # provisioning/datasources/influxdb.yaml
FOLDER = "EcoFlow"  # the dashboards' folder (provisioning/dashboards/ecoflow.yaml)
CONTACT_POINT = "EcoFlow"
TEMPLATE_NAME = "ecoflow"
EVAL_INTERVAL = "1m"

# Numbers Grafana cannot take from the environment (see the module doc). Change, then regenerate.
THRESHOLDS: dict[str, float] = {
    # state of charge (ecoflow_summary.soc_percent) below which a battery counts as low, per product;
    # products with a soc_percent summary but no entry here use "battery_low_percent"
    "battery_low_percent": 20,
    "battery_low_percent.powerstream": 15,
    # Delta Pro: AC charging power (inv.inputWatts) that means "was charging from AC"
    "delta_pro_ac_charging_w": 50,
    # Delta Pro: AC input voltage (inv.acInVol) below which the AC input is gone
    "delta_pro_ac_present_v": 80,
    # PowerStream: AC output (20_1.invOutputWatts) at or below this is "zero"; above the feeding value
    # within the window it "was feeding"
    "powerstream_output_zero_w": 1,
    "powerstream_output_feeding_w": 10,
    # PowerStream: PV open-circuit voltage above this on PV1 or PV2 = daylight (the panels see light
    # even when no power is drawn from them)
    "powerstream_daylight_pv_v": 10,
    # PowerStream: battery SoC above this = charged; the discharge limit (lowerLimit) can be set to
    # at most 30 %, so above 30 % the battery can always supply the custom load
    "powerstream_charged_soc_percent": 30,
    # collector: minutes without an ecoflow_collector point (it writes one every 30 s)
    "collector_silent_minutes": 5,
}

# Durations Grafana reads from its environment (rule `for`); docker-compose.yml gives the defaults.
FOR_ENV: dict[str, tuple[str, str]] = {
    "device_offline": ("ALERT_DEVICE_OFFLINE_FOR", "15m"),
    "battery_low": ("ALERT_BATTERY_LOW_FOR", "10m"),
    "power_outage": ("ALERT_POWER_OUTAGE_FOR", "1m"),
    "error_code": ("ALERT_ERROR_CODE_FOR", "5m"),
    "collector_silent": ("ALERT_COLLECTOR_SILENT_FOR", "5m"),
    "mqtt_disconnected": ("ALERT_MQTT_DISCONNECTED_FOR", "10m"),
    "spool_growing": ("ALERT_SPOOL_GROWING_FOR", "15m"),
    "points_dropped": ("ALERT_POINTS_DROPPED_FOR", "0s"),
}
CONTACT_ENV = {
    "ALERT_WEBHOOK_URL": "URL the webhook contact point POSTs alerts to (Grafana's webhook JSON)",
    "ALERT_TELEGRAM_BOT_TOKEN": "Telegram bot token (alerting-extras/telegram.yaml)",
    "ALERT_TELEGRAM_CHAT_ID": "Telegram chat id (alerting-extras/telegram.yaml)",
    "ALERT_EMAIL_ADDRESSES": "e-mail recipients, separated by ';' (alerting-extras/email.yaml)",
}

# Error-code values the catalog itself documents as normal, per (product, key): no alert for them.
NORMAL_CODES: dict[tuple[str, str], tuple[int, ...]] = {
    # "the doc sample shows 128 at night": the PV port reports 128 while the panel has no light
    ("powerstream", "20_1.pv1ErrCode"): (128,),
    ("powerstream", "20_1.pv2ErrCode"): (128,),
}


# ------------------------------------------------------------------------------------- model
@dataclass(frozen=True)
class Query:
    ref: str
    text: str  # InfluxQL; $timeFilter is the rule's relative time range
    seconds: int  # relativeTimeRange.from (to = now)


@dataclass(frozen=True)
class Reduce:
    ref: str
    source: str
    reducer: str  # last, max, min, mean, sum


@dataclass(frozen=True)
class Threshold:
    ref: str
    source: str
    op: str  # gt, lt
    value: float


@dataclass(frozen=True)
class Math:
    ref: str
    expression: str  # over $REF of reduce results: comparisons, &&, ||, parentheses


Expression = Reduce | Threshold | Math


@dataclass(frozen=True)
class Rule:
    uid: str
    title: str
    kind: str  # a key of FOR_ENV
    queries: tuple[Query, ...]
    expressions: tuple[Expression, ...]
    summary: str  # Go template: .Labels.<tag>, .Values.<ref>.Value
    description: str
    no_data: str = "OK"
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def condition(self) -> str:
        return self.expressions[-1].ref


def q(text: str) -> str:
    return " ".join(text.split())


def value(ref: str, fmt: str = "%.0f") -> str:
    return f'{{{{ printf "{fmt}" .Values.{ref}.Value }}}}'


DEVICE = "{{ .Labels.name }} ({{ .Labels.sn }})"
INSTANCE = "collector {{ .Labels.instance }}"


def short_uid(prefix: str, key: str) -> str:
    """Grafana uids are at most 40 characters: a readable prefix and a stable hash of the key."""
    return f"{prefix}-{hashlib.sha1(key.encode()).hexdigest()[:10]}"


def last_per_device(measurement: str, field_name: str, where: str = "") -> str:
    extra = f" AND {where}" if where else ""
    return q(f'''SELECT last("{field_name}") AS "value" FROM "{measurement}" WHERE $timeFilter{extra}
              GROUP BY "sn", "name"''')


# ------------------------------------------------------------------------------------- rules
def device_offline() -> Rule:
    return Rule(
        uid="ecoflow-device-offline",
        title="EcoFlow device offline",
        kind="device_offline",
        queries=(Query("A", last_per_device("ecoflow_status", "state"), 3600),),
        expressions=(Reduce("B", "A", "last"), Threshold("C", "B", "lt", 2)),
        summary=f"{DEVICE} is offline (state {value('B')}: 0 = offline, 1 = assumed offline)",
        description="ecoflow_status.state is 0 (offline: the device list or /status says so) or 1 "
        "(assumed offline: silent longer than the collector's offline_after_s) for longer than "
        "the rule's pending period (ALERT_DEVICE_OFFLINE_FOR). The last state of the past hour counts.",
        labels={"severity": "warning"},
    )


def battery_low(product: Product) -> Rule:
    limit = THRESHOLDS.get(f"battery_low_percent.{product.slug}", THRESHOLDS["battery_low_percent"])
    return Rule(
        uid=f"ecoflow-battery-low-{product.slug}"[:40],
        title=f"EcoFlow {product.name} battery low",
        kind="battery_low",
        queries=(
            Query(
                "A",
                last_per_device("ecoflow_summary", "soc_percent", f"\"product\" = '{product.slug}'"),
                1800,
            ),
        ),
        expressions=(Reduce("B", "A", "last"), Threshold("C", "B", "lt", limit)),
        summary=f"{DEVICE}: battery at {value('B')} %, below {limit:g} %",
        description=f"The state of charge (ecoflow_summary.soc_percent, from the catalog's summary of "
        f"{product.name}: {', '.join(k for k, _ in product.summary['soc_percent'])}) is below "
        f"{limit:g} %.",
        labels={"severity": "warning", "product": product.slug},
    )


def delta_pro_outage(product: Product) -> Rule:
    m = product.slug
    for key in ("inv.inputWatts", "inv.acInVol"):
        if product.lookup(key) is None:
            raise SystemExit(f"alerting.py: {m} has no {key} in the catalog")
    charging = THRESHOLDS["delta_pro_ac_charging_w"]
    present = THRESHOLDS["delta_pro_ac_present_v"]
    return Rule(
        uid="ecoflow-outage-delta-pro",
        title="EcoFlow Delta Pro AC input lost while charging",
        kind="power_outage",
        queries=(
            Query("A", last_per_device(m, "inv.acInVol"), 1800),
            Query(
                "B",
                q(f'''SELECT max("inv.inputWatts") AS "value" FROM "{m}" WHERE $timeFilter
                      GROUP BY "sn", "name"'''),
                1800,
            ),
        ),
        expressions=(
            Reduce("C", "A", "last"),
            Reduce("D", "B", "max"),
            Math("E", f"$C < {present:g} && $D >= {charging:g}"),
        ),
        summary=f"{DEVICE}: AC input gone (AC input {value('C')} V) after charging from AC at up to "
        f"{value('D')} W in the last 30 minutes: power outage or the AC cable was pulled",
        description=f"inv.acInVol (AC input voltage) is below {present:g} V now, and inv.inputWatts "
        f"(AC charging power) reached {charging:g} W or more within the last 30 minutes: the Delta Pro "
        "was charging from the grid and the grid went away. The device cannot tell a power cut from a "
        "pulled plug. Without the charging condition, every Delta Pro used off-grid would alert. The "
        "alert ends 30 minutes after the charging stopped, even if the power is still out.",
        labels={"severity": "critical", "product": m},
    )


def powerstream_outage(product: Product) -> Rule:
    m = product.slug
    k = "20_1."
    keys = ("invOutputWatts", "pv1InputVolt", "pv2InputVolt", "batSoc", "permanentWatts", "supplyPriority")
    for key in keys:
        if product.lookup(k + key) is None:
            raise SystemExit(f"alerting.py: {m} has no {k}{key} in the catalog")
    priority = product.lookup(k + "supplyPriority")
    assert priority is not None
    supply_first = next(v for v, label in priority.values.items() if label == "power supply")
    zero, feeding = THRESHOLDS["powerstream_output_zero_w"], THRESHOLDS["powerstream_output_feeding_w"]
    daylight, charged = THRESHOLDS["powerstream_daylight_pv_v"], THRESHOLDS["powerstream_charged_soc_percent"]
    output = q(f'''SELECT max("{k}invOutputWatts") AS "value" FROM "{m}" WHERE $timeFilter
                   GROUP BY time(1m), "sn", "name" fill(none)''')
    return Rule(
        uid="ecoflow-outage-powerstream",
        title="EcoFlow PowerStream stopped feeding in daylight",
        kind="power_outage",
        queries=(
            Query("A", output, 1800),
            Query("B", last_per_device(m, k + "pv1InputVolt"), 1800),
            Query("C", last_per_device(m, k + "pv2InputVolt"), 1800),
            Query("D", last_per_device(m, k + "batSoc"), 1800),
            Query("E", last_per_device(m, k + "permanentWatts"), 3600),
            Query("F", last_per_device(m, k + "supplyPriority"), 3600),
        ),
        expressions=(
            Reduce("G", "A", "last"),
            Reduce("H", "A", "max"),
            Reduce("I", "B", "last"),
            Reduce("J", "C", "last"),
            Reduce("K", "D", "last"),
            Reduce("L", "E", "last"),
            Reduce("M", "F", "last"),
            Math(
                "N",
                f"$G <= {zero:g} && $H >= {feeding:g} && ($I > {daylight:g} || $J > {daylight:g}) "
                f"&& $K > {charged:g} && $L > 0 && $M == {supply_first}",
            ),
        ),
        summary=f"{DEVICE}: AC output dropped to {value('G')} W (it fed up to {value('H')} W in the last "
        f"30 minutes) with the battery at {value('K')} % and the PV ports at {value('I')} V / "
        f"{value('J')} V: grid outage or inverter fault",
        description=f"A grid-tied inverter must stop feeding when the grid is gone (anti-islanding). "
        f"The rule fires when 20_1.invOutputWatts fell to {zero:g} W or less after feeding {feeding:g} W or "
        f"more within 30 minutes, although the PowerStream could and should feed: daylight (PV1 or PV2 "
        f"input voltage above {daylight:g} V), a charged battery (20_1.batSoc above {charged:g} %, "
        f"above any discharge limit), a custom load set (20_1.permanentWatts above 0) and supply "
        f"priority 'power supply' (20_1.supplyPriority {supply_first}; with 'power storage' the "
        f"PowerStream may legitimately put all solar into the battery and output 0 W).",
        labels={"severity": "critical", "product": m},
    )


def error_code_rules(catalog: Catalog) -> list[Rule]:
    """One rule per error_code field of the catalog: the field's last value in the past hour is not 0
    (nor a value the catalog documents as normal, NORMAL_CODES). Error codes in arrays or pattern keys
    (Smart Home Panel: 20 slots of active codes) get none yet: the catalog does not say how many
    elements there are, so no query could name them all (the product dashboards leave them out too)."""
    rules = []
    for slug, product in sorted(catalog.products.items()):
        for spec in product.all_fields():
            if spec.kind is not Kind.ERROR_CODE or spec.array or "#" in spec.key:
                continue
            normal = NORMAL_CODES.get((slug, spec.key), ())
            condition = " && ".join(["$B != 0", *(f"$B != {n}" for n in normal)])
            severity = "warning" if "warn" in spec.key.lower() else "critical"
            quiet = f" ({', '.join(map(str, normal))} is normal: no alert)" if normal else ""
            rules.append(
                Rule(
                    uid=short_uid(f"ecoflow-error-{slug[:10]}", f"{slug}/{spec.key}"),
                    title=f"EcoFlow {product.name} {spec.key}",
                    kind="error_code",
                    queries=(Query("A", last_per_device(slug, spec.key), 3600),),
                    expressions=(Reduce("B", "A", "last"), Math("C", condition)),
                    summary=f"{DEVICE}: {spec.key} = {value('B')} ({spec.desc})",
                    description=f"The catalog marks {product.name}'s {spec.key} as an error code "
                    f"(kind error_code: 0 = none){quiet}. Its last value of the past hour is not 0. "
                    "EcoFlow documents no meanings for most codes; the product dashboard's error table "
                    "shows when it started.",
                    labels={"severity": severity, "product": slug, "field": spec.key},
                )
            )
    return rules


def collector_rules() -> list[Rule]:
    c = "ecoflow_collector"
    minutes = int(THRESHOLDS["collector_silent_minutes"])
    silent = q(f'''SELECT moving_average(count("mqtt_connected"), {minutes}) AS "points" FROM "{c}"
                   WHERE $timeFilter GROUP BY time(1m), "instance" fill(0)''')
    return [
        Rule(
            uid="ecoflow-collector-silent",
            title="EcoFlow collector silent",
            kind="collector_silent",
            queries=(Query("A", silent, 3600),),
            expressions=(Reduce("B", "A", "last"), Threshold("C", "B", "lt", 0.5)),
            summary=f"{INSTANCE} wrote no ecoflow_collector point for {minutes} minutes "
            f"({value('B', '%.1f')} points per minute; none for an hour if the instance is missing)",
            description=f"The collector writes ecoflow_collector every 30 s. No point of an instance "
            f"in the last {minutes} minutes (the moving average of its points per minute fell to 0), or no "
            "point of any instance in the last hour (no data: then this rule alerts, noDataState "
            "Alerting): the collector is stopped, stuck, or cannot write to InfluxDB.",
            no_data="Alerting",
            labels={"severity": "critical"},
        ),
        Rule(
            uid="ecoflow-collector-mqtt",
            title="EcoFlow collector MQTT disconnected",
            kind="mqtt_disconnected",
            queries=(
                Query(
                    "A",
                    q(f'''SELECT last("mqtt_connected") AS "value" FROM "{c}" WHERE $timeFilter
                          GROUP BY "instance"'''),
                    600,
                ),
            ),
            expressions=(Reduce("B", "A", "last"), Threshold("C", "B", "lt", 1)),
            summary=f"{INSTANCE}: MQTT disconnected (mqtt_connected {value('B')})",
            description="ecoflow_collector.mqtt_connected is 0 for longer than the pending period "
            "(ALERT_MQTT_DISCONNECTED_FOR): no live data from EcoFlow's broker; the collector polls "
            "quota/all over HTTP meanwhile, at a lower rate.",
            labels={"severity": "warning"},
        ),
        Rule(
            uid="ecoflow-collector-spool",
            title="EcoFlow collector spool growing",
            kind="spool_growing",
            queries=(
                Query(
                    "A",
                    q(f'''SELECT last("spool_points") - first("spool_points") AS "growth" FROM "{c}"
                          WHERE $timeFilter GROUP BY "instance"'''),
                    900,
                ),
                Query(
                    "D",
                    q(f'''SELECT last("spool_bytes") AS "value" FROM "{c}" WHERE $timeFilter
                          GROUP BY "instance"'''),
                    900,
                ),
            ),
            expressions=(Reduce("B", "A", "last"), Threshold("C", "B", "gt", 0), Reduce("E", "D", "last")),
            summary=f"{INSTANCE}: the spool grew by {value('B')} points in 15 minutes "
            f"({value('E')} bytes waiting for InfluxDB)",
            description="ecoflow_collector.spool_points rose over the last 15 minutes: write requests to "
            "InfluxDB fail (the failed batches wait in the on-disk spool), yet some telemetry arrives, so "
            "InfluxDB fails only now and then. When InfluxDB takes no writes at all, 'EcoFlow collector "
            "silent' fires instead (the telemetry itself waits in the spool).",
            labels={"severity": "warning"},
        ),
        Rule(
            uid="ecoflow-collector-dropped",
            title="EcoFlow collector dropped points",
            kind="points_dropped",
            queries=(
                Query(
                    "A",
                    q(f'''SELECT non_negative_difference("points_dropped") AS "dropped" FROM "{c}"
                          WHERE $timeFilter GROUP BY "instance"'''),
                    900,
                ),
            ),
            expressions=(Reduce("B", "A", "sum"), Threshold("C", "B", "gt", 0)),
            summary=f"{INSTANCE}: {value('B')} points dropped in the last 15 minutes",
            description="ecoflow_collector.points_dropped (a counter since start) rose: data was lost, "
            "because the spool was full (spool_max_bytes) or failed, or points arrived after close.",
            labels={"severity": "critical"},
        ),
    ]


def rules(catalog: Catalog | None = None) -> list[Rule]:
    catalog = catalog or default_catalog()
    out = [device_offline()]
    out += [battery_low(p) for _s, p in sorted(catalog.products.items()) if "soc_percent" in p.summary]
    out += [
        delta_pro_outage(catalog.products["delta_pro"]),
        powerstream_outage(catalog.products["powerstream"]),
    ]
    out += error_code_rules(catalog)
    out += collector_rules()
    return out


# ------------------------------------------------------------------------------------- files
EXPR_DS = {"type": "__expr__", "uid": "__expr__"}


def query_entry(query: Query) -> dict[str, Any]:
    return {
        "refId": query.ref,
        "relativeTimeRange": {"from": query.seconds, "to": 0},
        "datasourceUid": DATASOURCE_UID,
        "model": {
            "refId": query.ref,
            "datasource": {"type": "influxdb", "uid": DATASOURCE_UID},
            "query": query.text,
            "rawQuery": True,
            "resultFormat": "time_series",
            "intervalMs": 60000,
            "maxDataPoints": 43200,
        },
    }


def expression_entry(expression: Expression) -> dict[str, Any]:
    model: dict[str, Any] = {"refId": expression.ref, "datasource": EXPR_DS}
    if isinstance(expression, Reduce):
        model.update(
            type="reduce",
            expression=expression.source,
            reducer=expression.reducer,
            settings={"mode": "dropNN"},
        )
    elif isinstance(expression, Threshold):
        model.update(
            type="threshold",
            expression=expression.source,
            conditions=[{"evaluator": {"type": expression.op, "params": [expression.value]}}],
        )
    else:
        model.update(type="math", expression=expression.expression)
    return {
        "refId": expression.ref,
        "relativeTimeRange": {"from": 0, "to": 0},
        "datasourceUid": "__expr__",
        "model": model,
    }


def rule_entry(rule: Rule) -> dict[str, Any]:
    env, _default = FOR_ENV[rule.kind]
    return {
        "uid": rule.uid,
        "title": rule.title,
        "condition": rule.condition,
        "data": [*map(query_entry, rule.queries), *map(expression_entry, rule.expressions)],
        "noDataState": rule.no_data,
        "execErrState": "Error",
        "for": f"${{{env}}}",
        "annotations": {"summary": rule.summary, "description": rule.description},
        "labels": {"source": "ecoflow-collector", "alert_kind": rule.kind, **rule.labels},
        "isPaused": False,
    }


GROUPS = {
    "devices": ("device_offline", "battery_low", "power_outage"),
    "device errors": ("error_code",),
    "collector": ("collector_silent", "mqtt_disconnected", "spool_growing", "points_dropped"),
}


def rules_file(all_rules: Sequence[Rule]) -> dict[str, Any]:
    groups = []
    for name, kinds in GROUPS.items():
        groups.append(
            {
                "orgId": 1,
                "name": f"EcoFlow {name}",
                "folder": FOLDER,
                "interval": EVAL_INTERVAL,
                "rules": [rule_entry(r) for r in all_rules if r.kind in kinds],
            }
        )
    return {"apiVersion": 1, "groups": groups}


TITLE_TEMPLATE = (
    '{{ define "ecoflow.title" }}[{{ if eq .Status "firing" }}FIRING:{{ len .Alerts.Firing }}'
    "{{ else }}RESOLVED{{ end }}] {{ .CommonLabels.alertname }}"
    "{{ if .CommonLabels.name }}: {{ .CommonLabels.name }}{{ end }}{{ end }}"
)
MESSAGE_TEMPLATE = """{{ define "ecoflow.message" }}{{ range .Alerts }}
{{ if eq .Status "firing" }}FIRING{{ else }}RESOLVED{{ end }}: {{ .Labels.alertname }}
{{ .Annotations.summary }}
{{ if .Labels.sn }}Device: {{ .Labels.name }}, serial {{ .Labels.sn }}{{ end }}\
{{ if .Labels.instance }}Collector instance: {{ .Labels.instance }}{{ end }}
Since: {{ .StartsAt.Format "2006-01-02 15:04:05 MST" }}
{{ .Annotations.description }}
{{ end }}{{ end }}"""


def templates_file() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "templates": [
            {"orgId": 1, "name": TEMPLATE_NAME, "template": TITLE_TEMPLATE + "\n" + MESSAGE_TEMPLATE}
        ],
    }


def receiver(uid: str, kind: str, settings: dict[str, Any]) -> dict[str, Any]:
    return {"uid": uid, "type": kind, "settings": settings, "disableResolveMessage": False}


TITLE = '{{ template "ecoflow.title" . }}'
MESSAGE = '{{ template "ecoflow.message" . }}'


def contact_points_file() -> dict[str, Any]:
    webhook = receiver(
        "ecoflow-webhook",
        "webhook",
        {"url": "${ALERT_WEBHOOK_URL}", "httpMethod": "POST", "title": TITLE, "message": MESSAGE},
    )
    return {"apiVersion": 1, "contactPoints": [{"orgId": 1, "name": CONTACT_POINT, "receivers": [webhook]}]}


def extra_contact_points() -> dict[str, dict[str, Any]]:
    """Further integrations of the same contact point (same name: Grafana adds them to it). Copy one
    into provisioning/alerting/ and set its variables."""
    telegram = receiver(
        "ecoflow-telegram",
        "telegram",
        {
            "bottoken": "${ALERT_TELEGRAM_BOT_TOKEN}",
            "chatid": "${ALERT_TELEGRAM_CHAT_ID}",
            "message": MESSAGE,
        },
    )
    email = receiver(
        "ecoflow-email",
        "email",
        {"addresses": "${ALERT_EMAIL_ADDRESSES}", "singleEmail": True, "subject": TITLE, "message": MESSAGE},
    )
    return {
        name: {"apiVersion": 1, "contactPoints": [{"orgId": 1, "name": CONTACT_POINT, "receivers": [r]}]}
        for name, r in (("telegram.yaml", telegram), ("email.yaml", email))
    }


def policies_file() -> dict[str, Any]:
    return {
        "apiVersion": 1,
        "policies": [
            {
                "orgId": 1,
                "receiver": CONTACT_POINT,
                "group_by": ["alertname", "sn", "instance"],
                "group_wait": "30s",
                "group_interval": "5m",
                "repeat_interval": "4h",
            }
        ],
    }


HEADERS = {
    "rules.yaml": "Alert rules on the InfluxQL data source (uid ecoflow-influxdb). Each rule's `for` comes "
    "from the environment (ALERT_*_FOR, defaults in docker-compose.yml); thresholds are in "
    "grafana/alerting.py THRESHOLDS.",
    "contact-points.yaml": "The contact point 'EcoFlow': a webhook to ${ALERT_WEBHOOK_URL}. Telegram and "
    "e-mail: grafana/alerting-extras/.",
    "policies.yaml": "The notification policy tree of org 1 (replaces the one made in the UI): everything "
    "to 'EcoFlow', grouped by rule and device or collector instance.",
    "templates.yaml": "Notification templates ecoflow.title and ecoflow.message: device name, serial and "
    "the value (from each rule's summary annotation).",
    "telegram.yaml": "Adds Telegram to the contact point 'EcoFlow': copy to grafana/provisioning/alerting/ "
    "and set ALERT_TELEGRAM_BOT_TOKEN and ALERT_TELEGRAM_CHAT_ID.",
    "email.yaml": "Adds e-mail to the contact point 'EcoFlow': copy to grafana/provisioning/alerting/, set "
    "ALERT_EMAIL_ADDRESSES and Grafana's SMTP settings (GF_SMTP_*).",
}


class _Dumper(yaml.SafeDumper):  # type: ignore[misc]  # PyYAML has no type hints here
    """Block style, long lines kept whole, no anchors/aliases (one rule's text never points into another)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str)


def render(name: str, content: dict[str, Any]) -> str:
    header = "# Generated by grafana/alerting.py (python3 grafana/build.py); do not edit.\n"
    words = HEADERS[name].split()
    lines, current = [], "#"
    for word in words:
        if len(current) + len(word) + 1 > 100:
            lines.append(current)
            current = "#"
        current += " " + word
    lines.append(current)
    body: str = yaml.dump(content, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000)
    return header + "\n".join(lines) + "\n" + body


def build() -> dict[Path, str]:
    all_rules = rules()
    files = {
        PROVISIONING / "rules.yaml": render("rules.yaml", rules_file(all_rules)),
        PROVISIONING / "contact-points.yaml": render("contact-points.yaml", contact_points_file()),
        PROVISIONING / "policies.yaml": render("policies.yaml", policies_file()),
        PROVISIONING / "templates.yaml": render("templates.yaml", templates_file()),
    }
    for name, content in extra_contact_points().items():
        files[EXTRAS / name] = render(name, content)
    return files


def stale(write: bool) -> list[str]:
    """The generated files that differ from what this module makes (written when `write`)."""
    out = []
    for path, text in build().items():
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            out.append(str(path.relative_to(ROOT)))
            if write:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
    return out


ENV_REF = re.compile(r"\$\{(\w+)\}")


def env_references(text: str) -> set[str]:
    return set(ENV_REF.findall(text))
