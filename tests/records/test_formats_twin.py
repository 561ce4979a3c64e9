"""The C format checks (`records/_formats.c`) answer exactly as their Python twins.

Every string field of every record reaches one of these, so the C side reads
untrusted text: the two are compared on every line of the interop syntax
vectors (under every format, not only its own), on hypothesis-generated
strings (any unicode, embedded NULs, lone surrogates, whitespace of every
kind), on valid values mutated character by character, and on long strings
around each format's length limit. Under `make sanitize` this file runs
against the ASan/UBSan build. In CI the extension must have been built: a
silent fallback would make the benchmark measure the regexes.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bsky_backfill.records import formats
from tests.ci import assert_sanitized_build_loaded, in_ci, require_in_ci
from tests.fixture_paths import INTEROP

pytestmark = pytest.mark.skipif(
    not formats.NATIVE and not in_ci(), reason="C extension not built here"
)

SYNTAX = INTEROP / "syntax"
LINES = sorted(
    {
        line
        for path in sorted(SYNTAX.glob("*.txt"))
        for line in path.read_text(encoding="utf-8").splitlines()
    }
)
VALID = [
    line
    for path in sorted(SYNTAX.glob("*_valid.txt"))
    for line in path.read_text(encoding="utf-8").splitlines()
    if line and not line.startswith("#")
]
NAMES = sorted(formats.PYTHON)
PROFILE = settings(max_examples=1000, deadline=None, derandomize=True, database=None)


def _agree(value: str) -> None:
    for name in NAMES:
        expected = formats.PYTHON[name](value)
        assert formats.FORMATS[name](value) is expected, (name, value)


def test_the_extension_is_built() -> None:
    if not formats.NATIVE:
        require_in_ci("bsky_backfill.records._formats was not built (C compiler)")
    assert all(check.__class__ is type(len) for check in formats.FORMATS.values())
    assert formats.FORMATS.keys() == formats.PYTHON.keys()


def test_the_sanitized_build_is_the_one_loaded() -> None:
    """Under `make sanitize` the checks in use are the ASan/UBSan build's."""
    assert_sanitized_build_loaded("bsky_backfill.records._formats")


def test_every_interop_line_under_every_format() -> None:
    assert len(LINES) > 500  # the vectors are there
    for line in LINES:
        _agree(line)


def test_a_str_is_required() -> None:
    for check in formats.FORMATS.values():
        with pytest.raises(TypeError):
            check(b"did:plc:abc")  # type: ignore[arg-type]


@PROFILE
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=80))
@example("\x00")
@example("did:plc:abc\x00def")
@example("https://a.b/\u3000")
@example("https://a.b/\x85x")
@example("https://a.b/\ud800")
@example("at://did:plc:abc/app.bsky.feed.post/3l\x00")
def test_any_text(value: str) -> None:
    _agree(value)


# Characters each format gives meaning to, and some that none allows.
_MUTANTS = "abcxzXZ0179-_.:%~+=/?#@ TtZz\x00\t\n\u00e9\u0130\u212a\u017f\u3000\U0001f600"


@st.composite
def _mutated(draw: st.DrawFn) -> str:
    value = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(value)))
        action = draw(st.sampled_from(("insert", "delete", "replace", "cut", "double", "case")))
        char = draw(st.sampled_from(_MUTANTS))
        if action == "insert":
            value = value[:at] + char + value[at:]
        elif action == "delete":
            value = value[:at] + value[at + 1 :]
        elif action == "replace":
            value = value[:at] + char + value[at + 1 :]
        elif action == "cut":
            value = value[:at]
        elif action == "double":
            value = value[:at] + value[at:] + value[at:]
        else:
            value = value[:at] + value[at:].swapcase()
    return value


@PROFILE
@given(_mutated())
def test_mutated_valid_values(value: str) -> None:
    _agree(value)


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(
    st.sampled_from(VALID),
    st.sampled_from(
        [
            "a",
            "a.",
            "-a",
            "abcdefgh-",
            "x-",
            "aaaaa-",
            "bbbbb-",
            "0000-",
            ".b",
            "/c",
            "3",
            "\u00e9",
        ]
    ),
    st.sampled_from([62, 63, 64, 125, 126, 252, 253, 254, 316, 317, 318, 511, 512, 513, 2047]),
    st.sampled_from(["", "2048", "8191", "8192", "8193", "20000"]),
)
def test_long_values_around_the_limits(value: str, unit: str, length: int, extra: str) -> None:
    """A valid value grown to each limit (and past it) by repeating a piece."""
    total = length if not extra else int(extra)
    grown = (value + unit * total)[: max(total, len(value))]
    _agree(grown)
    _agree(unit * (total // len(unit) + 1))


def test_long_language_tags() -> None:
    """A tag has no length limit: many distinct variants are valid, one repeat is not."""
    variants = [f"{i:05d}" for i in range(3000)]
    tags = [
        "en-" + "-".join(variants),
        "en-" + "-".join(variants) + "-00007",
        "x-" + "-".join(["a"] * 5000),
        "en-x-" + "-".join(["abcdefgh"] * 3000),
        "en-a-bb-b-cc-a-dd",
        "en-" + "-".join(f"{c}-ab" for c in "0123456789abcdefghijklmnopqrstuvwyz"),
    ]
    for tag in tags:
        _agree(tag)


def _two(values: list[int]) -> st.SearchStrategy[str]:
    return st.sampled_from(values).map(lambda n: f"{n:02d}")


@PROFILE
@given(
    st.sampled_from(["0000", "0001", "1900", "2000", "2023", "2024", "9999"]),
    _two([0, 1, 2, 12, 13]),
    _two([0, 1, 28, 29, 30, 31, 32]),
    _two([0, 23, 24, 99]),
    _two([0, 59, 60]),
    _two([0, 59, 60]),
    st.sampled_from(["", ".", ".1", ".123456", ".1234567", "." + "9" * 20, "." + "9" * 21]),
    st.sampled_from(["Z", "z", "", "+", "-"]),
    _two([0, 1, 23, 24, 30]),
    _two([0, 1, 59, 60, 99]),
)
def test_datetime_fields(
    year: str,
    month: str,
    day: str,
    hour: str,
    minute: str,
    second: str,
    fraction: str,
    zone: str,
    offset_h: str,
    offset_m: str,
) -> None:
    """Calendar values at and past their edges: leap days, year 0000 (which the
    reference settles on its exact path), offsets of 24 h and minutes past 59."""
    if zone in ("+", "-"):
        zone += f"{offset_h}:{offset_m}"
    _agree(f"{year}-{month}-{day}T{hour}:{minute}:{second}{fraction}{zone}")
