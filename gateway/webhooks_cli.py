"""`gateway webhooks create|list|show|edit|delete|rotate|test|deliveries`: an org's webhook
endpoints directly in Redis (operator), with the admin API's checks and JSON (admin_api/webhooks.py)."""

from __future__ import annotations

import argparse
import os
import time

from gateway import config, validation

SETTINGS = ("redis", "redis_prefix", "redis_min_replicas", "webhooks_allow_private", "webhooks_max_queued",
            "webhooks_rotation_grace")
COMMANDS = {"create": "add an endpoint (prints its signing secret, once)", "list": "the org's endpoints",
            "show": "one endpoint", "edit": "change an endpoint's URL, events or description",
            "delete": "delete an endpoint", "rotate": "a new signing secret (printed once)",
            "test": "queue a webhook.test delivery to the endpoint",
            "deliveries": "the endpoint's recent deliveries, newest first"}


def add_parser(sub, command) -> None:
    hooks = command(sub, "webhooks", help="manage an org's webhook endpoints directly in Redis (operator)")
    hooks_sub = hooks.add_subparsers(dest="webhooks_cmd", required=True)
    for name, text in COMMANDS.items():
        p = command(hooks_sub, name, help=text)
        config.add_arguments(p, config.AdminSettings, only=SETTINGS)
        p.add_argument("--org", required=True, help="organization id")
        if name != "create" and name != "list":
            p.add_argument("webhook_id", metavar="WEBHOOK_ID", help="the endpoint's id, wh_...")
        if name in ("create", "edit"):
            p.add_argument("--url", required=name == "create", default=None, help="http(s) URL events are POSTed to")
            p.add_argument("--event", action="append", default=[],
                           help="event type to send (repeat or comma-separate; default: all, '*')")
            p.add_argument("--description", default=None, help="what the endpoint is for")
    hooks.set_defaults(func=cmd_webhooks)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from gateway.cli import CliError, _on_store, _print_json

    settings = config.load(config.AdminSettings, {name: getattr(args, name, None) for name in SETTINGS})
    org_id = validation.org_id(args.org)

    async def work(store):
        from admin_api import webhooks as api
        from gateway import errors, webhooks
        from gateway.model import rfc3339
        from gateway.store.webhooks import WebhookStore
        from gateway.webhook_delivery import queue_test

        hooks = WebhookStore(store, settings.webhooks_max_queued)
        cmd = args.webhooks_cmd
        if cmd == "list":
            return api.WebhookEndpointList([api.endpoint_out(e) for e in await hooks.endpoints(org_id)])
        now = int(time.time() * 1000)
        try:
            if cmd == "create":
                if not await store.org_exists(org_id):
                    raise CliError(f"no organization {org_id}", code=1)
                events, description = _events(args), args.description or ""
                url = await api.checked_url(args.url, settings.webhooks_allow_private)
                endpoint = webhooks.Endpoint("wh_" + os.urandom(10).hex()[:16], org_id, url,
                                             webhooks.secret_from(os.urandom(webhooks.SECRET_BYTES)),
                                             webhooks.check_events(events), webhooks.check_description(description),
                                             now, "operator:cli", now)
                await hooks.put_endpoint(endpoint)
                return api.created_out(endpoint)
            endpoint = await hooks.endpoint(org_id, args.webhook_id) if webhooks.ENDPOINT_ID.match(
                args.webhook_id) else None
            if endpoint is None:
                raise CliError(f"no webhook endpoint {args.webhook_id} in org {org_id}", code=1)
            if cmd == "show":
                return api.endpoint_out(endpoint)
            if cmd == "deliveries":
                return api.WebhookDeliveryList([api.delivery_out(r) for r in await hooks.deliveries(endpoint.id)])
            if cmd == "test":
                return api.WebhookTestQueued(await queue_test(hooks, endpoint, now), webhooks.TEST_TYPE)
            if cmd == "delete":
                await hooks.delete_endpoint(org_id, endpoint.id)
                return {"deleted": endpoint.id}
            import msgspec

            if cmd == "rotate":
                # The old secret signs beside the new one for --webhooks-rotation-grace (0: cut at once).
                endpoint = endpoint.rotated(webhooks.secret_from(os.urandom(webhooks.SECRET_BYTES)), now,
                                            int(settings.webhooks_rotation_grace * 1000))
                await hooks.put_endpoint(endpoint)
                until = rfc3339(endpoint.previous_until) if endpoint.previous_secret else None
                return api.endpoint_out(endpoint, api.RotatedWebhookEndpoint, secret=endpoint.secret,
                                        previous_secret_expires_at=until)
            changes: dict = {}
            if args.event:
                changes["events"] = webhooks.check_events(_events(args))
            if args.description is not None:
                changes["description"] = webhooks.check_description(args.description)
            if args.url is not None:
                changes["url"] = await api.checked_url(args.url, settings.webhooks_allow_private)
            if not changes:
                raise CliError("give at least one of --url, --event, --description")
            endpoint = msgspec.structs.replace(endpoint, updated_at=now, **changes)
            await hooks.put_endpoint(endpoint)
            return api.endpoint_out(endpoint)
        except errors.WebhookUrlRefused as exc:
            raise CliError(f"--url: {exc.message}") from None
        except ValueError as exc:
            raise CliError(str(exc)) from None

    _print_json(_on_store(settings, work))
    return 0


def _events(args: argparse.Namespace) -> list[str]:
    return [e.strip() for item in args.event for e in item.split(",") if e.strip()] or ["*"]
