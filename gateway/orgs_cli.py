"""`gateway orgs settings --org ORG [--leak-action ...] [--unused-days N] [--expire-unused-days N|off]`:
an org's settings (issue 17; gateway.orgsettings) read or changed directly in Redis (operator),
printed as the admin API's GET /v1/orgs/{org_id}/settings answers them."""

from __future__ import annotations

import argparse
import time

import msgspec

from gateway import config, validation

ORGS_SETTINGS = ("redis", "redis_prefix", "redis_min_replicas")


def add_parser(sub, command) -> None:
    orgs = command(sub, "orgs", help="an organization's settings, directly in Redis (operator)")
    orgs_sub = orgs.add_subparsers(dest="orgs_cmd", required=True)
    p = command(orgs_sub, "settings", help="show the org's settings, or change the ones given")
    config.add_arguments(p, config.AdminSettings, only=ORGS_SETTINGS)
    p.add_argument("--org", required=True, help="organization id")
    p.add_argument("--leak-action", default=None, choices=["revoke", "flag"],
                   help="a key a secret scanner reports public: revoked at once, or flagged and left active")
    p.add_argument("--unused-days", default=None, metavar="N", help="days without a request before api_key.unused (1-3650)")
    p.add_argument("--expire-unused-days", default=None, metavar="N|off",
                   help="keys without a request for N days expire by themselves (1-3650); off: never")
    p.set_defaults(func=cmd_orgs_settings)


def _days(text: str | None, flag: str, off: bool = False):
    if text is None:
        return msgspec.UNSET
    if off and text == "off":
        return None
    if not (text.isascii() and text.isdigit()):
        from gateway.cli import CliError
        raise CliError(f"{flag}: expected a number of days{' or off' if off else ''}, got {text!r}")
    return int(text)


def cmd_orgs_settings(args: argparse.Namespace) -> int:
    from admin_api.schemas import OrgSettingsOut
    from gateway.cli import CliError, _on_store, _print_json
    from gateway.orgsettings import OrgSettings
    from gateway.store import parse_min_replicas

    settings = config.load(config.AdminSettings, {name: getattr(args, name, None) for name in ORGS_SETTINGS})
    org_id = validation.org_id(args.org)
    given = {name: value for name, value in (
        ("leak_action", args.leak_action if args.leak_action is not None else msgspec.UNSET),
        ("unused_days", _days(args.unused_days, "--unused-days")),
        ("expire_unused_days", _days(args.expire_unused_days, "--expire-unused-days", off=True)),
    ) if value is not msgspec.UNSET}

    async def work(store) -> OrgSettingsOut:
        current = await store.orgs.get(org_id)
        try:
            new = msgspec.convert({**msgspec.structs.asdict(current), **given}, OrgSettings)
        except msgspec.ValidationError as exc:
            flag = str(exc).rpartition("$.")[2].rstrip("`").replace("_", "-")
            raise CliError(f"--{flag}: {str(exc).split(' - at ')[0]}") from None
        changed = {name: getattr(new, name) for name in given}
        if changed:
            _, new, _ = await store.orgs.change(org_id, changed, "cli", int(time.time() * 1000))
        return OrgSettingsOut(org_id, new.leak_action, new.unused_days, new.expire_unused_days)

    _print_json(_on_store(settings, work, parse_min_replicas(settings.redis_min_replicas)))
    return 0
