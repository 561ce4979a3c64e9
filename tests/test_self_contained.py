"""A fresh clone passes on its own: tests never read beside the repository."""

from __future__ import annotations

import pytest

from tests.fixture_paths import CARS, FIXTURES, REPO_ROOT


def test_reading_beside_the_repository_fails() -> None:
    # conftest's audit hook turns such a read into an error in whichever test does it,
    # whatever sits beside the checkout (the guard refuses before the file system is asked).
    beside = REPO_ROOT.parent / "a-sibling-of-the-checkout"
    with pytest.raises(PermissionError, match="outside the repository"):
        (beside / "CONTRACT.md").read_text()
    with pytest.raises(PermissionError, match="outside the repository"):
        list(beside.iterdir())


def test_the_fixture_copy_is_complete_and_licensed() -> None:
    assert FIXTURES.is_relative_to(REPO_ROOT)
    assert len(list(CARS.rglob("*.car"))) >= 10
    licences = {p.parent.name for p in (FIXTURES / "licenses").rglob("*") if p.is_file()}
    assert {"bluesky-social__atproto", "bluesky-social__indigo", "snarfed__arroba"} <= licences
    # Every file is byte-for-byte what SHA256SUMS.txt lists (the upstream copy's own check).
    import hashlib

    for line in (FIXTURES / "SHA256SUMS.txt").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        data = (FIXTURES / name.lstrip("*")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name
