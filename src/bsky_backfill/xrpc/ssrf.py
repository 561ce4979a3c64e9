"""SSRF guard: refuse endpoints that point inside the operator's network.

Where it sits: PDS endpoints, did:web hosts, the hosts a relay lists and the
endpoints of PLC operations come from strangers. One `AddressPolicy` per run
(held by the HTTP client, xrpc/client.py) decides about them, always on the
host the HTTP client will really connect to: `parse_endpoint` reads a URL the
way aiohttp/yarl does (IDNA/UTS-46 normalisation turns `１２７。０。０。１` and
`🯱🯲🯷.🯰.🯰.🯱` into `127.0.0.1`), so no spelling of an address can mean one
thing here and another on the wire. Two checks:

* before a request, `AddressPolicy.check` gives a verdict on the URL (scheme,
  syntax, private literals, what the name resolves to now); a refused
  endpoint dead-letters its repos (`BlockedPrivateAddress`, or
  `InvalidEndpoint` for what is not a usable URL) and nothing is sent;
* at connect time, `AddressPolicy.socket_factory` refuses to open a socket to
  any non-public address, whatever led there (an IP literal, a name whose DNS
  answer changed since the check, a path nobody checked), and
  `GuardedResolver` (xrpc/resolver_guard.py, the one piece that needs
  aiohttp) drops such addresses from DNS answers.

This module imports no aiohttp, so the option checks (`parse_endpoint`) and
`bsky-backfill --help` do not load the HTTP stack.

Hosts that are not ASCII must normalise to a public DNS name: one that turns
into an address, or into something that is not a host name, is refused.
The operator's own URLs (`--plc-url`, `--from-relay`, `--pds`) are trusted:
requests to exactly those origins are not guarded, and an endpoint on one of
them is allowed (the operator asked for that host).

Written here rather than taken from a library: the check is a few lines over
the standard `ipaddress` module and yarl, and the libraries that exist wrap
`requests`, not aiohttp's connector.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import yarl

from bsky_backfill.errors import BlockedAddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip_literal(host: str) -> IPAddress | None:
    """An IP address written in any form a URL may carry, else None.

    Besides dotted quads and IPv6 (with or without brackets), accepts the
    legacy forms that C resolvers still honour and attackers use to slip past
    naive checks: decimal `2130706433`, hex `0x7f000001`, short `127.1`, octal
    `0177.0.0.1`.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        pass
    host = host.removesuffix(".")
    if not host or not all(c.isalnum() or c == "." for c in host):
        return None
    if not (host[0].isdigit()):
        return None
    try:
        # inet_aton implements exactly the BSD forms (decimal, hex, octal, short).
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address must not be contacted, or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return blocked_reason(mapped)
        if ip.teredo is not None:
            return "teredo tunnel address"
    checks = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    for reason, hit in checks:
        if hit:
            return f"{reason} address {ip}"
    return None


def is_private_host(host: str) -> bool:
    """True when `host` is an IP literal or `localhost` name that is not public."""
    if _is_localhost(host):
        return True
    ip = parse_ip_literal(host)
    return ip is not None and blocked_reason(ip) is not None


def _is_localhost(host: str) -> bool:
    name = host.lower().rstrip(".")
    return name == "localhost" or name.endswith(".localhost")


def host_to_base_url(host: str, allow_private: bool) -> str:
    """A host named without a scheme -> base URL (contract: https, except an
    allowed loopback/private host, which is reached over plain http)."""
    if "://" in host:
        return host.rstrip("/")
    try:
        hostname = urlsplit(f"//{host}").hostname or host
    except ValueError:  # an unclosed IPv6 bracket: the endpoint check refuses it
        hostname = host
    scheme = "http" if allow_private and is_private_host(hostname) else "https"
    return f"{scheme}://{host}".rstrip("/")


# -- reading an endpoint the way the HTTP client will -----------------------------------

# One DNS label (underscores appear in real service names) and a whole name.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?")
_TLD = re.compile(r"[a-z][a-z0-9-]{0,62}|xn--[a-z0-9-]{1,59}")


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A URL as the HTTP client sees it: `host` is the ASCII name or address it connects to."""

    url: str
    scheme: str
    host: str
    port: int
    address: IPAddress | None
    """`host` read as an IP address (any legacy form), else None (a DNS name)."""

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)


def _invalid(url: str, why: str) -> BlockedAddress:
    return BlockedAddress(f"endpoint {url!r} {why}", code="InvalidEndpoint")


def _authority(url: str) -> str:
    """The `user@host:port` part of a URL as written (before any normalisation)."""
    rest = url.split("://", 1)[-1]
    return re.split(r"[/?#\\]", rest, maxsplit=1)[0]


def parse_endpoint(url: object) -> Endpoint:
    """Read `url` as aiohttp will; raise BlockedAddress (`InvalidEndpoint`, or
    `BlockedPrivateAddress` for a scheme other than http(s)) when it cannot be used.

    Never raises anything else, whatever `url` is: the one place where an
    endpoint string from a stranger becomes a host, a port and a verdict.
    """
    if not isinstance(url, str) or not url:
        raise BlockedAddress(f"endpoint {url!r:.200} is not a URL", code="InvalidEndpoint")
    try:
        parsed = yarl.URL(url)
        scheme = parsed.scheme
        host = parsed.raw_host
        port = parsed.port
    except (ValueError, TypeError, UnicodeError) as e:
        raise _invalid(url, f"is not a usable URL ({e})") from None
    if scheme not in ("http", "https"):
        raise BlockedAddress(f"endpoint {url!r} has scheme {scheme!r}, not http(s)")
    if not host:
        raise _invalid(url, "has no host")
    if port is None or not 0 < port < 65536:
        raise _invalid(url, "has no usable port")
    host = host.lower()
    address = parse_ip_literal(host) if ":" in host or host[:1].isdigit() else None
    if address is None:
        labels = host.removesuffix(".").split(".")
        if len(host) > 254 or not all(_LABEL.fullmatch(label) for label in labels):
            raise _invalid(url, "does not name a host")
    if not _authority(url).isascii():
        # IDNA maps look-alike digits and dots onto ASCII ones: a name written in
        # another script must come out as an ordinary public DNS name.
        labels = host.removesuffix(".").split(".")
        name_ok = len(labels) >= 2 and _TLD.fullmatch(labels[-1]) is not None
        if address is not None or not name_ok or _is_localhost(host):
            reason = blocked_reason(address) if address is not None else None
            if reason:
                code, why = "BlockedPrivateAddress", f"a {reason}"
            elif _is_localhost(host):
                code, why = "BlockedPrivateAddress", "loopback (localhost)"
            else:
                code, why = "InvalidEndpoint", "not a public host name"
            raise BlockedAddress(
                f"endpoint {url!r} writes its host in non-ASCII characters that read as "
                f"{host!r}: {why}",
                code=code,
            )
    return Endpoint(url=url, scheme=scheme, host=host, port=port, address=address)


def origin_of(url: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of a URL as the client connects, or None if it is unusable."""
    try:
        return parse_endpoint(url).origin
    except BlockedAddress:
        return None


Lookup = Callable[[str, int], Awaitable[list[str]]]
"""host, port -> IP addresses (the default asks the system resolver)."""


async def system_lookup(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def no_lookup(host: str, port: int) -> list[str]:
    """A lookup that asks nobody: only the static checks run (syntax, literals,
    localhost). For bulk listings (the PLC export) where a DNS query per DID
    would cost millions; the connect-time guard still sees every address."""
    return []


class BlockedAddressOSError(OSError):
    """Raised inside aiohttp's connect when the address to connect to is refused."""


REFUSED = "refused by the address guard"
"""In the message of every BlockedAddressOSError (they may reach the client merged)."""


class AddressPolicy:
    """Which hosts a run may contact: one object, used before requests and at connect time."""

    def __init__(self, allow_private: bool, trusted: Iterable[str] = ()) -> None:
        self.allow_private = allow_private
        self.trusted = frozenset(o for o in (origin_of(u) for u in trusted) if o is not None)
        """Origins the operator named (`--plc-url`, `--from-relay`, `--pds`)."""

    def trusts(self, url: str) -> bool:
        """Whether `url` is on an origin the operator named (then it is not guarded)."""
        return bool(self.trusted) and origin_of(url) in self.trusted

    async def check(self, url: object, lookup: Lookup = system_lookup) -> Endpoint:
        """Raise BlockedAddress unless `url` is an http(s) endpoint we may contact."""
        endpoint = parse_endpoint(url)
        if self.allow_private or endpoint.origin in self.trusted:
            return endpoint
        url = endpoint.url
        if _is_localhost(endpoint.host):
            raise BlockedAddress(f"endpoint {url!r} is loopback (localhost)")
        if endpoint.address is not None:
            reason = blocked_reason(endpoint.address)
            if reason:
                raise BlockedAddress(f"endpoint {url!r} is a {reason}")
            return endpoint
        try:
            addresses = await lookup(endpoint.host, endpoint.port)
        except (OSError, UnicodeError, ValueError):
            # Unresolvable now: the fetch fails transiently and is retried, and the
            # connect-time guard sees whatever address it resolves to later.
            return endpoint
        for address in addresses:
            try:
                ip = ipaddress.ip_address(address.split("%")[0])
            except ValueError:
                continue
            reason = blocked_reason(ip)
            if reason:
                raise BlockedAddress(f"endpoint {url!r} resolves to a {reason}")
        return endpoint

    def socket_factory(self) -> Callable[[Any], socket.socket] | None:
        """For aiohttp's connector: open sockets only to public addresses (None: no guard)."""
        return None if self.allow_private else guarded_socket


def guarded_socket(addr_info: Any) -> socket.socket:
    """aiohappyeyeballs' socket factory: refuses a non-public destination before any
    packet is sent. Every connection of the guarded session passes here, IP
    literals included (aiohttp skips the resolver for those)."""
    family, type_, proto, _, sockaddr = addr_info
    try:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
    except ValueError:
        raise BlockedAddressOSError(f"{REFUSED}: {sockaddr[0]!r}") from None
    reason = blocked_reason(ip)
    if reason:
        raise BlockedAddressOSError(f"{REFUSED}: {reason}")
    return socket.socket(family=family, type=type_, proto=proto)


async def check_endpoint(
    url: object,
    allow_private: bool,
    lookup: Lookup = system_lookup,
    *,
    trusted: Iterable[str] = (),
) -> None:
    """Raise BlockedAddress unless `url` is an http(s) URL we may contact
    (a one-off `AddressPolicy`; the engine uses the client's)."""
    await AddressPolicy(allow_private, trusted).check(url, lookup)
