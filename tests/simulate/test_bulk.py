"""The bulk network: accounts made on demand, each a pure function of its index."""

from __future__ import annotations

import json
import urllib.request

import libipld
import pytest

from bsky_backfill.identity.didkey import parse_did_key, verify_signature
from bsky_backfill.simulate.bulk import BulkNetwork, bulk_did, bulk_index
from bsky_backfill.syntax import is_supported_did


@pytest.mark.parametrize("i", [0, 1, 31, 32, 123_456, 2**40])
def test_dids_are_valid_and_name_their_index(i: int) -> None:
    did = bulk_did(i)
    assert is_supported_did(did)
    assert len(did) == len("did:plc:") + 24
    assert bulk_index(did) == i
    assert bulk_index("did:plc:ewvi7nxzyoun6zhxrhs64oiz") is None


def test_served_repos_and_listings_are_consistent() -> None:
    net = BulkNetwork(25, hosts=3, records=3)
    with net.serve_in_thread():
        page = urllib.request.urlopen(f"{net.plc_url}/export?count=10&after=20").read()
        entries = [json.loads(line) for line in page.splitlines()]
        assert [e["seq"] for e in entries] == [21, 22, 23, 24, 25]
        assert net.exported == 25 and not net.export_exhausted
        urllib.request.urlopen(f"{net.plc_url}/export?count=10&after=25").read()
        assert net.export_exhausted
        did = bulk_did(7)
        doc = json.loads(urllib.request.urlopen(f"{net.plc_url}/{did}").read())
        assert doc["service"][0]["serviceEndpoint"] == net.host_urls[7 % 3]
        car = urllib.request.urlopen(
            f"{net.host_urls[7 % 3]}/xrpc/com.atproto.sync.getRepo?did={did}"
        ).read()
        header, blocks = libipld.decode_car(car)
        commit = blocks[header["roots"][0]]
        assert commit["did"] == did
        unsigned = {k: v for k, v in commit.items() if k != "sig"}
        key = parse_did_key(net.key.did_key)
        assert verify_signature(key, libipld.encode_dag_cbor(unsigned), commit["sig"])
        listed = []
        cursor = None
        while True:
            query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
            url = f"{net.host_urls[1]}/xrpc/com.atproto.sync.listRepos?{query}"
            body = json.loads(urllib.request.urlopen(url).read())
            listed += [r["did"] for r in body["repos"]]
            cursor = body.get("cursor")
            if cursor is None:
                break
        assert listed == [bulk_did(i) for i in range(1, 25, 3)]
