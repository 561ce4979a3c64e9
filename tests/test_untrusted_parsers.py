"""Every parser of a stranger's data maps every input to an answer or to an error of the tree.

A fuzz test (issue #15): random JSON values, put into every field of a valid
input one field at a time (and in place of the whole input), for each parser
that reads what a host, a relay, a PLC directory or a DID document sends: DID
documents, endpoints, PLC export lines and operations, listRepos entries,
listHosts entries, listRecords pages, XRPC error bodies, rate-limit headers and
records. None may raise anything but a `BackfillError` with a stable code; the
header parser may not produce a pause longer than its cap. Seeds are fixed, so
a failure reproduces; each parser gets a few thousand inputs (seconds).
"""

from __future__ import annotations

import asyncio
import copy
import datetime as dt
import math
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pytest

from bsky_backfill.engine.enumerate.listrepos import classify
from bsky_backfill.engine.enumerate.plc import (
    cursor_advances,
    export_cursor,
    identity_from_operation,
    settle_page,
)
from bsky_backfill.engine.enumerate.relay import RelaySource
from bsky_backfill.engine.list_fetch import ListFetcher, SeenKeys, page_older_than
from bsky_backfill.errors import BackfillError, ResolveError
from bsky_backfill.identity.document import parse_did_document
from bsky_backfill.identity.resolver import host_key
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.state.base import RepoTask
from bsky_backfill.xrpc.client import HttpSettings, XrpcClient, _status_error
from bsky_backfill.xrpc.ratelimit import RateBucket, bounded_rate_headers
from bsky_backfill.xrpc.slot import HostSlot
from bsky_backfill.xrpc.ssrf import AddressPolicy, no_lookup, parse_endpoint

DID = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
KEY = "zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme"
ROUNDS = 3000

TRICKY_STRINGS = [
    "", " ", "#atproto_pds", f"{DID}#atproto", "#atproto", "Multikey", KEY, "z", "at://",
    "at://handle.test", "http://", "https://", "http://[::1", "https://host:99999",
    "http://🯱🯲🯷.🯰.🯰.🯱:80/", "http://１２７.０.０.１/", "http://127。0。0。1/",
    "http://ⓛⓞⓒⓐⓛⓗⓞⓢⓣ/", "ftp://x", "http://a b/", "http://%41/", "\x00", "\n\r\x1b[2J",
    "\u202e", "did:plc:", "did:plc:../../etc/passwd", DID, "did:web:example.com",
    "did:web:localhost%3A99999", "2024-01-01T00:00:00Z", "1e400", "nan", "-1", "0",
    "99999999999999999999", "Mon, 01 Jan 10000 00:00:00 GMT", "Sat, 31 Dec 9999 23:59:59 GMT",
    "plc_operation", "create", "plc_tombstone", "takendown", "banned", "a" * 5000,
    "\ufffd", "EcdsaSecp256k1VerificationKey2019",
]  # fmt: skip


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-ish value (what orjson or libipld may hand a parser)."""
    kinds = ["none", "bool", "int", "float", "str", "str", "list", "dict"]
    kind = rng.choice(kinds if depth < 4 else kinds[:6])
    if kind == "none":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice([0, -1, 1, 2**31, 2**63 - 1, -(2**63), 10**30, rng.randint(-999, 99999)])
    if kind == "float":
        return rng.choice([0.5, -0.0, math.inf, -math.inf, math.nan, 1e308, 3.0])
    if kind == "str":
        if rng.random() < 0.6:
            return rng.choice(TRICKY_STRINGS)
        return "".join(chr(rng.choice([rng.randint(0, 0x7F), rng.randint(0, 0x10FFFF)]))
                       for _ in range(rng.randint(0, 12))).encode("utf-8", "replace").decode(
            "utf-8", "replace")  # fmt: skip
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = ["id", "type", "service", "serviceEndpoint", "did", "uri", "cid", "value", "x"]
    return {rng.choice(keys): random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every field of a nested value (dict keys and list indices), the root first."""
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from paths(item, (*prefix, i))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    out = copy.deepcopy(value)
    target = out
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return out


def mutants(base: Any, rng: random.Random, rounds: int = ROUNDS) -> Iterator[Any]:
    """`base` with one field (or the whole) replaced by a random value, again and again;
    sometimes a field deleted, sometimes a field added."""
    fields = list(paths(base))
    for _ in range(rounds):
        path = rng.choice(fields)
        roll = rng.random()
        if roll < 0.1 and path:
            out = copy.deepcopy(base)
            target = out
            for step in path[:-1]:
                target = target[step]
            del target[path[-1]]
            yield out
        elif roll < 0.2:
            out = copy.deepcopy(base)
            if isinstance(out, dict):
                out[rng.choice(["service", "verificationMethod", "alsoKnownAs", "zz"])] = (
                    random_value(rng)
                )
            yield out
        else:
            yield replaced(base, path, random_value(rng))


def check(call: Callable[[], Any], allowed: type[BaseException] = BackfillError) -> Any:
    """Run one parse: an answer, or an error of the tree with a code (anything else fails)."""
    try:
        return call()
    except allowed as e:
        assert isinstance(e, BackfillError) and e.code and e.stage, e
        return e


VALID_DOC = {
    "id": DID,
    "alsoKnownAs": ["at://atproto.com"],
    "verificationMethod": [
        {"id": f"{DID}#atproto", "type": "Multikey", "controller": DID,
         "publicKeyMultibase": KEY},
    ],
    "service": [
        {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer",
         "serviceEndpoint": "https://pds.example.com"},
    ],
}  # fmt: skip


def test_did_documents() -> None:
    rng = random.Random(1501)
    assert parse_did_document(DID, VALID_DOC).pds == "https://pds.example.com"
    outcomes = set()
    for doc in mutants(VALID_DOC, rng):
        got = check(lambda doc=doc: parse_did_document(DID, doc), ResolveError)
        outcomes.add(type(got).__name__ if isinstance(got, BaseException) else "ok")
        if not isinstance(got, BaseException):
            host_key(got.pds)  # never raises either
            check(lambda got=got: parse_endpoint(got.pds))
    assert outcomes == {"ok", "ResolveError"}


def test_endpoints() -> None:
    rng = random.Random(1502)
    policy = AddressPolicy(False)
    for _ in range(ROUNDS):
        value = random_value(rng)
        if isinstance(value, str) and rng.random() < 0.5:
            value = rng.choice(["http://", "https://", ""]) + value
        got = check(lambda value=value: parse_endpoint(value))
        if not isinstance(got, BaseException):
            assert got.host.isascii() and 0 < got.port < 65536
        check(lambda value=value: asyncio.run(policy.check(value, no_lookup)))
        assert isinstance(host_key(str(value)), str)


OPERATION = {
    "type": "plc_operation",
    "rotationKeys": [f"did:key:{KEY}"],
    "verificationMethods": {"atproto": f"did:key:{KEY}"},
    "alsoKnownAs": ["at://x.test"],
    "services": {
        "atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": "https://pds.example"}
    },
    "prev": None,
}
EXPORT_ENTRY = {
    "did": DID, "operation": OPERATION, "cid": "bafy", "nullified": False,
    "createdAt": "2024-01-01T00:00:00.000Z", "seq": 7,
}  # fmt: skip


def test_plc_export_lines_and_operations() -> None:
    rng = random.Random(1503)
    for entry in mutants(EXPORT_ENTRY, rng):
        lines = [orjson.dumps(entry) if _jsonable(entry) else b"{not json", b"", b"\xff\xfe"]
        page = settle_page(lines)
        for identity in page.endpoints_to_check.values():
            assert identity.did.startswith("did:plc:") and len(identity.did) == 32
        if isinstance(entry, dict):
            export_cursor(entry)
            op = entry.get("operation")
            if isinstance(op, dict):
                identity_from_operation(DID, op)
    for _ in range(ROUNDS):
        a, b = random_value(rng), random_value(rng)
        if isinstance(b, str):
            cursor_advances(a if isinstance(a, str) else None, b)


def _jsonable(value: Any) -> bool:
    try:
        orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return False
    return True


def test_list_repos_and_list_hosts_entries() -> None:
    rng = random.Random(1504)
    entry = {"did": DID, "head": "bafy", "rev": "3k", "active": False, "status": "takendown"}
    for mutant in mutants(entry, rng):
        found = classify(mutant)
        assert found is None or found[0] == DID or isinstance(found[0], str)
    relay = RelaySource(
        XrpcClient(HttpSettings(), allow_private=False), "https://relay.example",
        resolve=_never,
    )  # fmt: skip
    host = {"hostname": "pds.example.com", "seq": 1, "accountCount": 5, "status": "active"}
    seen: set[str] = set()
    for mutant in mutants(host, rng):
        source = relay._source_for(mutant, seen)
        assert source is None or source.base.startswith(("http://", "https://"))


async def _never(did: str) -> Any:
    raise AssertionError("not called")


class _PageServer:
    """Stands in for the client in `ListFetcher` (whose pages are the parser's input)."""

    def __init__(self, pages: list[Any]) -> None:
        self.pages = pages

    async def xrpc_json(self, base: str, endpoint: str, params: Any, slot: HostSlot) -> Any:
        if endpoint.endswith("describeRepo"):
            return {"did": DID, "collections": ["app.bsky.feed.post"]}
        if endpoint.endswith("getRepoStatus"):
            return {"active": True}
        return self.pages.pop(0) if self.pages else {"records": []}


def test_list_records_pages() -> None:
    rng = random.Random(1505)
    record = {
        "uri": f"at://{DID}/app.bsky.feed.post/3kabcdefghij2",
        "cid": "bafyreib2rxk3rh6kzwq",
        "value": {"$type": "app.bsky.feed.post", "text": "x",
                  "createdAt": "2024-01-01T00:00:00.000Z"},
    }  # fmt: skip
    page = {"records": [record], "cursor": "next"}
    filt = RecordFilter(frozenset({"app.bsky.feed.post"}))
    task = RepoTask(did=DID, pds="https://pds.example", host="pds.example", signing_key=None,
                    attempts=0)  # fmt: skip
    slot = HostSlot("pds.example", None, 1)
    # A page that loops the fetcher forever ends in pytest's timeout (a guard, not a
    # timing assertion).
    for mutant in mutants(page, rng, 600):
        fetcher = ListFetcher(_PageServer([mutant, mutant]), filt)  # type: ignore[arg-type]
        check(lambda fetcher=fetcher: asyncio.run(fetcher.fetch(slot, task)))
        if isinstance(mutant, dict) and isinstance(mutant.get("records"), list):
            page_older_than(mutant["records"], _SINCE)


_SINCE = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def test_seen_keys_are_exact() -> None:
    rng = random.Random(1506)
    keys = SeenKeys()
    truth: set[str] = set()
    pool = ["3kabcdefghij2", "3kabcdefghij3", "2222222222222", "self", "zzzzzzzzzzzzz", "a:b"]
    pool += [f"3k{rng.randrange(32**5):011d}"[:13] for _ in range(50)]
    for _ in range(ROUNDS):
        key = rng.choice(pool)
        assert keys.add(key) is (key not in truth)
        truth.add(key)
    assert len(keys) == len(truth)


def test_error_bodies_and_rate_limit_headers() -> None:
    rng = random.Random(1507)
    names = ["Retry-After", "RateLimit-Reset", "RateLimit-Remaining", "RateLimit-Limit"]
    cap = 3600.0
    for _ in range(ROUNDS):
        headers = {n: str(random_value(rng)) for n in names if rng.random() < 0.7}
        now = time.time()
        bounded = bounded_rate_headers(headers, now, cap)
        if "Retry-After" in bounded:
            assert 0 <= float(bounded["Retry-After"]) <= cap
        if "RateLimit-Reset" in bounded:
            assert now - 1 <= float(bounded["RateLimit-Reset"]) <= now + cap + 1
        status = rng.choice([400, 401, 403, 404, 408, 410, 429, 500, 502, 503, 599, 418])
        body_value = random_value(rng)
        body = orjson.dumps(body_value) if _jsonable(body_value) else b"\xff<html>"
        error = _status_error(status, bounded, body)
        assert isinstance(error, BackfillError) and error.code
        bucket = RateBucket(10.0)
        bucket.in_flight = 1
        bucket.observe(status, bounded)
        assert bucket.paused_until <= time.time() + cap + 1


@pytest.mark.parametrize("seed", [1508, 1509])
def test_records(seed: int) -> None:
    rng = random.Random(seed)
    post = {"$type": "app.bsky.feed.post", "text": "hi", "createdAt": "2024-01-01T00:00:00Z",
            "reply": {"root": {"uri": "at://x", "cid": "y"}}, "langs": ["en"]}  # fmt: skip
    filt = RecordFilter(frozenset({"app.bsky.feed.post"}))
    columns = RecordColumns(DID, filt)
    for i, mutant in enumerate(mutants(post, rng, 1500)):
        columns.add("app.bsky.feed.post", f"3kabcdefg{i:04d}", "bafyrei", mutant)
    tables, letters = columns.finish()
    landed = sum(t.num_rows for t in tables.values())
    assert landed + len(letters) == 1500
