"""The client's address for throttling: the TCP peer, or from X-Forwarded-For behind trusted proxies (pure)."""

from __future__ import annotations

import functools
import ipaddress
from typing import Iterable, Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_trusted_peer(peer: str, trusted: Sequence[Network]) -> bool:
    """Is the TCP peer one of the trusted proxies?"""
    if not trusted:
        return False
    addr = parse_ip(peer)
    return addr is not None and _is_trusted(addr, trusted)


def _is_trusted(addr: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[Network]) -> bool:
    # ``addr`` is normalised (parse_ip: never IPv4-mapped), so an IPv4 entry matches it directly,
    # and an entry written as IPv4-mapped IPv6 (::ffff:10.0.0.0/104) as the IPv4 network it maps.
    # (An IPv6 network wider than the mapped range, ::/0, trusts no IPv4 address: fail closed.)
    if any(addr in net for net in trusted):
        return True
    return addr.version == 4 and any(addr in net for net in _mapped_as_ipv4(tuple(trusted)))


_MAPPED_RANGE = ipaddress.IPv6Network("::ffff:0:0/96")


@functools.lru_cache(maxsize=64)  # one list per process (the gateway's, the admin API's)
def _mapped_as_ipv4(trusted: tuple[Network, ...]) -> tuple[ipaddress.IPv4Network, ...]:
    return tuple(ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
                 for net in trusted if net.version == 6 and net.subnet_of(_MAPPED_RANGE))


@functools.lru_cache(maxsize=8192)  # peers and proxies repeat; bounded for hostile X-Forwarded-For
def parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address in ``text`` (bare, "[v6]:port" or "v4:port"), or None.

    SECURITY: an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, the peer of an IPv4 client on a
    dual-stack socket, or a proxy's X-Forwarded-For entry) is returned as that IPv4 address, so
    it matches IPv4 --trusted-proxies entries and counts as one throttle client with it.
    """
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1:text.index("]")]
    elif text.count(":") == 1:  # "192.0.2.1:443"
        text = text.split(":", 1)[0]
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped  # (a %zone on a mapped address is dropped with it)
    return addr


def client_address(peer: str, forwarded_for: Iterable[str], trusted: Sequence[Network]) -> str:
    """The address a request comes from.

    SECURITY: X-Forwarded-For is read only when the TCP peer is a trusted proxy, and then from
    the right: each trusted hop is skipped, and the first address that is not a trusted proxy is
    the client. Entries left of it were written by the client itself and are ignored. A
    malformed entry stops the walk at the last address a trusted proxy vouched for.
    """
    if not trusted:
        return peer  # the socket's own address: nothing to parse or believe
    current = parse_ip(peer)
    if current is None:
        return peer
    if not _is_trusted(current, trusted):
        return str(current)
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    for hop in reversed(hops):
        addr = parse_ip(hop)
        if addr is None:
            break
        current = addr
        if not _is_trusted(addr, trusted):
            break
    return str(current)


@functools.lru_cache(maxsize=8192)
def throttle_bucket(address: str, ipv6_prefix: int) -> str:
    """The failed-auth throttle's bucket for ``address``: an IPv4 address itself, an IPv4-mapped
    IPv6 address (``::ffff:a.b.c.d``) as that IPv4 address, any other IPv6 address as its
    ``/ipv6_prefix`` network (zone id dropped). Every spelling of one address gives the same
    bucket; text that is no address is its own bucket."""
    addr = parse_ip(address)
    if addr is None:
        return address
    if isinstance(addr, ipaddress.IPv6Address):  # (never IPv4-mapped: parse_ip made it IPv4)
        host_bits = 128 - ipv6_prefix
        network = (int(addr) >> host_bits) << host_bits  # int() drops a %zone
        return f"{ipaddress.IPv6Address(network)}/{ipv6_prefix}"
    return str(addr)
