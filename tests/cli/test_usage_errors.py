"""Bad input: exit 2, one line on stderr naming the problem, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli

GOOD_DID = "did:plc:z72i7hdynmk6r22z27h6tvur"


def assert_usage_error(result: object, *needles: str) -> None:
    stderr = result.stderr  # type: ignore[attr-defined]
    assert result.returncode == 2, (result.returncode, stderr)  # type: ignore[attr-defined]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


def test_invalid_did_line_names_the_line(tmp_path: Path, out: Path) -> None:
    dids = tmp_path / "dids.txt"
    dids.write_text(f"# study\n{GOOD_DID}\n\ndid:plc:NOT-valid!\n")
    result = run_cli("run", "--dids", str(dids), "--out", str(out))
    assert_usage_error(result, "line 4", "did:plc:NOT-valid!")
    assert not out.exists()


def test_five_bad_lines_are_all_reported(tmp_path: Path, out: Path) -> None:
    dids = tmp_path / "dids.txt"
    bad = ["alice", "did:plc:NOT-valid!", "bob", "did:key:z6Mk", "https://example.com"]
    dids.write_text("\n".join([GOOD_DID, *bad]) + "\n")
    result = run_cli("run", "--dids", str(dids), "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "5 lines are not" in result.stderr.splitlines()[0]
    for number, text in enumerate(bad, 2):
        assert f"line {number}: {text!r}" in result.stderr
    assert not out.exists()


def test_invalid_did_on_stdin(out: Path) -> None:
    result = run_cli("run", "--dids", "-", "--out", str(out), stdin=f"{GOOD_DID}\nbob\n")
    assert_usage_error(result, "line 2", "bob")
    assert not out.exists()


def test_unsupported_did_method_flag(out: Path) -> None:
    result = run_cli(
        "run",
        "--did",
        "did:key:zQ3shuteTZT6t9ek6UcKu7UfVES2AJgpadj2bT5zD8NHFqLce",
        "--out",
        str(out),
    )
    assert_usage_error(result, "--did")
    assert not out.exists()


@pytest.mark.parametrize("flag", ["--since", "--until"])
@pytest.mark.parametrize("value", ["yesterday", "2024-13-01", "2024-01-01T25:00:00Z"])
def test_bad_date(flag: str, value: str, out: Path) -> None:
    result = run_cli("run", "--did", GOOD_DID, flag, value, "--out", str(out))
    assert_usage_error(result, flag)
    assert not out.exists()


def test_since_after_until(out: Path) -> None:
    result = run_cli(
        "run",
        "--did",
        GOOD_DID,
        "--since",
        "2025-01-01",
        "--until",
        "2024-01-01",
        "--out",
        str(out),
    )
    assert_usage_error(result, "--since")
    assert not out.exists()


@pytest.mark.parametrize("value", ["app..bsky.feed.post", "post", "app.bsky.feed.post,1bad.x.y"])
def test_malformed_nsid(value: str, out: Path) -> None:
    result = run_cli("run", "--did", GOOD_DID, "--collections", value, "--out", str(out))
    assert_usage_error(result, "--collections")
    assert not out.exists()


def test_unwritable_out_under_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli("run", "--did", GOOD_DID, "--out", str(blocker / "out"))
    assert_usage_error(result, "--out")
    assert blocker.read_text() == "x"


def test_out_is_a_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    result = run_cli("run", "--did", GOOD_DID, "--out", str(blocker))
    assert_usage_error(result, "--out")


def test_missing_dids_file(tmp_path: Path, out: Path) -> None:
    result = run_cli("run", "--dids", str(tmp_path / "nope.txt"), "--out", str(out))
    assert_usage_error(result, "nope.txt")
    assert not out.exists()


def test_no_source(out: Path) -> None:
    assert_usage_error(run_cli("run", "--out", str(out)), "--dids")
    assert not out.exists()


def test_unknown_flag_is_one_line(out: Path) -> None:
    assert_usage_error(
        run_cli("run", "--did", GOOD_DID, "--frobnicate", "--out", str(out)), "--frobnicate"
    )
    assert not out.exists()


def test_bad_method(out: Path) -> None:
    assert_usage_error(
        run_cli("run", "--did", GOOD_DID, "--method", "ftp", "--out", str(out)), "ftp"
    )


def test_status_without_state(tmp_path: Path) -> None:
    assert_usage_error(run_cli("status", "--out", str(tmp_path / "none")), "no backfill state")
    assert not (tmp_path / "none").exists()


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (("--give-up-after", "soon"), "--give-up-after"),
        (("--unreachable-after", "-5m"), "--unreachable-after"),
        (("--retry-cap", "0.5", "--retry-base", "2"), "--retry-cap"),
        (("--retry-failed", "Http503,not a code"), "--retry-failed"),
    ],
)
def test_bad_failure_policy_flags(flags: tuple[str, ...], needle: str, out: Path) -> None:
    result = run_cli("run", "--did", GOOD_DID, "--out", str(out), *flags)
    assert_usage_error(result, needle)
    assert not out.exists()


def test_metrics_host_that_cannot_be_bound(out: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the server cannot listen there.
    result = run_cli("run", "--did", GOOD_DID, "--out", str(out), "--metrics-port", "0",
                     "--metrics-host", "192.0.2.1")  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "on 192.0.2.1: cannot listen" in result.stderr.splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert not out.exists()
