"""`--collections` as users write it, through the real CLI on the simulated network:
NSID patterns, a typo's warning with a suggestion, and the end-of-run line for a
wanted collection that landed nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from bsky_backfill.errors import UsageError
from bsky_backfill.records.collections import (
    collection_warnings,
    empty_collection_lines,
    expand_collections,
)
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.simulate import Scenario, run_network_in_thread
from tests.conftest import run_cli
from tests.dataset import collections_in

FEED = {
    "app.bsky.feed.generator",
    "app.bsky.feed.like",
    "app.bsky.feed.post",
    "app.bsky.feed.postgate",
    "app.bsky.feed.repost",
    "app.bsky.feed.threadgate",
}


def test_patterns_expand_to_the_bundled_record_types() -> None:
    assert expand_collections(["app.bsky.feed.*"]) == FEED
    assert expand_collections(["app.bsky.*"]) == DEFAULT_COLLECTIONS
    assert expand_collections(["chat.*", "net.example.thing"]) == {
        "chat.bsky.actor.declaration",
        "net.example.thing",
    }
    typo = r"app.bsky.feeds.\* matches no known collection; did you mean app.bsky.feed.\*\?"
    with pytest.raises(UsageError, match=typo):
        expand_collections(["app.bsky.feeds.*"])
    with pytest.raises(UsageError, match="name custom collections in full"):
        expand_collections(["com.example.*"])
    for bad in ("*", "app.bsky.feed.*x", "app.*.post"):
        with pytest.raises(UsageError, match="not a valid NSID or a pattern"):
            expand_collections([bad])


def test_warnings_and_empty_lines() -> None:
    assert collection_warnings(["app.bsky.feed.posts", "app.bsky.feed.like", "net.x.thing"]) == [
        "app.bsky.feed.posts is not a known collection; did you mean app.bsky.feed.post?",
        "net.x.thing is not a known collection: its records land without lexicon validation",
    ]
    wanted = ["app.bsky.feed.like", "app.bsky.feed.posts"]
    assert empty_collection_lines(wanted, {"app.bsky.feed.like": 3}, 7, default=False) == [
        "app.bsky.feed.posts: 0 records landed in 7 repos"
    ]
    assert empty_collection_lines(wanted, {}, 0, default=False) == []
    assert empty_collection_lines(wanted, {}, 1, default=True) == [
        "no records in 1 repo for: app.bsky.feed.like, app.bsky.feed.posts"
    ]


@pytest.fixture(scope="module")
def network():  # type: ignore[no-untyped-def]
    scenario = Scenario(seed=171, accounts=6, hosts=2, mean_records=40)
    with run_network_in_thread(scenario) as net:
        yield net


def _run(net, tmp_path: Path, collections: str):  # type: ignore[no-untyped-def]
    dids = tmp_path / "dids.txt"
    dids.write_text("\n".join(net.truth.input_dids) + "\n")
    out = tmp_path / "out"
    result = run_cli(
        "run", "--dids", str(dids), "--out", str(out), "--plc-url", net.plc_url,
        "--allow-private-hosts", "--no-progress", "--rate-limit", "0",
        "--collections", collections,
    )  # fmt: skip
    return result, out


def test_feed_pattern_lands_exactly_the_feed_collections(network, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, out = _run(network, tmp_path, "app.bsky.feed.*")
    assert result.returncode == 0, result.stderr
    expected = network.truth.expected_rows(FEED)
    landed = set(collections_in(out))
    assert landed == {r.collection for r in expected.values()}
    assert landed <= FEED
    assert landed  # the simulator writes posts, likes and reposts
    assert "is not a known collection" not in result.stderr


def test_typo_warns_at_start_and_reports_at_the_end(network, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    result, out = _run(network, tmp_path, "app.bsky.feed.posts,app.bsky.feed.like")
    assert result.returncode == 0, result.stderr
    assert (
        "app.bsky.feed.posts is not a known collection; did you mean app.bsky.feed.post?"
        in result.stderr
    )
    assert collections_in(out) == ["app.bsky.feed.like"]
    lines = [ln for ln in result.stdout.splitlines() if "0 records landed in" in ln]
    assert len(lines) == 1 and lines[0].startswith("app.bsky.feed.posts: 0 records landed in ")


def test_no_validate_and_patterns_from_every_entry_point(tmp_path: Path) -> None:
    """--no-validate and collection patterns: the flag, the config file, the Python API."""
    from bsky_backfill import Backfill
    from bsky_backfill.options import DEFAULTS, settings_from_options
    from bsky_backfill.settings_file import merge_options

    did = "did:plc:z72i7hdynmk6r22z27h6tvur"
    base = {**DEFAULTS, "did_list": (did,), "out": str(tmp_path / "a")}
    on, _ = settings_from_options(base)
    off, _ = settings_from_options({**base, "no_validate": True, "collections": "app.bsky.feed.*"})
    assert (on.validate_records, off.validate_records) == (True, False)
    assert on.record_filter.validate and not off.record_filter.validate
    assert off.collections == FEED
    config = tmp_path / "run.toml"
    config.write_text('no_validate = true\ncollections = ["chat.*", "net.example.thing"]\n')
    opts = merge_options({**base}, set(), config, {})
    from_file, _ = settings_from_options(opts)
    assert not from_file.validate_records
    assert from_file.collections == {"chat.bsky.actor.declaration", "net.example.thing"}
    api = Backfill(dids=[did], out=tmp_path / "b", validate=False, collections=["app.bsky.graph.*"])
    assert not api.settings.validate_records
    assert "app.bsky.graph.follow" in api.settings.collections
    with pytest.raises(UsageError, match="did you mean"):
        Backfill(dids=[did], out=tmp_path / "c", collections=["app.bsky.grahp.*"])
