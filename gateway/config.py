"""Typed settings for `gateway serve` and `gateway admin`, read from flags and GATEWAY_* variables.

Each field becomes a flag (``ops_listen`` -> ``--ops-listen``) and an environment variable
(``GATEWAY_OPS_LISTEN``); flags win. Settings are validated once, at start-up.
"""

from __future__ import annotations

import argparse
import functools
import ipaddress
import os
import typing
import urllib.parse
from typing import Annotated, Any, Literal, Mapping

import msgspec
from msgspec import Meta

from gateway.signing import parse_secrets

# Extra environment names accepted for a few settings (the names other tools use).
ENV_ALIASES = {
    "redis": ("GATEWAY_REDIS_URL",),
    "upstream": ("GATEWAY_UPSTREAM_URL",),
    "scopes": ("GATEWAY_SCOPES_FILE",),
    "operator_tokens": ("GATEWAY_OPERATOR_TOKEN",),
}


class ConfigError(Exception):
    """A setting is missing or invalid; the message names the flag and the variable."""


def _check_listen(value: str, field: str) -> None:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{field}: expected HOST:PORT, got {value!r}")


def _check_redis_url(value: str, field: str) -> None:
    from gateway.store import parse_redis_url

    try:
        parse_redis_url(value)
    except ValueError as exc:
        raise ValueError(f"{field}: {exc}") from None


def _check_networks(cidrs: tuple[str, ...], field: str) -> None:
    for cidr in cidrs:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise ValueError(f"{field}: {cidr!r} is not an IP network") from None


def _check_retention(hourly_days: int, daily_days: int) -> None:
    if daily_days < hourly_days:
        raise ValueError(f"--usage-daily-days: must be at least --usage-hourly-days ({hourly_days}), "
                         f"got {daily_days}")


def _check_oidc(issuer: str, audience: str) -> None:
    if not issuer:
        if audience:
            raise ValueError("--oidc-audience: given without --oidc-issuer")
        return
    url = urllib.parse.urlsplit(issuer)
    loopback = url.hostname in ("127.0.0.1", "::1", "localhost")
    if not url.hostname or url.query or url.fragment or not (url.scheme == "https" or (url.scheme == "http" and loopback)):
        raise ValueError(f"--oidc-issuer: expected an https:// URL (http:// only on a loopback address), got {issuer!r}")
    if not audience:
        raise ValueError("--oidc-audience: required with --oidc-issuer (the aud the provider puts in tokens for this API)")


def _check_url(value: str, field: str) -> urllib.parse.SplitResult:
    url = urllib.parse.urlsplit(value)
    loopback = url.hostname in ("127.0.0.1", "::1", "localhost")
    if not url.hostname or url.query or url.fragment or not (url.scheme == "https" or (url.scheme == "http" and loopback)):
        raise ValueError(f"{field}: expected an https:// URL (http:// only on a loopback address), got {value!r}")
    return url


def _check_signin(s: AdminSettings) -> None:
    """Page sign-in needs the issuer, the admin API's public URL and the client secret."""
    if not s.oidc_client_id:
        if s.oidc_client_secret:
            raise ValueError("GATEWAY_OIDC_CLIENT_SECRET: given without --oidc-client-id")
        return
    if not s.oidc_issuer:
        raise ValueError("--oidc-client-id: needs --oidc-issuer (the provider people sign in with)")
    if not s.public_url:
        raise ValueError("--oidc-client-id: needs --public-url (the admin API's external URL; the redirect_uri "
                         "registered at the provider is it + /auth/callback)")
    url = _check_url(s.public_url, "--public-url")
    if url.path not in ("", "/"):
        raise ValueError(f"--public-url: expected an origin without a path (the admin API at /), got {s.public_url!r}")
    if s.cookie_insecure and url.scheme == "https":
        # SECURITY: over https, a cookie without Secure (and without the __Host- prefix) can be
        # planted by a sibling subdomain or any http answer: a signed-in session of the attacker's.
        raise ValueError(f"--cookie-insecure: only for a page on http on a loopback address, not {s.public_url!r}")
    if not s.oidc_client_secret:
        raise ValueError("GATEWAY_OIDC_CLIENT_SECRET: required with --oidc-client-id (the client's secret at the provider)")
    if "openid" not in s.oidc_scopes.split():
        raise ValueError(f"--oidc-scopes: must include openid, got {s.oidc_scopes!r}")
    if s.session_idle > s.session_lifetime:
        raise ValueError(f"--session-idle: at most --session-lifetime ({s.session_lifetime:g}), got {s.session_idle:g}")


def _check_default_limits(value: str) -> None:
    from gateway.plans import parse_limit_specs

    try:
        parse_limit_specs(value)
    except ValueError as exc:
        raise ValueError(f"--default-limits: {exc}") from None


Seconds = Annotated[float, Meta(gt=0, le=3600)]


class ServeSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the edge proxy (`gateway serve`)."""

    upstream: Annotated[str, Meta(description="Base URL of the backend, e.g. http://127.0.0.1:9000 (required in proxy mode)")] = ""
    mode: Annotated[
        Literal["proxy", "forward-auth"],
        Meta(description="proxy: forward each request to --upstream; forward-auth: only answer whether it may pass, for nginx auth_request, Traefik ForwardAuth or Envoy ext_authz"),
    ] = "proxy"
    listen: Annotated[str, Meta(description="HOST:PORT the proxy listens on")] = "127.0.0.1:8080"
    redis: Annotated[str, Meta(description="Redis URL of the key store")] = "redis://127.0.0.1:6379/0"
    scopes: Annotated[str, Meta(description="Path of scopes.yaml")] = "scopes.yaml"
    ops_listen: Annotated[str, Meta(description="HOST:PORT of /healthz, /readyz, /metrics")] = (
        "127.0.0.1:9090"
    )
    redis_prefix: Annotated[str, Meta(description="Prefix of every Redis key", pattern=r"^[a-z0-9_]{1,16}$")] = "gw"
    redis_timeout: Annotated[Seconds, Meta(description="Timeout of each Redis call, seconds")] = 0.5
    redis_min_replicas: Annotated[str, Meta(pattern=r"^(auto|[0-9]|1[0-6])$", description="Replicas that must confirm each key create or revoke (Redis WAIT) before it is answered, else 503 store_unavailable, and each last-used flush (else retried): auto (1 once the deployment has had a replica, 0 until then) or 0 to 16")] = "auto"
    redis_max_connections: Annotated[int, Meta(ge=1, le=10_000, description="Most Redis connections of request reads; past it they queue for up to --redis-timeout (background work has its own few)")] = 64
    # Revocations are pushed (pub/sub, acknowledged, with a 1 s trust lapse), and a record never
    # changes otherwise; the TTL is only a backstop. Short TTLs cost a Redis read per key and
    # TTL: 10,000 active keys at 30 s would be 333 reads a second.
    cache_ttl: Annotated[float, Meta(ge=0, le=86400, description="Seconds a verified key stays cached (0 disables the cache)")] = 3600.0
    negative_cache_ttl: Annotated[float, Meta(ge=0, le=3600, description="Seconds an unknown key id stays cached")] = 5.0
    cache_size: Annotated[int, Meta(ge=1, description="Most cached keys (least recently used evicted first)")] = 100_000
    max_body_bytes: Annotated[int, Meta(ge=0, description="Largest request body forwarded, bytes")] = 100 * 1024 * 1024
    connect_timeout: Annotated[Seconds, Meta(description="Upstream connect timeout, seconds")] = 5.0
    read_timeout: Annotated[Seconds, Meta(description="Upstream read timeout (between bytes), seconds")] = 60.0
    flush_interval: Annotated[Seconds, Meta(description="Seconds between last-used flushes to Redis")] = 1.0
    usage_hourly_days: Annotated[int, Meta(ge=1, le=366, description="Days a key's hourly usage buckets are kept in Redis")] = 90
    usage_daily_days: Annotated[int, Meta(ge=1, le=3660, description="Days a key's daily usage buckets are kept in Redis (at least --usage-hourly-days)")] = 400
    reload_interval: Annotated[float, Meta(ge=0, le=3600, description="Seconds between scopes.yaml change checks (0: only on SIGHUP)")] = 2.0
    trusted_proxies: Annotated[tuple[str, ...], Meta(description="Comma-separated CIDRs whose X-Forwarded-* headers are trusted")] = ()
    stale_if_error: Annotated[float, Meta(ge=0, le=86400, description="Seconds after losing contact with Redis that the keys cached then are still accepted (0: fail closed)")] = 0.0
    workers: Annotated[int, Meta(ge=1, le=64, description="Gateway processes sharing the port (SO_REUSEPORT) under one supervisor")] = 1
    auth_failure_limit: Annotated[int, Meta(ge=0, description="Failed authentications per client address within --auth-failure-window before 429 (0 disables)")] = 20
    auth_failure_window: Annotated[Seconds, Meta(description="Seconds over which --auth-failure-limit failures are allowed")] = 60.0
    throttle_max_clients: Annotated[int, Meta(ge=1, description="Most client addresses tracked by the failure throttle")] = 100_000
    throttle_ipv6_prefix: Annotated[int, Meta(ge=32, le=128, description="IPv6 prefix length counted as one client by the failure throttle (IPv4: per address)")] = 64
    # SECURITY: how long a connection may stay open without a complete request head (from accept,
    # then after each response), so slow or idle clients cannot hold sockets for ever; 75 s is the
    # usual keep-alive and outlives load-balancer idles. The proxy port and the ops listener.
    head_timeout: Annotated[Seconds, Meta(description="Seconds a connection may take to send a complete request head, from connect and after each response (idle keep-alive and dribbling clients are closed)")] = 75.0
    ops_max_connections: Annotated[int, Meta(ge=1, le=65536, description="Most open connections on --ops-listen; past it the idle ones are closed first")] = 256
    limits_file: Annotated[str, Meta(description="Path of the limits file: the default plan of keys that set no limits, named plans, ceilings, fault policies (docs/rate-limits.md; none: no default limits)")] = ""
    default_limits: Annotated[str, Meta(description="Limits of keys that set none, e.g. minute=600,month=1000000 (instead of the limits file's default plan)")] = ""
    rate_limit_faults: Annotated[str, Meta(pattern=r"^(|open|closed)$", description="What a rate window does when Redis cannot lease budget and the node's is spent: open (admit) or closed (503); default open, or the limits file's")] = ""
    quota_faults: Annotated[str, Meta(pattern=r"^(|open|closed)$", description="What a quota does when Redis cannot lease budget and the node's is spent: open (admit) or closed (503); default closed, or the limits file's")] = ""
    signing_secrets: Annotated[
        tuple[str, ...],
        Meta(description="KID:SECRET pairs that sign the identity headers (comma-separated, secrets >= 32 bytes; the first one signs); give it in the environment, not as a flag"),
    ] = ()

    def __post_init__(self) -> None:
        _check_listen(self.listen, "--listen")
        _check_listen(self.ops_listen, "--ops-listen")
        _check_redis_url(self.redis, "--redis")
        if self.mode == "proxy" and not self.upstream:
            raise ValueError("--upstream: required in proxy mode (or GATEWAY_UPSTREAM); --mode forward-auth needs none")
        if self.upstream and not self.upstream.startswith(("http://", "https://")):
            raise ValueError(f"--upstream: expected an http:// or https:// URL, got {self.upstream!r}")
        _check_networks(self.trusted_proxies, "--trusted-proxies")
        _check_retention(self.usage_hourly_days, self.usage_daily_days)
        _check_default_limits(self.default_limits)
        if self.signing_secrets:
            try:
                parse_secrets(self.signing_secrets)
            except ValueError as exc:
                raise ValueError(f"--signing-secrets: {exc}") from None


class AdminSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Settings of the admin API and its page (`gateway admin`)."""

    listen: Annotated[str, Meta(description="HOST:PORT the admin API listens on")] = "127.0.0.1:8081"
    redis: Annotated[str, Meta(description="Redis URL of the key store")] = "redis://127.0.0.1:6379/0"
    scopes: Annotated[str, Meta(description="Path of scopes.yaml")] = "scopes.yaml"
    redis_prefix: Annotated[str, Meta(description="Prefix of every Redis key", pattern=r"^[a-z0-9_]{1,16}$")] = "gw"
    redis_timeout: Annotated[Seconds, Meta(description="Timeout of each Redis call, seconds")] = 0.5
    redis_min_replicas: Annotated[str, Meta(pattern=r"^(auto|[0-9]|1[0-6])$", description="Replicas that must confirm each key create or revoke (Redis WAIT) before it is answered, else 503 store_unavailable, and each last-used flush (else retried): auto (1 once the deployment has had a replica, 0 until then) or 0 to 16")] = "auto"
    reload_interval: Annotated[float, Meta(ge=0, le=3600, description="Seconds between scopes.yaml change checks (0: only on SIGHUP)")] = 2.0
    flush_interval: Annotated[Seconds, Meta(description="Seconds between last-used flushes to Redis (uses by org keys)")] = 1.0
    key_events_interval: Annotated[Seconds, Meta(description="Seconds between the key-event finder's ticks (expiring, expired and unused keys; one admin API process at a time runs one: docs/key-events.md)")] = 60.0
    usage_hourly_days: Annotated[int, Meta(ge=1, le=366, description="Days a key's hourly usage buckets are kept in Redis")] = 90
    usage_daily_days: Annotated[int, Meta(ge=1, le=3660, description="Days a key's daily usage buckets are kept in Redis (at least --usage-hourly-days)")] = 400
    operator_tokens: Annotated[
        tuple[str, ...],
        Meta(description="Operator tokens (comma-separated, >= 16 chars each); env GATEWAY_OPERATOR_TOKEN"),
    ] = ()
    ops_listen: Annotated[str, Meta(description="HOST:PORT of the admin API's /healthz, /readyz, /metrics")] = (
        "127.0.0.1:9091"
    )
    # The failed-auth throttle, as `gateway serve` has it (the same flags and defaults).
    trusted_proxies: Annotated[tuple[str, ...], Meta(description="Comma-separated CIDRs whose X-Forwarded-For names the client for throttling")] = ()
    auth_failure_limit: Annotated[int, Meta(ge=0, description="Failed authentications per client address within --auth-failure-window before 429 (0 disables)")] = 20
    auth_failure_window: Annotated[Seconds, Meta(description="Seconds over which --auth-failure-limit failures are allowed")] = 60.0
    throttle_max_clients: Annotated[int, Meta(ge=1, description="Most client addresses tracked by the failure throttle")] = 100_000
    throttle_ipv6_prefix: Annotated[int, Meta(ge=32, le=128, description="IPv6 prefix length counted as one client by the failure throttle (IPv4: per address)")] = 64
    # SECURITY: slow and idle clients cannot hold the admin port (or its ops listener) open.
    head_timeout: Annotated[Seconds, Meta(description="Seconds a connection may take to send a complete request head, from connect and after each response (idle keep-alive and dribbling clients are closed)")] = 75.0
    body_timeout: Annotated[Seconds, Meta(description="Seconds to receive a whole request body once its head has arrived (else 408)")] = 30.0
    max_connections: Annotated[int, Meta(ge=1, le=65536, description="Most open connections on --listen and on --ops-listen, each; past it the idle ones are closed first")] = 256
    # One tenant cannot exhaust the store for the others: limits on what an org key may create.
    max_keys_per_org: Annotated[int, Meta(ge=0, description="Most keys that are not revoked an org may hold before org keys get 409 key_limit_reached (0: no limit)")] = 1000
    create_rate_per_org: Annotated[int, Meta(ge=0, description="Keys an org's keys may create per minute, across admin API processes, before 429 too_many_creates (0: no limit)")] = 60
    memory_high_water: Annotated[float, Meta(gt=0, le=1, description="Fraction of Redis maxmemory above which every create gets 503 store_full, leaving room for revokes")] = 0.9
    # OpenID Connect: the provider's access tokens (JWT) as Authorization: Bearer (admin_api/oidc.py).
    limits_file: Annotated[str, Meta(description="Path of the limits file: the default plan of keys that set no limits, named plans, ceilings, fault policies (docs/rate-limits.md; none: no default limits)")] = ""
    default_limits: Annotated[str, Meta(description="Limits of keys that set none, e.g. minute=600,month=1000000 (instead of the limits file's default plan)")] = ""
    rate_limit_faults: Annotated[str, Meta(pattern=r"^(|open|closed)$", description="What a rate window does when Redis cannot lease budget and the node's is spent: open (admit) or closed (503); default open, or the limits file's")] = ""
    quota_faults: Annotated[str, Meta(pattern=r"^(|open|closed)$", description="What a quota does when Redis cannot lease budget and the node's is spent: open (admit) or closed (503); default closed, or the limits file's")] = ""
    oidc_issuer: Annotated[str, Meta(description="Issuer URL of the OpenID provider whose access tokens (JWT) the admin API accepts (none: not accepted); https, or http on a loopback address")] = ""
    oidc_audience: Annotated[str, Meta(description="The aud an access token must hold to be accepted (required with --oidc-issuer)")] = ""
    oidc_org_claim: Annotated[str, Meta(min_length=1, description="Access-token claim naming the person's org")] = "org_id"
    oidc_roles_claim: Annotated[str, Meta(min_length=1, description="Access-token claim listing the person's roles in that org")] = "roles"
    oidc_admin_role: Annotated[str, Meta(min_length=1, description="Role that may create, edit, roll and revoke the org's keys")] = "admin"
    oidc_viewer_role: Annotated[str, Meta(min_length=1, description="Role that may read the org's keys and activity")] = "viewer"
    oidc_leeway: Annotated[float, Meta(ge=0, le=300, description="Seconds of clock skew allowed on an access token's exp, nbf and iat")] = 30.0
    oidc_timeout: Annotated[Seconds, Meta(description="Timeout of each fetch of the provider's metadata or JWKS, seconds")] = 2.0
    oidc_jwks_max_age: Annotated[float, Meta(gt=0, le=86400, description="Seconds the provider's JWKS is used before it is fetched again")] = 900.0
    oidc_jwks_min_refetch: Annotated[float, Meta(ge=0, le=3600, description="Least seconds between JWKS fetches caused by an unknown kid (key rotation)")] = 30.0
    # Page sign-in: the admin API as the OpenID provider's confidential client (admin_api/signin.py).
    oidc_client_id: Annotated[str, Meta(description="Client id of the admin API at the OpenID provider: people sign in to the page with it (none: page sign-in off; needs --oidc-issuer and --public-url)")] = ""
    oidc_client_secret: Annotated[str, Meta(description="The client's secret at the provider; give it in the environment (GATEWAY_OIDC_CLIENT_SECRET), not as a flag")] = ""
    oidc_scopes: Annotated[str, Meta(description="Scopes asked for at sign-in (space-separated; must include openid)")] = "openid email profile"
    oidc_backoff: Annotated[float, Meta(ge=0, le=300, description="Seconds sign-in answers 503 idp_unavailable at once after a failed fetch from the provider, instead of asking it again")] = 5.0
    public_url: Annotated[str, Meta(description="The admin API's external base URL, e.g. https://admin.example.com (https, or http on a loopback address): redirect_uri is it + /auth/callback")] = ""
    session_lifetime: Annotated[float, Meta(ge=1, le=30 * 86400, description="Seconds a sign-in session lasts at most")] = 43200.0
    session_idle: Annotated[float, Meta(ge=1, le=86400, description="Seconds without a request after which a session ends")] = 1800.0
    session_refresh: Annotated[float, Meta(ge=1, le=86400, description="Seconds after which a session re-reads the person's org and roles from the provider (the bound on role changes)")] = 300.0
    signin_rate: Annotated[int, Meta(ge=0, le=10000, description="Sign-ins one client address may start per minute before 429 too_many_sign_ins (each holds a pending record in Redis for 10 minutes; 0: no limit)")] = 30
    cookie_insecure: Annotated[bool, Meta(description="Cookies without Secure and without the __Host- prefix (local http only)")] = False
    # Secret-scanning reports (POST /v1/secret-scanning/github; docs/secret-scanning.md).
    secret_scanning_keys_url: Annotated[str, Meta(description="URL of GitHub's secret-scanning public keys ({\"public_keys\": [...]}) that reports are verified with (https, or http on a loopback address; empty: the endpoint answers 404)")] = "https://api.github.com/meta/public_keys/secret_scanning"
    secret_scanning_keys_max_age: Annotated[float, Meta(gt=0, le=86400, description="Seconds the fetched public keys are used before they are fetched again")] = 3600.0
    secret_scanning_min_refetch: Annotated[float, Meta(ge=0, le=3600, description="Least seconds between fetches of the public keys caused by a report signed with a key id they lack")] = 60.0
    secret_scanning_timeout: Annotated[Seconds, Meta(description="Timeout of each fetch of the public keys, seconds")] = 5.0
    secret_scanning_rate: Annotated[int, Meta(ge=0, le=100000, description="Refused reports (bad or missing signature, malformed) one client address may send per minute before 429 too_many_reports; verified reports never count (0: no limit)")] = 60
    # Webhooks (docs/webhooks.md): delivery from the Redis outbox, in every admin API process.
    webhooks_allow_private: Annotated[bool, Meta(description="Deliver webhooks to loopback, link-local and private addresses too (SSRF: only for tests and closed networks)")] = False
    webhooks_max_attempts: Annotated[int, Meta(ge=1, le=50, description="Attempts of a webhook delivery before it is dead-lettered")] = 10
    webhooks_retry_base: Annotated[float, Meta(gt=0, le=86400, description="Seconds before the first retry of a failed webhook delivery (doubled per attempt, with jitter)")] = 300.0
    webhooks_retry_cap: Annotated[float, Meta(gt=0, le=7 * 86400, description="Most seconds between two attempts of a webhook delivery")] = 28800.0
    webhooks_timeout: Annotated[Seconds, Meta(description="Seconds a webhook delivery may take in all (connect, send, answer)")] = 10.0
    webhooks_connect_timeout: Annotated[Seconds, Meta(description="Seconds to connect to a webhook endpoint")] = 3.0
    webhooks_max_response: Annotated[int, Meta(ge=0, le=1 << 20, description="Most bytes of a webhook endpoint's answer that are read")] = 65536
    webhooks_concurrency: Annotated[int, Meta(ge=1, le=1024, description="Webhook deliveries in flight per admin API process")] = 16
    webhooks_per_endpoint: Annotated[int, Meta(ge=1, le=256, description="Webhook deliveries in flight per endpoint, across processes (one slow endpoint holds no more)")] = 4
    webhooks_visibility: Annotated[float, Meta(ge=1, le=3600, description="Seconds a claimed webhook delivery is hidden from other processes (at least --webhooks-timeout + 1): a process that dies loses it for this long")] = 60.0
    webhooks_poll: Annotated[float, Meta(gt=0, le=60, description="Seconds between polls of the webhook outbox and job queue when idle")] = 0.5
    webhooks_grace: Annotated[float, Meta(ge=0, le=3600, description="Seconds a key change's outbox entry waits for its activity log event before it is dropped")] = 30.0
    webhooks_max_queued: Annotated[int, Meta(ge=1, le=1_000_000, description="Webhook deliveries queued per endpoint; past it a new delivery is dead-lettered at once (not queued)")] = 10_000
    webhooks_test_sends: Annotated[int, Meta(ge=1, le=1000, description="Test-sends per webhook endpoint per minute (429 past it)")] = 10
    webhooks_rotation_grace: Annotated[float, Meta(ge=0, le=30 * 86400, description="Seconds a rotated webhook secret still signs deliveries beside the new one (Standard Webhooks: two signatures)")] = 86400.0

    def __post_init__(self) -> None:
        _check_listen(self.listen, "--listen")
        _check_listen(self.ops_listen, "--ops-listen")
        _check_redis_url(self.redis, "--redis")
        _check_networks(self.trusted_proxies, "--trusted-proxies")
        _check_retention(self.usage_hourly_days, self.usage_daily_days)
        _check_default_limits(self.default_limits)
        _check_oidc(self.oidc_issuer, self.oidc_audience)
        _check_signin(self)
        if self.secret_scanning_keys_url:
            _check_url(self.secret_scanning_keys_url, "--secret-scanning-keys-url")
        for token in self.operator_tokens:
            if len(token) < 16:
                raise ValueError("GATEWAY_OPERATOR_TOKEN: each operator token needs at least 16 characters")

    def __repr__(self) -> str:
        # SECURITY: the secrets never reach a log line or a traceback through repr().
        shown = {f: getattr(self, f) for f in self.__struct_fields__}
        for secret in ("operator_tokens", "oidc_client_secret"):
            if shown[secret]:
                shown[secret] = "[redacted]"
        return "AdminSettings(" + ", ".join(f"{k}={v!r}" for k, v in shown.items()) + ")"

    @property
    def signin_enabled(self) -> bool:
        return bool(self.oidc_client_id)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def env_names(field: str) -> tuple[str, ...]:
    return ("GATEWAY_" + field.upper(), *ENV_ALIASES.get(field, ()))


def add_arguments(parser: argparse.ArgumentParser, settings_type: type[msgspec.Struct], skip: tuple[str, ...] = (),
                  only: tuple[str, ...] | None = None) -> None:
    """One flag per settings field (or per field in ``only``), described from its Meta with its
    default and variables, defaulting to None (= unset)."""
    for field in msgspec.structs.fields(settings_type):
        if field.name in skip or (only is not None and field.name not in only):
            continue
        meta = _meta(settings_type, field.name)
        envs = " or ".join(env_names(field.name))
        parser.add_argument(
            flag(field.name),
            dest=field.name,
            default=None,
            help=f"{meta} (default: {show_default(field.default)}; env {envs})".replace("%", "%%"),
        )


def show_default(value: Any) -> str:
    """A settings default as --help shows it: "none" for an empty value or no default."""
    if value is msgspec.NODEFAULT or value in ("", ()):
        return "none"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _meta(settings_type: type, name: str) -> str:
    """The field's description (its last ``Meta(description=...)``), else its name."""
    hint = _hints(settings_type).get(name)
    descriptions = [m.description for m in getattr(hint, "__metadata__", ()) if isinstance(m, Meta) and m.description]
    return descriptions[-1] if descriptions else name


@functools.cache
def _hints(settings_type: type) -> dict[str, Any]:
    """The settings' resolved annotations, once per class: resolving them takes ~1.5 ms, and a
    parser asks for each of its ~100 flags (a tenth of a second at every start of the CLI)."""
    return typing.get_type_hints(settings_type, include_extras=True)


def load(settings_type: type[msgspec.Struct], args: Mapping[str, Any], environ: Mapping[str, str] | None = None):
    """Merge flags (winning) over GATEWAY_* variables over defaults, then validate."""
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    source: dict[str, str] = {}
    for field in msgspec.structs.fields(settings_type):
        value = args.get(field.name)
        where = flag(field.name)
        if value is None:
            for env in env_names(field.name):
                if environ.get(env, "") != "":
                    value, where = environ[env], env
                    break
        if value is None:
            continue
        if "tuple" in str(field.type) and isinstance(value, str):
            value = tuple(v.strip() for v in value.split(",") if v.strip())
        raw[field.name] = value
        source[field.name] = where
    try:
        return msgspec.convert(raw, settings_type, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), source)) from None


def _explain(message: str, source: Mapping[str, str]) -> str:
    # msgspec says "... - at `$.redis_timeout`"; name the flag or variable it came from.
    if "`$." in message:
        text, _, path = message.rpartition(" - at `$.")
        name = path.rstrip("`").split("[", 1)[0]
        return f"invalid setting {source.get(name, flag(name))}: {text}"
    if message.startswith("Object missing required field"):
        name = message.split("`")[1]
        return f"missing setting {flag(name)} (or {env_names(name)[0]})"
    if message.startswith(("--", "GATEWAY_")):
        return f"invalid setting {message}"
    return f"invalid settings: {message}"
