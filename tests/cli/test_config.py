"""`run` options from a TOML file and BSKY_BACKFILL_* variables: precedence and errors.

The command line is parsed by the real click command (`cli.run.make_context`),
and `explicitly_set` is computed exactly as `merge_options` documents, so these
tests pin the contract the CLI relies on: flag > env > file > default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import pytest
from click.core import ParameterSource

from bsky_backfill.cli import run as run_command
from bsky_backfill.errors import UsageError
from bsky_backfill.settings_file import (
    RunFileOptions,
    dest_of,
    key_of,
    load_config_file,
    merge_options,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "backfill.toml"


def merged(args: list[str], env: dict[str, str], config: Path | None = None) -> dict[str, Any]:
    """What the CLI would get for `run ARGS` with this environment."""
    ctx = run_command.make_context("run", list(args))
    explicitly_set = {
        name for name in ctx.params if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    }
    return merge_options(ctx.params, explicitly_set, config, env)


def write(tmp_path: Path, text: str, name: str = "backfill.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_flag_beats_env_beats_file_beats_default(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'rate_limit = 3\nworkers = 2\nmethod = "list"\nplc_url = "http://file.example"\n',
    )
    env = {"BSKY_BACKFILL_WORKERS": "5", "BSKY_BACKFILL_PLC_URL": "http://env.example"}
    opts = merged(["--plc-url", "http://flag.example"], env, config)
    assert opts["plc_url"] == "http://flag.example"  # flag over env and file
    assert opts["workers"] == 5  # env over file
    assert (opts["rate_limit"], opts["method"]) == (3.0, "list")  # file over default
    assert opts["commit_rows"] == 200_000  # default where nobody said anything
    assert opts["config_file"] == str(config)
    # A flag given with its default value still wins: it was said on the command line.
    assert merged(["--rate-limit", "10"], {}, config)["rate_limit"] == 10.0


def test_values_take_the_shape_click_gives(tmp_path: Path) -> None:
    config = write(
        tmp_path,
        'dids = "study.txt"\nout = "data"\n'
        'collections = ["app.bsky.feed.post", "app.bsky.graph.follow"]\n'
        "since = 2024-01-01\nuntil = 2024-06-30T12:00:00Z\n"
        'did = ["did:plc:aaa", "did:plc:bbb"]\nno_verify = true\nprogress = false\n'
        "max_car_size = 1000000\n",
    )
    opts = merged([], {}, config)
    assert opts["dids_file"] == str(tmp_path / "study.txt")  # relative to the file
    assert opts["out"] == "data"  # relative to the working directory, as --out is
    assert opts["collections"] == "app.bsky.feed.post,app.bsky.graph.follow"
    assert opts["since"] == "2024-01-01"
    assert opts["until"] == "2024-06-30T12:00:00+00:00"
    assert opts["did_list"] == ("did:plc:aaa", "did:plc:bbb")
    assert (opts["no_verify"], opts["progress"], opts["max_car_size"]) == (True, False, "1000000")


def test_env_values_are_parsed_and_the_config_can_come_from_env(tmp_path: Path) -> None:
    config = write(tmp_path, "host_concurrency = 2\n")
    env = {
        "BSKY_BACKFILL_CONFIG": str(config),
        "BSKY_BACKFILL_DID": "did:plc:aaa, did:plc:bbb",
        "BSKY_BACKFILL_COLLECTIONS": "app.bsky.feed.post,app.bsky.feed.like",
        "BSKY_BACKFILL_ALLOW_PRIVATE_HOSTS": "true",
        "BSKY_BACKFILL_RATE_LIMIT": "2.5",
        "BSKY_BACKFILL_QUEUE": "",  # empty: unset
        "BSKY_BACKFILL_TEST_PG": "postgresql://x",  # not a flag: left alone
    }
    opts = merged([], env)
    assert opts["host_concurrency"] == 2 and opts["config_file"] == str(config)
    assert opts["did_list"] == ("did:plc:aaa", "did:plc:bbb")
    assert opts["collections"] == "app.bsky.feed.post,app.bsky.feed.like"
    assert opts["allow_private_hosts"] is True and opts["rate_limit"] == 2.5
    assert opts["queue"] is None
    # a repeatable flag on the command line replaces the env's list
    assert merged(["--did", "did:plc:ccc"], env)["did_list"] == ("did:plc:ccc",)


@pytest.mark.parametrize(
    ("text", "needles"),
    [
        ("rate_limt = 5\n", ["rate_limt", "did you mean rate_limit"]),
        ('rate_limit = "fast"\n', ["rate_limit", "'fast'", "number"]),
        ("rate_limit = -1\n", ["rate_limit", "greater than or equal to 0"]),
        ('method = "ftp"\n', ["method", "'car' or 'list'"]),
        ('collections = ["app.bsky.feed.post", "not an nsid"]\n', ["collections", "NSID"]),
        ('since = "last tuesday"\n', ["since", "ISO 8601"]),
        ('plc_url = "plc.directory"\n', ["plc_url", "http(s) URL"]),
        ("workers = 1.5\n", ["workers", "integer"]),
        ("[run]\nworkers = 2\n", ["unknown key run"]),
        ("rate_limit = \n", ["not valid TOML", "line 1"]),
    ],
)
def test_bad_file_is_a_usage_error_naming_key_and_file(
    tmp_path: Path, text: str, needles: list[str]
) -> None:
    config = write(tmp_path, text)
    with pytest.raises(UsageError) as err:
        merged([], {}, config)
    message = err.value.message
    assert "\n" not in message
    assert message.startswith(f"--config {config}: "), message
    for needle in needles:
        assert needle in message, message


def test_bad_env_value_names_the_variable() -> None:
    with pytest.raises(UsageError) as err:
        merged([], {"BSKY_BACKFILL_METRICS_PORT": "99999"})
    assert "BSKY_BACKFILL_METRICS_PORT = '99999'" in err.value.message
    with pytest.raises(UsageError) as err:
        merged([], {"BSKY_BACKFILL_NO_VERIFY": "maybe"})
    assert "BSKY_BACKFILL_NO_VERIFY" in err.value.message and "boolean" in err.value.message


def test_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"--config .*nope\.toml: cannot read"):
        merged([], {}, tmp_path / "nope.toml")


def test_every_run_flag_has_a_config_key() -> None:
    """A new flag of `run` must be settable from the file and the environment."""
    # -v/--verbose is not a setting of the run (it is taken on every command).
    flags = [p for p in run_command.params if isinstance(p, click.Option) and p.expose_value]
    missing = []
    for param in flags:
        long_flag = max(param.opts, key=len)
        key = key_of(long_flag)
        if key == "config":
            continue
        if key not in RunFileOptions.model_fields or dest_of(key) != param.name:
            missing.append(long_flag)
    assert not missing, f"add to settings_file.RunFileOptions: {missing}"


def test_the_shipped_example_is_valid() -> None:
    values = load_config_file(EXAMPLE)
    assert values["collections"] == [
        "app.bsky.feed.post",
        "app.bsky.feed.like",
        "app.bsky.feed.repost",
        "app.bsky.graph.follow",
        "app.bsky.graph.block",
    ]
    assert (values["since"], values["until"]) == ("2024-01-01", "2024-07-01")
    dids = Path(values["dids"])
    assert dids.is_file() and dids.parent == EXAMPLE.parent
    lines = [ln for ln in dids.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all(ln.startswith("did:plc:") for ln in lines) and lines


def test_dataset_commands_take_out_from_file_and_env(tmp_path: Path) -> None:
    from bsky_backfill.settings_file import dataset_options

    config = write(tmp_path, 'out = "data"\nqueue = "postgresql://db/x"\n')
    given = {"out": "bsky-data", "queue": None}
    assert dataset_options(given, set(), config, {}) == {
        "out": "data",
        "queue": "postgresql://db/x",
    }
    env = {"BSKY_BACKFILL_OUT": "/elsewhere"}
    assert dataset_options(given, set(), config, env)["out"] == "/elsewhere"
    assert dataset_options({"out": "mine", "queue": None}, {"out"}, config, env)["out"] == "mine"
    assert dataset_options(given, set(), None, {"BSKY_BACKFILL_CONFIG": str(config)})["queue"] == (
        "postgresql://db/x"
    )
