"""Hostile servers cannot steer, hang, bloat or fool a run (issue #15).

Each test runs `bsky-backfill run` as a child process against a simulated
network of good repos (named with `--pds`, so no test needs
`--allow-private-hosts`) plus hostile servers on loopback (tests/engine/
hostile.py), and checks the same five things every time:

* the run ends by itself (a hang guard kills it otherwise: no timing is asserted),
  and exits as the contract says;
* it stays under a stated peak RSS (read from /proc and wait4 from outside);
* it writes nothing outside `--out` (its working directory, TMPDIR and HOME);
* the internal service on loopback accepted 0 connections;
* the good repos landed beside the bad ones, each record exactly once.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
import signal
import socket
import threading
import time
import urllib.request
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libipld
import pytest
from aiohttp import web

from bsky_backfill.observe.metrics import MAX_HOST_LABELS
from bsky_backfill.simulate import Scenario, SimNetwork, run_network_in_thread
from bsky_backfill.simulate.car import build_repo
from bsky_backfill.simulate.directory import did_document
from bsky_backfill.simulate.ids import cid_for_block, cid_str, tid
from bsky_backfill.simulate.keys import SigningKey
from bsky_backfill.sinks.storage import table_dir
from tests.dataset import read_rows
from tests.engine.hostile import (
    ChildRun,
    HostileHost,
    HostilePlc,
    Internal,
    ServerLoop,
    Workdir,
    assert_contained,
    assert_good_landed_once,
    assert_run_ok,
    dead_letters,
    json_response,
    landed_rows,
    lookalike_hosts,
    pds_doc,
    plc_did,
    run_child,
    server_loop,
    start_child,
    wait_child,
)

GOOD = Scenario(
    seed=1515, accounts=4, hosts=1, mean_records=8, did_web=0, statuses={}, tombstoned=0,
    unknown=0, migrated=0, empty_repos=0,
)  # fmt: skip
GET_REPO = "com.atproto.sync.getRepo"
LIST_REPOS = "com.atproto.sync.listRepos"
LIST_HOSTS = "com.atproto.sync.listHosts"
LIST_RECORDS = "com.atproto.repo.listRecords"
DESCRIBE_REPO = "com.atproto.repo.describeRepo"
POST = "app.bsky.feed.post"


@dataclass
class Env:
    net: SimNetwork
    loop: ServerLoop
    plc: HostilePlc
    internal: Internal
    work: Workdir

    def host(self, routes: dict[str, Any]) -> HostileHost:
        """A hostile PDS or relay served on loopback."""
        host = HostileHost(routes)
        host.url = self.loop.serve(host.app())[0]
        return host

    def args(self, *extra: str, pds: tuple[str, ...] = ()) -> list[str]:
        """`run` into `out`, through the hostile PLC, the good hosts named with --pds."""
        named = [u for url in (*self.net.host_urls, *pds) for u in ("--pds", url)]
        return ["run", "--out", "out", "--plc-url", self.plc.url, "--no-progress", *named, *extra]

    def dids(self, dids: list[str] | dict[str, Any]) -> str:
        return str(self.work.input("dids.txt", "".join(f"{d}\n" for d in dids)))


@contextmanager
def network(tmp_path: Path, scenario: Scenario = GOOD) -> Iterator[Env]:
    with run_network_in_thread(scenario) as net, server_loop() as loop:
        plc = HostilePlc(net)
        plc.url = loop.serve(plc.app())[0]
        yield Env(net, loop, plc, loop.internal(), Workdir(tmp_path))


def finish(env: Env, run: ChildRun, *, rss_mib: float | None = None, **landed: Any) -> None:
    """The checks every test makes (see the module docstring)."""
    if rss_mib is None:
        assert_run_ok(run)
    else:
        assert_run_ok(run, rss_mib=rss_mib)
    assert env.internal.accepted == 0, "the internal service was reached"
    assert_contained(env.work)
    assert_good_landed_once(env.work.out, env.net, **landed)


def letters_by_did(env: Env) -> dict[str, dict[str, Any]]:
    letters: dict[str, dict[str, Any]] = {}
    for letter in dead_letters(env.work.out):
        if letter["uri"] is None:
            assert letter["did"] not in letters, f"{letter['did']} dead-lettered twice"
            letters[letter["did"]] = letter
    return letters


def posts(did: str, n: int, start: int = 0, **extra: Any) -> list[dict[str, Any]]:
    """listRecords entries: `n` valid posts of `did` (newest first, as hosts list them)."""
    out = []
    for i in reversed(range(start, start + n)):
        value = {"$type": POST, "text": f"post {i}", "createdAt": "2024-05-01T00:00:00.000Z"}
        value.update(extra)
        rkey = tid(1_714_521_600_000_000 + i * 1000, 7)
        cid = cid_str(cid_for_block(libipld.encode_dag_cbor(value)))
        out.append({"uri": f"at://{did}/{POST}/{rkey}", "cid": cid, "value": value})
    return out


def no_repos() -> Any:
    async def handler(request: web.Request) -> web.Response:
        return json_response({"repos": []})

    return handler


# -- 1. one address check where the connection is made -----------------------------------------
def test_unicode_digit_ssrf_via_did_document(tmp_path: Path) -> None:
    """Endpoints that spell 127.0.0.1 in segmented or fullwidth digits, with ideographic
    dots or circled letters, are refused, and the internal service sees no connection."""
    with network(tmp_path) as env:
        bad = {}
        for name, host in lookalike_hosts(env.internal).items():
            did = plc_did(name)
            env.plc.docs[did] = pds_doc(did, f"http://{host}/admin/delete?id=1&x=")
            bad[did] = name
        did = plc_did("ascii")
        env.plc.docs[did] = pds_doc(did, f"http://{env.internal.hostport}")
        bad[did] = "ascii"
        run = run_child(env.work, env.args("--dids", env.dids(bad)))
        finish(env, run)
        letters = letters_by_did(env)
        for did, name in bad.items():
            assert (letters[did]["stage"], letters[did]["error"]) == (
                "fetch", "BlockedPrivateAddress"
            ), name  # fmt: skip


def test_unicode_digit_ssrf_via_relay_list_hosts(tmp_path: Path) -> None:
    with network(tmp_path) as env:
        names = lookalike_hosts(env.internal)

        async def list_hosts(request: web.Request) -> web.Response:
            hosts = [{"hostname": h, "status": "active"} for h in names.values()]
            return json_response({"hosts": hosts})

        relay = env.host({LIST_HOSTS: list_hosts})
        run = run_child(env.work, env.args("--from-relay", relay.url))
        finish(env, run)
        assert relay.requests[LIST_HOSTS] == 1
        refused = [line for line in run.stderr.splitlines() if "BlockedPrivateAddress" in line]
        assert len(refused) == len(names), run.stderr[-3000:]


def test_unicode_digit_ssrf_via_plc_export(tmp_path: Path) -> None:
    """`--all-from-plc`: look-alike endpoints are dead-lettered without a connection, and
    DIDs that are not valid did:plc (`did:plc:../../../etc/passwd`) are never queued."""
    with network(tmp_path) as env:
        assert env.net.plc is not None
        entries = [dict(e) for e in env.net.plc.log.export]
        good_pds = env.net.host_urls[0]
        op = entries[0]["operation"]
        bad = {}
        for name, host in lookalike_hosts(env.internal).items():
            did = plc_did(name)
            services = {"atproto_pds": {"type": "AtprotoPersonalDataServer",
                                        "endpoint": f"http://{host}"}}  # fmt: skip
            entries.append({"did": did, "operation": {**op, "services": services}})
            bad[did] = name
        junk = ["did:plc:../../../etc/passwd", "did:plc:" + "A" * 24, "did:plc:" + "a" * 23 + "/"]
        for did in junk:
            services = {"atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": good_pds}}
            entries.append({"did": did, "operation": {**op, "services": services}})
        for i, entry in enumerate(entries, 1):
            entry.update(seq=i, createdAt=f"2024-01-01T00:00:{i % 60:02d}.000Z", nullified=False)

        async def export(request: web.Request) -> web.Response:
            after = int(request.query.get("after", "0"))
            count = int(request.query.get("count", "1000"))
            page = [e for e in entries if e["seq"] > after][: min(count, 3)]
            body = b"".join(orjson_line(e) for e in page)
            return web.Response(body=body, content_type="application/jsonlines")

        env.plc.export = export
        run = run_child(env.work, env.args("--all-from-plc"))
        finish(env, run)
        letters = letters_by_did(env)
        for did, name in bad.items():
            assert (letters[did]["stage"], letters[did]["error"]) == (
                "fetch", "BlockedPrivateAddress"
            ), name  # fmt: skip
        everything = {r["did"] for r in landed_rows(env.work.out)} | set(letters)
        assert not everything & set(junk)
        # every good repo fetched once, nothing for the junk DIDs
        assert env.net.stats.count(endpoint=GET_REPO) == len(env.net.accounts)


def orjson_line(value: Any) -> bytes:
    import orjson

    return orjson.dumps(value) + b"\n"


# -- 2. every untrusted-input failure is a dead letter, never a loop or a crash ----------------
def test_malformed_did_documents_are_dead_letters_not_loops(tmp_path: Path) -> None:
    with network(tmp_path) as env:
        internal = f"http://{env.internal.hostport}"
        cases: dict[str, tuple[Any, str, str]] = {}

        def case(name: str, doc: Any, stage: str, code: str) -> None:
            cases[plc_did(name)] = (doc, stage, code)

        def d(name: str) -> str:
            return plc_did(name)

        case("service-5", {"id": d("service-5"), "service": 5}, "resolve", "NoPdsEndpoint")
        case("vm-7", {**pds_doc(d("vm-7"), internal), "verificationMethod": 7},
             "fetch", "BlockedPrivateAddress")  # fmt: skip
        case("aka-true", {**pds_doc(d("aka-true"), internal), "alsoKnownAs": True},
             "fetch", "BlockedPrivateAddress")  # fmt: skip
        case("bracket", pds_doc(d("bracket"), "http://[::1"), "fetch", "InvalidEndpoint")
        case("port", pds_doc(d("port"), "https://pds.example.com:99999"), "fetch",
             "InvalidEndpoint")  # fmt: skip
        case("ftp", pds_doc(d("ftp"), "ftp://pds.example.com"), "fetch", "BlockedPrivateAddress")
        case("not-json", b"<html>no</html>", "resolve", "InvalidDidDocument")
        case("oversized", b'{"id": "' + b"x" * (5 << 20) + b'"}', "resolve", "InvalidDidDocument")
        case("other-id", pds_doc(d("someone-else"), internal), "resolve", "InvalidDidDocument")
        case("a-list", [1, 2, 3], "resolve", "InvalidDidDocument")
        case("deep", b"[" * 100_000 + b"]" * 100_000, "resolve", "InvalidDidDocument")
        case("endpoint-map", {"id": d("endpoint-map"), "service": [
            {"id": "#atproto_pds", "serviceEndpoint": {"uri": "https://x.example"}}]},
             "resolve", "NoPdsEndpoint")  # fmt: skip
        case("service-junk", {"id": d("service-junk"), "service": [5, None, "x", {"id": 7}]},
             "resolve", "NoPdsEndpoint")  # fmt: skip
        case("long-endpoint", pds_doc(d("long-endpoint"), "https://" + "a" * 5000 + ".example"),
             "resolve", "InvalidEndpoint")  # fmt: skip
        for did, (doc, _, _) in cases.items():
            env.plc.docs[did] = doc
        run = run_child(env.work, env.args("--dids", env.dids(list(cases))))
        finish(env, run)
        letters = letters_by_did(env)
        for did, (_, stage, code) in cases.items():
            assert (letters[did]["stage"], letters[did]["error"]) == (stage, code), letters[did]
            assert 1 <= env.plc.requests[did] <= 3, env.plc.requests[did]  # looked up, not looped


# -- 3. every request bounded in bytes and time ---------------------------------------------------
def gzip_bomb(size: int = 1 << 30) -> bytes:
    """`size` zero bytes, gzip-compressed (~1 MiB on the wire for 1 GiB)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 24)
    parts = [comp.compress(zeros) for _ in range(size >> 24)]
    parts.append(comp.flush())
    return b"".join(parts)


def test_compression_bomb_is_refused_within_bounds(tmp_path: Path) -> None:
    bomb = gzip_bomb()
    raw = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflate_bomb = raw.compress(bytes(256 << 20)) + raw.flush()
    with network(tmp_path) as env:
        gz, df = plc_did("gzip-bomb"), plc_did("deflate-bomb")

        async def get_repo(request: web.Request) -> web.Response:
            body, encoding = (
                (bomb, "gzip") if request.query["did"] == gz else (deflate_bomb, "deflate")
            )
            headers = {"Content-Encoding": encoding}
            return web.Response(body=body, headers=headers, content_type="application/vnd.ipld.car")

        pds = env.host({GET_REPO: get_repo, LIST_REPOS: no_repos()})
        env.plc.docs[gz] = pds_doc(gz, pds.url)
        env.plc.docs[df] = pds_doc(df, pds.url)
        run = run_child(env.work, env.args("--dids", env.dids([gz, df]), pds=(pds.url,)))
        finish(env, run, rss_mib=300)  # 1 GiB of gzip bomb: ~135 MiB, as any run
        letters = letters_by_did(env)
        for did in (gz, df):
            assert (letters[did]["stage"], letters[did]["error"]) == ("fetch", "CompressionBomb")
        spool = env.work.out / "_state" / "spool"
        assert [p for p in spool.rglob("*") if p.is_file()] == []


def trickle(status: int = 200, content_type: str = "application/json") -> Any:
    """An answer that sends one byte every 0.2 s, for ever."""

    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        await resp.prepare(request)
        try:
            while True:
                await resp.write(b" ")
                await asyncio.sleep(0.2)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    return handler


def test_trickling_bodies_are_cut_off(tmp_path: Path) -> None:
    """A DID document, a CAR and an error body sent a byte at a time, each within the read
    timeout: the total deadline ends each of them, and the run ends."""
    with network(tmp_path) as env:
        doc, car, error = plc_did("doc-trickle"), plc_did("car-trickle"), plc_did("err-trickle")
        env.plc.docs[doc] = trickle()
        slow_car, slow_error = trickle(200, "application/vnd.ipld.car"), trickle(500)

        async def get_repo(request: web.Request) -> web.StreamResponse:
            handler = slow_car if request.query["did"] == car else slow_error
            return await handler(request)

        pds = env.host({GET_REPO: get_repo, LIST_REPOS: no_repos()})
        env.plc.docs[car] = pds_doc(car, pds.url)
        env.plc.docs[error] = pds_doc(error, pds.url)
        args = env.args(
            "--dids", env.dids([doc, car, error]), "--read-timeout", "2", "--max-attempts", "3",
            "--retry-base", "0.05", "--give-up-after", "1s", pds=(pds.url,),
        )  # fmt: skip
        run = run_child(env.work, args)
        finish(env, run)
        letters = letters_by_did(env)
        assert letters[doc]["stage"] == "resolve"
        assert "SlowBody" in letters[doc]["error"] + letters[doc]["message"], letters[doc]
        for did in (car, error):
            assert (letters[did]["stage"], letters[did]["error"]) == ("fetch", "SlowBody")


def test_huge_retry_after_is_capped(tmp_path: Path) -> None:
    """Retry-After of 10^12 seconds (and a year), RateLimit-Reset of 10^12, a limit of
    1e400: no overflow, no host paused for millennia; the repos end as dead letters."""
    with network(tmp_path) as env:
        huge, year = plc_did("retry-10e12"), plc_did("retry-year")

        async def get_repo(request: web.Request) -> web.Response:
            wait = "1000000000000" if request.query["did"] == huge else "31536000"
            return json_response(
                {"error": "RateLimitExceeded"}, 429, **{
                    "Retry-After": wait, "RateLimit-Reset": "1000000000000",
                    "RateLimit-Remaining": "0", "RateLimit-Limit": "1e400",
                },
            )  # fmt: skip

        pds = env.host({GET_REPO: get_repo, LIST_REPOS: no_repos()})
        for did in (huge, year):
            env.plc.docs[did] = pds_doc(did, pds.url)
        args = env.args(
            "--dids", env.dids([huge, year]), "--max-retry-after", "0.2", "--max-attempts", "1",
            "--give-up-after", "0",  # one attempt (its 50 capped 429 waits) decides
            pds=(pds.url,),
        )  # fmt: skip
        run = run_child(env.work, args)
        finish(env, run)
        letters = letters_by_did(env)
        for did in (huge, year):
            assert (letters[did]["stage"], letters[did]["error"]) == ("fetch", "RateLimited")
        assert "OverflowError" not in run.stderr and "InternalError" not in run.stderr
        assert pds.requests[GET_REPO] >= 2  # asked again after the capped pause


def test_spool_files_are_run_owned_and_swept_after_kill_9(tmp_path: Path) -> None:
    """A CAR being spooled when the run is killed stays in OUT's spool directory (never
    in TMPDIR) and the next start removes it."""
    with network(tmp_path) as env:
        did = plc_did("spooled")
        gone = threading.Event()

        async def get_repo(request: web.Request) -> web.StreamResponse:
            if gone.is_set():
                return json_response({"error": "RepoNotFound", "message": "gone"}, 400)
            resp = web.StreamResponse(headers={"Content-Type": "application/vnd.ipld.car"})
            resp.content_length = 10 << 20
            await resp.prepare(request)
            await resp.write(bytes(3 << 20))
            await asyncio.sleep(3600)  # never finishes: the run is killed meanwhile
            return resp

        pds = env.host({GET_REPO: get_repo, LIST_REPOS: no_repos()})
        env.plc.docs[did] = pds_doc(did, pds.url)
        args = env.args("--dids", env.dids([did]), "--stream-size", "1MiB", pds=(pds.url,))
        proc = start_child(env.work, args)
        spool = env.work.out / "_state" / "spool"
        deadline = time.monotonic() + 120
        while not [p for p in spool.glob("*/body-*") if p.stat().st_size >= 1 << 20]:
            assert proc.poll() is None and time.monotonic() < deadline, "nothing was spooled"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        os.wait4(proc.pid, 0)
        left = [p for p in spool.rglob("body-*")]
        assert left, "the killed run's spool file should still be there"
        assert_contained(env.work)
        gone.set()
        run = run_child(env.work, args)
        finish(env, run)
        assert not [p for p in spool.rglob("*") if p.is_file()], list(spool.rglob("*"))
        assert letters_by_did(env)[did]["error"] == "RepoNotFound"


def test_gzip_car_with_content_length_lands(tmp_path: Path) -> None:
    """A valid CAR sent gzip- or deflate-compressed with a Content-Length (the wire size)
    lands whole: the decoded size is not compared with the compressed length."""
    with network(tmp_path) as env:
        accounts = env.net.accounts[:3]
        encodings = ["gzip", "deflate", "deflate-raw"]
        cars = {}
        for acct, encoding in zip(accounts, encodings, strict=True):
            assert acct.repo is not None
            car = acct.repo.car
            if encoding == "gzip":
                cars[acct.did] = (gzip.compress(car), "gzip")
            elif encoding == "deflate":
                cars[acct.did] = (zlib.compress(car), "deflate")
            else:
                raw = zlib.compressobj(6, zlib.DEFLATED, -15)
                cars[acct.did] = (raw.compress(car) + raw.flush(), "deflate")

        async def get_repo(request: web.Request) -> web.Response:
            body, encoding = cars[request.query["did"]]
            headers = {"Content-Encoding": encoding}
            return web.Response(body=body, headers=headers, content_type="application/vnd.ipld.car")

        pds = env.host({GET_REPO: get_repo, LIST_REPOS: no_repos()})
        for acct in accounts:
            env.plc.docs[acct.did] = did_document(acct, pds.url)
        run = run_child(env.work, env.args(pds=(pds.url,)))
        finish(env, run)
        assert pds.requests[GET_REPO] == len(accounts)
        assert "TruncatedBody" not in {d["error"] for d in dead_letters(env.work.out)}


# -- 4. listings that cannot loop or duplicate ----------------------------------------------------
def test_list_mode_cursor_cycles_and_repeats_land_each_record_once(tmp_path: Path) -> None:
    with network(tmp_path) as env:
        cycle, repeat, fresh = plc_did("cycle"), plc_did("repeat"), plc_did("fresh-cursors")
        twice, floaty = plc_did("twice-on-a-page"), plc_did("float")
        pages: dict[str, Any] = {
            # A -> B -> A: a cycle
            cycle: {None: (posts(cycle, 10), "A"), "A": (posts(cycle, 10, 10), "B"),
                    "B": (posts(cycle, 10, 20), "A")},
            # the same page again under the same cursor: the listing's end
            repeat: {None: (posts(repeat, 10), "A"), "A": (posts(repeat, 10), "A")},
            # the same records under ever new cursors
            fresh: {None: (posts(fresh, 10), "c0")},
            # a record twice on one page
            twice: {None: (posts(twice, 5) + posts(twice, 5), None)},
            # a float in a record: not in the data model
            floaty: {None: (posts(floaty, 3) + posts(floaty, 1, 3, score=1.5), None)},
        }  # fmt: skip

        async def list_records(request: web.Request) -> web.Response:
            did, cursor = request.query["repo"], request.query.get("cursor")
            if did == fresh:
                n = int(cursor[1:]) + 1 if cursor else 0
                return json_response({"records": posts(fresh, 10), "cursor": f"c{n}"})
            records, nxt = pages[did][cursor]
            return json_response({"records": records, **({"cursor": nxt} if nxt else {})})

        async def describe(request: web.Request) -> web.Response:
            return json_response({"did": request.query["repo"], "collections": [POST]})

        pds = env.host(
            {LIST_RECORDS: list_records, DESCRIBE_REPO: describe, LIST_REPOS: no_repos()}
        )
        for did in pages:
            env.plc.docs[did] = pds_doc(did, pds.url)
        args = env.args("--dids", env.dids(list(pages)), "--method", "list", pds=(pds.url,))
        run = run_child(env.work, args)
        finish(env, run)
        assert pds.requests[LIST_RECORDS] < 20
        letters = letters_by_did(env)
        for did in (cycle, fresh):
            assert (letters[did]["stage"], letters[did]["error"]) == ("fetch", "CursorCycle")
        rows = landed_rows(env.work.out)
        by_did = {did: [r["uri"] for r in rows if r["did"] == did] for did in pages}
        assert sorted(by_did[repeat]) == sorted(p["uri"] for p in posts(repeat, 10))
        assert sorted(by_did[twice]) == sorted(p["uri"] for p in posts(twice, 5))
        assert by_did[cycle] == [] and by_did[fresh] == []
        assert sorted(by_did[floaty]) == sorted(p["uri"] for p in posts(floaty, 3))
        bad = [d for d in dead_letters(env.work.out) if d["did"] == floaty]
        assert [(d["stage"], d["error"]) for d in bad] == [("validate", "InvalidRecord")]
        assert "float" in bad[0]["message"]


def test_enumeration_cursor_cycles_end(tmp_path: Path) -> None:
    """listRepos A -> B -> A, listHosts A -> B -> A, a PLC export going backwards: each
    listing stops (logged), the run goes on and ends."""
    with network(tmp_path) as env:
        good = [a.did for a in env.net.accounts]
        repo_pages = {None: "A", "A": "B", "B": "A"}

        async def list_repos(request: web.Request) -> web.Response:
            cursor = request.query.get("cursor")
            entries = [{"did": did, "head": "x", "rev": "x", "active": True} for did in good]
            return json_response({"repos": entries, "cursor": repo_pages[cursor]})

        async def list_hosts(request: web.Request) -> web.Response:
            cursor = request.query.get("cursor")
            host = {"hostname": f"127.0.0.1:{len(cursor or '')}"}
            return json_response({"hosts": [host], "cursor": repo_pages[cursor]})

        assert env.net.plc is not None
        entries = [dict(e) for e in env.net.plc.log.export]

        async def export(request: web.Request) -> web.Response:
            after = int(request.query.get("after", "0"))
            page = entries if after == 0 else entries[:1]  # page 2 goes back to seq 1
            body = b"".join(orjson_line({**e, "seq": i + 1}) for i, e in enumerate(page))
            return web.Response(body=body, content_type="application/jsonlines")

        env.plc.export = export
        pds = env.host({LIST_REPOS: list_repos})
        relay = env.host({LIST_HOSTS: list_hosts})
        args = env.args("--all-from-plc", "--from-relay", relay.url, pds=(pds.url,))
        run = run_child(env.work, args)
        finish(env, run)
        assert pds.requests[LIST_REPOS] <= 4 and relay.requests[LIST_HOSTS] <= 4
        assert env.plc.requests["/export"] <= 3
        cycles = [line for line in run.stderr.splitlines() if "CursorCycle" in line]
        assert any("listRepos" in line for line in cycles), run.stderr[-3000:]
        assert any("listHosts" in line for line in cycles), run.stderr[-3000:]
        assert any("plc-export" in line for line in cycles), run.stderr[-3000:]


def test_relay_host_with_an_invalid_port_is_logged_and_skipped(tmp_path: Path) -> None:
    with network(tmp_path) as env:
        names: list[Any] = [
            {"hostname": "pds.example.com:99999"}, {"hostname": "[::1"}, {"hostname": "  "},
            {"hostname": 5}, "junk", {"hostname": "a" * 5000}, {"hostname": "pds.example.com:0"},
        ]  # fmt: skip

        async def list_hosts(request: web.Request) -> web.Response:
            return json_response({"hosts": names})

        relay = env.host({LIST_HOSTS: list_hosts})
        run = run_child(env.work, env.args("--from-relay", relay.url))
        finish(env, run)
        lines = run.stderr.splitlines()
        assert any("pds.example.com:99999" in x and "InvalidEndpoint" in x for x in lines), lines


# -- 5. bounded metric labels, sanitised server text ---------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metric_host_labels_stay_bounded(tmp_path: Path) -> None:
    """300 hosts, each answering a 429 then an empty listing: the requests and 429 counters
    keep at most MAX_HOST_LABELS host series plus `other`, and still add up."""
    hosts = 300
    with network(tmp_path) as env:
        seen: dict[int, int] = {}
        gate = threading.Event()
        gated = threading.Event()

        async def list_repos(request: web.Request) -> web.Response:
            port = request.transport.get_extra_info("sockname")[1]  # type: ignore[union-attr]
            seen[port] = seen.get(port, 0) + 1
            if seen[port] == 1:
                return json_response({"error": "RateLimitExceeded"}, 429, **{"Retry-After": "0"})
            return json_response({"repos": []})

        async def get_repo(request: web.Request) -> web.Response:
            gated.set()
            while not gate.is_set():
                await asyncio.sleep(0.05)
            return json_response({"error": "RepoNotFound", "message": "no"}, 400)

        host = HostileHost({LIST_REPOS: list_repos, GET_REPO: get_repo})
        urls = env.loop.serve(host.app(), ports=hosts)
        did = plc_did("gate")
        env.plc.docs[did] = pds_doc(did, urls[0])
        port = free_port()
        args = env.args("--dids", env.dids([did]), "--metrics-port", str(port), pds=tuple(urls))
        proc = start_child(env.work, args)
        try:
            deadline = time.monotonic() + 240
            while not (gated.is_set() and len(seen) == hosts and min(seen.values()) >= 2):
                assert proc.poll() is None and time.monotonic() < deadline, (len(seen), gated)
                time.sleep(0.1)
            time.sleep(0.5)  # the last answers reach the run's counters
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as r:
                text = r.read().decode()
        finally:
            gate.set()
        run = wait_child(env.work, proc)
        finish(env, run)
        requests = samples(text, "bsky_backfill_requests_total")
        throttled = samples(text, "bsky_backfill_rate_limited_total")
        listing = [(labels, n) for labels, n in requests if labels["endpoint"] == LIST_REPOS]
        good_host = env.net.stats.count(endpoint=LIST_REPOS)  # the simulator's own host
        assert sum(n for _, n in listing) == 2 * hosts + good_host
        assert sum(n for _, n in throttled) == hosts
        for series in (requests, throttled):
            names = {labels["host"] for labels, _ in series}
            assert "other" in names
            assert len(names) <= MAX_HOST_LABELS + 1, len(names)


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Prometheus text format -> (labels, value) of one metric."""
    out = []
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels_text, _, value = line[len(name) + 1 :].rpartition("} ")
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', labels_text))
            out.append((labels, float(value)))
    return out


def test_server_text_cannot_forge_logs_or_paint_the_terminal(tmp_path: Path) -> None:
    """Newlines, ANSI/OSC escapes and bidi overrides in an error message and in a relay's
    host name: escaped in the log, the dead letter, `status` and `report`; a 60 KB
    message is stored as a few KB."""
    forged = "2026-01-01 00:00:00,000 ERROR bsky_backfill: forged line"
    evil = f"boom\n{forged}\x1b[2J\x1b]0;pwned\x07\u202e[bold red]markup[/]"
    with network(tmp_path) as env:
        did = plc_did("injector")

        async def get_repo(request: web.Request) -> web.Response:
            message = evil + "A" * 60_000
            return json_response({"error": f"InvalidRequest\n{forged}", "message": message}, 400)

        async def list_hosts(request: web.Request) -> web.Response:
            return json_response({"hosts": [{"hostname": f"evil\n{forged}\x1b[31m.example"}]})

        pds = env.host({GET_REPO: get_repo, LIST_REPOS: no_repos()})
        relay = env.host({LIST_HOSTS: list_hosts})
        env.plc.docs[did] = pds_doc(did, pds.url)
        args = ["-v", *env.args("--dids", env.dids([did]), "--from-relay", relay.url,
                                pds=(pds.url,))]  # fmt: skip
        run = run_child(env.work, args)
        finish(env, run)
        letter = letters_by_did(env)[did]
        assert (letter["stage"], letter["error"]) == ("fetch", "Http400")
        assert len(letter["message"]) < 4300
        assert "\\x1b" in letter["message"] and "\x1b" not in letter["message"]
        assert "\n" not in letter["message"]
        outputs = [run.stderr, run.stdout]
        for command in (["status", "--out", "out"], ["report", "--out", "out"]):
            shown = run_child(env.work, command, timeout=120)
            assert shown.returncode == 0, shown.stderr
            outputs += [shown.stdout, shown.stderr]
        for text in outputs:
            assert "\x1b" not in text and "\u202e" not in text and "\x07" not in text
            assert not any(line.startswith(forged) for line in text.splitlines())
        assert "forged line" in run.stderr  # it is there, escaped, on the dead letter's line


# -- 6. operator input -----------------------------------------------------------------------
def long_nsid() -> str:
    """A valid NSID of 317 characters (the most the syntax allows)."""
    segments = ["a" * 63, "b" * 63, "c" * 63, "d" * 63]
    name = ".".join(segments)
    return f"{name}.{'e' * (317 - len(name) - 1)}"


def test_long_nsid_lands_and_resumes(tmp_path: Path) -> None:
    nsid = long_nsid()
    assert len(nsid) == 317
    with network(tmp_path) as env:
        did = plc_did("long-nsid")
        records = [
            {"uri": f"at://{did}/{nsid}/{tid(1_714_521_600_000_000 + i, 3)}",
             "cid": cid_str(cid_for_block(libipld.encode_dag_cbor({"$type": nsid, "n": i}))),
             "value": {"$type": nsid, "n": i}}
            for i in range(3)
        ]  # fmt: skip

        async def list_records(request: web.Request) -> web.Response:
            if request.query["collection"] != nsid:
                return json_response({"records": []})
            return json_response({"records": records})

        async def describe(request: web.Request) -> web.Response:
            return json_response({"did": request.query["repo"], "collections": [nsid]})

        pds = env.host(
            {LIST_RECORDS: list_records, DESCRIBE_REPO: describe, LIST_REPOS: no_repos()}
        )
        env.plc.docs[did] = pds_doc(did, pds.url)
        args = env.args(
            "--dids", env.dids([did]), "--method", "list", "--collections", f"{nsid},{POST}",
            pds=(pds.url,),
        )  # fmt: skip
        for _ in range(2):  # the second run resumes the finished dataset: nothing twice
            run = run_child(env.work, args)
            finish(env, run, collections=[POST])
            rows = read_rows(env.work.out, table_dir(nsid), "uri, collection")
            assert sorted(r["uri"] for r in rows) == sorted(r["uri"] for r in records)
            assert {r["collection"] for r in rows} == {nsid}
        assert (env.work.out / table_dir(nsid)).is_dir()


BAD_FLAGS = [
    ["--rate-limit", "nan"],
    ["--rate-limit", "inf"],
    ["--commit-seconds", "nan"],
    ["--max-car-size", "nan"],
    ["--max-car-size", "inf"],
    ["--max-car-size", "1e400"],
    ["--max-car-size", "0.1"],
    ["--since", "0001-01-01T00:00:00+01:00"],
    ["--plc-url", "http://"],
    ["--read-timeout", "inf"],
    ["--max-retry-after", "nan"],
    ["--from-relay", "https://relay.example:99999"],
    ["--pds", "http://[::1"],
    ["--config", "NON_UTF8"],
]


@pytest.mark.parametrize("flag", BAD_FLAGS, ids=lambda f: " ".join(f))
def test_bad_flags_exit_2_with_one_line(tmp_path: Path, flag: list[str]) -> None:
    work = Workdir(tmp_path)
    if flag[-1] == "NON_UTF8":
        flag = [flag[0], str(work.input("bad.toml", "x"))]
        Path(flag[1]).write_bytes(b"rate_limit = 1\n# \xff\xfe\n")
    args = ["run", "--did", plc_did("x"), "--out", "out", *flag]
    run = run_child(work, args, timeout=120)
    assert run.returncode == 2, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bsky-backfill: error:"), run.stderr
    assert not (work.cwd / "out").exists()
    assert_contained(work, set())


# -- the wrong stages and codes the issue listed --------------------------------------------------
def float_car(did: str, key: SigningKey) -> tuple[bytes, list[str]]:
    """A signed repo of two posts, one holding a float; its CAR and the posts' URIs."""
    records = []
    for i, extra in enumerate(({}, {"score": 0.5})):
        value = {"$type": POST, "text": f"p{i}", "createdAt": "2024-05-01T00:00:00.000Z", **extra}
        block = libipld.encode_dag_cbor(value)
        records.append((f"{POST}/{tid(1_714_521_600_000_000 + i, 1)}", cid_for_block(block), block))
    records.sort()
    image = build_repo(did, tid(1_714_600_000_000_000, 1), records, key)
    return image.car, [f"at://{did}/{k}" for k, _, _ in records]


def test_dead_letters_carry_the_right_stage_and_code(tmp_path: Path) -> None:
    with network(tmp_path) as env:
        forbidden, large, gone, floaty = (plc_did(n) for n in ("403", "large", "410", "float"))
        key = SigningKey.from_seed("float-repo", "k256")
        car, uris = float_car(floaty, key)

        async def get_repo(request: web.Request) -> web.StreamResponse:
            did = request.query["did"]
            if did == forbidden:
                return json_response({"error": "AuthRequired", "message": "no"}, 403)
            if did == gone:
                return json_response({"error": "Gone", "message": "gone"}, 410)
            if did == large:
                return web.Response(body=bytes(6 << 20), content_type="application/vnd.ipld.car")
            return web.Response(body=car, content_type="application/vnd.ipld.car")

        pds = env.host({GET_REPO: get_repo, LIST_REPOS: no_repos()})
        for did in (forbidden, large, gone):
            env.plc.docs[did] = pds_doc(did, pds.url)
        env.plc.docs[floaty] = pds_doc(floaty, pds.url, key.public.multibase)
        dids = env.dids([forbidden, large, gone, floaty])
        run = run_child(
            env.work, env.args("--dids", dids, "--max-car-size", "5MiB", pds=(pds.url,))
        )
        finish(env, run)
        letters = letters_by_did(env)
        assert (letters[forbidden]["stage"], letters[forbidden]["error"]) == ("fetch", "Http403")
        assert (letters[large]["stage"], letters[large]["error"]) == ("fetch", "RepoTooLarge")
        assert (letters[gone]["stage"], letters[gone]["error"]) == ("fetch", "Gone")
        assert floaty not in letters
        landed = {r["uri"] for r in landed_rows(env.work.out) if r["did"] == floaty}
        assert landed == {uris[0]}
        bad = [(d["uri"], d["stage"], d["error"]) for d in dead_letters(env.work.out)
               if d["did"] == floaty]  # fmt: skip
        assert bad == [(uris[1], "validate", "InvalidRecord")]
