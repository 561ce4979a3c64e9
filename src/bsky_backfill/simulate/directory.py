"""Identity for the simulated network: DID documents, the PLC directory, did:web sites.

Where this sits: the product's identity layer resolves each input DID here
first (PLC `GET /{did}`, or `GET /.well-known/did.json` on a did:web host) to
find the account's PDS and signing key.

Quirks on purpose, as on the real network: some documents list another
service before `#atproto_pds` (pick by id, never by position), some carry a
legacy key type; unknown DIDs answer 404; tombstoned DIDs answer 410 (or 404,
like the npm @did-plc/server, when the scenario says so).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bsky_backfill.identity.didkey import b58encode
from bsky_backfill.simulate.accounts import SimAccount
from bsky_backfill.simulate.plclog import PlcLog, build_plc_log
from bsky_backfill.simulate.policy import HostPolicy, site_app

# A service some documents list first; port 9 (discard) is closed on loopback.
_DECOY_SERVICE = {
    "id": "#atproto_labeler",
    "type": "AtprotoLabeler",
    "serviceEndpoint": "http://127.0.0.1:9",
}
_LEGACY_TYPES = {
    "k256": "EcdsaSecp256k1VerificationKey2019",
    "p256": "EcdsaSecp256r1VerificationKey2019",
}


def did_document(acct: SimAccount, pds_url: str) -> dict[str, Any]:
    """The account's current DID document, naming `pds_url` as its #atproto_pds."""
    key = acct.published_key
    if acct.legacy_key_doc:
        point = key.key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        method = {
            "id": "#atproto",
            "type": _LEGACY_TYPES[key.curve],
            "controller": acct.did,
            "publicKeyMultibase": "z" + b58encode(point),
        }
    else:
        method = {
            "id": f"{acct.did}#atproto",
            "type": "Multikey",
            "controller": acct.did,
            "publicKeyMultibase": key.multibase,
        }
    pds = {"id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": pds_url}
    services = [dict(_DECOY_SERVICE), pds] if acct.other_service_first else [pds]
    return {
        "@context": [
            "https://www.w3.org/ns/did/v1",
            "https://w3id.org/security/multikey/v1",
            "https://w3id.org/security/suites/secp256k1-2019/v1",
        ],
        "id": acct.did,
        "alsoKnownAs": [f"at://{acct.handle}"],
        "verificationMethod": [method],
        "service": services,
    }


def _route_name(request: web.Request) -> str | None:
    if request.match_info.http_exception is not None:
        return None
    return request.match_info.route.name


class PlcDirectory:
    """`GET /{did}`, `GET /{did}/log/audit`, `GET /export?count=&after=`."""

    def __init__(
        self,
        accounts: list[SimAccount],
        host_urls: list[str],
        policy: HostPolicy,
        tombstone_status: int = 410,
        *,
        export_seq: bool = True,
        legacy_create: int = 0,
        nullified: int = 0,
    ) -> None:
        self.accounts = {a.did: a for a in accounts if a.method == "plc"}
        self.host_urls = host_urls
        self.policy = policy
        self.tombstone_status = tombstone_status
        # False = a legacy server: export entries carry no `seq`, `after` is a timestamp.
        self.export_seq = export_seq
        self.legacy_create = legacy_create
        self.nullified = nullified
        self._log: PlcLog | None = None

    @property
    def log(self) -> PlcLog:
        if self._log is None:
            self._log = build_plc_log(
                list(self.accounts.values()),
                self.host_urls,
                legacy_create=self.legacy_create,
                nullified=self.nullified,
            )
        return self._log

    def app(self) -> web.Application:
        app = site_app(self.policy, _route_name)
        app.router.add_get("/_health", self._health, name="health")
        app.router.add_get("/export", self._export, name="export")
        app.router.add_get("/{did}/log/audit", self._audit, name="audit")
        app.router.add_get("/{did}", self._resolve, name="resolve")
        return app

    def _gone(self, did: str) -> web.Response | None:
        acct = self.accounts.get(did)
        if acct is None:
            return web.json_response({"message": f"DID not registered: {did}"}, status=404)
        if acct.status == "tombstoned":
            status = self.tombstone_status
            return web.json_response({"message": f"DID not available: {did}"}, status=status)
        return None

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "bsky-backfill-sim"})

    async def _resolve(self, request: web.Request) -> web.Response:
        did = request.match_info["did"]
        gone = self._gone(did)
        if gone is not None:
            return gone
        acct = self.accounts[did]
        doc = did_document(acct, self.host_urls[acct.host_index])
        return web.json_response(doc, content_type="application/did+ld+json")

    async def _audit(self, request: web.Request) -> web.Response:
        did = request.match_info["did"]
        if did not in self.accounts:
            return web.json_response({"message": f"DID not registered: {did}"}, status=404)
        return web.json_response(self.log.by_did[did])

    async def _export(self, request: web.Request) -> web.Response:
        try:
            count = min(int(request.query.get("count", "10")), 1000)
        except ValueError:
            return web.json_response({"message": "invalid count"}, status=400)
        after = request.query.get("after")
        entries = self.log.export
        if after is not None and after.isdigit() and self.export_seq:
            start = int(after)  # seq cursor (newer servers): entries with seq > after
            page = entries[start : start + max(count, 0)]
        else:
            # Legacy cursor: an ISO timestamp, entries created strictly after it.
            page = [e for e in entries if after is None or e["createdAt"] > after][:count]
        if not self.export_seq:
            page = [{k: v for k, v in e.items() if k != "seq"} for e in page]
        body = b"".join(orjson.dumps(e) + b"\n" for e in page)
        return web.Response(body=body, content_type="application/jsonlines")


class DidWebSite:
    """One did:web host: serves exactly one document at `/.well-known/did.json`."""

    def __init__(self, acct: SimAccount, pds_url: str, policy: HostPolicy) -> None:
        self.acct = acct
        self.pds_url = pds_url
        self.policy = policy

    def app(self) -> web.Application:
        app = site_app(self.policy, _route_name)
        app.router.add_get("/.well-known/did.json", self._doc, name="did.json")
        return app

    async def _doc(self, request: web.Request) -> web.Response:
        return web.json_response(did_document(self.acct, self.pds_url))
