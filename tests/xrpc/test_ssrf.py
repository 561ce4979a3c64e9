"""The address classifier and endpoint policy of the SSRF guard."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from bsky_backfill.errors import BlockedAddress
from bsky_backfill.xrpc.ssrf import (
    blocked_reason,
    check_endpoint,
    host_to_base_url,
    parse_ip_literal,
)


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.9",
        "192.168.1.1",
        "169.254.169.254",
        "0.0.0.0",
        "224.0.0.1",
        "100.64.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::",
        "240.0.0.1",
        "255.255.255.255",
    ],
)
def test_non_public_addresses_are_blocked(text: str) -> None:
    assert blocked_reason(ipaddress.ip_address(text)) is not None


@pytest.mark.parametrize("text", ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_pass(text: str) -> None:
    assert blocked_reason(ipaddress.ip_address(text)) is None


@pytest.mark.parametrize(
    ("literal", "expected"),
    [
        ("2130706433", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("[::1]", "::1"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_ip_literal_forms(literal: str, expected: str) -> None:
    assert parse_ip_literal(literal) == ipaddress.ip_address(expected)


@pytest.mark.parametrize("name", ["bsky.social", "pds.example.com", "1password.com"])
def test_names_are_not_literals(name: str) -> None:
    assert parse_ip_literal(name) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:2583",
        "https://localhost",
        "http://[::1]/",
        "http://2130706433/",
        "http://0x7f000001:80",
        "https://10.0.0.5",
        "ftp://bsky.social",
        "file:///etc/passwd",
        "http://[::ffff:192.168.0.1]",
    ],
)
def test_check_endpoint_blocks(url: str) -> None:
    with pytest.raises(BlockedAddress):
        asyncio.run(check_endpoint(url, allow_private=False))


@pytest.mark.parametrize("answer", [["10.0.0.7"], ["93.184.216.34", "192.168.1.4"], ["fd00::5"]])
def test_dns_name_resolving_to_a_private_address_is_blocked(answer: list[str]) -> None:
    async def lookup(host: str, port: int) -> list[str]:
        assert host == "pds.evil.example"
        return answer

    with pytest.raises(BlockedAddress):
        asyncio.run(check_endpoint("https://pds.evil.example", allow_private=False, lookup=lookup))


def test_dns_name_resolving_to_public_addresses_passes() -> None:
    async def lookup(host: str, port: int) -> list[str]:
        return ["93.184.216.34", "2606:2800:220:1::"]

    asyncio.run(check_endpoint("https://pds.example", allow_private=False, lookup=lookup))


def test_localhost_via_the_system_resolver_is_blocked() -> None:
    with pytest.raises(BlockedAddress):
        asyncio.run(check_endpoint("http://localhost:8080", allow_private=False))


def test_allow_private_lifts_the_guard_but_not_the_scheme() -> None:
    asyncio.run(check_endpoint("http://127.0.0.1:2583", allow_private=True))
    with pytest.raises(BlockedAddress):
        asyncio.run(check_endpoint("gopher://127.0.0.1", allow_private=True))


def test_scheme_rule_for_bare_hosts() -> None:
    assert host_to_base_url("pds.example.com", allow_private=True) == "https://pds.example.com"
    assert host_to_base_url("127.0.0.1:8080", allow_private=True) == "http://127.0.0.1:8080"
    assert host_to_base_url("localhost:8080", allow_private=False) == "https://localhost:8080"
    assert host_to_base_url("http://x.example/", allow_private=False) == "http://x.example"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://🯱🯲🯷.🯰.🯰.🯱:8080/admin", "BlockedPrivateAddress"),
        ("http://１２７．０．０．１/", "BlockedPrivateAddress"),
        ("http://127。0。0。1/", "BlockedPrivateAddress"),
        ("https://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", "BlockedPrivateAddress"),
        ("http://８．８．８．８/", "InvalidEndpoint"),  # an address in disguise, even a public one
        ("http://[::1", "InvalidEndpoint"),
        ("https://pds.example.com:99999", "InvalidEndpoint"),
        ("https://pds.example.com:0", "InvalidEndpoint"),
        ("http://exa%41mple.com", "InvalidEndpoint"),
        ("http://a b.com", "InvalidEndpoint"),
        ("http://127.0.0.1./", "BlockedPrivateAddress"),
    ],
)
def test_the_host_is_read_as_the_http_client_reads_it(url: str, code: str) -> None:
    async def no_dns(host: str, port: int) -> list[str]:
        return []

    with pytest.raises(BlockedAddress) as err:
        asyncio.run(check_endpoint(url, allow_private=False, lookup=no_dns))
    assert err.value.code == code


def test_a_name_in_another_script_is_fine_when_it_is_a_public_name() -> None:
    async def public(host: str, port: int) -> list[str]:
        assert host == "xn--bcher-kva.example"
        return ["93.184.216.34"]

    asyncio.run(check_endpoint("https://Bücher.example/", allow_private=False, lookup=public))


def test_look_alikes_are_refused_even_with_allow_private() -> None:
    with pytest.raises(BlockedAddress):
        asyncio.run(check_endpoint("http://🯱🯲🯷.🯰.🯰.🯱/", allow_private=True))


def test_operator_named_origins_are_allowed() -> None:
    asyncio.run(
        check_endpoint(
            "http://127.0.0.1:2583/", allow_private=False, trusted=["http://127.0.0.1:2583"]
        )
    )
    with pytest.raises(BlockedAddress):  # another port of the same host is not the operator's
        asyncio.run(
            check_endpoint(
                "http://127.0.0.1:2584", allow_private=False, trusted=["http://127.0.0.1:2583"]
            )
        )
