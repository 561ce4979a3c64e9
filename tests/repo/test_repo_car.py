"""CAR reading and commit checks: real exports, then broken inputs of every kind."""

from __future__ import annotations

import gc
from pathlib import Path

import libipld
import pytest

from bsky_backfill.errors import RepoInvalid
from bsky_backfill.repo.build import build_repo, encode_block, write_car
from bsky_backfill.repo.car import read_car
from bsky_backfill.repo.commit import read_commit
from tests.fixture_paths import CARS

# file -> (root CID, DID in commit, version, rev, blocks), from the fixtures README.
COMMITS = {
    "laravel-bluesky/bsky-app.car": (
        "bafyreicebjofc73abuzrc4le3lrv27gre772yuw3jwhnxexvx2ok7nvezu",
        "did:plc:z72i7hdynmk6r22z27h6tvur",
        3,
        "3ldkuds7ljk2e",
        744,
    ),
    "indigo/paul_staging.repo.car": (
        "bafyreifg4tuxt4o4a6pkr76ana3ykdc2o5s3ttjxwtxse34yxbmaauhw6y",
        "did:plc:cmpvykrzb2l22kj4ojlv3ox4",
        2,
        None,
        452,
    ),
    "indigo/greenground.repo.car": (
        "bafyreidre5tvfhczb3ogh7mckqlmepb6q75tvkh2jvsbc7vmvysxfap3jm",
        "did:plc:kzcqyc3unb33eh5sxzsfs25z",
        3,
        "3k67up3j7hf2x",
        4,
    ),
    "indigo/repo_slice.car": (
        "bafyreifp3cchwv6b5h4hubzmlolvytdkmtjeka2f3lqxwbs5uplsizmpe4",
        "did:plc:6evlgoug7wwijzxhzt2riyic",
        2,
        None,
        5,
    ),
    "dnproto/msttest-01-new.car": (
        "bafyreiahyzvpofpsudabba2mhjw62k5h6jtotsn7mt7ja7ams5sjqdpbai",
        "did:plc:tyme6enconikdp7rnxkywdcg",
        3,
        "3malwtoid622k",
        2,
    ),
}


@pytest.mark.parametrize("rel", sorted(COMMITS))
def test_real_commits(rel: str) -> None:
    root, did, version, rev, n_blocks = COMMITS[rel]
    car = read_car((CARS / rel).read_bytes())
    assert libipld.encode_cid(car.root) == root
    assert len(car.blocks) == n_blocks
    commit = read_commit(car)
    assert (commit.did, commit.version, commit.rev, commit.cid) == (did, version, rev, car.root)


def test_every_car_decodes() -> None:
    paths = sorted(CARS.rglob("*.car"))
    assert len(paths) >= 15  # the loop below must not pass by having nothing to check
    for path in paths:
        read_commit(read_car(path.read_bytes()))


def _car_error(data: bytes) -> RepoInvalid:
    with pytest.raises(RepoInvalid) as err:
        read_car(data)
    return err.value


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"garbage" * 10,
    ],
)
def test_unreadable_car(data: bytes) -> None:
    err = _car_error(data)
    assert (err.code, err.stage) == ("InvalidCar", "decode")
    assert isinstance(err.__cause__, ValueError)


def test_root_missing_or_not_a_commit() -> None:
    other_cid, other = encode_block({"x": 1})
    absent = encode_block({"y": 2})[0]
    assert "missing" in str(_car_error(write_car(absent, [(other_cid, other)])))
    list_cid, list_block = encode_block([1, 2])
    err = _car_error(write_car(list_cid, [(list_cid, list_block)]))
    assert err.code == "InvalidCar" and "not a commit" in str(err)


def test_two_roots_refused() -> None:
    cid, block = encode_block({"x": 1})
    header = libipld.encode_dag_cbor({"version": 1, "roots": [cid, cid]})
    body = write_car(cid, [(cid, block)])
    # Swap in a header with two roots (header length < 128, one varint byte).
    old_header_len = body[0]
    data = bytes([len(header)]) + header + body[1 + old_header_len :]
    assert "exactly one root" in str(_car_error(data))


@pytest.mark.parametrize(
    "commit",
    [
        {"version": 3, "data": b"\x01", "rev": "x"},
        {"did": "not-a-did", "version": 3, "data": b"\x01", "rev": "x"},
        {"did": "did:plc:abc", "version": 4, "data": b"\x01", "rev": "x"},
        {"did": "did:plc:abc", "version": True, "data": b"\x01", "rev": "x"},
        {"did": "did:plc:abc", "version": 3, "data": "bafy", "rev": "x"},
        {"did": "did:plc:abc", "version": 3, "data": b"\x01"},
        {"did": "did:plc:abc", "version": 3, "data": b"\x01", "rev": 5},
    ],
)
def test_malformed_commit(commit: dict[str, object]) -> None:
    cid, block = encode_block(commit)
    car = read_car(write_car(cid, [(cid, block)]))
    with pytest.raises(RepoInvalid) as err:
        read_commit(car)
    assert (err.value.code, err.value.stage) == ("InvalidCommit", "decode")


def test_gc_state_is_restored() -> None:
    data = build_repo("did:plc:abc", {})
    assert gc.isenabled()
    read_car(data)
    assert gc.isenabled()
    with pytest.raises(RepoInvalid):
        read_car(b"junk")
    assert gc.isenabled()
    gc.disable()
    try:
        read_car(data)
        assert not gc.isenabled()  # a pause inside a pause leaves the outer in charge
    finally:
        gc.enable()


def test_a_car_cut_short_is_transient(fixtures: Path) -> None:
    """A body that ends mid-frame was cut on the way: retry it, don't dead-letter it."""
    from bsky_backfill.errors import TransientError

    data = (fixtures / "car" / "laravel-bluesky" / "bsky-app.car").read_bytes()
    for cut in (200, len(data) // 2, len(data) - 1):
        with pytest.raises(TransientError) as err:
            read_car(data[:cut])
        assert err.value.code == "TruncatedBody"
