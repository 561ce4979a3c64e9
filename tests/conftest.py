"""Shared test helpers: where the fixtures live and how to run the real CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixture_paths import FIXTURES


def _system_tmpdir() -> str:
    import tempfile

    return str(Path(tempfile.gettempdir()).resolve())


# The system's, before this process takes its own (below).
_SYSTEM_TMP = _system_tmpdir()


_OWN_TMP_PREFIX = "/tmp/bsky-backfill-tests-"


def _own_tmpdir() -> None:
    """Each test process (every pytest-xdist worker, and the controller or a plain
    `pytest`: "main") and the runs it starts get a temporary directory of their
    own: machine-wide state kept there (the helper-process slots of
    engine/part_pool.py) then belongs to one worker's tests, as it would to one
    machine, and pytest's `tmp_path` lives under the controller's. Set before
    anything asks `tempfile` for its directory (it remembers the first answer)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER") or "main"
    own = Path(_OWN_TMP_PREFIX + worker)
    own.mkdir(parents=True, exist_ok=True)
    os.environ["TMPDIR"] = str(own)
    import tempfile

    tempfile.tempdir = None  # asked again, it answers this process's own directory


_own_tmpdir()


@pytest.fixture(scope="session")
def fixtures() -> Path:
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
    """Run a test twice: with the C loops (repo/native.py), and with
    them switched off so their Python twins run (where the extension is not
    built, both runs take the Python path)."""
    from bsky_backfill.repo import native

    if request.param == "python":
        for name in ("mismatched", "frame_index", "off_layer", "walk_leaves", "has_float"):
            monkeypatch.setattr(native, name, None)
    return str(request.param)


def _guard_reads_outside_repo() -> None:
    """Fail any test that reads beside the repository (a sibling `shared` folder): a fresh clone
    has nothing there. An audit hook sees every `open` and directory listing of this
    test process; the tests' temporary directories stay allowed."""
    import tempfile

    from tests.fixture_paths import REPO_ROOT

    repo = str(REPO_ROOT) + os.sep
    beside = str(REPO_ROOT.parent) + os.sep
    temp: tuple[str, ...] = (_SYSTEM_TMP + os.sep,)
    if beside.startswith(temp[0]) or temp[0].startswith(beside):
        # A checkout in the system's temporary directory (a fresh clone under /tmp):
        # "anything temporary" would be "anything beside", so only the tests' own
        # directories (above) and pytest's default ones stay allowed.
        temp = (_OWN_TMP_PREFIX, f"{_SYSTEM_TMP}{os.sep}pytest-of-")
    allowed = (repo, str(Path(tempfile.gettempdir()).resolve()) + os.sep, *temp)

    def hook(event: str, args: tuple[object, ...]) -> None:
        if event not in ("open", "os.listdir", "os.scandir") or not args:
            return
        raw = args[0]
        if not isinstance(raw, str | Path):
            return
        path = os.path.abspath(raw) + os.sep
        if path.startswith(beside) and not path.startswith(allowed):
            raise PermissionError(f"test read outside the repository: {raw}")

    if beside != os.sep:  # a checkout at the file system's root has no "beside"
        sys.addaudithook(hook)


_guard_reads_outside_repo()
