"""The HTTP client against a hostile server on loopback: where it connects, what it reads.

Real aiohttp servers on 127.0.0.1 (no mocked HTTP layer): the connect-time
address guard (0 connections accepted, whatever spelling of the address, IP
literals included), the operator's trusted origins, bodies bounded in decoded
size, inflation ratio and time, Content-Length compared on the wire.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest
from aiohttp import web

from bsky_backfill.errors import BlockedAddress, TerminalError, TransientError
from bsky_backfill.xrpc.client import HttpSettings, XrpcClient
from bsky_backfill.xrpc.slot import HostSlot

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """A server answering every path with `handler`; yields (base URL, [connections])."""
    accepted = [0]
    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
    await runner.setup()
    factory = runner.server
    assert factory is not None

    def counting() -> asyncio.BaseProtocol:
        accepted[0] += 1  # every accepted TCP connection, before any byte is read
        return factory()

    server = await asyncio.get_running_loop().create_server(counting, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await runner.cleanup()


def client(**settings: float | int) -> XrpcClient:
    return XrpcClient(HttpSettings(**settings), allow_private=False)  # type: ignore[arg-type]


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


@pytest.mark.parametrize(
    "spell",
    [
        lambda port: f"http://127.0.0.1:{port}",
        lambda port: f"http://🯱🯲🯷.🯰.🯰.🯱:{port}",
        lambda port: f"http://１２７．０．０．１:{port}",
        lambda port: f"http://127。0。0。1:{port}",
        lambda port: f"http://[::ffff:127.0.0.1]:{port}",
        lambda port: f"http://localhost:{port}",
    ],
    ids=["ascii", "segmented", "fullwidth", "ideographic", "v4-mapped", "localhost"],
)
def test_no_connection_to_loopback_whatever_the_spelling(spell: Callable[[int], str]) -> None:
    """Straight at the client (no endpoint check before): the connector refuses the socket."""

    async def main() -> None:
        async with serve(ok) as (base, accepted), client() as c:
            port = int(base.rsplit(":", 1)[1])
            with pytest.raises(BlockedAddress):
                await c.fetch_json(f"{spell(port)}/x", trusted=False)
            slot = HostSlot("h", None, 1)
            with pytest.raises(BlockedAddress):
                await c.xrpc_json(spell(port), "com.atproto.sync.listRepos", {}, slot)
            assert accepted[0] == 0

    asyncio.run(main())


def test_operator_origins_are_trusted_and_nothing_else() -> None:
    async def main() -> None:
        async with serve(ok) as (base, accepted):
            async with XrpcClient(HttpSettings(), allow_private=False, trusted=[base]) as c:
                assert await c.fetch_json(f"{base}/doc", trusted=False) == {"ok": True}
                other = base.replace("127.0.0.1", "localhost")
                with pytest.raises(BlockedAddress):
                    await c.fetch_json(f"{other}/doc", trusted=False)
                assert c.guard.trusts(f"{base}/xrpc/x")
                await c.guard.check(f"{base}")  # an endpoint on it is allowed
                with pytest.raises(BlockedAddress):
                    await c.guard.check(other)
            assert accepted[0] == 1

    asyncio.run(main())


def compressed(body: bytes, encoding: str, *, length: bool = True) -> Handler:
    async def handler(request: web.Request) -> web.StreamResponse:
        if length:
            return web.Response(body=body, headers={"Content-Encoding": encoding})
        resp = web.StreamResponse(headers={"Content-Encoding": encoding})
        await resp.prepare(request)
        for i in range(0, len(body), 1 << 16):
            await resp.write(body[i : i + (1 << 16)])
        return resp

    return handler


def fetch(handler: Handler, *, limit: int = 64 << 20, **settings: float | int) -> bytes:
    async def main() -> bytes:
        async with (
            serve(handler) as (base, _),
            XrpcClient(
                HttpSettings(**settings),  # type: ignore[arg-type]
                allow_private=False,
                trusted=[base],
            ) as c,
        ):
            return await c.fetch_bytes(f"{base}/x", trusted=False, limit=limit)

    return asyncio.run(main())


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB that compresses a little


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("encoding", ["gzip", "deflate", "deflate-raw", "identity"])
def test_compressed_bodies_decode_with_or_without_content_length(
    encoding: str, length: bool
) -> None:
    if encoding == "gzip":
        wire, name = gzip.compress(PAYLOAD), "gzip"
    elif encoding == "deflate":
        wire, name = zlib.compress(PAYLOAD), "deflate"
    elif encoding == "deflate-raw":
        comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        wire, name = comp.compress(PAYLOAD) + comp.flush(), "deflate"
    else:
        wire, name = PAYLOAD, "identity"
    assert fetch(compressed(wire, name, length=length)) == PAYLOAD


def test_a_bomb_is_refused_by_its_ratio_and_its_size() -> None:
    bomb = gzip.compress(bytes(64 << 20))
    with pytest.raises(TerminalError) as err:
        fetch(compressed(bomb, "gzip"))
    assert (err.value.code, err.value.stage) == ("CompressionBomb", "fetch")
    # A body within the ratio but over the limit once decoded: too large.
    with pytest.raises(TerminalError) as err:
        fetch(compressed(gzip.compress(PAYLOAD), "gzip"), limit=100_000)
    assert err.value.code == "BodyTooLarge"


def test_a_cut_gzip_stream_or_an_unknown_encoding_is_refused() -> None:
    cut = gzip.compress(PAYLOAD)[:-100]
    with pytest.raises(TransientError) as err:
        fetch(compressed(cut, "gzip", length=False))
    assert err.value.code == "TruncatedBody"
    with pytest.raises(TerminalError) as err:
        fetch(compressed(PAYLOAD, "br"))
    assert err.value.code == "InvalidEncoding"


def test_a_trickle_ends_at_the_deadline_not_never() -> None:
    async def trickle(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        try:
            for _ in range(10_000):
                await resp.write(b" ")
                await asyncio.sleep(0.05)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    with pytest.raises(TransientError) as err:
        fetch(trickle, body_seconds=0.5, read_timeout=5.0)
    assert err.value.code == "SlowBody"


def test_a_big_error_body_keeps_its_status() -> None:
    async def big_503(request: web.Request) -> web.Response:
        return web.Response(status=503, body=b"<html>" + bytes(5 << 20))

    with pytest.raises(TransientError) as err:
        fetch(big_503)
    assert err.value.code == "Http503"
