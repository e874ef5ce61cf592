"""gateway.urlpolicy: which URLs and addresses webhooks may reach (SSRF)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, strategies as st

from gateway.urlpolicy import UrlRefused, address_refused, check_url

REFUSED_URLS = [
    "ftp://example.com/", "file:///etc/passwd", "gopher://example.com/", "javascript:alert(1)", "example.com/hook",
    "http://user:pw@example.com/", "http://user@example.com/", "http://example.com/#frag",
    "http://127.0.0.1/", "http://127.1/", "http://2130706433/", "http://0177.0.0.1/", "http://0x7f.0.0.1/",
    "http://0x7f000001/", "http://017700000001/", "http://localhost/", "http://LOCALHOST./", "http://a.localhost/",
    "http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/", "http://[::127.0.0.1]/",
    "http://0.0.0.0/", "http://[::]/", "http://169.254.169.254/latest/meta-data", "http://[fe80::1]/",
    "http://10.0.0.1/", "http://172.16.0.1/", "http://172.31.255.255/", "http://192.168.1.1/",
    "http://[fc00::1]/", "http://[fd12:3456::1]/", "http://100.64.0.1/", "http://224.0.0.1/", "http://[ff02::1]/",
    "http://255.255.255.255/", "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::]/", "http://198.18.0.1/",
    "http://exa mple.com/", "http://example.com\\@evil/", "http://-bad-.com/", "http://", "http:///path",
    "http://example.com:0/", "http://example.com:99999/", "http://[1.2.3.4]/", "https://é.example/", "",
]


@pytest.mark.parametrize("url", REFUSED_URLS)
def test_refused(url):
    with pytest.raises(UrlRefused):
        check_url(url)


@pytest.mark.parametrize("url", ["https://hooks.example.com/in?x=1", "http://example.com:8080/a/b", "https://8.8.8.8/",
                                 "https://[2606:4700::1111]/hook", "http://EXAMPLE.com./"])
def test_allowed(url):
    target = check_url(url)
    assert target.url == url and target.scheme in ("http", "https")


def test_private_targets_only_with_the_operator_flag():
    assert check_url("http://127.0.0.1:8080/", allow_private=True).port == 8080
    assert check_url("http://localhost/", allow_private=True).host == "localhost"
    assert check_url("http://[::1]/", allow_private=True).literal
    with pytest.raises(UrlRefused):  # a number form stays refused: write what is meant
        check_url("http://2130706433/", allow_private=True)
    with pytest.raises(UrlRefused):  # multicast and unspecified never
        check_url("http://224.0.0.1/", allow_private=True)
    with pytest.raises(UrlRefused):
        check_url("http://0.0.0.0/", allow_private=True)


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "172.20.0.1", "192.168.0.1", "169.254.1.1", "::1",
                                     "fe80::1%eth0", "fc00::1", "::ffff:10.0.0.1", "::ffff:169.254.169.254",
                                     "0.0.0.0", "::", "100.100.100.100", "not an address"])
def test_addresses_refused(address):
    assert address_refused(address)


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:4700::1111", "::ffff:93.184.216.34"])
def test_public_addresses_allowed(address):
    assert address_refused(address) is None


@given(st.ip_addresses())
def test_every_address_that_python_calls_private_is_refused(address):
    if address.is_private or address.is_loopback or address.is_link_local or not address.is_global:
        assert address_refused(address)
    mapped = ipaddress.IPv6Address("::ffff:" + str(address)) if address.version == 4 else None
    if mapped is not None:
        assert (address_refused(mapped) is None) == (address_refused(address) is None)
