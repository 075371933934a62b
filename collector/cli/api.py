"""`devices`, `quota`, `get`, `set`, `settings`: the EcoFlow Open API from the command line.

Values are shown in stored units (normalized through the catalog, as the daemon writes them);
"n/a" marks a sentinel ("not set") and the last column gives enum labels or decoded text.
Exit status: 0 fine, 1 API or transport error, 2 usage, configuration or validation error.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector.account import open_client
from collector.api.client import QUOTA_PATH, EcoflowClient
from collector.api.commands import SetRequest, build_set_request, settings_table
from collector.api.errors import ApiError, DeviceReadDenied, ResponseError, SettingValueError
from collector.api.models import DeviceInfo, QuotaValues
from collector.catalog import Catalog, FieldSpec, Product, default_catalog
from collector.cli import UsageError, table
from collector.config import AccountSettings, load_settings
from collector.decoding import PayloadError, Scalar, flatten
from collector.normalize import KeyReporter, normalize_values
from collector.sources.http import refusal_message

Handler = Callable[[argparse.Namespace], int]


class _ShownKeys(KeyReporter):
    """Unknown and text keys are shown in the table itself: no log line per key."""

    def unknown(self, slug: str, key: str, value: float) -> None:
        self.unknown_keys += 1

    def non_numeric(self, slug: str, key: str, value: str) -> None:
        self.non_numeric_values += 1


def register(commands: Any) -> None:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("--config", type=Path, help="TOML config file (default: environment variables only)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="JSON instead of a table")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(
            name, parents=[config, as_json], help=help_text, description=help_text
        )
        parser.set_defaults(handler=_reporting_api_errors(handler))
        return parser

    add(
        "devices",
        run_devices,
        "list the account's devices: serial, name, product, online, and whether the public API serves "
        "their data (one quota/all each)",
    ).add_argument(
        "--no-probe",
        dest="probe",
        action="store_false",
        help="do not ask quota/all of each device (the http reads column shows -)",
    )
    add("quota", run_quota, "show every quota of a device (HTTP quota/all), in stored units").add_argument(
        "sn", help="device serial number"
    )
    get = add("get", run_get, "read named quotas of a device (HTTP POST quota)")
    get.add_argument("sn", help="device serial number")
    get.add_argument("keys", nargs="+", metavar="KEY", help="quota keys, e.g. 20_1.batSoc or pd.soc")
    set_ = add("set", run_set, "change a device setting, then read it back (see `settings`)")
    set_.add_argument("sn", help="device serial number")
    set_.add_argument("setting", help="setting name, e.g. permanent-watts")
    set_.add_argument("value", help="value in the setting's unit, or one of its words (on, off, ...)")
    set_.add_argument(
        "--dry-run", action="store_true", help="print the signed request (no secret key) and do not send it"
    )
    add("settings", run_settings, "what `set` can change: ranges, units, words").add_argument(
        "--product", help="only this product (catalog slug or product name)"
    )


def _reporting_api_errors(handler: Handler) -> Handler:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        try:
            return handler(args)
        except SettingValueError as exc:
            print(f"ecoflow-collector {args.command}: {exc}", file=sys.stderr)
            return 2
        except ApiError as exc:
            print(f"ecoflow-collector {args.command}: {exc}", file=sys.stderr)
            return 1

    return run


# --- devices and their products -------------------------------------------------------------------


class _Devices:
    """Config [[devices]] first, then the cloud's device list (fetched once, only when needed)."""

    def __init__(self, account: AccountSettings, catalog: Catalog, client: EcoflowClient) -> None:
        self.catalog = catalog
        self.client = client
        self._configured = {entry.sn: entry for entry in account.devices}
        self._listed: dict[str, DeviceInfo] | None = None

    def listed(self) -> dict[str, DeviceInfo]:
        if self._listed is None:
            self._listed = {info.sn: info for info in self.client.device_list()}
        return self._listed

    def product(self, sn: str, info: DeviceInfo | None = None) -> tuple[str, Product | None]:
        """Config product, else the device list's productName, else the serial prefix."""
        entry = self._configured.get(sn)
        if entry is not None and entry.product:
            return self.catalog.identify(entry.product, sn)
        if info is None:
            info = self.listed().get(sn)
        return self.catalog.identify(info.productName if info is not None else None, sn)

    def name(self, info: DeviceInfo) -> str:
        entry = self._configured.get(info.sn)
        return (entry.name if entry is not None else None) or info.deviceName or info.sn


def _open(args: argparse.Namespace) -> tuple[AccountSettings, EcoflowClient]:
    """The account of the device `args.sn` (with several accounts: the one listing it in its
    config, else the first whose device list has it), and its client."""
    accounts = load_settings(args.config).account_settings()
    sn = getattr(args, "sn", None)
    if len(accounts) == 1 or sn is None:
        return accounts[0], open_client(accounts[0])
    for account in accounts:
        if any(d.sn == sn for d in account.devices):
            return account, open_client(account)
    for account in accounts:
        client = open_client(account)
        try:
            if any(info.sn == sn for info in client.device_list()):
                return account, client
        except ApiError:
            pass
        client.close()
    raise UsageError(f"no configured account has the device {sn}: {', '.join(a.name for a in accounts)}")


# --- rendering ------------------------------------------------------------------------------------


def _number(value: float) -> str:
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(round(value, 6))


def _ascii2(raw: Scalar) -> str | None:
    """Two ASCII letters packed into 16 bits, high byte first (17477 = 0x4445 -> "DE")."""
    if not isinstance(raw, int) or not 0 < raw < 0x10000:
        return None
    text = raw.to_bytes(2, "big").decode("latin-1")
    return text if text.isascii() and text.isprintable() else None


def _meaning(spec: FieldSpec | None, raw: Scalar) -> str | None:
    if spec is None or isinstance(raw, str):
        return None
    if spec.text == "ascii2":
        return _ascii2(raw)
    if spec.values and float(raw).is_integer():
        return spec.values.get(str(int(raw)))
    return None


def quota_records(product: Product | None, slug: str, data: QuotaValues) -> list[dict[str, Any]]:
    """Every quota key with its normalized value, stored unit and meaning (sentinels: value None)."""
    try:
        values = flatten(data)
    except PayloadError as exc:
        raise ResponseError(f"quota data of {slug}: {exc}") from None
    normalized = normalize_values(product, values, _ShownKeys(), slug)
    records: list[dict[str, Any]] = []
    for key in sorted(values):
        raw = values[key]
        spec = product.lookup(key) if product is not None else None
        value: float | str | None = raw if isinstance(raw, str) else normalized.get(key)
        records.append(
            {
                "key": key,
                "value": value,
                "unit": spec.unit.stored if spec is not None else "",
                "meaning": _meaning(spec, raw),
                "raw": raw,
                "known": spec is not None,
            }
        )
    return records


def _quota_table(records: list[dict[str, Any]]) -> str:
    rows = []
    for record in records:
        value = record["value"]
        shown = "n/a" if value is None else value if isinstance(value, str) else _number(value)
        meaning = record["meaning"] or ("" if record["known"] else "(not in the catalog)")
        rows.append([record["key"], shown, record["unit"], meaning])
    return table(["key", "value", "unit", "meaning"], rows)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, ensure_ascii=False))


def _show_quotas(args: argparse.Namespace, sn: str, slug: str, records: list[dict[str, Any]]) -> None:
    if args.json:
        _print_json({"sn": sn, "product": slug, "quotas": records})
    elif records:
        print(_quota_table(records))
    else:
        print(f"{sn}: the cloud returned no quotas")


# --- commands -------------------------------------------------------------------------------------


def _reads(client: EcoflowClient, sn: str) -> tuple[str, str | None]:
    """Whether the public API serves the device's data: one quota/all. ("yes" | "refused" | "error",
    the error's text)."""
    try:
        client.quota_all(sn)
    except DeviceReadDenied:
        return "refused", None
    except ApiError as exc:
        return "error", str(exc)
    return "yes", None


_READS_SHOWN = {"yes": "yes", "refused": "refused (1006)", "error": "error", "not asked": "-"}


def run_devices(args: argparse.Namespace) -> int:
    """Every account's devices (an `account` column where several are configured)."""
    accounts = load_settings(args.config).account_settings()
    named = len(accounts) > 1
    notes: list[str] = []
    records: list[dict[str, Any]] = []
    for account in accounts:
        with open_client(account) as client:
            devices = _Devices(account, default_catalog(), client)
            for info in devices.listed().values():
                slug, product = devices.product(info.sn, info)
                reads, error = _reads(client, info.sn) if args.probe else ("not asked", None)
                if reads == "refused":
                    notes.append(
                        f"{info.sn}: {refusal_message(product.name if product is not None else slug)}"
                    )
                elif error is not None:
                    notes.append(f"{info.sn}: quota/all failed: {error}")
                records.append(
                    {
                        **({"account": account.name} if named else {}),
                        "sn": info.sn,
                        "name": devices.name(info),
                        "product": slug,
                        "product_name": info.productName,
                        "online": info.is_online,
                        "reads": reads,  # "yes", "refused" (EcoFlow code 1006), "error", "not asked"
                        "read_denied": reads == "refused",
                    }
                )
    if args.json:
        _print_json(records)
    elif records:
        columns = (["account"] if named else []) + ["sn", "name", "product", "online", "http reads"]
        rows = [
            ([r["account"]] if named else [])
            + [r["sn"], r["name"], r["product"], "yes" if r["online"] else "no", _READS_SHOWN[r["reads"]]]
            for r in records
        ]
        print(table(columns, rows))
        for note in notes:
            print(note)
    else:
        print("the account has no devices" if not named else "the accounts have no devices")
    return 0


def run_quota(args: argparse.Namespace) -> int:
    account, client = _open(args)
    with client:
        slug, product = _Devices(account, default_catalog(), client).product(args.sn)
        data = client.quota_all(args.sn)
    _show_quotas(args, args.sn, slug, quota_records(product, slug, data))
    return 0


def run_get(args: argparse.Namespace) -> int:
    account, client = _open(args)
    with client:
        slug, product = _Devices(account, default_catalog(), client).product(args.sn)
        data = client.quota_get(args.sn, args.keys)
    _show_quotas(args, args.sn, slug, quota_records(product, slug, data))
    return 0


def _set_summary(request: SetRequest, typed: str) -> str:
    """`HW51...: permanent-watts = 120 W (sent WN511_SET_PERMANENT_WATTS_PACK permanentWatts=1200)`."""
    entry = request.setting.entry
    if typed.strip().lower() in (word.lower() for word in entry.choices):
        shown = typed.strip()
    else:
        shown = f"{_number(request.value)} {entry.unit}".rstrip()
    command = entry.cmd_code or f"cmdSet {entry.cmd_set} id {entry.cmd_id}"
    return f"{request.sn}: {request.setting.name} = {shown} (sent {command} {entry.param}={request.sent})"


def run_set(args: argparse.Namespace) -> int:
    account, client = _open(args)
    with client:
        slug, product = _Devices(account, default_catalog(), client).product(args.sn)
        if product is None or not product.settings:
            raise UsageError(
                f"cannot tell which catalog product {args.sn} is (found {slug!r}): add "
                f'product = "powerstream" (or another catalog slug) to its [[devices]] entry in the config'
            )
        request = build_set_request(product, args.sn, args.setting, args.value)
        if args.dry_run:
            _print_json(client.prepare("PUT", QUOTA_PATH, body=request.body).describe())
            return 0
        client.quota_set(args.sn, request.body)
        if not args.json:
            print(f"{_set_summary(request, args.value)}; read back:", flush=True)
        read = request.read_back
        try:
            data = client.quota_get(args.sn, read.quotas, read.extra_params)
        except ApiError as exc:
            print(
                f"ecoflow-collector set: the device accepted the setting; reading it back failed: {exc}",
                file=sys.stderr,
            )
            return 1
    records = quota_records(product, slug, data)
    if args.json:
        _print_json(
            {"sn": args.sn, "setting": request.setting.name, "sent": request.body, "read_back": records}
        )
    else:
        print(_quota_table(records) if records else "(the cloud returned no quotas)")
    return 0


def run_settings(args: argparse.Namespace) -> int:
    catalog = default_catalog()
    if args.product:
        product = catalog.get(args.product) or catalog.by_product_name(args.product)
        if product is None:
            raise UsageError(
                f"unknown product {args.product!r}; the catalog has: {', '.join(sorted(catalog.products))}"
            )
        products: list[Product] = [product]
    else:
        products = list(catalog.products.values())
    records = [row for product in products for row in settings_table(product)]
    if args.json:
        _print_json(records)
        return 0
    columns = ("product", "setting", "allowed", "command", "param", "description")
    print(table(columns, [[str(record[c]) for c in columns] for record in records]))
    return 0
