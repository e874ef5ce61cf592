"""deploy/ stays honest: its files parse, and their command lines, environment variables, ports,
probe paths and header lists are what the code accepts.

Each check is a function over the parsed files; the second test breaks one thing at a time and
expects the matching check to fail, so that no check passes vacuously.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import re
import shlex
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import msgspec
import pytest
import redis
import yaml

from gateway import config, forward_auth
from gateway.cli import build_parser
from gateway.headers import (CREDENTIAL_HEADERS, HOST_OVERRIDE_HEADERS, IDENTITY_HEADERS, METHOD_OVERRIDE_HEADERS,
                             PATH_OVERRIDE_HEADERS)
from gateway.plans import LimitsError, parse_limits
from gateway.scopes import ScopesError, parse_rules
from gateway.store import parse_redis_url
from gateway.tasks import SHUTDOWN_FLUSH_DEADLINE
from tests.support import ROOT, SCOPES, free_port

DEPLOY = ROOT / "deploy"
LIMITS = ROOT / "gateway" / "data" / "limits.yaml"
IMAGE = "api-key-gateway"
# What a secret reference stands for when a command line is loaded (any valid value).
PLACEHOLDERS = {"GATEWAY_SIGNING_SECRETS": "test:" + "s" * 32, "GATEWAY_OPERATOR_TOKEN": "t" * 16}
# Every status the forward-auth check can refuse with (nginx must answer each one itself).
FORWARD_AUTH_STATUSES = {400, 401, 403, 404, 405, 429, 503}
IDENTITY = {h.lower() for h in forward_auth.IDENTITY_RESPONSE_HEADERS + forward_auth.SIGNATURE_RESPONSE_HEADERS}


@dataclass
class Deploy:
    compose: dict
    k8s: list[dict]
    envoy: dict
    traefik: dict
    traefik_static: dict
    nginx: str
    units: dict[str, dict[str, list[tuple[str, str]]]]  # unit -> section -> (key, value) in order
    env_files: dict[str, str]  # file name -> text
    dockerfile: str
    redis_conf: str
    sentinel_conf: str


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), [])
            continue
        key, sep, value = line.partition("=")
        assert sep and current is not None, f"not a unit-file line: {line!r}"
        current.append((key.strip(), value.strip()))
    return sections


def load_deploy() -> Deploy:
    k8s = [doc for path in sorted((DEPLOY / "k8s").glob("*.yaml")) if path.name != "kustomization.yaml"
           for doc in yaml.safe_load_all(path.read_text()) if doc]
    return Deploy(
        compose=yaml.safe_load((DEPLOY / "docker-compose.yml").read_text()),
        k8s=k8s,
        envoy=yaml.safe_load((DEPLOY / "envoy" / "envoy.yaml").read_text()),
        traefik=yaml.safe_load((DEPLOY / "traefik" / "dynamic.yml").read_text()),
        traefik_static=yaml.safe_load((DEPLOY / "traefik" / "traefik.yml").read_text()),
        nginx=(DEPLOY / "nginx" / "forward-auth.conf").read_text(),
        units={p.name: parse_unit(p.read_text()) for p in sorted((DEPLOY / "systemd").glob("*.service"))},
        env_files={p.name: p.read_text() for p in sorted((DEPLOY / "systemd").glob("*.env.example"))},
        dockerfile=(ROOT / "Dockerfile").read_text(),
        redis_conf=(DEPLOY / "redis.conf").read_text(),
        sentinel_conf=(DEPLOY / "redis" / "sentinel.conf").read_text(),
    )


# --- helpers ------------------------------------------------------------------------------------


def valid_env_names(command: str) -> set[str]:
    settings = config.ServeSettings if command == "serve" else config.AdminSettings
    return {name for f in msgspec.structs.fields(settings) for name in config.env_names(f.name)}


def gateway_command(argv: list[str], env: dict[str, str], where: str):
    """Parse ``gateway ARGV`` with the real parser and load its settings with ``env``."""
    try:
        with contextlib.redirect_stderr(io.StringIO()) as err:
            args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"{where}: `gateway {shlex.join(argv)}` does not parse: {err.getvalue()}") from None
    assert args.command in ("serve", "admin"), f"{where}: runs `gateway {args.command}`"
    unknown = set(env) - valid_env_names(args.command)
    assert not unknown, f"{where}: not settings of `gateway {args.command}`: {sorted(unknown)}"
    settings_type = config.ServeSettings if args.command == "serve" else config.AdminSettings
    try:
        settings = config.load(settings_type, vars(args), env)
    except config.ConfigError as exc:
        raise AssertionError(f"{where}: {exc}") from None
    return args.command, settings


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def host_of(listen: str) -> str:
    return listen.rpartition(":")[0]


def env_names_in(text: str) -> set[str]:
    return set(re.findall(r"\bGATEWAY_[A-Z0-9_]+\b", text))


def underscore_spellings(name: str) -> set[str]:
    """Every spelling of a hyphenated header name with at least one "_" (lower case)."""
    parts = name.lower().split("-")
    return {parts[0] + "".join(s + p for s, p in zip(seps, parts[1:], strict=True))
            for seps in itertools.product("-_", repeat=len(parts) - 1) if "_" in seps}


def compose_value(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} interpolation, with placeholders for required ones."""
    def sub(m: re.Match) -> str:
        name, op, default = m[1], m[2], m[3]
        if op == ":-":
            return default
        return PLACEHOLDERS.get(name, "placeholder")
    return re.sub(r"\$\{([A-Z0-9_]+)(:[-?])([^}]*)\}", sub, str(value))


def block(text: str, opener: str) -> str:
    """The body of the nginx block that starts with ``opener {`` (braces matched)."""
    start = text.index(opener + " {") + len(opener) + 2
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    return text[start:i - 1]


def directives(body: str, name: str) -> list[list[str]]:
    return [shlex.split(m[1]) for m in re.finditer(r"(?m)^\s*" + re.escape(name) + r"\s+([^;{]*);", body)]


def our_services(d: Deploy) -> dict[str, dict]:
    return {name: svc for name, svc in d.compose["services"].items() if str(svc.get("image", "")).startswith(IMAGE)}


def compose_gateways(d: Deploy) -> dict[str, tuple[str, object, dict]]:
    out = {}
    for name, svc in our_services(d).items():
        if "entrypoint" in svc:
            continue
        env = {k: compose_value(v) for k, v in (svc.get("environment") or {}).items()}
        env = {k: v for k, v in env.items() if v != ""}
        command, settings = gateway_command(list(svc["command"]), env, f"compose service {name}")
        out[name] = (command, settings, svc)
    return out


def backend_port(d: Deploy) -> int:
    command = d.compose["services"]["backend"]["command"]
    return port_of(command[command.index("--listen") + 1])


# --- the checks ---------------------------------------------------------------------------------


def check_env_names(d: Deploy) -> None:
    """Every GATEWAY_* name anywhere in deploy/ (and the Dockerfile) is a setting."""
    known = valid_env_names("serve") | valid_env_names("admin")
    texts = {p.relative_to(ROOT): p.read_text() for p in DEPLOY.rglob("*") if p.is_file()}
    texts["Dockerfile"] = d.dockerfile
    texts["compose (parsed)"] = yaml.safe_dump(d.compose)
    texts["k8s (parsed)"] = yaml.safe_dump_all(d.k8s)
    texts.update(d.env_files)
    for where, text in texts.items():
        unknown = env_names_in(text) - known
        assert not unknown, f"{where}: unknown settings {sorted(unknown)}"


def check_compose(d: Deploy) -> None:
    gateways = compose_gateways(d)
    assert {c for c, _, _ in gateways.values()} == {"serve", "admin"}
    nginx_ip = d.compose["services"]["nginx"]["networks"]["internal"]["ipv4_address"]
    redis_port = int(re.search(r"(?m)^port (\d+)", d.redis_conf)[1])
    assert re.search(r"(?m)^appendonly yes$", d.redis_conf), "redis.conf: AOF is off"
    assert any("redis.conf" in v for v in d.compose["services"]["redis"]["volumes"])
    for name, (command, settings, svc) in gateways.items():
        scopes_mounts = [v.split(":")[1] for v in svc.get("volumes", []) if v.split(":")[0].endswith("scopes.yaml")]
        assert scopes_mounts == [settings.scopes], f"{name}: scopes.yaml is not mounted at {settings.scopes}"
        redis_url = urlsplit(settings.redis)
        assert redis_url.hostname in d.compose["services"] and redis_url.port == redis_port, name
        for published in svc.get("ports", []):
            assert int(str(published).rsplit(":", 1)[1]) == port_of(settings.listen), f"{name}: {published}"
        # Both commands have an ops listener; the healthcheck asks its /readyz (Redis answers).
        assert host_of(settings.ops_listen) == "0.0.0.0", f"{name}: the ops listener must be reachable"
        probe = " ".join(svc.get("healthcheck", {}).get("test", []))
        assert f"127.0.0.1:{port_of(settings.ops_listen)}/readyz" in probe, f"{name}: healthcheck {probe!r}"
        if command != "serve":
            continue
        assert settings.mode == "forward-auth", name
        assert any(ip == nginx_ip or ip == f"{nginx_ip}/32" for ip in settings.trusted_proxies), \
            f"{name}: nginx ({nginx_ip}) is not a trusted proxy"


def check_nginx_matches_compose(d: Deploy) -> None:
    gateways = compose_gateways(d)
    conf = d.nginx
    auth_servers = [args[0] for args in directives(block(conf, "upstream gateway_auth"), "server")]
    assert len(auth_servers) >= 2, "nginx: fewer than two gateway replicas"
    for server in auth_servers:
        host, _, port = server.rpartition(":")
        assert host in gateways, f"nginx: upstream {server} is not a compose service"
        command, settings, _ = gateways[host]
        assert command == "serve" and settings.mode == "forward-auth", f"nginx: {host} is not a forward-auth gateway"
        assert int(port) == port_of(settings.listen), f"nginx: {server}, but {host} listens on {settings.listen}"
    (backend,) = [args[0] for args in directives(block(conf, "upstream backend"), "server")]
    assert backend == f"backend:{backend_port(d)}", f"nginx: backend {backend}"
    server = block(conf, "server")
    (listen,) = directives(server, "listen")
    published = [int(str(p).rsplit(":", 1)[1]) for p in d.compose["services"]["nginx"]["ports"]]
    assert published == [int(listen[0])], f"nginx listens on {listen}, compose publishes {published}"
    assert directives(server, "underscores_in_headers") == [["off"]]

    main = block(server, "location /")
    # SECURITY: no URI part, so nginx forwards $request_uri untouched.
    assert directives(main, "proxy_pass") == [["http://backend"]], "nginx: proxy_pass must have no URI part"
    assert directives(main, "auth_request") == [["/_gateway_auth"]]
    assert directives(main, "error_page") == [["401", "403", "500", "=", "@gateway_denied"]]
    from_check = {var: header.replace("_", "-") for var, header in
                  (m.groups() for m in re.finditer(r"auth_request_set (\$\w+) \$upstream_http_(\w+);", main))}
    sent = {args[0].lower(): args[1] if len(args) > 1 else "" for args in directives(main, "proxy_set_header")}
    for header in IDENTITY:
        var = sent.get(header)
        assert var and from_check.get(var) == header, f"nginx: {header} is not copied from the check"
    for header in CREDENTIAL_HEADERS | METHOD_OVERRIDE_HEADERS | {forward_auth.ERROR_HEADER.lower()}:
        assert sent.get(header) == "", f"nginx: {header} reaches the backend"

    check = block(server, "location = /_gateway_auth")
    (proxy_pass,) = directives(check, "proxy_pass")
    target = urlsplit(proxy_pass[0])
    assert target.hostname == "gateway_auth" and not target.path.startswith(forward_auth.ENVOY_PREFIX)
    check_sent = {args[0].lower(): args[1] if len(args) > 1 else "" for args in directives(check, "proxy_set_header")}
    assert check_sent["x-original-uri"] == "$request_uri" and check_sent["x-original-method"] == "$request_method"
    assert check_sent["x-forwarded-uri"] == check_sent["x-forwarded-method"] == ""

    # A limited key's RateLimit headers reach the client on the backend's answers and on refusals,
    # and never the backend's own copies.
    added = {args[0].lower(): args[1] for args in directives(main, "add_header")}
    hidden = {args[0].lower() for args in directives(main, "proxy_hide_header")}
    for header in forward_auth.RATE_RESPONSE_HEADERS:
        var = added.get(header.lower())
        assert var and from_check.get(var) == header.lower(), f"nginx: {header} is not copied from the check"
        assert header.lower() in hidden, f"nginx: the backend's {header} reaches the client"

    denied = block(server, "location @gateway_denied")
    denied_added = {args[0].lower(): args[1] for args in directives(denied, "add_header")}
    assert all(denied_added.get(h.lower()) == added[h.lower()] for h in forward_auth.RATE_RESPONSE_HEADERS)
    assert from_check["$gw_error"] == forward_auth.ERROR_HEADER.lower()
    returned = {int(m[1]) for m in re.finditer(r"if \(\$gw_status = (\d+)\) \{ return \1 \$gw_error; \}", denied)}
    assert returned >= FORWARD_AUTH_STATUSES - {503}, f"nginx: @gateway_denied answers only {sorted(returned)}"
    assert re.search(r"(?m)^\s*return 503 \$gw_error;", denied)


def k8s_objects(d: Deploy, kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in d.k8s if doc["kind"] == kind}


def check_k8s(d: Deploy) -> None:
    deployments = k8s_objects(d, "Deployment")
    config_maps = k8s_objects(d, "ConfigMap")
    commands = {}
    for name, dep in deployments.items():
        pod = dep["spec"]["template"]
        assert dep["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items(), name
        (container,) = pod["spec"]["containers"]
        assert container["image"].startswith(IMAGE), name
        # An optional Secret key is absent in a deployment without it (sign-in off).
        env = {e["name"]: e.get("value") or PLACEHOLDERS.get(e["name"], "placeholder") for e in container.get("env", [])
               if not e.get("valueFrom", {}).get("secretKeyRef", {}).get("optional")}
        for source in container.get("envFrom", []):
            env.update({k: v for k, v in config_maps[source["configMapRef"]["name"]]["data"].items() if v != ""})
        command, settings = gateway_command(container["args"], env, f"k8s {name}")
        commands[name] = command
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["http"] == port_of(settings.listen), f"k8s {name}: http port vs --listen {settings.listen}"
        volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
        mounts = [m for m in container["volumeMounts"] if "configMap" in volumes[m["name"]]]
        assert [f"{m['mountPath']}/scopes.yaml" for m in mounts] == [settings.scopes], f"k8s {name}: scopes mount"
        for mount in mounts:
            assert "scopes.yaml" in config_maps[volumes[mount["name"]]["configMap"]["name"]]["data"]
        probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("readiness", "liveness")}
        # The gateway and the admin API alike: probes on the ops listener, so that a pod whose
        # Redis does not answer is not Ready (a static path such as /openapi.json would be).
        assert host_of(settings.ops_listen) == "0.0.0.0", f"k8s {name}: the kubelet cannot reach the ops port"
        assert ports["ops"] == port_of(settings.ops_listen), f"k8s {name}: ops port vs --ops-listen"
        assert probes["readiness"]["path"] == "/readyz" and probes["liveness"]["path"] == "/healthz", name
        for probe in probes.values():
            assert ports.get(probe["port"], probe["port"]) == port_of(settings.ops_listen), f"k8s {name}: probe port"
        annotations = pod["metadata"].get("annotations", {})
        assert int(annotations["prometheus.io/port"]) == port_of(settings.ops_listen), name
    assert sorted(commands.values()) == ["admin", "serve"]
    for name, svc in k8s_objects(d, "Service").items():
        (dep,) = [dep for dep in deployments.values()
                  if svc["spec"]["selector"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()]
        ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in ports, f"k8s Service {name}: no container port {port['targetPort']}"
    gateway = next(n for n, c in commands.items() if c == "serve")
    labels = deployments[gateway]["spec"]["template"]["metadata"]["labels"]
    (pdb,) = k8s_objects(d, "PodDisruptionBudget").values()
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items(), "k8s: the PDB selects no gateway pod"
    (hpa,) = k8s_objects(d, "HorizontalPodAutoscaler").values()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": gateway}
    assert hpa["spec"]["minReplicas"] >= pdb["spec"]["minAvailable"] + 1, "k8s: the PDB would block every eviction"


SIGN_IN_SETTINGS = ("GATEWAY_OIDC_ISSUER", "GATEWAY_OIDC_AUDIENCE", "GATEWAY_OIDC_CLIENT_ID", "GATEWAY_PUBLIC_URL")


def check_sign_in(d: Deploy) -> None:
    """The admin API's provider settings are offered in compose and k8s; its client secret comes
    from the environment (compose) and a Secret (k8s), never a literal in a file."""
    admin = d.compose["services"]["admin"]["environment"]
    for name in (*SIGN_IN_SETTINGS, "GATEWAY_OIDC_CLIENT_SECRET"):
        assert name in admin, f"compose admin: no {name}"
    assert re.fullmatch(r"\$\{GATEWAY_OIDC_CLIENT_SECRET(:-)?\}", admin["GATEWAY_OIDC_CLIENT_SECRET"]), \
        "compose admin: the client secret must come from the environment"
    container = k8s_container(d, "admin")
    (secret,) = [e for e in container.get("env", []) if e["name"] == "GATEWAY_OIDC_CLIENT_SECRET"]
    assert "value" not in secret and secret["valueFrom"]["secretKeyRef"]["name"] == "gateway-secrets", \
        "k8s admin: the client secret must come from the gateway-secrets Secret"
    maps = k8s_objects(d, "ConfigMap")
    offered = {k for src in container.get("envFrom", []) for k in maps[src["configMapRef"]["name"]]["data"]}
    offered |= {e["name"] for e in container.get("env", [])}
    missing = set(SIGN_IN_SETTINGS) - offered
    assert not missing, f"k8s admin: sign-in settings missing: {sorted(missing)}"
    assert "GATEWAY_OIDC_CLIENT_SECRET" not in {k for m in maps.values() for k in m["data"]}, \
        "k8s: the client secret in a ConfigMap"
    # Filled in (the ConfigMap's values and the Secret's key), the admin API loads with sign-in on.
    filled = {k: v for src in container.get("envFrom", []) for k, v in maps[src["configMapRef"]["name"]]["data"].items()}
    filled.update(GATEWAY_OIDC_ISSUER="https://id.example.com", GATEWAY_OIDC_AUDIENCE="https://admin.example.com",
                  GATEWAY_OIDC_CLIENT_ID="gateway-admin", GATEWAY_PUBLIC_URL="https://admin.example.com",
                  GATEWAY_OIDC_CLIENT_SECRET="placeholder", GATEWAY_OPERATOR_TOKEN=PLACEHOLDERS["GATEWAY_OPERATOR_TOKEN"])
    _, settings = gateway_command(container["args"], filled, "k8s gateway-admin with sign-in filled in")
    assert settings.oidc_client_id == "gateway-admin" and not settings.cookie_insecure


def check_scopes_configmap(d: Deploy) -> None:
    (cm,) = [cm for cm in k8s_objects(d, "ConfigMap").values() if "scopes.yaml" in cm["data"]]
    text = cm["data"]["scopes.yaml"]
    try:
        parse_rules(text, "deploy/k8s/scopes-configmap.yaml")
    except ScopesError as exc:
        raise AssertionError(str(exc)) from None
    assert text == SCOPES.read_text(), "deploy/k8s/scopes-configmap.yaml differs from scopes.yaml: copy it over"


def check_limits_file(d: Deploy) -> None:
    """Every gateway and admin API of compose and k8s reads the same limits file, a copy of the
    shipped example that loads (the admin API checks keys against the ceilings the gateways apply)."""
    files = set()
    for name, (_, settings, svc) in compose_gateways(d).items():
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}
        assert settings.limits_file in mounts, f"compose {name}: --limits-file {settings.limits_file!r} is not mounted"
        files.add(mounts[settings.limits_file])
    assert files == {"../gateway/data/limits.yaml"}, f"compose: the services read different limits files {files}"
    (cm,) = [cm for cm in k8s_objects(d, "ConfigMap").values() if "scopes.yaml" in cm["data"]]
    text = cm["data"].get("limits.yaml")
    assert text == LIMITS.read_text(), "deploy/k8s/scopes-configmap.yaml: limits.yaml differs from gateway/data/limits.yaml"
    try:
        parse_limits(text, "deploy/k8s/scopes-configmap.yaml")
    except LimitsError as exc:
        raise AssertionError(str(exc)) from None
    for command in ("serve", "admin"):
        args = build_parser().parse_args(k8s_container(d, command)["args"])  # (check_k8s loads the settings)
        assert args.limits_file == args.scopes.rpartition("/")[0] + "/limits.yaml", \
            f"k8s {command}: --limits-file {args.limits_file!r} is not the ConfigMap's limits.yaml"


def check_envoy(d: Deploy) -> None:
    (listener,) = d.envoy["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    hcm = hcm["typed_config"]
    assert hcm["common_http_protocol_options"]["headers_with_underscores_action"] == "DROP_HEADER"
    assert hcm["normalize_path"] is False and hcm["merge_slashes"] is False
    filters = [f["name"] for f in hcm["http_filters"]]
    assert filters == ["envoy.filters.http.header_mutation", "envoy.filters.http.ext_authz",
                       "envoy.filters.http.router"], filters
    removed = {m["remove"] for m in hcm["http_filters"][0]["typed_config"]["mutations"]["request_mutations"]}
    assert removed >= IDENTITY_HEADERS, f"envoy: client copies of {sorted(IDENTITY_HEADERS - removed)} pass"
    authz = hcm["http_filters"][1]["typed_config"]
    assert authz["failure_mode_allow"] is False
    service = authz["http_service"]
    assert service["path_prefix"] == forward_auth.ENVOY_PREFIX
    upstream = {p["exact"] for p in service["authorization_response"]["allowed_upstream_headers"]["patterns"]}
    assert upstream == IDENTITY == IDENTITY_HEADERS, f"envoy: allowed_upstream_headers {sorted(upstream)}"
    to_check = {p["exact"] for p in authz["allowed_headers"]["patterns"] if "exact" in p} | {"authorization"}
    assert to_check >= CREDENTIAL_HEADERS
    # The override headers reach the check, which refuses them (forward-auth cannot drop them).
    prefixes = {p["prefix"] for p in authz["allowed_headers"]["patterns"] if "prefix" in p}
    assert {"x-", "x_"} <= prefixes and to_check >= PATH_OVERRIDE_HEADERS | HOST_OVERRIDE_HEADERS, "envoy: override headers not checked"
    client = {p["exact"] for p in service["authorization_response"]["allowed_client_headers"]["patterns"]}
    assert client >= {"content-type", "www-authenticate", "allow", "retry-after", "x-request-id"}
    (route,) = hcm["route_config"]["virtual_hosts"][0]["routes"]
    assert set(route["request_headers_to_remove"]) >= CREDENTIAL_HEADERS | METHOD_OVERRIDE_HEADERS
    clusters = {c["name"]: c for c in d.envoy["static_resources"]["clusters"]}
    endpoint = clusters[service["server_uri"]["cluster"]]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    port = endpoint["endpoint"]["address"]["socket_address"]["port_value"]
    assert urlsplit(service["server_uri"]["uri"]).port == port == forward_auth_port(d)


def forward_auth_port(d: Deploy) -> int:
    """The port the shipped forward-auth gateways listen on (compose)."""
    (port,) = {port_of(s.listen) for c, s, _ in compose_gateways(d).values() if c == "serve"}
    return port


def check_traefik(d: Deploy) -> None:
    http = d.traefik["http"]
    (router,) = http["routers"].values()
    assert router["middlewares"] == ["gateway-auth", "gateway-hygiene"], router["middlewares"]
    auth = http["middlewares"]["gateway-auth"]["forwardAuth"]
    # SECURITY: with trustForwardHeader, a client's X-Forwarded-Uri would be what gets authorized.
    assert auth["trustForwardHeader"] is False
    address = urlsplit(auth["address"])
    assert address.port == forward_auth_port(d) and not address.path.startswith(forward_auth.ENVOY_PREFIX)
    assert {h.lower() for h in auth["authResponseHeaders"]} == IDENTITY == IDENTITY_HEADERS
    # SECURITY: every header reaches the check, or override headers would reach the backend unchecked.
    assert not auth.get("authRequestHeaders"), "traefik: authRequestHeaders hides override headers from the check"
    deleted = {name.lower() for name, value in http["middlewares"]["gateway-hygiene"]["headers"]
               ["customRequestHeaders"].items() if value == ""}
    assert deleted >= CREDENTIAL_HEADERS | METHOD_OVERRIDE_HEADERS
    for header in IDENTITY | CREDENTIAL_HEADERS:
        missing = underscore_spellings(header) - deleted
        assert not missing, f"traefik: {sorted(missing)} reach the backend"
    (server,) = http["services"][router["service"]]["loadBalancer"]["servers"]
    assert urlsplit(server["url"]).port == backend_port(d)
    assert router["entryPoints"] == list(d.traefik_static["entryPoints"])


def check_systemd(d: Deploy) -> None:
    assert set(d.units) == {"gateway.service", "gateway-admin.service"}
    seen = set()
    for unit, sections in d.units.items():
        service = dict(sections["Service"])
        binary, *argv = shlex.split(service["ExecStart"])
        assert binary.endswith("/bin/gateway"), f"{unit}: {binary}"
        env_file = Path(service["EnvironmentFile"]).name + ".example"
        assert env_file in d.env_files, f"{unit}: no deploy/systemd/{env_file}"
        env = {k: PLACEHOLDERS.get(k, v) for k, _, v in (line.partition("=") for line in
               d.env_files[env_file].splitlines()) if k.startswith("GATEWAY_")}
        commented = env_names_in(d.env_files[env_file]) - set(env)
        assert not commented - valid_env_names(argv[0]), f"{env_file}: {sorted(commented)}"
        command, _ = gateway_command(argv, env, unit)
        seen.add(command)
        assert service["ExecReload"].endswith("kill -HUP $MAINPID"), f"{unit}: SIGHUP reloads scopes.yaml"
        assert float(service["TimeoutStopSec"]) > SHUTDOWN_FLUSH_DEADLINE, f"{unit}: no time to flush on stop"
        for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "PrivateTmp": "yes",
                           "CapabilityBoundingSet": "", "User": "gateway"}.items():
            assert service.get(key) == value, f"{unit}: {key}={service.get(key)}"
    assert seen == {"serve", "admin"}


def check_dockerfile(d: Deploy) -> None:
    lines = d.dockerfile.splitlines()
    entrypoint = [yaml.safe_load(line.split(None, 1)[1]) for line in lines if line.startswith("ENTRYPOINT")][-1]
    cmd = [yaml.safe_load(line.split(None, 1)[1]) for line in lines if line.startswith("CMD")][-1]
    assert entrypoint == ["gateway"]
    command, settings = gateway_command(cmd, {"GATEWAY_UPSTREAM": "http://backend:8000"}, "Dockerfile CMD")
    assert command == "serve" and host_of(settings.ops_listen) == "0.0.0.0"
    exposed = {int(p) for line in lines if line.startswith("EXPOSE") for p in line.split()[1:]}
    used = {port_of(settings.listen), port_of(settings.ops_listen)}
    used |= {port_of(s.listen) for _, s, _ in compose_gateways(d).values()}
    used |= {p["containerPort"] for dep in k8s_objects(d, "Deployment").values()
             for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert exposed >= used, f"Dockerfile: EXPOSE lacks {sorted(used - exposed)}"


def check_sentinel(d: Deploy) -> None:
    monitored = re.search(r"(?m)^sentinel monitor (\S+) \S+ (\d+) (\d+)$", d.sentinel_conf)
    assert monitored, "sentinel.conf: no `sentinel monitor`"
    urls = re.findall(r"redis\+sentinel://\S+", d.sentinel_conf + "".join(d.env_files.values()))
    assert urls
    for url in urls:
        target = parse_redis_url(url)
        assert target.service == monitored[1], f"{url} names {target.service}, sentinel.conf monitors {monitored[1]}"


CHECKS = [check_env_names, check_compose, check_nginx_matches_compose, check_k8s, check_scopes_configmap, check_limits_file, check_sign_in,
          check_envoy, check_traefik, check_systemd, check_dockerfile, check_sentinel]


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_the_shipped_deploy_files_are_consistent(check):
    check(load_deploy())


# --- each check can fail ------------------------------------------------------------------------


def k8s_container(d: Deploy, command: str) -> dict:
    for dep in k8s_objects(d, "Deployment").values():
        container = dep["spec"]["template"]["spec"]["containers"][0]
        if container["args"][0] == command:
            return container
    raise AssertionError(command)


def set_arg(argv: list[str], flag: str, value: str) -> None:
    argv[argv.index(flag) + 1] = value


def mutate_compose_gateway(d: Deploy) -> dict:
    svc = d.compose["services"]["gateway-1"] = copy.deepcopy(d.compose["services"]["gateway-1"])
    return svc


BREAKAGES = {
    "unknown env name in k8s": (check_env_names, lambda d: k8s_container(d, "serve")["env"].append(
        {"name": "GATEWAY_UPSTREM", "value": "http://x"})),
    "unknown flag in compose": (check_compose, lambda d: mutate_compose_gateway(d)["command"].append("--lisen")),
    "compose healthcheck on the wrong port": (check_compose, lambda d: mutate_compose_gateway(d)["healthcheck"].update(
        test=["CMD", "curl", "http://127.0.0.1:9091/readyz"])),
    "compose ops on loopback": (check_compose, lambda d: set_arg(mutate_compose_gateway(d)["command"], "--ops-listen",
                                                                "127.0.0.1:9090")),
    "nginx not trusted": (check_compose, lambda d: set_arg(mutate_compose_gateway(d)["command"], "--trusted-proxies",
                                                          "10.0.0.1/32")),
    "admin env in the gateway": (check_compose, lambda d: mutate_compose_gateway(d)["environment"].update(
        GATEWAY_OPERATOR_TOKEN="x" * 16)),
    "nginx backend port": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        "server backend:8000;", "server backend:8001;"))),
    "nginx unknown replica": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        "server gateway-2:9100;", "server gateway-3:9100;"))),
    "nginx replica port": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        "server gateway-2:9100;", "server gateway-2:9090;"))),
    "nginx proxy_pass with a URI": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        "proxy_pass http://backend;", "proxy_pass http://backend/;"))),
    "nginx forwards the key": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        'proxy_set_header Authorization "";', ""))),
    "nginx misses an identity header": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        "proxy_set_header X-Api-Key-Scopes $gw_scopes;", ""))),
    "nginx misses a status": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        "if ($gw_status = 405) { return 405 $gw_error; }", ""))),
    "nginx listen port": (check_nginx_matches_compose, lambda d: setattr(d, "nginx", d.nginx.replace(
        "listen 8080;", "listen 8000;"))),
    "k8s readiness path": (check_k8s, lambda d: k8s_container(d, "serve")["readinessProbe"]["httpGet"].update(
        path="/ready")),
    "k8s probe port": (check_k8s, lambda d: k8s_container(d, "serve")["livenessProbe"]["httpGet"].update(port="http")),
    "k8s ops on loopback": (check_k8s, lambda d: set_arg(k8s_container(d, "serve")["args"], "--ops-listen",
                                                        "127.0.0.1:9090")),
    "k8s container port": (check_k8s, lambda d: k8s_container(d, "serve")["ports"][0].update(containerPort=8081)),
    "k8s scopes mount": (check_k8s, lambda d: set_arg(k8s_container(d, "admin")["args"], "--scopes", "/scopes.yaml")),
    "k8s admin probe path": (check_k8s, lambda d: k8s_container(d, "admin")["readinessProbe"]["httpGet"].update(
        path="/openapi.json")),
    "k8s admin probe port": (check_k8s, lambda d: k8s_container(d, "admin")["readinessProbe"]["httpGet"].update(
        port="http")),
    "k8s admin ops on loopback": (check_k8s, lambda d: set_arg(k8s_container(d, "admin")["args"], "--ops-listen",
                                                              "127.0.0.1:9091")),
    "compose admin without healthcheck": (check_compose, lambda d: d.compose["services"]["admin"].pop("healthcheck")),
    "compose admin healthcheck on the API port": (check_compose, lambda d: d.compose["services"]["admin"][
        "healthcheck"].update(test=["CMD", "curl", "http://127.0.0.1:8081/readyz"])),
    "k8s proxy without upstream": (check_k8s, lambda d: k8s_container(d, "serve").update(
        env=[e for e in k8s_container(d, "serve")["env"] if e["name"] != "GATEWAY_UPSTREAM"])),
    "k8s service port": (check_k8s, lambda d: k8s_objects(d, "Service")["gateway"]["spec"]["ports"][0].update(
        targetPort="web")),
    "k8s hpa target": (check_k8s, lambda d: k8s_objects(d, "HorizontalPodAutoscaler")["gateway"]["spec"][
        "scaleTargetRef"].update(name="gateway-admin")),
    "k8s pdb selector": (check_k8s, lambda d: k8s_objects(d, "PodDisruptionBudget")["gateway"]["spec"][
        "selector"].update(matchLabels={"app": "other"})),
    "scopes configmap": (check_scopes_configmap, lambda d: k8s_objects(d, "ConfigMap")["gateway-scopes"]["data"].update(
        {"scopes.yaml": SCOPES.read_text().replace("scope: tasks:read", "scope: tasks:reed", 1)})),
    "limits configmap": (check_limits_file, lambda d: k8s_objects(d, "ConfigMap")["gateway-scopes"]["data"].update(
        {"limits.yaml": LIMITS.read_text().replace("limit: 100}", "limit: 1000}", 1)})),
    "compose admin without the limits file": (check_limits_file, lambda d: d.compose["services"]["admin"].update(
        command=[a for a in d.compose["services"]["admin"]["command"] if "limits" not in a])),
    "k8s gateway without the limits file": (check_limits_file, lambda d: k8s_container(d, "serve").update(
        args=[a for a in k8s_container(d, "serve")["args"] if "limits" not in a])),
    "compose client secret literal": (check_sign_in, lambda d: d.compose["services"]["admin"]["environment"].update(
        GATEWAY_OIDC_CLIENT_SECRET="s3cret")),
    "compose without issuer": (check_sign_in, lambda d: d.compose["services"]["admin"]["environment"].pop(
        "GATEWAY_OIDC_ISSUER")),
    "k8s client secret literal": (check_sign_in, lambda d: next(
        e for e in k8s_container(d, "admin")["env"] if e["name"] == "GATEWAY_OIDC_CLIENT_SECRET").update(value="s3cret")),
    "k8s without public url": (check_sign_in, lambda d: k8s_objects(d, "ConfigMap")["gateway-admin-sign-in"]["data"].pop(
        "GATEWAY_PUBLIC_URL")),
    "k8s sign-in setting misspelt": (check_k8s, lambda d: k8s_objects(d, "ConfigMap")["gateway-admin-sign-in"][
        "data"].update(GATEWAY_OIDC_CLIENT_ID="x", GATEWAY_OIDC_ISSUER="ftp://id.example")),
    "envoy prefix": (check_envoy, lambda d: d.envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
                     ["typed_config"]["http_filters"][1]["typed_config"]["http_service"].update(path_prefix="/authz")),
    "envoy upstream headers": (check_envoy, lambda d: d.envoy["static_resources"]["listeners"][0]["filter_chains"][0]
                               ["filters"][0]["typed_config"]["http_filters"][1]["typed_config"]["http_service"]
                               ["authorization_response"]["allowed_upstream_headers"]["patterns"].pop()),
    "envoy fails open": (check_envoy, lambda d: d.envoy["static_resources"]["listeners"][0]["filter_chains"][0]
                         ["filters"][0]["typed_config"]["http_filters"][1]["typed_config"].update(
                             failure_mode_allow=True)),
    "envoy auth port": (check_envoy, lambda d: d.envoy["static_resources"]["clusters"][0]["load_assignment"]
                        ["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["socket_address"].update(
                            port_value=9200)),
    "traefik trusts the client": (check_traefik, lambda d: d.traefik["http"]["middlewares"]["gateway-auth"]
                                  ["forwardAuth"].update(trustForwardHeader=True)),
    "traefik underscore spelling": (check_traefik, lambda d: d.traefik["http"]["middlewares"]["gateway-hygiene"]
                                    ["headers"]["customRequestHeaders"].pop("X_Api_Key_Scopes")),
    "traefik response headers": (check_traefik, lambda d: d.traefik["http"]["middlewares"]["gateway-auth"]
                                 ["forwardAuth"]["authResponseHeaders"].remove("X-Org-Id")),
    "traefik address": (check_traefik, lambda d: d.traefik["http"]["middlewares"]["gateway-auth"]["forwardAuth"].update(
        address="http://gateway-auth:9100/envoy/")),
    "systemd flag": (check_systemd, lambda d: d.units["gateway.service"]["Service"].append(
        ("ExecStart", "/opt/api-key-gateway/.venv/bin/gateway serve --listn 0.0.0.0:8080"))),
    "systemd env file": (check_systemd, lambda d: d.env_files.update(
        {"gateway.env.example": d.env_files["gateway.env.example"] + "GATEWAY_OPERATOR_TOKEN=x\n"})),
    "systemd hardening": (check_systemd, lambda d: d.units["gateway-admin.service"]["Service"].append(
        ("NoNewPrivileges", "no"))),
    "dockerfile expose": (check_dockerfile, lambda d: setattr(d, "dockerfile", d.dockerfile.replace(
        "EXPOSE 8080 8081 9090 9091 9100", "EXPOSE 8080 8081 9090 9100"))),
    "dockerfile cmd": (check_dockerfile, lambda d: setattr(d, "dockerfile", d.dockerfile.replace(
        '"--ops-listen", "0.0.0.0:9090"', '"--ops-listen", "0.0.0.0:99999"'))),
    "sentinel service name": (check_sentinel, lambda d: setattr(d, "sentinel_conf", d.sentinel_conf.replace(
        "sentinel monitor gateway-redis", "sentinel monitor other-redis"))),
}


@pytest.mark.parametrize("check, breakage", BREAKAGES.values(), ids=BREAKAGES.keys())
def test_each_check_fails_when_its_file_is_broken(check, breakage):
    deploy = load_deploy()
    breakage(deploy)
    with pytest.raises(AssertionError):
        check(deploy)


# --- the Redis configurations load in a real redis-server ---------------------------------------


def _serve_redis(tmp_path: Path, conf: str, *extra: str) -> tuple[subprocess.Popen, redis.Redis]:
    port = free_port()
    path = tmp_path / "test.conf"
    path.write_text(conf)  # a copy: Sentinel rewrites its file
    proc = subprocess.Popen(["redis-server", str(path), "--port", str(port), "--bind", "127.0.0.1", "--dir",
                             str(tmp_path), *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = redis.Redis(port=port, decode_responses=True)
    deadline = time.monotonic() + 10
    while True:
        assert proc.poll() is None, f"redis-server refused {conf[:80]!r}"
        try:
            client.ping()
            return proc, client
        except (redis.ConnectionError, socket.error):
            assert time.monotonic() < deadline
            time.sleep(0.02)


@pytest.mark.parametrize("name", ["redis.conf", "redis/sentinel.conf"])
def test_the_redis_configurations_load(tmp_path, name):
    conf = (DEPLOY / name).read_text()
    sentinel = "sentinel" in name
    proc, client = _serve_redis(tmp_path, conf, *(["--sentinel"] if sentinel else []))
    try:
        if sentinel:
            monitored = re.search(r"(?m)^sentinel monitor (\S+)", conf)[1]
            assert list(client.sentinel_masters()) == [monitored]
        else:
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
            # A cap, so that the admin API's high-water mark (a fraction of it) means something.
            assert int(client.config_get("maxmemory")["maxmemory"]) == 1024 ** 3
    finally:
        client.close()
        proc.terminate()
        proc.wait(10)


def test_the_image_copies_real_files_that_hold_every_package():
    """The image is built from COPY lines: each source must be a real file or folder (a symlink
    would land in the image as a dangling link), and together they must hold every package the
    wheel installs, with its data files (once, gateway.store was left out of the install)."""
    import tomllib

    sources = [src for line in (ROOT / "Dockerfile").read_text().splitlines() if line.startswith("COPY ")
               and "--from=" not in line for src in line.split()[1:-1]]
    assert sources, "no COPY lines in the Dockerfile"
    for src in sources:
        path = ROOT / src
        assert path.exists() and not path.is_symlink(), f"Dockerfile: COPY {src} is not a real file or folder"
    find = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    packages = {str(p.parent.relative_to(ROOT)).replace("/", ".") for p in ROOT.glob("*/**/__init__.py")
                if not str(p.relative_to(ROOT)).startswith(("tests", "bench", ".venv", "build"))}
    for package in packages:
        assert any(package == pat or (pat.endswith(".*") and package.startswith(pat[:-1])) for pat in find["include"]), \
            f"pyproject.toml: package {package} is not installed"
        assert any(package.split(".")[0] == src.rstrip("/").split("/")[0] for src in sources), \
            f"Dockerfile: package {package} is not copied into the build stage"
    # What the CMD's --scopes points at is a file the image copies, not one left in the source tree.
    assert "COPY gateway/data/scopes.yaml /etc/gateway/scopes.yaml" in (ROOT / "Dockerfile").read_text()
