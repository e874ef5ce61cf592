"""Where a webhook may be delivered (SSRF policy, pure): http(s) URLs without userinfo, to public
addresses only unless the operator allows private ones (--webhooks-allow-private).

``check_url`` is applied when an endpoint is created or edited; ``address_refused`` to every address
the host resolves to, at create and again at every delivery (gateway.webhook_delivery connects to
the address it checked, so a DNS answer that changes in between cannot reach a private address).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_URL = 2048
# Networks that are neither global nor loopback/private by Python's own tables but must still be
# refused (ipaddress' is_global covers most; these are spelled out so the policy reads in one place).
_EXTRA_REFUSED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "240.0.0.0/4", "255.255.255.255/32", "64:ff9b::/96", "64:ff9b:1::/48", "2001:db8::/32",
    "2002::/16", "100::/64", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8", "::/128", "::1/128",
))
# Any host made only of digits, dots and hex: a number form of an IPv4 address (2130706433,
# 0177.0.0.1, 0x7f.1) that resolvers accept but a dotted quad check would not recognise.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]*))*\.?$", re.IGNORECASE)
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$", re.IGNORECASE)


class UrlRefused(ValueError):
    """The URL (or an address of its host) is not a permitted webhook target; str() says why."""


@dataclass(frozen=True)
class Target:
    """A checked URL: scheme, host (IP literals without brackets), port, and the URL itself."""

    url: str
    scheme: str
    host: str
    port: int
    literal: bool  # the host is an IP address (no DNS lookup: checked here already)


def check_url(url: str, allow_private: bool = False) -> Target:
    """The target of ``url``, or UrlRefused: only http and https, no userinfo, no fragment, a
    host name or a public IP address (a private one only with ``allow_private``)."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise UrlRefused(f"The URL must be 1 to {MAX_URL} characters.")
    if any(ord(c) <= 0x20 or ord(c) >= 0x7f for c in url) or "\\" in url:
        raise UrlRefused("The URL may hold only printable ASCII without spaces or backslashes.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UrlRefused("The URL is not valid.") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("Only http and https URLs can receive webhooks.")
    if "@" in parts.netloc or parts.username is not None:
        raise UrlRefused("The URL may not contain a user name or password.")
    if parts.fragment or url.endswith("#"):
        raise UrlRefused("The URL may not contain a fragment.")
    host = (parts.hostname or "").lower()
    if not host:
        raise UrlRefused("The URL needs a host.")
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    if port == 0:
        raise UrlRefused("The URL's port must be 1 to 65535.")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        reason = address_refused(address, allow_private)
        if reason:
            raise UrlRefused(reason)
        return Target(url, parts.scheme, host, port, True)
    if "[" in parts.netloc:
        raise UrlRefused("The URL's host is not a valid IPv6 address.")
    if _NUMERIC_HOST.match(host):
        # SECURITY: 2130706433, 0177.0.0.1, 0x7f.0.0.1, 127.1 all reach 127.0.0.1 through
        # inet_aton; only the canonical dotted quad (parsed above) is an address here.
        raise UrlRefused("The URL's host is a numeric form of an IPv4 address; write it as a dotted quad.")
    labels = host.rstrip(".").split(".")
    if not all(_HOST_LABEL.match(label) for label in labels):
        raise UrlRefused("The URL's host is not a valid host name.")
    if not allow_private and (host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost")):
        raise UrlRefused("The URL's host is a loopback name.")
    return Target(url, parts.scheme, host, port, False)


def address_refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address | str,
                    allow_private: bool = False) -> str | None:
    """Why a webhook may not connect to ``address`` (None: it may). Multicast and unspecified
    addresses are always refused; loopback, link-local, private and unique-local ones
    (and every other address that is not global) unless ``allow_private``. IPv4-mapped, IPv4-compatible, 6to4 and NAT64 forms count as the
    IPv4 address they carry."""
    if isinstance(address, str):
        try:
            address = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return "The address is not an IP address."
    inner = _embedded_ipv4(address)
    if inner is not None:
        return address_refused(inner, allow_private)
    if address.is_multicast or address.is_unspecified:
        return f"The address {address} is multicast or unspecified."
    if address.is_global and not any(address in net for net in _EXTRA_REFUSED if net.version == address.version):
        return None
    if allow_private:
        return None
    return f"The address {address} is loopback, link-local, private or reserved (not a public address)."


def _embedded_ipv4(address) -> ipaddress.IPv4Address | None:
    if address.version != 6:
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    packed = address.packed
    if packed[:12] == bytes(12) and packed[12:] != bytes(4) and packed[12:] != b"\0\0\0\1":  # ::a.b.c.d
        return ipaddress.IPv4Address(packed[12:])
    if packed[:12] == bytes.fromhex("0064ff9b0000000000000000"):  # NAT64 64:ff9b::a.b.c.d
        return ipaddress.IPv4Address(packed[12:])
    if address.sixtofour is not None:
        return address.sixtofour
    return None
