"""The simulated network's DNS: `TXT _atproto.<handle>` answers for its accounts' handles.

Where it sits: started by `SimNetwork` beside the PLC directory and the PDS
hosts, on a UDP port of 127.0.0.1 (`net.dns_server`, what `run --dns-server`
takes), and also offered as a resolver hook (`net.resolve_txt`, what the
Python API's `handle_txt` takes). Both read one table, `records`: every
account's handle names its DID, and tests may add or change entries (a handle
pointing at a DID whose document names another handle, a name with two DIDs).
"""

from __future__ import annotations

import asyncio
import socket
from typing import cast

from bsky_backfill.identity.dns import DnsError, build_txt_answer, read_name
from bsky_backfill.simulate.accounts import SimAccount
from bsky_backfill.simulate.stats import RequestStats


class SimDns(asyncio.DatagramProtocol):
    """Answers TXT queries from `records` (name -> TXT strings); NXDOMAIN otherwise."""

    def __init__(self, accounts: list[SimAccount], stats: RequestStats) -> None:
        self.records: dict[str, list[str]] = {
            f"_atproto.{a.handle}": [f"did={a.did}"] for a in accounts if a.handle
        }
        self._stats = stats
        self._transport: asyncio.DatagramTransport | None = None

    async def start(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self, sock=sock)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        try:
            name = read_name(data, 12)
            answer = build_txt_answer(data, self.records.get(name, []))
        except (DnsError, IndexError, ValueError):
            self._stats.record("dns", "malformed", 400)
            return
        self._stats.record("dns", "txt", 200 if name in self.records else 404)
        if self._transport is not None:
            self._transport.sendto(answer, addr)

    async def resolve_txt(self, name: str) -> list[str]:
        """The resolver hook: the same answers, without a socket."""
        self._stats.record("dns", "hook", 200 if name in self.records else 404)
        return list(self.records.get(name.lower(), []))

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
