"""A network of any size at constant memory: millions of tiny accounts, made on demand.

Where this sits: beside `network.py` (whose accounts, repos and ground truth are
built up front, fine for thousands of accounts), for measuring how the
product's cost grows with the size of its input: the cost-growth benchmark
(`bench/scale.py`) and the tests that bound memory over 200k DIDs.

Nothing here is kept per account. Account `i` is a pure function of `i`:
- its DID is `did:plc:bulk` + `i` in 20 base32 digits (so a request names its
  account, and the DID is valid did:plc syntax);
- it lives on host `i % hosts`; its handle is `u<i>.bulk.test`;
- its repo holds `records` posts with fixed content, signed by one key that
  every DID document publishes (a commit names its DID, so each getRepo signs
  one commit: ~0.1 ms).
The PLC directory serves `/export` (`seq` = `i + 1`) and `/{did}`; each PDS
serves `getRepo` and `listRepos` (cursor = the last index).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import coincurve
import libipld
import orjson
from aiohttp import web

from bsky_backfill.simulate.car import encode_car, encode_signed_commit
from bsky_backfill.simulate.ids import cid_for_block, cid_str, format_utc, tid
from bsky_backfill.simulate.keys import SigningKey
from bsky_backfill.simulate.mst import build_mst

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_PREFIX = "did:plc:bulk"
_DIGITS = 20
_T0_US = 1_704_067_200_000_000  # 2024-01-01T00:00:00Z
_MAX_PAGE = 1000


def bulk_did(i: int) -> str:
    """The DID of account `i`."""
    chars = []
    for _ in range(_DIGITS):
        chars.append(_B32[i & 31])
        i >>= 5
    return _PREFIX + "".join(reversed(chars))


def bulk_index(did: str) -> int | None:
    """Inverse of `bulk_did` (None: not one of ours)."""
    if not did.startswith(_PREFIX) or len(did) != len(_PREFIX) + _DIGITS:
        return None
    n = 0
    for ch in did[len(_PREFIX) :]:
        pos = _B32.find(ch)
        if pos < 0:
            return None
        n = n * 32 + pos
    return n


class BulkNetwork:
    """`accounts` accounts on `hosts` PDS hosts and a PLC directory, all on 127.0.0.1.

    Use as `with BulkNetwork(n).serve_in_thread() as net:`, then `net.plc_url`,
    `net.host_urls`, `net.requests` (getRepo answers served)."""

    def __init__(self, accounts: int, *, hosts: int = 4, records: int = 2, seed: int = 1) -> None:
        if accounts < 0 or hosts < 1 or records < 0:
            raise ValueError("accounts >= 0, hosts >= 1, records >= 0")
        self.accounts = accounts
        self.hosts = hosts
        self.key = SigningKey.from_seed(f"bulk:{seed}")
        self.plc_url = ""
        self.host_urls: list[str] = []
        self.get_repo_served = 0
        self.exported = 0
        """How far the PLC export has been read (accounts listed so far)."""
        self.export_exhausted = False
        """A reader asked for the page after the last one (so it took in every page)."""
        self._records = self._record_blocks(records)
        self._rev = tid(_T0_US, 1)
        tree = build_mst([(k, c) for k, c, _ in self._records])
        self._data_cid = tree.root
        self._body = [(c, tree.nodes[c]) for c in tree.order if c in tree.nodes]
        self._body += [(c, b) for _, c, b in self._records]
        # libsecp256k1 signs in ~50 us where `cryptography` takes ~1 ms: the server,
        # not the product, would otherwise be what a benchmark measures.
        secret = self.key.private.private_numbers().private_value
        self._signer = coincurve.PrivateKey(secret.to_bytes(32, "big"))

    @staticmethod
    def _record_blocks(n: int) -> list[tuple[str, bytes, bytes]]:
        out = []
        for r in range(n):
            micros = _T0_US + r * 60_000_000
            record = {
                "$type": "app.bsky.feed.post",
                "text": f"post {r}",
                "createdAt": format_utc(micros, 3),
            }
            block = libipld.encode_dag_cbor(record)
            out.append((f"app.bsky.feed.post/{tid(micros, r % 1024)}", cid_for_block(block), block))
        out.sort()
        return out

    # -- what each account is -------------------------------------------------------------
    def host_of(self, i: int) -> str:
        return self.host_urls[i % self.hosts]

    def did_document(self, i: int) -> dict[str, Any]:
        did = bulk_did(i)
        return {
            "@context": ["https://www.w3.org/ns/did/v1"],
            "id": did,
            "alsoKnownAs": [f"at://u{i}.bulk.test"],
            "verificationMethod": [
                {
                    "id": f"{did}#atproto",
                    "type": "Multikey",
                    "controller": did,
                    "publicKeyMultibase": self.key.did_key.removeprefix("did:key:"),
                }
            ],
            "service": [
                {
                    "id": "#atproto_pds",
                    "type": "AtprotoPersonalDataServer",
                    "serviceEndpoint": self.host_of(i),
                }
            ],
        }

    def export_entry(self, i: int) -> dict[str, Any]:
        operation = {
            "type": "plc_operation",
            "rotationKeys": [self.key.did_key],
            "verificationMethods": {"atproto": self.key.did_key},
            "alsoKnownAs": [f"at://u{i}.bulk.test"],
            "services": {
                "atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": self.host_of(i)}
            },
            "prev": None,
            "sig": "bulk",
        }
        return {
            "did": bulk_did(i),
            "operation": operation,
            "cid": cid_str(cid_for_block(i.to_bytes(8, "big"))),
            "nullified": False,
            "createdAt": format_utc(_T0_US + i * 1000, 3),
            "seq": i + 1,
        }

    def repo_car(self, i: int) -> bytes:
        """Account `i`'s repo: the shared MST and records under its own signed commit."""
        unsigned = {"did": bulk_did(i), "version": 3, "data": self._data_cid, "rev": self._rev}
        unsigned["prev"] = None
        # sign_recoverable: 64 bytes r || s (libsecp256k1 always gives low S) + recovery id.
        sig = self._signer.sign_recoverable(libipld.encode_dag_cbor(unsigned))[:64]
        commit = encode_signed_commit(unsigned, sig)
        root = cid_for_block(commit)
        return encode_car(root, [(root, commit), *self._body])

    # -- servers --------------------------------------------------------------------------
    def _plc_app(self) -> web.Application:
        app = web.Application()

        async def export(request: web.Request) -> web.Response:
            count = min(max(int(request.query.get("count", "10")), 0), _MAX_PAGE)
            start = int(request.query.get("after", "0"))
            stop = min(self.accounts, start + count)
            self.exported = max(self.exported, stop)
            self.export_exhausted |= start >= self.accounts
            body = b"".join(orjson.dumps(self.export_entry(i)) + b"\n" for i in range(start, stop))
            return web.Response(body=body, content_type="application/jsonlines")

        async def document(request: web.Request) -> web.Response:
            i = bulk_index(request.match_info["did"])
            if i is None or i >= self.accounts:
                return web.json_response({"message": "DID not registered"}, status=404)
            return web.json_response(self.did_document(i))

        app.router.add_get("/export", export)
        app.router.add_get("/{did}", document)
        return app

    def _pds_app(self, host: int) -> web.Application:
        app = web.Application()

        async def get_repo(request: web.Request) -> web.Response:
            i = bulk_index(request.query.get("did", ""))
            if i is None or i >= self.accounts or i % self.hosts != host:
                return web.json_response(
                    {"error": "RepoNotFound", "message": "Could not find repo"}, status=400
                )
            self.get_repo_served += 1
            return web.Response(body=self.repo_car(i), content_type="application/vnd.ipld.car")

        async def list_repos(request: web.Request) -> web.Response:
            limit = min(max(int(request.query.get("limit", "500")), 1), _MAX_PAGE)
            start = int(request.query.get("cursor", "-1")) + 1
            start += (host - start) % self.hosts  # the first index on this host
            idx = range(start, self.accounts, self.hosts)[:limit]
            repos = [
                {"did": bulk_did(i), "head": "", "rev": self._rev, "active": True} for i in idx
            ]
            body: dict[str, Any] = {"repos": repos}
            if len(idx) == limit:
                body["cursor"] = str(idx[-1])
            return web.json_response(body)

        app.router.add_get("/xrpc/com.atproto.sync.getRepo", get_repo)
        app.router.add_get("/xrpc/com.atproto.sync.listRepos", list_repos)
        return app

    async def _start(self) -> list[web.AppRunner]:
        runners = []
        apps = [self._plc_app(), *(self._pds_app(h) for h in range(self.hosts))]
        urls = []
        for app in apps:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sock.listen(1024)
            urls.append(f"http://127.0.0.1:{sock.getsockname()[1]}")
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
            runners.append(runner)
        self.plc_url, self.host_urls = urls[0], urls[1:]
        return runners

    @contextlib.contextmanager
    def serve_in_thread(self) -> Iterator[BulkNetwork]:
        """Serve on a daemon thread's event loop until the block ends."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        runners: list[web.AppRunner] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            runners.extend(loop.run_until_complete(self._start()))
            ready.set()
            loop.run_forever()
            for runner in runners:
                loop.run_until_complete(runner.cleanup())
            loop.close()

        thread = threading.Thread(target=run, name="bsky-backfill-bulknet", daemon=True)
        thread.start()
        if not ready.wait(60):
            raise TimeoutError("the bulk network did not start")
        try:
            yield self
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=30)


__all__ = ["BulkNetwork", "bulk_did", "bulk_index"]
