"""Account lists as people make them: BOM, CRLF, spaces, URIs, URLs; every bad line at once."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest

from bsky_backfill.engine.sources import MAX_SHOWN, DidSource, account_of
from bsky_backfill.errors import UsageError

A = "did:plc:z72i7hdynmk6r22z27h6tvur"
B = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
W = "did:web:localhost%3A8080"


def streamed(source: DidSource) -> list[str]:
    return [did for chunk in source.chunks(size=2) for did in chunk]


@pytest.mark.parametrize(
    ("text", "did"),
    [
        (A, A),
        (W, W),
        (f"at://{A}", A),
        (f"at://{A}/app.bsky.feed.post/3jzfcijpj2z2a", A),
        (f"https://bsky.app/profile/{B}", B),
        (f"https://bsky.app/profile/{B}/post/3jzfcijpj2z2a?x=1", B),
        (f"bsky.app/profile/{B}", B),
        (f"http://www.bsky.app/profile/{W}", W),
        ("alice", None),
        ("@Alice.Bsky.Social", "alice.bsky.social"),
        ("alice.bsky.social.", "alice.bsky.social"),
        ("at://bob.test/app.bsky.feed.post/3jzfcijpj2z2a", "bob.test"),
        ("https://bsky.app/profile/Carol.example.com", "carol.example.com"),
        ("@did:plc:z72i7hdynmk6r22z27h6tvur", None),
        ("alice..test", None),
        ("https://example.com/profile/" + A, None),
        ("at://", None),
        (A + "x", None),
    ],
)
def test_account_of(text: str, did: str | None) -> None:
    assert account_of(text) == did


def test_bom_crlf_spaces_uris_and_profile_urls(tmp_path: Path) -> None:
    path = tmp_path / "study.csv"
    lines = [
        "# exported from a spreadsheet",
        f"{A}   ",
        f'  "{B}"  # quoted, with a comment',
        "",
        f"at://{W}/app.bsky.feed.post/3jzfcijpj2z2a",
        f"https://bsky.app/profile/{A}",
    ]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode("utf-8-sig"))
    source = DidSource.from_args([], str(path))
    assert source.count == 4
    assert streamed(source) == [A, B, W, A]


def test_bom_on_stdin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"\ufeff{A}\r\nat://{B}\r\n"))
    source = DidSource.from_args([f" {W} "], "-")
    assert streamed(source) == [W, A, B]


def test_every_bad_line_is_reported_at_once(tmp_path: Path) -> None:
    path = tmp_path / "dids.txt"
    bad = ["alice", "did:plc:short", "https://example.com/x", "did:key:abc", "@"]
    path.write_text("\n".join([A, *bad, B]) + "\n")
    with pytest.raises(UsageError) as caught:
        DidSource.from_args([], str(path))
    message = caught.value.message
    assert message.splitlines()[0].endswith(
        "5 lines are not a did:plc/did:web DID or a handle "
        "(or an at:// URI or bsky.app profile URL of one):"
    )
    for number, text in enumerate(bad, 2):
        assert f"line {number}: {text!r}" in message


def test_many_bad_lines_show_the_first_ones_and_a_count(tmp_path: Path) -> None:
    path = tmp_path / "dids.txt"
    path.write_text("".join(f"nobody{i}\n" for i in range(MAX_SHOWN + 7)))
    with pytest.raises(UsageError) as caught:
        DidSource.from_args([], str(path))
    lines = caught.value.message.splitlines()
    assert len(lines) == 1 + MAX_SHOWN + 1
    assert lines[-1].strip() == "... and 7 more"
    assert f"{MAX_SHOWN + 7} lines" in lines[0]


def test_bad_did_values_are_all_named() -> None:
    with pytest.raises(UsageError, match=r"--did 'x', 'y': not a did:plc/did:web DID"):
        DidSource.from_args([A, "x", "y"], None)
