"""The DNS TXT client's wire format: round trips, and a stranger's bytes never crash it."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

import pytest

from bsky_backfill.identity.dns import (
    DnsError,
    build_query,
    build_txt_answer,
    parse_server,
    parse_txt_answer,
    udp_txt_lookup,
)

NAME = "_atproto.alice.sim.test"


def test_round_trip_with_long_and_several_records() -> None:
    query = build_query(4242, NAME)
    records = ["did=did:plc:z72i7hdynmk6r22z27h6tvur", "x" * 600]
    assert parse_txt_answer(build_txt_answer(query, records), 4242, NAME) == records
    assert parse_txt_answer(build_txt_answer(query, []), 4242, NAME) == []  # NXDOMAIN
    with pytest.raises(DnsError, match="not the answer"):
        parse_txt_answer(build_txt_answer(query, records), 4243, NAME)


def test_random_damage_is_a_dns_error_or_an_answer() -> None:
    rng = random.Random(19)
    good = build_txt_answer(build_query(7, NAME), ["did=did:plc:z72i7hdynmk6r22z27h6tvur"])
    for _ in range(5000):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        cut = bytes(data[: rng.randint(0, len(data))]) if rng.random() < 0.3 else bytes(data)
        try:
            answer = parse_txt_answer(cut, 7, NAME)
        except DnsError:
            continue
        assert isinstance(answer, list) and all(isinstance(a, str) for a in answer)
    for _ in range(2000):
        noise = bytes(rng.randrange(256) for _ in range(rng.randint(0, 80)))
        with contextlib.suppress(DnsError):
            parse_txt_answer(noise, int.from_bytes(noise[:2] or b"\0\0", "big"), NAME)


def test_pointer_loop_is_refused() -> None:
    header = bytes.fromhex("0007 8180 0000 0001 0000 0000".replace(" ", ""))
    looped = header + b"\xc0\x0c" + bytes(10)  # an answer name pointing at itself
    with pytest.raises(DnsError):
        parse_txt_answer(looped, 7, NAME)


def test_udp_lookup_against_a_loopback_server() -> None:
    async def main() -> list[str]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        answered = 0

        class Server(asyncio.DatagramProtocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                self.transport = transport

            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                nonlocal answered
                answered += 1
                self.transport.sendto(build_txt_answer(data, ["did=did:web:example.com"]), addr)  # type: ignore[attr-defined]

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Server, sock=sock)
        try:
            found = await udp_txt_lookup("127.0.0.1", port, timeout=5)(NAME)
        finally:
            transport.close()
        assert answered == 1
        return found

    assert asyncio.run(main()) == ["did=did:web:example.com"]


def test_silent_server_is_a_dns_error() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    try:
        lookup = udp_txt_lookup("127.0.0.1", sock.getsockname()[1], timeout=0.2, tries=2)
        with pytest.raises(DnsError, match="did not answer"):
            asyncio.run(lookup(NAME))
    finally:
        sock.close()


@pytest.mark.parametrize(
    ("value", "parsed"),
    [("127.0.0.1:5353", ("127.0.0.1", 5353)), ("ns.example", ("ns.example", 53)),
     ("::1", ("::1", 53))],
)  # fmt: skip
def test_parse_server(value: str, parsed: tuple[str, int]) -> None:
    assert parse_server(value) == parsed


@pytest.mark.parametrize("value", [":53", "host:", "host:99999", "host:x"])
def test_parse_server_refuses(value: str) -> None:
    with pytest.raises(ValueError):
        parse_server(value)
