"""The `gateway` command: serve, admin, dev, keys create|list|show|revoke|roll|edit|usage|audit|backfill-activity,
webhooks create|list|show|edit|delete|rotate|test|deliveries, scopes check|explain."""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.metadata
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

from gateway import accesslog, config, orgs_cli, validation
from gateway.model import EXPIRY_CHOICES, GRACE_CHOICES
from gateway.ratelimit import WINDOWS
from gateway.resources import shipped
from gateway.plans import LimitsError, settings_limits
from gateway.scopes import ScopesError, load_rules

SHIPPED_SCOPES = shipped("scopes.yaml")  # the example rules, installed with the package


def _setup_logging() -> None:
    accesslog.use_stdout()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _fail(message: str, code: int = 2) -> int:
    print(f"gateway: {message}", file=sys.stderr)
    return code


def _try_uvloop() -> None:
    try:
        import uvloop  # optional speed-up
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


log = logging.getLogger("gateway")
_background: set[asyncio.Task] = set()  # tasks kept referenced until they finish


def _then_watch_redis(store, url: str, meanwhile: str, log_started: Callable[[], None]) -> Callable[[], None]:
    """The on_started callback of serve and admin: log_started(), then redis_reach.watch() in the background."""

    from gateway.store import reach as redis_reach

    def started() -> None:
        log_started()
        task = asyncio.get_running_loop().create_task(redis_reach.watch(store, url, meanwhile))
        _background.add(task)
        task.add_done_callback(_background.discard)

    return started


# Young-generation threshold of `gateway serve`: net allocations of tracked objects between two
# collections (Python's default is 700; a request allocates a few hundred). At 1,000 connections
# the objects of the requests in flight pass it: young collections that find them alive cost
# ~7 us a request there (bench/README.md). 100,000 removed that, but let garbage cycles (with the
# buffers they hold) pile up: +24 MB RSS within a couple hundred requests
# (tests/security/test_http_parsing.py, test_a_slow_sender_does_not_block_others). Memory wins.
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Everything built so far lives as long as the process: keep the collector off it, and
    collect the young generation only when garbage, not requests in flight, has piled up."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import Gateway, install_sighup, make_ops_app, run_apps
    from gateway.aiohttp_runner import ListenerLimits
    from gateway.workers import WORKER_ENV, run_supervisor

    settings = config.load(config.ServeSettings, vars(args))
    if settings.mode == "forward-auth" and not settings.trusted_proxies and not os.environ.get(WORKER_ENV):
        log.warning(
            "forward-auth without --trusted-proxies: every client shares the edge's address in the failed-auth throttle")
    if settings.workers > 1:
        return asyncio.run(run_supervisor(settings))
    worker = os.environ.get(WORKER_ENV)
    gateway = Gateway(settings)
    state = gateway.state
    tune_gc()

    async def main() -> None:
        install_sighup(state.rules)
        await run_apps(
            [(gateway, settings.listen), (make_ops_app(state), settings.ops_listen)],
            on_started=_then_watch_redis(state.store, settings.redis, "/readyz answers 503 until it does", lambda: log.info(
                "gateway%s on http://%s -> %s (ops on http://%s)",
                f" worker {worker}" if worker else "", settings.listen,
                settings.upstream if settings.mode == "proxy" else "forward-auth (the edge forwards)", settings.ops_listen,
            )),
            reuse_port=(settings.listen,) if worker else (),
            limits=ListenerLimits.for_settings(settings),
        )

    asyncio.run(main())
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from admin_api.app import ADMIN, make_admin_app
    from gateway.app import install_sighup, make_ops_app, run_apps
    from gateway.aiohttp_runner import ListenerLimits

    settings = config.load(config.AdminSettings, vars(args))
    if not settings.operator_tokens:
        log.warning("no GATEWAY_OPERATOR_TOKEN set: only org keys with api_keys:* can use the admin API")
    app = make_admin_app(settings)

    async def main() -> None:
        install_sighup(app[ADMIN].rules)
        await run_apps([(app, settings.listen), (make_ops_app(app[ADMIN], checks=app[ADMIN].ready_checks, before_metrics=app[ADMIN].update_metrics), settings.ops_listen)],
                       on_started=_then_watch_redis(
                           app[ADMIN].store, settings.redis, "requests answer 503 store_unavailable until it does",
                           lambda: log.info("admin API on http://%s (ops on http://%s)", settings.listen,
                                            settings.ops_listen)),
                       limits=ListenerLimits.for_settings(settings))

    asyncio.run(main())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from gateway.dev import run_dev

    scopes = args.scopes or ("scopes.yaml" if Path("scopes.yaml").is_file() else str(SHIPPED_SCOPES))
    from gateway.dev import SHIPPED_LIMITS

    limits_file = args.limits_file or os.environ.get("GATEWAY_LIMITS_FILE") or str(SHIPPED_LIMITS)
    return asyncio.run(run_dev(redis_url=args.redis, scopes=scopes, base_port=args.port, limits_file=limits_file))


KEYS_REDIS_TIMEOUT = 2.0  # seconds per Redis call of `gateway keys` (plus one quick retry)
# The settings of `gateway keys` (flags and GATEWAY_* as for `gateway admin`); create also reads
# the admin API's create limits, so that it is held to the same ones.
KEYS_SETTINGS = ("redis", "scopes", "redis_prefix", "redis_min_replicas",
                 "max_keys_per_org", "create_rate_per_org", "memory_high_water")
# The configured default and ceilings: what create and edit check limits against, what reads show as enforced.
LIMITS_SETTINGS = ("limits_file", "default_limits")
BACKFILL_SETTINGS = ("redis", "redis_prefix")  # its writes are not acknowledged ones: no replica count
FLAGS = {"org_id": "--org", "name": "--name", "scopes": "--scope", "key_id": "KEY_ID", "limits": "--limit"}  # InvalidField.field


class CliError(Exception):
    """A refusal printed as one line, ``gateway: <message>``, with exit status ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def cmd_keys(args: argparse.Namespace) -> int:
    from admin_api.schemas import created_out, key_out
    from gateway.model import expires_at_for
    from gateway import errors
    from gateway.store import CreateLimits, parse_min_replicas
    from gateway.tasks import ACK_TIMEOUT

    settings = config.load(config.AdminSettings,
                           {name: getattr(args, name, None) for name in KEYS_SETTINGS + LIMITS_SETTINGS})
    plan = settings_limits(settings)
    # Everything the admin API would refuse is refused here too, before Redis is touched.
    org_id = validation.org_id(args.org)
    if args.keys_cmd == "create":
        name = validation.key_name(args.name)
        scopes = validation.key_scopes([s.strip() for item in args.scope for s in item.split(",") if s.strip()],
                                       load_rules(settings.scopes).permissions)
        limits = _limit_flags(args.limit, plan) if args.limit else None
    elif args.keys_cmd in ("revoke", "roll", "edit", "show"):
        key_id = validation.key_id(args.key_id)
    elif args.keys_cmd == "audit":
        key_id = validation.key_id(args.key) if args.key else None
        _check_audit_args(args, key_id)
    now = int(time.time() * 1000)
    if args.keys_cmd == "edit":
        changes = _edit_changes(args, settings, now, plan)

    async def work(store) -> object:
        if args.keys_cmd == "create":
            # The admin API's limits (CreateLimits): the memory mark always, the org's key
            # limit and create rate unless the operator says --ignore-limits.
            try:
                quota = await CreateLimits(store.redis, settings).admit(org_limits=not args.ignore_limits)
                record, secret = await store.create(
                    org_id=org_id, name=name, scopes=scopes,
                    expires_at=expires_at_for(args.expires_in, now), actor="cli", now_ms=now, quota=quota,
                    limits=limits,
                )
            except (errors.KeyLimitReached, errors.TooManyCreates) as exc:
                raise CliError(f"{exc.code}: {exc.message} (--ignore-limits creates it anyway)", code=1) from None
            except errors.StoreFull as exc:
                raise CliError(f"{exc.code}: {exc.message}", code=1) from None
            return created_out(record, now, secret, plan.effective)
        if args.keys_cmd == "list":
            out, cursor = [], None
            while True:
                page = await store.list(org_id, limit=100, cursor=cursor, include_revoked=args.include_revoked)
                out += [key_out(r, now, plan.effective) for r in page.records]
                if not (cursor := page.next_cursor):
                    if not out and not await store.org_exists(org_id):  # an org exists from its first key
                        print(f"gateway: no organization {org_id}", file=sys.stderr)
                        raise SystemExit(1)
                    return out
        if args.keys_cmd == "audit":
            return await _audit(store, org_id, key_id, args)
        if args.keys_cmd in ("roll", "edit"):
            return await _roll_or_edit(store, args, org_id, key_id, now, changes if args.keys_cmd == "edit" else {},
                                       plan)
        if args.keys_cmd == "show":
            return await _show(store, org_id, key_id, now, plan)
        record = await store.revoke(org_id=org_id, key_id=key_id, actor="cli", now_ms=now,
                                    ack_timeout=ACK_TIMEOUT)
        if record is None:
            raise CliError(f"no key {key_id} in org {org_id}")
        return key_out(record, now, plan.effective)

    result = _on_store(settings, work, parse_min_replicas(settings.redis_min_replicas))
    _print_json(result)
    if args.keys_cmd == "create":
        print("Store the key now: it is not shown again.", file=sys.stderr)
    if args.keys_cmd == "roll":
        print(f"Store the new key now: it is not shown again. The previous secret works until "
              f"{result.previous_secret_expires_at}.", file=sys.stderr)
    return 0


def _limit_flags(texts: list[str], plan) -> tuple:
    """--limit WINDOW=N (repeated, or comma-separated) as the admin API checks a request's limits."""
    items = [t for text in texts for t in text.split(",") if t.strip()]
    return validation.key_limits([validation.limit_flag(t) for t in items], plan.check)


async def _show(store, org_id: str, key_id: str, now: int, plan) -> object:
    """`keys show`: the key as the admin API's GET of one key answers it, with limit_usage."""
    from admin_api.schemas import detail_out
    from gateway.ratelimit import window_bounds
    from gateway.store import FAULTS

    record = await store.get_for_org(org_id, key_id)
    if record is None:
        raise CliError(f"no key {key_id} in org {org_id}", code=1)
    limits = plan.effective(record.limits)
    try:
        used = await store.limits.usage(record.id, limits, now)
        usage = [(x, used.get(x.window, 0), window_bounds(x.window, now)[1]) for x in limits]
    except FAULTS:
        usage = None
        print("gateway: the limits' usage could not be read (limit_usage: null)", file=sys.stderr)
    return detail_out(record, now, plan.effective, usage)


def _check_audit_args(args: argparse.Namespace, key_id: str | None) -> None:
    from gateway.store import decode_audit_cursor

    if not 1 <= args.limit <= 100:
        raise CliError("--limit must be an integer from 1 to 100")
    if args.cursor:
        try:
            _, cursor_key, _ = decode_audit_cursor(args.cursor)
        except ValueError:
            raise CliError("--cursor is not a next_cursor this command printed") from None
        if key_id is not None and cursor_key != key_id:
            raise CliError("--cursor belongs to another key's log than --key")


async def _audit(store, org_id: str, key_id: str | None, args: argparse.Namespace) -> object:
    """`keys audit`: one page {data, next_cursor} (the admin API's shape), or with --all every
    event as one list, newest first."""
    from admin_api.schemas import AuditEventList, audit_event_out

    out, cursor = [], args.cursor
    while True:
        page = await store.activity(org_id, key_id=key_id, limit=args.limit, cursor=cursor)
        if page is None:
            raise CliError(f"no key {key_id} in org {org_id}", code=1)
        if not page.events and not out and not cursor and not await store.org_exists(org_id):
            raise CliError(f"no organization {org_id}", code=1)
        out += [audit_event_out(e) for e in page.events]
        cursor = page.next_cursor
        if not args.all:
            return AuditEventList(out, cursor)
        if cursor is None:
            return out


def _on_store(settings, work, min_replicas=None):
    """``work(store)`` on a KeyStore of ``settings``: Redis reached first (a failure is one
    CliError line naming it), the connections closed after, whatever happens."""
    from gateway.store import KeyStore, connect
    from gateway.store import reach as redis_reach

    async def run():
        store = KeyStore(connect(settings.redis, timeout=KEYS_REDIS_TIMEOUT), settings.redis_prefix,
                         *(() if min_replicas is None else (min_replicas,)))
        try:
            await redis_reach.reach(store)
            return await work(store)
        finally:
            await store.redis.aclose()

    try:
        return asyncio.run(run())
    except redis_reach.ERRORS as exc:
        raise CliError(redis_reach.failure(settings.redis, exc), code=1) from None


def _print_json(value: object) -> None:
    """What every `keys` command prints: the admin API's JSON, indented."""
    import msgspec

    sys.stdout.write(msgspec.json.format(msgspec.json.encode(value), indent=2).decode() + "\n")


def cmd_backfill_activity(args: argparse.Namespace) -> int:
    """`keys backfill-activity [--force]`: what `gateway admin` runs at start-up, by hand: the
    activity log's create/revoke events of the keys written before it (KeyStore.backfill_activity).
    Prints {"backfilled": n}; n is null when an earlier run completed and --force is not given."""
    settings = config.load(config.AdminSettings, {name: getattr(args, name, None) for name in BACKFILL_SETTINGS})
    done = _on_store(settings, lambda store: store.backfill_activity(force=args.force))
    _print_json({"backfilled": done})
    if done is None:
        print("gateway: the backfill ran before (marker in Redis); --force runs it again", file=sys.stderr)
    return 0


def cmd_backfill_index(args: argparse.Namespace) -> int:
    """`keys backfill-index`: index every key that is not revoked in the key-event finder's
    indexes again (gateway.store.finder.FinderStore.backfill, force: the admin API's finder does
    it once per Redis; keys written since by code older than the indexes need this; idempotent).
    Prints {"indexed": n}."""
    settings = config.load(config.AdminSettings, {name: getattr(args, name, None) for name in BACKFILL_SETTINGS})
    done = _on_store(settings, lambda store: store.finder.backfill(force=True))
    _print_json({"indexed": done})
    return 0


USAGE_SETTINGS = ("redis", "redis_prefix", "usage_hourly_days")


def cmd_keys_usage(args: argparse.Namespace) -> int:
    """`gateway keys usage KEY_ID`: the key's usage history, as the admin API's GET .../usage answers it."""
    from admin_api.schemas import usage_out
    from gateway import history
    from gateway.model import rfc3339

    settings = config.load(config.AdminSettings, {name: getattr(args, name, None) for name in USAGE_SETTINGS})
    key_id = validation.key_id(args.key_id)
    try:
        win = history.window(int(time.time() * 1000), args.from_, args.to, args.granularity,
                             settings.usage_hourly_days)
    except validation.InvalidField as exc:
        raise CliError(f"--{exc.field}: {exc}") from None

    async def work(store) -> dict[int, list[int]]:
        if await store.get(key_id) is None:
            raise CliError(f"no key {key_id}", code=1)
        return await store.ledger.history(key_id, win)

    rows, totals = history.buckets(win, _on_store(settings, work))
    if args.json:
        _print_json(usage_out(key_id, win.granularity, win.from_ms, win.to_ms, rows, totals))
    else:
        cut = 16 if win.granularity == history.HOUR else 10  # 2026-12-01T10:00 / 2026-12-01
        sys.stdout.write(history.table(rows, totals, lambda ms: rfc3339(ms)[:cut]))
    return 0


def _edit_changes(args: argparse.Namespace, settings, now: int, plan) -> dict:
    """What `keys edit` changes, validated as the admin API validates a PATCH."""
    from gateway.model import expires_at_for

    changes: dict = {}
    if args.name is not None:
        changes["name"] = validation.key_name(args.name)
    if args.scope:
        changes["scopes"] = validation.key_scopes(
            [s.strip() for item in args.scope for s in item.split(",") if s.strip()],
            load_rules(settings.scopes).permissions)
    if args.expires_in is not None:
        changes["expires_at"] = expires_at_for(args.expires_in, now)
    if args.limit:
        changes["limits"] = _limit_flags(args.limit, plan)
    elif args.clear_limits:
        changes["limits"] = None
    if not changes:
        raise CliError("nothing to change: give --name, --scope, --expires-in, --limit or --clear-limits")
    return changes


async def _roll_or_edit(store, args: argparse.Namespace, org_id: str, key_id: str, now: int, changes: dict, plan):
    """`keys roll` and `keys edit`: the store's roll and edit, as the admin API calls them."""
    from admin_api.schemas import key_out, rolled_out
    from gateway import errors
    from gateway.tasks import ACK_TIMEOUT

    try:
        if args.keys_cmd == "roll":
            rolled = await store.roll(org_id=org_id, key_id=key_id, grace=args.grace, actor="cli", now_ms=now,
                                      ack_timeout=ACK_TIMEOUT)
            if rolled is not None:
                return rolled_out(rolled[0], now, rolled[1], rolled[2], plan.effective)
        else:
            record = await store.edit(org_id=org_id, key_id=key_id, actor="cli", now_ms=now, ack_timeout=ACK_TIMEOUT,
                                      if_version=args.if_version, default_limits=plan.default, **changes)
            if record is not None:
                return key_out(record, now, plan.effective)
    except (errors.KeyConflict, errors.VersionMismatch) as exc:
        raise CliError(f"{exc.code}: {exc.message}", code=1) from None
    raise CliError(f"no key {key_id} in org {org_id}")


def _scopes_file(given: str | None) -> str:
    """--scopes, else GATEWAY_SCOPES (or GATEWAY_SCOPES_FILE), else ./scopes.yaml, else the shipped example."""
    if given:
        return given
    for env in config.env_names("scopes"):
        if os.environ.get(env):
            return os.environ[env]
    return "scopes.yaml" if Path("scopes.yaml").is_file() else str(SHIPPED_SCOPES)


def cmd_scopes(args: argparse.Namespace) -> int:
    """check: 0 when the file loads. explain: 0 when the gateway routes the request (a rule
    matches), 1 when it answers 404, 405 or 400 without looking at a key."""
    from gateway.httprequest import method_refused
    from gateway.paths import NotCanonical, canonicalize
    from gateway.scopes import WrongMethod, NoRoute

    path = _scopes_file(args.scopes or getattr(args, "file", None))
    rules = load_rules(path)
    if args.scopes_cmd == "check":
        print(f"{path}: OK: {len(rules.permissions)} permissions, {len(rules.rules)} routes")
        return 0
    if (why := method_refused(args.method)) is not None:
        hint = f"; methods are case-sensitive: {args.method.upper()}" if method_refused(args.method.upper()) is None else ""
        print(f"400 malformed_request: the gateway refuses the method {args.method!r} ({why}{hint})")
        return 1
    try:
        segments = canonicalize(args.path).segments
    except NotCanonical as exc:
        print(f"400 invalid_path: {exc.reason}")
        return 1
    print(rules.explain(args.method, segments))
    return 1 if isinstance(rules.match(args.method, segments), (NoRoute, WrongMethod)) else 0


def _version() -> str:
    try:
        return importlib.metadata.version("api-key-gateway")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows "(default: X)" for the options that have a meaningful default of their own; the
    settings flags (default None: unset) say theirs in their help text (config.add_arguments)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default in (None, False, [], argparse.SUPPRESS) or "(default" in (action.help or ""):
            return action.help or ""
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__, formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(subparsers, name: str, **kw) -> argparse.ArgumentParser:
        return subparsers.add_parser(name, formatter_class=_HelpFormatter, **kw)

    serve = command(sub, "serve", help="run the edge proxy")
    config.add_arguments(serve, config.ServeSettings)
    serve.set_defaults(func=cmd_serve)

    admin = command(sub, "admin", help="run the admin API")
    config.add_arguments(admin, config.AdminSettings, skip=("operator_tokens", "oidc_client_secret"))
    admin.set_defaults(func=cmd_admin)

    dev = sub.add_parser("dev", help="run Redis, gateway, admin API and a demo upstream locally")
    dev.add_argument("--redis", default=None, help="use this Redis instead of starting one")
    dev.add_argument("--scopes", default=None,
                     help="scopes file (default ./scopes.yaml, else the example shipped with the gateway)")
    dev.add_argument("--limits-file", default=None,
                     help="limits file (default: $GATEWAY_LIMITS_FILE, else the example shipped with the gateway)")
    dev.add_argument("--port", type=int, default=8080, help="gateway port; admin +1, upstream +2, sign-in provider +3, ops +10, admin ops +11")
    dev.set_defaults(func=cmd_dev)

    keys = command(sub, "keys", help="manage keys directly in Redis (operator)")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    limit_help = (f"a limit of the key, WINDOW=N (windows: {', '.join(WINDOWS)}; repeat or comma-separate, "
                  "one per window; none: the configured default applies)")
    for name in ("create", "list", "show", "revoke", "roll", "edit", "audit"):
        p = command(keys_sub, name, **({"help": "one key, with its limits and what their current windows have used"}
                                       if name == "show" else {}))
        config.add_arguments(p, config.AdminSettings,
                             only=(KEYS_SETTINGS if name == "create" else KEYS_SETTINGS[:4]) + LIMITS_SETTINGS)
        p.add_argument("--scopes-file", dest="scopes", default=None, help=argparse.SUPPRESS)  # deprecated: --scopes
        p.add_argument("--org", required=True, help="organization id")
        if name == "create":
            p.add_argument("--name", required=True, help=f"what the key is for, 1-{validation.NAME_MAX} characters")
            p.add_argument("--scope", action="append", default=[], help="scope to grant (repeat or comma-separate)")
            p.add_argument("--expires-in", default="never", choices=list(EXPIRY_CHOICES), help="when the key stops working")
            p.add_argument("--limit", action="append", default=[], metavar="WINDOW=N", help=limit_help)
            p.add_argument("--ignore-limits", action="store_true",
                           help="not held to --max-keys-per-org and --create-rate-per-org, as the admin API's "
                                "operator token is not (the memory mark still applies)")
        elif name == "list":
            p.add_argument("--include-revoked", action="store_true", help="also list revoked keys")
        elif name == "audit":
            p.add_argument("--key", default=None, metavar="KEY_ID", help="only this key's events")
            p.add_argument("--limit", type=int, default=50, help="events per page, 1-100")
            pages = p.add_mutually_exclusive_group()
            pages.add_argument("--cursor", default=None, help="the next_cursor of the page before")
            pages.add_argument("--all", action="store_true", help="every event, newest first, as one list")
        else:
            p.add_argument("key_id", metavar="KEY_ID", help="the key's id, key_...")
        if name == "roll":
            p.add_argument("--grace", required=True, choices=list(GRACE_CHOICES),
                           help="how long the current secret keeps working (never past the key's expiry)")
        elif name == "edit":
            p.add_argument("--name", default=None, help=f"a new name, 1-{validation.NAME_MAX} characters")
            p.add_argument("--scope", action="append", default=[],
                           help="the key's new scopes, all of them (repeat or comma-separate)")
            p.add_argument("--expires-in", default=None, choices=list(EXPIRY_CHOICES), help="a new expiry, from now")
            given = p.add_mutually_exclusive_group()
            given.add_argument("--limit", action="append", default=[], metavar="WINDOW=N",
                               help="the key's new limits, all of them, WINDOW=N (repeat or comma-separate)")
            given.add_argument("--clear-limits", action="store_true",
                               help="remove the key's own limits: the configured default applies")
            p.add_argument("--if-version", type=int, default=None,
                           help="refuse (exit 1, version_mismatch) unless the key is at this version")
    keys.set_defaults(func=cmd_keys)
    backfill = command(keys_sub, "backfill-activity",
                       help="give keys written before the activity log their create/revoke events (the admin "
                            "API does it once at start-up)")
    config.add_arguments(backfill, config.AdminSettings, only=BACKFILL_SETTINGS)
    backfill.add_argument("--force", action="store_true", help="run it again even if an earlier run completed")
    backfill.set_defaults(func=cmd_backfill_activity)
    index = command(keys_sub, "backfill-index",
                    help="index every key that is not revoked for the key-event finder again (after an upgrade "
                         "in which processes older than the indexes created keys)")
    config.add_arguments(index, config.AdminSettings, only=BACKFILL_SETTINGS)
    index.set_defaults(func=cmd_backfill_index)
    usage = command(keys_sub, "usage", help="a key's requests per UTC hour or day, by outcome class")
    config.add_arguments(usage, config.AdminSettings, only=USAGE_SETTINGS)
    usage.add_argument("key_id", metavar="KEY_ID", help="the key's id, key_...")
    usage.add_argument("--from", dest="from_", default=None,
                       help="RFC 3339, e.g. 2026-12-01T00:00:00Z (default: 24 h before --to, 30 days by day)")
    usage.add_argument("--to", default=None, help="RFC 3339 (default: now)")
    usage.add_argument("--granularity", default=None, choices=["hour", "day"],
                       help="default: hour for up to 7 days, else day")
    usage.add_argument("--json", action="store_true", help="the admin API's JSON answer instead of a table")
    usage.set_defaults(func=cmd_keys_usage)

    orgs_cli.add_parser(sub, command)  # gateway orgs settings (issue 17)
    from gateway.webhooks_cli import add_parser as add_webhooks_parser

    add_webhooks_parser(sub, command)  # `gateway webhooks ...` (issue 17)

    scopes = command(sub, "scopes", help="check scopes.yaml or explain how a request is authorized")
    scopes_sub = scopes.add_subparsers(dest="scopes_cmd", required=True)
    scopes_help = ("scopes file (default: $GATEWAY_SCOPES, else ./scopes.yaml, else the example shipped with "
                   "the gateway)")
    check = command(scopes_sub, "check", help="load a scopes file and report its errors (exit 0: it loads)")
    check.add_argument("--scopes", default=None, help=scopes_help)
    check.add_argument("file", nargs="?", default=None, metavar="FILE", help="same as --scopes")
    explain = command(scopes_sub, "explain", help="which rule authorizes METHOD PATH (exit 0: routed; "
                                                  "1: the gateway answers 404, 405 or 400)")
    explain.add_argument("method", metavar="METHOD", help="as sent, case-sensitive: GET, POST, ...")
    explain.add_argument("path", metavar="PATH", help="request target, e.g. /v1/tasks/42")
    explain.add_argument("--scopes", default=None, help=scopes_help)
    explain.add_argument("--file", dest="scopes", default=None, help=argparse.SUPPRESS)  # deprecated: --scopes
    scopes.set_defaults(func=cmd_scopes)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging()
    if args.command in ("serve", "admin", "dev"):
        _try_uvloop()
    try:
        return args.func(args)
    except config.ConfigError as exc:
        return _fail(str(exc))
    except validation.InvalidField as exc:
        return _fail(f"{FLAGS.get(exc.field, exc.field)}: {exc}")
    except CliError as exc:
        return _fail(str(exc), exc.code)
    except LimitsError as exc:
        return _fail(f"invalid limits: {exc}")
    except ScopesError as exc:
        if exc.line is None and not os.path.exists(exc.file):
            # A new install has no rules of its own yet: say where they go and where the example is.
            return _fail(f"no scopes file at {exc.file} (set --scopes FILE or GATEWAY_SCOPES; "
                         f"an example ships with the gateway: {SHIPPED_SCOPES})")
        return _fail(f"invalid scopes file: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
