"""PLC operation history of the simulated accounts: audit logs and the /export feed.

Where this sits: behind the simulated PLC directory (`directory.py`), for
products that enumerate the network with `--all-from-plc` or audit an
identity. Built lazily on first use: it signs a couple of operations per DID.

Each account gets a genesis `plc_operation`; migrated accounts get a second
one moving them from their old host to the current one (the newest operation
wins, so a reader that takes the first is wrong); tombstoned DIDs end with a
`plc_tombstone`. Operations are really signed by the DID's rotation key, but
the DID itself is not the hash of its genesis operation (the simulation
derives DIDs from the seed so they stay stable when host ports change).

Optional shapes (off by default): a few accounts may start with a legacy
`create` operation (`signingKey`, `service`), and a few may carry a nullified
operation naming a bogus PDS, followed by the recovery operation that
nullified it (forked from the genesis, naming the genuine host again).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import libipld

from bsky_backfill.simulate.accounts import SimAccount
from bsky_backfill.simulate.ids import cid_for_block, cid_str, format_utc

_DAY_US = 86_400_000_000


@dataclass
class PlcLog:
    """Every operation: per DID (audit log order) and network-wide (export order, with seq)."""

    by_did: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    export: list[dict[str, Any]] = field(default_factory=list)


def _signed(op: dict[str, Any], acct: SimAccount) -> tuple[dict[str, Any], str]:
    sig = acct.rotation_key.sign(libipld.encode_dag_cbor(op))
    signed = {**op, "sig": base64.urlsafe_b64encode(sig).decode().rstrip("=")}
    return signed, cid_str(cid_for_block(libipld.encode_dag_cbor(signed)))


def _operation(acct: SimAccount, endpoint: str, prev: str | None) -> dict[str, Any]:
    services: dict[str, Any] = {
        "atproto_pds": {"type": "AtprotoPersonalDataServer", "endpoint": endpoint}
    }
    return {
        "type": "plc_operation",
        "rotationKeys": [acct.rotation_key.did_key],
        "verificationMethods": {"atproto": acct.published_key.did_key},
        "alsoKnownAs": [f"at://{acct.handle}"],
        "services": services,
        "prev": prev,
    }


def _legacy_create(acct: SimAccount, endpoint: str) -> dict[str, Any]:
    """A genesis operation in the original (2022) format."""
    return {
        "type": "create",
        "signingKey": acct.published_key.did_key,
        "recoveryKey": acct.rotation_key.did_key,
        "handle": acct.handle,
        "service": endpoint,
        "prev": None,
    }


#: The PDS a nullified operation names (never served; a reader that uses it is wrong).
NULLIFIED_ENDPOINT = "https://nullified.pds.invalid"


def build_plc_log(
    accounts: list[SimAccount],
    host_urls: list[str],
    *,
    legacy_create: int = 0,
    nullified: int = 0,
) -> PlcLog:
    """The operation history of every did:plc account (did:web ones have none).

    The first `legacy_create` active did:plc accounts (by index) start with a
    legacy `create` operation; the first `nullified` ones carry a nullified
    operation plus the recovery operation that replaced it.
    """
    log = PlcLog()
    timed: list[tuple[int, str, dict[str, Any]]] = []
    eligible = [a for a in accounts if a.method == "plc" and a.status == "active"]
    legacy = {a.did for a in eligible[:legacy_create]}
    forked = {a.did for a in eligible[:nullified]}
    dead: set[str] = set()  # CIDs of nullified operations
    for acct in accounts:
        if acct.method != "plc":
            continue
        entries: list[tuple[int, dict[str, Any], str]] = []
        first_host = acct.migrated_from if acct.migrated_from is not None else acct.host_index
        if acct.did in legacy:
            op, cid = _signed(_legacy_create(acct, host_urls[first_host]), acct)
        else:
            op, cid = _signed(_operation(acct, host_urls[first_host], None), acct)
        when = acct.created_us
        entries.append((when, op, cid))
        if acct.did in forked:
            genesis = cid
            op, cid = _signed(_operation(acct, NULLIFIED_ENDPOINT, genesis), acct)
            entries.append((when + _DAY_US // 2, op, cid))
            dead.add(cid)
            op, cid = _signed(_operation(acct, host_urls[first_host], genesis), acct)
            entries.append((when + _DAY_US, op, cid))
        if acct.migrated_from is not None:
            when += 3 * _DAY_US
            op, cid = _signed(_operation(acct, host_urls[acct.host_index], cid), acct)
            entries.append((when, op, cid))
        if acct.status == "tombstoned":
            when += 5 * _DAY_US
            op, cid = _signed({"type": "plc_tombstone", "prev": cid}, acct)
            entries.append((when, op, cid))
        audit = []
        for micros, op, cid in entries:
            entry = {
                "did": acct.did,
                "operation": op,
                "cid": cid,
                "nullified": cid in dead,
                "createdAt": format_utc(micros, 3),
            }
            audit.append(entry)
            timed.append((micros, acct.did, entry))
        log.by_did[acct.did] = audit
    timed.sort(key=lambda t: (t[0], t[1]))
    for seq, (_, _, entry) in enumerate(timed, start=1):
        log.export.append({**entry, "seq": seq})
    return log
