"""Shared test helpers: where the fixtures live and how to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT.parent / "shared" / "atproto-fixtures"


@pytest.fixture(scope="session")
def fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(
            f"atproto fixtures not found at {FIXTURES} (expected ../shared beside the repo)"
        )
    return FIXTURES


def run_cli(
    *args: str, stdin: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run `python -m bsky_backfill ARGS` as a real subprocess."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(
        [sys.executable, "-m", "bsky_backfill", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture(params=["native", "python"])
def verify_loops(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test twice: with verification's C loops (repo/native.py), and with
    them switched off so their Python twins run (where the extension is not
    built, both runs take the Python path)."""
    from bsky_backfill.repo import native

    if request.param == "python":
        for name in ("mismatched", "frame_index", "off_layer"):
            monkeypatch.setattr(native, name, None)
    return str(request.param)
