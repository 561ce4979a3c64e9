"""Hostile servers on loopback, and a child run watched from outside.

Where this sits: the toolkit of tests/engine/test_hostile_servers.py. The good
part of each network is the simulator (`run_network_in_thread`), named with
`--pds` (the operator's own hosts, which the address guard trusts, so no test
needs `--allow-private-hosts`). The bad part is written here with aiohttp: a
PLC directory that serves any document or export a test asks for, PDS hosts
and a relay whose every route is a test's function, and an "internal service"
(`Internal`): a plain TCP listener that counts the connections it accepts,
which is what an SSRF would reach.

`run_child` runs `bsky-backfill` as a subprocess in its own working directory
with its own TMPDIR and HOME, and watches it from the outside: its peak RSS
(the kernel's `VmHWM`, read from /proc while it runs), whether it ends by
itself before a generous hang guard, and (`assert_contained`) whether it wrote
anything outside `--out`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
from aiohttp import web

from bsky_backfill.simulate import SimNetwork
from bsky_backfill.simulate.directory import did_document
from tests.dataset import collections_in, read_rows

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

HANG_GUARD = 300.0
"""Seconds a child run may take before the test calls it hung (a guard, not a measure)."""
RSS_LIMIT_MIB = 400
"""Peak RSS a child run must stay under (a plain run of these small scenarios: ~135 MiB)."""


# -- the event loop the hostile servers live on ---------------------------------------------
class ServerLoop:
    """An asyncio loop in a daemon thread; `run(coro)` from the test's thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name="hostile-servers", daemon=True)
        self._runners: list[web.AppRunner] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def serve(self, app: web.Application, ports: int = 1) -> list[str]:
        """Serve `app` on `ports` loopback ports; their base URLs."""

        async def start() -> list[str]:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
            await runner.setup()
            self._runners.append(runner)
            urls = []
            for _ in range(ports):
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                urls.append(f"http://127.0.0.1:{port}")
            return urls

        return self.run(start())

    def internal(self) -> Internal:
        """A new internal service on loopback (the target of an SSRF)."""
        internal = Internal()

        async def start() -> None:
            server = await asyncio.start_server(internal.on_connection, "127.0.0.1", 0)
            self._servers.append(server)
            internal.port = server.sockets[0].getsockname()[1]

        self.run(start())
        return internal

    def close(self) -> None:
        async def stop() -> None:
            for runner in self._runners:
                await runner.cleanup()
            for server in self._servers:
                server.close()

        try:
            self.run(stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)


@contextmanager
def server_loop() -> Iterator[ServerLoop]:
    loop = ServerLoop()
    try:
        yield loop
    finally:
        loop.close()


@dataclass
class Internal:
    """A service inside the operator's network: counts every connection it accepts."""

    port: int = 0
    accepted: int = 0

    async def on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.accepted += 1
        try:
            await asyncio.wait_for(reader.read(4096), 2)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\ninternal")
            await writer.drain()
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()

    @property
    def hostport(self) -> str:
        return f"127.0.0.1:{self.port}"


# -- hostile sites --------------------------------------------------------------------------
def json_response(value: Any, status: int = 200, **headers: str) -> web.Response:
    return web.Response(
        body=orjson.dumps(value), status=status, content_type="application/json", headers=headers
    )


@dataclass
class HostilePlc:
    """A PLC directory: good accounts' documents as the simulator's PLC gives them, any
    other DID's answer from `docs` (a JSON value, raw bytes, or a handler)."""

    net: SimNetwork
    docs: dict[str, Any] = field(default_factory=dict)
    export: Handler | None = None
    requests: Counter[str] = field(default_factory=Counter)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/export", self._export)
        app.router.add_get("/{did}", self._doc)
        return app

    async def _export(self, request: web.Request) -> web.StreamResponse:
        self.requests["/export"] += 1
        if self.export is None:
            return web.Response(body=b"", content_type="application/jsonlines")
        return await self.export(request)

    async def _doc(self, request: web.Request) -> web.StreamResponse:
        did = request.match_info["did"]
        self.requests[did] += 1
        if did in self.docs:
            doc = self.docs[did]
            if callable(doc):
                return await doc(request)  # type: ignore[no-any-return]
            if isinstance(doc, bytes):
                return web.Response(body=doc, content_type="application/json")
            return json_response(doc)
        try:
            acct = self.net.account(did)
        except KeyError:
            return json_response({"message": "DID not registered"}, 404)
        return json_response(did_document(acct, self.net.host_urls[acct.host_index]))


@dataclass
class HostileHost:
    """A PDS host or relay whose XRPC routes are the test's functions; counts requests."""

    routes: dict[str, Handler]
    requests: Counter[str] = field(default_factory=Counter)
    url: str = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/xrpc/{nsid}", self._route)
        return app

    async def _route(self, request: web.Request) -> web.StreamResponse:
        nsid = request.match_info["nsid"]
        self.requests[nsid] += 1
        handler = self.routes.get(nsid)
        if handler is None:
            return json_response({"error": "MethodNotImplemented", "message": nsid}, 501)
        return await handler(request)


def pds_doc(did: str, endpoint: str, key: str | None = None) -> dict[str, Any]:
    """A DID document naming `endpoint` as its PDS (and `key`, a multibase, if given)."""
    doc: dict[str, Any] = {
        "id": did,
        "alsoKnownAs": [f"at://{did.rsplit(':', 1)[-1]}.test"],
        "service": [
            {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": endpoint}
        ],
    }
    if key is not None:
        doc["verificationMethod"] = [
            {"id": f"{did}#atproto", "type": "Multikey", "controller": did,
             "publicKeyMultibase": key}
        ]  # fmt: skip
    return doc


def plc_did(label: str) -> str:
    """A syntactically valid did:plc derived from `label`."""
    digest = hashlib.sha256(label.encode()).digest()
    return "did:plc:" + base64.b32encode(digest).decode().lower()[:24]


# -- writing an address in look-alike characters -------------------------------------------
def math_digits(text: str) -> str:
    """ASCII digits as SEGMENTED DIGIT ZERO..NINE (U+1FBF0-U+1FBF9)."""
    return "".join(chr(0x1FBF0 + int(c)) if c.isdigit() else c for c in text)


def fullwidth(text: str) -> str:
    """ASCII digits and dots as their fullwidth forms (U+FF10-U+FF19, U+FF0E)."""
    return "".join(
        chr(0xFF10 + int(c)) if c.isdigit() else "\uff0e" if c == "." else c for c in text
    )


def ideographic_dots(text: str) -> str:
    """Dots as IDEOGRAPHIC FULL STOP (U+3002)."""
    return text.replace(".", "\u3002")


def lookalike_hosts(internal: Internal) -> dict[str, str]:
    """The internal service's `127.0.0.1:PORT` written four ways an SSRF guard must see through."""
    port = internal.port
    return {
        "segmented-digits": f"{math_digits('127.0.0.1')}:{port}",
        "fullwidth": f"{fullwidth('127.0.0.1')}:{port}",
        "ideographic-dots": f"{ideographic_dots('127.0.0.1')}:{port}",
        "circled-localhost": f"\u24db\u24de\u24d2\u24d0\u24db\u24d7\u24de\u24e2\u24e3:{port}",
    }


# -- the child run --------------------------------------------------------------------------
@dataclass
class ChildRun:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float


@dataclass
class Workdir:
    """Where a child runs: `cwd` holds only `out` (and what the test put there), `tmp` is
    its TMPDIR and `home` its HOME; inputs and logs live beside them."""

    root: Path

    def __post_init__(self) -> None:
        for name in ("cwd", "tmp", "home", "in", "logs"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    @property
    def out(self) -> Path:
        return self.cwd / "out"

    def input(self, name: str, text: str) -> Path:
        path = self.root / "in" / name
        path.write_text(text)
        return path


def start_child(
    work: Workdir, args: list[str], env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    environ = dict(os.environ)
    environ.update(
        {"TMPDIR": str(work.root / "tmp"), "HOME": str(work.root / "home"), "PYTHONUNBUFFERED": "1"}
    )
    environ.update(env or {})
    with (
        open(work.root / "logs" / "stdout", "wb") as out,
        open(work.root / "logs" / "stderr", "wb") as err,
    ):
        return subprocess.Popen(
            [sys.executable, "-m", "bsky_backfill", *args],
            cwd=work.cwd,
            env=environ,
            stdout=out,
            stderr=err,
            stdin=subprocess.DEVNULL,
        )


def wait_child(
    work: Workdir, proc: subprocess.Popen[bytes], timeout: float = HANG_GUARD
) -> ChildRun:
    """Wait for the child, reading its peak RSS as it runs; a hang guard kills it."""
    deadline = time.monotonic() + timeout
    hwm_kib = 0
    while True:
        hwm_kib = max(hwm_kib, _vm_hwm_kib(proc.pid))  # before reaping: /proc is there
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            break
        if time.monotonic() > deadline:
            proc.send_signal(signal.SIGKILL)
            os.wait4(proc.pid, 0)
            proc.returncode = -9
            raise AssertionError(
                f"the run did not end by itself within {timeout:.0f}s; stderr:\n"
                + (work.root / "logs" / "stderr").read_text(errors="replace")[-3000:]
            )
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    # Not wait4's ru_maxrss: Linux keeps it across exec, so it also counts the pages
    # the child shared with this (big) test process between fork and exec. VmHWM is
    # the peak of the child's own address space; read every 20 ms, the last reading
    # is the peak up to its last moments.
    return ChildRun(
        returncode=proc.returncode,
        stdout=(work.root / "logs" / "stdout").read_text(errors="replace"),
        stderr=(work.root / "logs" / "stderr").read_text(errors="replace"),
        peak_rss_mib=hwm_kib / 1024,
    )


def run_child(
    work: Workdir,
    args: list[str],
    *,
    timeout: float = HANG_GUARD,
    env: dict[str, str] | None = None,
) -> ChildRun:
    return wait_child(work, start_child(work, args, env), timeout)


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def assert_contained(
    work: Workdir, allowed: frozenset[str] | set[str] = frozenset({"out"})
) -> None:
    """Nothing written outside `--out`: the working directory holds only `out`, the
    child's TMPDIR and HOME are as empty as they started."""
    assert {p.name for p in work.cwd.iterdir()} <= allowed, sorted(work.cwd.iterdir())
    assert list((work.root / "tmp").iterdir()) == [], "the run wrote into TMPDIR"
    assert list((work.root / "home").iterdir()) == [], "the run wrote into HOME"


def assert_run_ok(run: ChildRun, *, rss_mib: float = RSS_LIMIT_MIB) -> None:
    print(f"child run: exit {run.returncode}, peak RSS {run.peak_rss_mib:.0f} MiB")
    assert run.returncode == 0, run.stderr[-4000:]
    assert "Traceback" not in run.stderr, run.stderr[-4000:]
    assert 0 < run.peak_rss_mib < rss_mib, f"peak RSS {run.peak_rss_mib:.0f} MiB"


# -- what landed ----------------------------------------------------------------------------
def landed_rows(out: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for collection in collections_in(out):
        rows.extend(read_rows(out, collection, "uri, did, collection, cid"))
    return rows


def dead_letters(out: Path) -> list[dict[str, Any]]:
    return read_rows(out, "_deadletters", "did, uri, stage, error, message")


def assert_good_landed_once(
    out: Path,
    net: SimNetwork,
    dids: list[str] | None = None,
    collections: list[str] | None = None,
) -> None:
    """The simulator's repos (all of them, or `dids`) landed exactly as its truth says
    (the app.bsky collections, or `collections`), and no row is in the dataset twice."""
    truth = net.truth
    chosen = dids if dids is not None else [a.did for a in net.accounts]
    rows = landed_rows(out)
    uris = [r["uri"] for r in rows]
    assert len(uris) == len(set(uris)), "a row landed twice"
    expected = truth.expected_rows(collections, dids=chosen)
    got = {r["uri"]: r for r in rows if r["did"] in set(chosen)}
    assert set(got) == set(expected), {
        "missing": sorted(set(expected) - set(got))[:3],
        "extra": sorted(set(got) - set(expected))[:3],
    }
    for uri, rec in expected.items():
        assert got[uri]["cid"] == rec.cid, uri
    letters = {
        (d["did"], d["uri"], d["stage"], d["error"])
        for d in dead_letters(out)
        if d["did"] in set(chosen)
    }
    wanted = truth.expected_dead_letters(collections, dids=chosen)
    want = {(d.did, d.uri, d.stage, d.code) for d in wanted}
    assert letters == want, {"missing": want - letters, "extra": letters - want}
