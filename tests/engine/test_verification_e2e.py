"""Verification end to end: damaged repos on the simulator, the real CLI, real loopback HTTP.

One network holds a repo of each kind of damage (`simulate/damage.py`) next
to ordinary ones. Verifying (the default), each untrustworthy repo is
dead-lettered whole with VerificationFailed and its reason, the repo with a
missing and an undecodable record block loses just those two records, and
everything else lands exactly as the simulator's ground truth says. With
`--no-verify` only the checks that need no trust remain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bsky_backfill.simulate import Scenario, run_network_in_thread
from bsky_backfill.simulate.truth import GroundTruth
from tests.conftest import run_cli
from tests.dataset import assert_matches_truth, read_rows

SCENARIO = Scenario(
    seed=21,
    accounts=16,
    hosts=2,
    mean_records=30,
    bad_signature=1,
    tampered_record=1,
    foreign_commit=1,
    missing_mst_node=1,
    broken_records=1,
)

# damage -> what the dead letter's message must say
REASONS = {
    "bad_signature": "signature does not verify",
    "tampered_record": "does not match its CID",
    "foreign_commit": "not the requested",
    "missing_mst_node": "MST node is missing",
}


@pytest.fixture(scope="module")
def backfills(tmp_path_factory: pytest.TempPathFactory) -> tuple[GroundTruth, Path, Path]:
    """The same network backfilled twice: verifying (default) and with --no-verify."""
    base = tmp_path_factory.mktemp("verify")
    outs = base / "verified", base / "unverified"
    with run_network_in_thread(SCENARIO) as net:
        dids = base / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        for out, extra in zip(outs, ([], ["--no-verify"]), strict=True):
            result = run_cli(
                "run",
                "--dids",
                str(dids),
                "--out",
                str(out),
                "--plc-url",
                net.plc_url,
                "--allow-private-hosts",
                "--no-progress",
                *extra,
            )
            assert result.returncode == 0, result.stderr
        truth = net.truth
    return truth, outs[0], outs[1]


def _damaged(truth: GroundTruth) -> dict[str, str]:
    """damage -> DID, one of each kind (the scenario asks for one each)."""
    out = {a.damage: a.did for a in truth.accounts.values() if a.damage}
    (bad_signature,) = [a.did for a in truth.accounts.values() if not a.signature_valid]
    out["bad_signature"] = bad_signature
    assert set(out) == {*REASONS, "broken_records"}, out
    return out


def test_untrustworthy_repos_are_dead_lettered_whole_with_their_reason(
    backfills: tuple[GroundTruth, Path, Path],
) -> None:
    truth, out, _ = backfills
    damaged = _damaged(truth)
    letters = read_rows(out, "_deadletters", "did, uri, stage, error, message")
    for damage, reason in REASONS.items():
        mine = [d for d in letters if d["did"] == damaged[damage]]
        assert len(mine) == 1, (damage, mine)
        assert (mine[0]["uri"], mine[0]["stage"], mine[0]["error"]) == (
            None,
            "verify",
            "VerificationFailed",
        )
        assert reason in mine[0]["message"], (damage, mine[0]["message"])
    landed = {r["did"] for c in ("app.bsky.feed.post", "app.bsky.feed.like") for r in _rows(out, c)}
    assert not landed & {damaged[d] for d in REASONS}


def _rows(out: Path, collection: str) -> list[dict[str, object]]:
    return read_rows(out, collection, "did, uri, record")


def test_broken_record_blocks_cost_only_those_records(
    backfills: tuple[GroundTruth, Path, Path],
) -> None:
    truth, out, _ = backfills
    did = _damaged(truth)["broken_records"]
    broken = {uri: code for uri, code in truth.broken_records.items() if f"/{did}/" in uri}
    assert sorted(broken.values()) == ["InvalidRecordBlock", "RecordBlockMissing"]
    letters = read_rows(out, "_deadletters", "did, uri, stage, error")
    mine = {(d["uri"], d["stage"], d["error"]) for d in letters if d["did"] == did}
    assert {(u, "decode", c) for u, c in broken.items()} <= mine
    expected = {u for u, r in truth.expected_rows().items() if r.did == did}
    assert len(expected) >= 8  # the rest of the repo lands
    landed = {
        r["uri"]
        for c in {r.collection for r in truth.records_of(did)}
        for r in _rows(out, c)
        if r["did"] == did
    }
    assert landed == expected


def test_everything_else_lands_exactly(backfills: tuple[GroundTruth, Path, Path]) -> None:
    truth, out, _ = backfills
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())


def test_no_verify_keeps_only_the_checks_that_need_no_trust(
    backfills: tuple[GroundTruth, Path, Path],
) -> None:
    truth, _, out = backfills
    assert_matches_truth(
        out, truth.expected_rows(verify=False), truth.expected_dead_letters(verify=False)
    )
    damaged = _damaged(truth)
    tampered = truth.accounts[damaged["tampered_record"]].damaged_uri
    assert tampered is not None
    collection = tampered.split("/")[3]
    (row,) = [r for r in _rows(out, collection) if r["uri"] == tampered]
    assert '"tampered":true' in str(row["record"]).replace(" ", "")  # unverified, it lands


@pytest.mark.parametrize("workers", ["1", "2"])
def test_big_repo_path_verifies_and_lands_the_same(tmp_path: Path, workers: str) -> None:
    """With --stream-size 1 every repo takes the big-repo path (lazy CAR, parts, own
    commit): the same repos fail verification, the same records land. With
    --workers 2 the parts are extracted (and their record blocks checked) in
    helper processes (engine/part_pool.py)."""
    out = tmp_path / "streamed"
    with run_network_in_thread(SCENARIO) as net:
        dids = tmp_path / "dids.txt"
        dids.write_text("\n".join(net.truth.input_dids) + "\n")
        result = run_cli(
            "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
            "--allow-private-hosts", "--no-progress", "--stream-size", "1", "--workers", workers,
        )  # fmt: skip
        truth = net.truth
    assert result.returncode == 0, result.stderr
    assert_matches_truth(out, truth.expected_rows(), truth.expected_dead_letters())
    letters = read_rows(out, "_deadletters")
    for damage, did in _damaged(truth).items():
        if damage in REASONS:
            [row] = [r for r in letters if r["did"] == did and r["uri"] is None]
            assert (row["stage"], row["error"]) == ("verify", "VerificationFailed")
            assert REASONS[damage] in row["message"]
