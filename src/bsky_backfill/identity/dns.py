"""DNS TXT lookups for handle resolution (`_atproto.<handle>`), over UDP, stdlib only.

Where it sits: under identity/handle.py, which asks `TxtLookup` for the TXT
strings of one name. The default asks the system's nameserver (the first
`nameserver` of /etc/resolv.conf); `--dns-server HOST:PORT` names another (the
simulated network serves its handles this way, so tests need no real DNS).
A test or a notebook may pass any `TxtLookup` callable instead.

`parse_txt_answer` reads a stranger's bytes: every malformed answer is a
`DnsError` (a ValueError), never an IndexError or a loop; names are followed
through compression pointers only backwards and a bounded number of times.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

TxtLookup = Callable[[str], Awaitable[list[str]]]
"""name -> its TXT strings (one string per record, its parts joined); [] if none."""

TYPE_TXT = 16
CLASS_IN = 1
RCODE_NXDOMAIN = 3
_MAX_JUMPS = 32


class DnsError(ValueError):
    """A DNS answer that could not be used (malformed, refused, timed out)."""


def encode_name(name: str) -> bytes:
    """A DNS name in wire form (labels of 1-63 bytes, 255 at most)."""
    labels = [label.encode("ascii") for label in name.rstrip(".").split(".")]
    if any(not 0 < len(label) < 64 for label in labels) or len(name) > 253:
        raise DnsError(f"not a DNS name: {name!r}")
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def build_query(query_id: int, name: str) -> bytes:
    """A recursive TXT query for `name`."""
    header = struct.pack("!HHHHHH", query_id, 0x0100, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", TYPE_TXT, CLASS_IN)


def _skip_name(buf: bytes, offset: int) -> int:
    """The offset after the name at `offset` (compression pointers end a name)."""
    for _ in range(128):
        if offset >= len(buf):
            raise DnsError("name runs past the answer")
        length = buf[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:
            if offset + 2 > len(buf):
                raise DnsError("truncated name pointer")
            return offset + 2
        if length & 0xC0:
            raise DnsError("reserved label type")
        offset += 1 + length
    raise DnsError("name with too many labels")


def read_name(buf: bytes, offset: int) -> str:
    """The name at `offset`, following compression pointers (backwards only)."""
    labels: list[str] = []
    jumps = 0
    while True:
        if offset >= len(buf):
            raise DnsError("name runs past the answer")
        length = buf[offset]
        if length == 0:
            return ".".join(labels)
        if length & 0xC0 == 0xC0:
            if offset + 2 > len(buf):
                raise DnsError("truncated name pointer")
            target = ((length & 0x3F) << 8) | buf[offset + 1]
            jumps += 1
            if target >= offset or jumps > _MAX_JUMPS:
                raise DnsError("name pointer loop")
            offset = target
            continue
        if length & 0xC0:
            raise DnsError("reserved label type")
        label = buf[offset + 1 : offset + 1 + length]
        if len(label) != length:
            raise DnsError("label runs past the answer")
        labels.append(label.decode("ascii", "replace").lower())
        if len(labels) > 127:
            raise DnsError("name with too many labels")
        offset += 1 + length


def parse_txt_answer(buf: bytes, query_id: int, name: str) -> list[str]:
    """The TXT strings for `name` in an answer to query `query_id` ([] for NXDOMAIN)."""
    if len(buf) < 12:
        raise DnsError("answer shorter than a header")
    qid, flags, qdcount, ancount = struct.unpack("!HHHH", buf[:8])
    if qid != query_id or not flags & 0x8000:
        raise DnsError("not the answer to this query")
    if flags & 0x0200:
        raise DnsError("truncated answer (TC)")
    rcode = flags & 0x000F
    if rcode == RCODE_NXDOMAIN:
        return []
    if rcode != 0:
        raise DnsError(f"server answered rcode {rcode}")
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(buf, offset) + 4
    wanted = name.rstrip(".").lower()
    found: list[str] = []
    for _ in range(ancount):
        owner = read_name(buf, offset)
        offset = _skip_name(buf, offset)
        if offset + 10 > len(buf):
            raise DnsError("truncated record header")
        rtype, rclass, _ttl, rdlength = struct.unpack("!HHIH", buf[offset : offset + 10])
        offset += 10
        rdata = buf[offset : offset + rdlength]
        if len(rdata) != rdlength:
            raise DnsError("record data runs past the answer")
        offset += rdlength
        if rtype != TYPE_TXT or rclass != CLASS_IN or owner != wanted:
            continue  # a CNAME on the way, or another name: not ours
        parts: list[bytes] = []
        i = 0
        while i < len(rdata):
            part = rdata[i + 1 : i + 1 + rdata[i]]
            if len(part) != rdata[i]:
                raise DnsError("TXT string runs past its record")
            parts.append(part)
            i += 1 + rdata[i]
        found.append(b"".join(parts).decode("utf-8", "replace"))
    return found


def build_txt_answer(query: bytes, records: list[str]) -> bytes:
    """An answer to `query` holding `records` (NXDOMAIN when there are none): the
    simulated network's side, and the tests'."""
    qid = struct.unpack("!H", query[:2])[0]
    end = _skip_name(query, 12) + 4
    question = query[12:end]
    if not records:
        return struct.pack("!HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
    answers = b""
    for text in records:
        data = text.encode()
        chunks = [data[i : i + 255] for i in range(0, len(data), 255)] or [b""]
        rdata = b"".join(bytes([len(c)]) + c for c in chunks)
        answers += b"\xc0\x0c" + struct.pack("!HHIH", TYPE_TXT, CLASS_IN, 60, len(rdata)) + rdata
    return struct.pack("!HHHHHH", qid, 0x8180, 1, len(records), 0, 0) + question + answers


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        if not self.answer.done():
            self.answer.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


def system_nameserver(resolv_conf: Path = Path("/etc/resolv.conf")) -> str | None:
    """The first `nameserver` of resolv.conf (host only), or None."""
    try:
        for line in resolv_conf.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                return parts[1]
    except OSError:
        return None
    return None


def udp_txt_lookup(
    server: str, port: int = 53, *, timeout: float = 3.0, tries: int = 2
) -> TxtLookup:
    """A `TxtLookup` asking `server:port` over UDP (a fresh socket and id per try)."""

    async def lookup(name: str) -> list[str]:
        loop = asyncio.get_running_loop()
        last: Exception = DnsError("no answer")
        for _ in range(tries):
            query_id = random.randrange(1 << 16)
            transport, protocol = await loop.create_datagram_endpoint(
                _Exchange, remote_addr=(server, port)
            )
            try:
                transport.sendto(build_query(query_id, name))
                data = await asyncio.wait_for(protocol.answer, timeout)
                return parse_txt_answer(data, query_id, name)
            except (TimeoutError, OSError) as e:
                last = e
            finally:
                transport.close()
        raise DnsError(f"DNS server {server}:{port} did not answer ({type(last).__name__})")

    return lookup


def parse_server(value: str) -> tuple[str, int]:
    """`HOST[:PORT]` of `--dns-server` (IPv4 or a name; port 53 by default)."""
    host, _, port = value.rpartition(":") if value.count(":") == 1 else (value, "", "53")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(value)
    return host, int(port)


__all__ = [
    "DnsError",
    "TxtLookup",
    "build_query",
    "build_txt_answer",
    "parse_server",
    "parse_txt_answer",
    "system_nameserver",
    "udp_txt_lookup",
]
