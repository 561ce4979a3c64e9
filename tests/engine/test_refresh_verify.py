"""The refresh path verifies exactly as a full fetch (engine/refresh.py `refresh_diff`).

A diff CAR is built as a host answers `getRepo since=`: the new commit plus the
blocks the old repo did not have. Honest diffs land exactly the changes;
tampered ones (bad signature, wrong key, a block that does not hash to its CID,
a malformed node under a validly signed commit) raise VerificationFailed at
stage verify, never an InternalError-shaped exception, so the worker
dead-letters the refresh and nothing lands.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable
from typing import Any

import libipld
import pytest

from bsky_backfill.engine.refresh import refresh_diff
from bsky_backfill.errors import RepoInvalid
from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.repo.build import build_mst, build_repo, encode_block, write_car
from bsky_backfill.repo.diff import unpack_index
from bsky_backfill.simulate.keys import SigningKey
from bsky_backfill.simulate.mutate import car_blocks
from bsky_backfill.sinks.storage import DELETIONS, SUPERSEDED

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
ALL = RecordFilter(collections=frozenset({POST, LIKE}))
DID = "did:plc:refreshrefreshrefreshre"
KEY = SigningKey.from_seed(b"refresh-verify", "k256")
OTHER = SigningKey.from_seed(b"someone-else", "k256")


def _post(i: int, text: str = "hello") -> dict[str, Any]:
    return {"$type": POST, "text": f"{text} {i}", "createdAt": "2024-05-01T00:00:00.000Z"}


def _rkey(i: int) -> str:
    return "3l" + "".join("234567abcdefghij"[int(d)] for d in f"{i:011d}")


OLD = {f"{POST}/{_rkey(i)}": _post(i) for i in range(600)}
NEW = {k: v for i, (k, v) in enumerate(OLD.items()) if i % 50 != 7}  # 12 deleted
NEW.update({f"{POST}/{_rkey(1000 + i)}": _post(1000 + i) for i in range(5)})  # 5 new
NEW[f"{POST}/{_rkey(3)}"] = _post(3, "edited")  # 1 updated


def _index(records: dict[str, Any]) -> dict[str, bytes]:
    return {k: encode_block(v)[0] for k, v in records.items()}


def _old_blocks() -> set[bytes]:
    _, nodes = build_mst(_index(OLD))
    return set(nodes) | {encode_block(v)[0] for v in OLD.values()}


def _diff_car(
    sign: Callable[[bytes], bytes] | None = KEY.sign, records: dict[str, Any] = NEW
) -> bytes:
    return build_repo(DID, records, rev="3333333333333", sign=sign, drop=_old_blocks())


def _refresh(data: bytes, key: str | None = None) -> RepoExtract:
    return refresh_diff(data, DID, ALL, _index(OLD), signing_key=key or KEY.did_key, verify=True)


def _rejected(data: bytes, key: str | None = None) -> str:
    with pytest.raises(RepoInvalid) as info:
        _refresh(data, key)
    assert (info.value.code, info.value.stage) == ("VerificationFailed", "verify")
    return info.value.message


def test_an_honest_diff_lands_exactly_the_changes() -> None:
    got = _refresh(_diff_car())
    deletions = got.tables[DELETIONS].to_pylist()
    assert sorted(d["reason"] for d in deletions) == ["deleted"] * 12 + ["updated"]
    assert got.tables[POST].num_rows == 6
    assert got.keys is not None and unpack_index(got.keys)[0] == _index(NEW)
    assert got.rev == "3333333333333"


def test_a_diff_signed_with_zero_bytes_is_refused() -> None:
    assert "signature" in _rejected(_diff_car(sign=None))


def test_a_diff_signed_by_another_key_is_refused() -> None:
    assert "signature" in _rejected(_diff_car(sign=OTHER.sign))
    assert "signature" in _rejected(_diff_car(), key=OTHER.did_key)


def _rewrite(data: bytes, change: Callable[[bytes, bytes], bytes | None]) -> bytes:
    """The CAR with each block's bytes passed through `change` (None: unchanged), CIDs kept."""
    blocks = car_blocks(data)
    root = libipld.decode_car(data)[0]["roots"][0]
    return write_car(root, [(c, change(c, d) or d) for c, d in blocks])


def test_a_record_block_that_does_not_hash_to_its_cid_is_refused() -> None:
    forged = libipld.encode_dag_cbor(_post(1000, "forged"))
    target = encode_block(NEW[f"{POST}/{_rkey(1000)}"])[0]
    data = _rewrite(_diff_car(), lambda c, d: forged if c == target else None)
    assert "does not match its CID" in _rejected(data)


def test_a_node_that_does_not_hash_to_its_cid_is_refused() -> None:
    data = _diff_car()
    root_node = libipld.decode_car(data)[1][
        libipld.decode_car(data)[1][libipld.decode_car(data)[0]["roots"][0]]["data"]
    ]
    target = encode_block(root_node)[0]
    swapped = dict(root_node)
    swapped["e"] = list(root_node["e"])[:-1]
    forged = libipld.encode_dag_cbor(swapped)
    assert "does not match its CID" in _rejected(
        _rewrite(data, lambda c, d: forged if c == target else None)
    )


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: e.pop("p"),
        lambda e: e.__setitem__("k", b"\xff\xfe\xfd"),
        lambda e: e.__setitem__("t", "not a link"),
    ],
    ids=["no-p", "non-ascii", "bad-subtree"],
)
def test_a_malformed_node_under_a_valid_signature_is_refused(damage: Any) -> None:
    """The owner (valid signature, honest hashes) writes a broken tree: still a verify failure."""
    index = _index(NEW)
    root, nodes = build_mst(index)
    node = libipld.decode_dag_cbor(nodes[root])
    damage(node["e"][0])
    root_cid, root_bytes = encode_block(node)
    unsigned = {"did": DID, "version": 3, "data": root_cid, "rev": "3333333333333", "prev": None}
    commit_cid, commit = encode_block(
        {**unsigned, "sig": KEY.sign(libipld.encode_dag_cbor(unsigned))}
    )
    old = _old_blocks()
    body = [(commit_cid, commit), (root_cid, root_bytes)]
    body += [(c, d) for c, d in nodes.items() if c != root and c not in old]
    body += [encode_block(v) for k, v in NEW.items() if encode_block(v)[0] not in old]
    _rejected(write_car(commit_cid, body))


def test_a_repo_without_index_is_compared_whole_with_what_landed() -> None:
    """No key index (landed in list mode, as a big repo, or before indexes): the whole
    repo against the dataset's (key -> CID) map; earlier dead letters not re-written."""
    whole = build_repo(DID, NEW, rev="3333333333333", sign=KEY.sign)
    landed = {k: libipld.encode_cid(c) for k, c in _index(OLD).items()}
    edited = f"at://{DID}/{POST}/{_rkey(3)}"
    judged = {(edited, libipld.encode_cid(encode_block(NEW[f"{POST}/{_rkey(3)}"])[0])): "decode/X"}
    got = refresh_diff(
        whole, DID, ALL, None, signing_key=KEY.did_key, verify=True, landed=landed, judged=judged
    )
    deletions = got.tables[DELETIONS].to_pylist()
    assert sorted(d["reason"] for d in deletions) == ["deleted"] * 12 + ["updated"]
    assert got.tables[POST].num_rows == 6
    assert got.keys is not None and unpack_index(got.keys)[0] == _index(NEW)
    # Not judged again when the same version was dead-lettered before.
    assert not [d for d in got.dead_letters if d.uri == edited]


def test_a_big_diff_is_read_lazily_from_its_file_and_still_checked(tmp_path: Any) -> None:
    path = tmp_path / "diff.car"
    path.write_bytes(_diff_car())
    with path.open("rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        got = refresh_diff(
            mapped, DID, ALL, _index(OLD), signing_key=KEY.did_key, verify=True, lazy=True
        )
    assert len(got.tables[DELETIONS]) == 13 and got.tables[POST].num_rows == 6
    forged = libipld.encode_dag_cbor(_post(1000, "forged"))
    target = encode_block(NEW[f"{POST}/{_rkey(1000)}"])[0]
    path.write_bytes(_rewrite(_diff_car(), lambda c, d: forged if c == target else None))
    with (
        path.open("rb") as fh,
        mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped,
        pytest.raises(RepoInvalid) as info,
    ):
        refresh_diff(mapped, DID, ALL, _index(OLD), signing_key=KEY.did_key, verify=True, lazy=True)
    assert (info.value.code, info.value.stage) == ("VerificationFailed", "verify")


def test_rows_that_never_landed_leave_no_deletion() -> None:
    """A deleted or edited record that was dead-lettered or outside the window had no
    row: the refresh writes no `_deletions` row for it, and keeps it in the index."""
    gone = f"{POST}/{_rkey(7)}"  # deleted by NEW
    edited = f"{POST}/{_rkey(3)}"  # updated by NEW
    got = refresh_diff(
        _diff_car(), DID, ALL, _index(OLD), signing_key=KEY.did_key, verify=True,
        unlanded={gone: "", edited: "validate/InvalidRecord", f"{POST}/{_rkey(8)}": ""},
    )  # fmt: skip
    uris = {d["uri"] for d in got.tables[DELETIONS].to_pylist()}
    assert len(uris) == 11 and f"at://{DID}/{gone}" not in uris
    assert f"at://{DID}/{edited}" not in uris
    assert got.keys is not None
    assert unpack_index(got.keys)[1] == {f"{POST}/{_rkey(8)}": ""}
    # The edited record's earlier dead letter is history now; the windowed-out
    # deleted one had none.
    superseded = got.tables[SUPERSEDED].to_pylist()
    assert [(r["uri"], r["stage"], r["error"]) for r in superseded] == [
        (f"at://{DID}/{edited}", "validate", "InvalidRecord")
    ]


def test_the_landing_index_names_rows_outside_the_window() -> None:
    import datetime as dt

    from bsky_backfill.records.transform import extract_repo

    later = RecordFilter(collections=ALL.collections, since=dt.datetime(2025, 1, 1, tzinfo=dt.UTC))
    records = {**OLD, f"{LIKE}/{_rkey(1)}": {"$type": LIKE, "createdAt": "2025-05-01T00:00:00.000Z",
               "subject": {"uri": f"at://{DID}/{POST}/{_rkey(1)}", "cid": libipld.encode_cid(
                   encode_block(OLD[f"{POST}/{_rkey(1)}"])[0])}}}  # fmt: skip
    got = extract_repo(build_repo(DID, records, sign=KEY.sign), DID, later,
                       signing_key=KEY.did_key, verify=True)  # fmt: skip
    assert got.keys is not None
    keys, unlanded = unpack_index(got.keys)
    assert keys == _index(records)
    assert unlanded == dict.fromkeys(OLD, "")  # the posts are from 2024; the like landed
