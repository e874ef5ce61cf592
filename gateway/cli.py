"""The `gateway` command: serve, admin, dev, keys create|list|revoke, scopes check|explain."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
import time
from pathlib import Path

from gateway import accesslog, config
from gateway.resources import shipped
from gateway.scopes import ScopesError, load_rules

SHIPPED_SCOPES = shipped("scopes.yaml")  # the example rules, installed with the package


def _setup_logging() -> None:
    accesslog.use_stdout()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def _fail(message: str) -> int:
    print(f"gateway: {message}", file=sys.stderr)
    return 2


def _try_uvloop() -> None:
    try:
        import uvloop  # optional speed-up
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.app import Gateway, install_sighup, make_ops_app, run_apps
    from gateway.workers import WORKER_ENV, run_supervisor

    settings = config.load(config.ServeSettings, vars(args))
    if settings.mode == "forward-auth" and not settings.trusted_proxies and not os.environ.get(WORKER_ENV):
        logging.getLogger("gateway").warning(
            "forward-auth without --trusted-proxies: every client shares the edge's address in the failed-auth throttle")
    if settings.workers > 1:
        return asyncio.run(run_supervisor(settings))
    worker = os.environ.get(WORKER_ENV)
    gateway = Gateway(settings)
    state = gateway.state
    # Everything built so far lives as long as the process: keep the collector off it, and
    # collect the young generation less often (a request allocates a few hundred objects).
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 20, 20)

    async def main() -> None:
        install_sighup(state.rules)
        await run_apps(
            [(gateway, settings.listen), (make_ops_app(state), settings.ops_listen)],
            on_started=lambda: logging.getLogger("gateway").info(
                "gateway%s on http://%s -> %s (ops on http://%s)",
                f" worker {worker}" if worker else "", settings.listen,
                settings.upstream if settings.mode == "proxy" else "forward-auth (the edge forwards)", settings.ops_listen,
            ),
            reuse_port=(settings.listen,) if worker else (),
        )

    asyncio.run(main())
    return 0


def cmd_admin(args: argparse.Namespace) -> int:
    from admin_api.app import ADMIN, make_admin_app
    from gateway.app import install_sighup, make_ops_app, run_apps

    settings = config.load(config.AdminSettings, vars(args))
    if not settings.operator_tokens:
        logging.getLogger("gateway").warning("no GATEWAY_OPERATOR_TOKEN set: only org keys with api_keys:* can use the admin API")
    app = make_admin_app(settings)

    async def main() -> None:
        install_sighup(app[ADMIN].rules)
        await run_apps([(app, settings.listen), (make_ops_app(app[ADMIN]), settings.ops_listen)],
                       on_started=lambda: logging.getLogger("gateway").info(
                           "admin API on http://%s (ops on http://%s)", settings.listen, settings.ops_listen))

    asyncio.run(main())
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from gateway.dev import run_dev

    scopes = args.scopes or ("scopes.yaml" if Path("scopes.yaml").is_file() else str(SHIPPED_SCOPES))
    return asyncio.run(run_dev(redis_url=args.redis, scopes=scopes, base_port=args.port))


def _keys_store(args: argparse.Namespace):
    from gateway.store import KeyStore, connect

    settings = config.load(config.AdminSettings, {"redis": args.redis, "scopes": args.scopes_file})
    return settings, KeyStore(connect(settings.redis, timeout=2.0), settings.redis_prefix)


def cmd_keys(args: argparse.Namespace) -> int:
    from admin_api.schemas import created_out, key_out
    from gateway.model import expires_at_for
    from gateway.tasks import ACK_TIMEOUT

    settings, store = _keys_store(args)
    now = int(time.time() * 1000)

    async def run() -> object:
        try:
            if args.keys_cmd == "create":
                rules = load_rules(settings.scopes)
                scopes = [s for item in args.scope for s in item.split(",") if s]
                unknown = [s for s in scopes if s not in rules.permissions]
                if not scopes or unknown:
                    raise SystemExit(_fail(f"--scope: unknown or missing scopes: {', '.join(unknown) or '(none)'}"))
                record, secret = await store.create(
                    org_id=args.org, name=args.name.strip(), scopes=scopes,
                    expires_at=expires_at_for(args.expires_in, now), actor="cli", now_ms=now,
                )
                return created_out(record, now, secret)
            if args.keys_cmd == "list":
                out, cursor = [], None
                while True:
                    page = await store.list(args.org, limit=100, cursor=cursor, include_revoked=args.include_revoked)
                    out += [key_out(r, now) for r in page.records]
                    if not (cursor := page.next_cursor):
                        if not out and not await store.org_exists(args.org):  # an org exists from its first key
                            print(f"gateway: no organization {args.org}", file=sys.stderr)
                            raise SystemExit(1)
                        return out
            record = await store.revoke(org_id=args.org, key_id=args.key_id, actor="cli", now_ms=now,
                                        ack_timeout=ACK_TIMEOUT)
            if record is None:
                raise SystemExit(_fail(f"no key {args.key_id} in org {args.org}"))
            return key_out(record, now)
        finally:
            await store.redis.aclose()

    import msgspec

    result = asyncio.run(run())
    sys.stdout.write(msgspec.json.format(msgspec.json.encode(result), indent=2).decode() + "\n")
    if args.keys_cmd == "create":
        print("Store the key now: it is not shown again.", file=sys.stderr)
    return 0


def cmd_scopes(args: argparse.Namespace) -> int:
    rules = load_rules(args.file)
    if args.scopes_cmd == "check":
        print(f"{args.file}: OK: {len(rules.permissions)} permissions, {len(rules.rules)} routes")
        return 0
    from gateway.paths import InvalidPath, canonicalize

    try:
        segments = canonicalize(args.path).segments
    except InvalidPath as exc:
        print(f"400 invalid_path: {exc.reason}")
        return 1
    print(rules.explain(args.method.upper(), segments))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the edge proxy")
    config.add_arguments(serve, config.ServeSettings)
    serve.set_defaults(func=cmd_serve)

    admin = sub.add_parser("admin", help="run the admin API")
    config.add_arguments(admin, config.AdminSettings, skip=("operator_tokens",))
    admin.set_defaults(func=cmd_admin)

    dev = sub.add_parser("dev", help="run Redis, gateway, admin API and a demo upstream locally")
    dev.add_argument("--redis", default=None, help="use this Redis instead of starting one")
    dev.add_argument("--scopes", default=None,
                     help="scopes file (default ./scopes.yaml, else the example shipped with the gateway)")
    dev.add_argument("--port", type=int, default=8080, help="gateway port; admin +1, upstream +2, ops +10")
    dev.set_defaults(func=cmd_dev)

    keys = sub.add_parser("keys", help="manage keys directly in Redis (operator)")
    keys_sub = keys.add_subparsers(dest="keys_cmd", required=True)
    for name in ("create", "list", "revoke"):
        p = keys_sub.add_parser(name)
        p.add_argument("--redis", default=None, help="Redis URL (env GATEWAY_REDIS_URL)")
        p.add_argument("--scopes-file", default=None, help="scopes.yaml (env GATEWAY_SCOPES)")
        p.add_argument("--org", required=True, help="organization id")
        if name == "create":
            p.add_argument("--name", required=True)
            p.add_argument("--scope", action="append", default=[], help="scope to grant (repeat or comma-separate)")
            p.add_argument("--expires-in", default="never", choices=["never", "30d", "90d", "1y"])
        elif name == "list":
            p.add_argument("--include-revoked", action="store_true")
        else:
            p.add_argument("key_id")
    keys.set_defaults(func=cmd_keys)

    scopes = sub.add_parser("scopes", help="check scopes.yaml or explain how a request is authorized")
    scopes_sub = scopes.add_subparsers(dest="scopes_cmd", required=True)
    check = scopes_sub.add_parser("check")
    check.add_argument("file", nargs="?", default="scopes.yaml")
    explain = scopes_sub.add_parser("explain")
    explain.add_argument("method")
    explain.add_argument("path")
    explain.add_argument("--file", default="scopes.yaml")
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
    except ScopesError as exc:
        return _fail(f"invalid scopes file: {exc}")
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
