"""One model of `run`'s options: every surface has every option, with one default.

`run_options.CommandOptions` is the source; the click command, the TOML keys,
the BSKY_BACKFILL_* variables and `Backfill(...)`'s keyword arguments are made
from it. These tests fail when a surface loses an option or grows its own
default (the drift the model exists to end).
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from bsky_backfill import Backfill
from bsky_backfill.cli import run as run_command
from bsky_backfill.config import RunSettings
from bsky_backfill.errors import UsageError
from bsky_backfill.options import settings_from_options
from bsky_backfill.run_options import (
    DEFAULTS,
    OPTIONS,
    RUN_OPTION_NAMES,
    CommandOptions,
    RunOptions,
    from_keywords,
)
from bsky_backfill.settings_file import RunFileOptions, load_config_file, options_from_env
from bsky_backfill.sinks.batch import SinkConfig

DID = "did:plc:z72i7hdynmk6r22z27h6tvur"


def test_every_field_has_a_flag_a_variable_and_a_key_with_one_default(tmp_path: Path) -> None:
    params = {p.name: p for p in run_command.params if isinstance(p, click.Option)}
    assert len(OPTIONS) == len(CommandOptions.model_fields)
    for option in OPTIONS:
        param = params[option.dest]
        assert option.flag in param.opts, option.name
        # One default: the flag's is the field's (in the flag's sense and click's form).
        field_default = option.default
        if option.spec.invert:
            field_default = not field_default
        assert param.default == DEFAULTS[option.dest] == option.click_value(field_default)
        # The file key and the variable exist and are read (a value is taken or refused
        # naming them, never ignored); unset, they leave the default alone.
        assert RunFileOptions.model_fields[option.key].default is None
        try:
            taken = options_from_env({option.env: "x"})
        except UsageError as e:
            assert e.message.startswith(f"environment: {option.env} = 'x': "), e.message
        else:
            assert list(taken) == [option.key]
        config = tmp_path / f"{option.key}.toml"
        config.write_text(f'{option.key} = "x"\n')
        try:
            taken = load_config_file(config)
        except UsageError as e:
            assert e.message.startswith(f"--config {config}: {option.key} = 'x': "), e.message
        else:
            assert list(taken) == [option.key]
    # The file has no key the model lacks; the command no flag but --config and -v.
    assert set(RunFileOptions.model_fields) == {o.key for o in OPTIONS}
    assert set(params) - {o.dest for o in OPTIONS} == {"config_file", "verbose"}


def test_backfill_takes_exactly_the_run_fields_with_their_defaults(tmp_path: Path) -> None:
    run_fields = {o.api for o in OPTIONS if o.name in RUN_OPTION_NAMES}
    assert set(Backfill.options()) == run_fields
    assert from_keywords({}) == RunOptions()
    # The command's own options are no arguments of a run.
    for name in set(CommandOptions.model_fields) - RUN_OPTION_NAMES:
        with pytest.raises(UsageError, match=f"unknown option '{name}'"):
            Backfill(dids=[DID], out=tmp_path / "x", **{name: None})
    # Defaults alike: the API without arguments is the command line without flags.
    out = str(tmp_path / "out")
    api = Backfill(dids=[DID], out=out).settings
    cli, _ = settings_from_options({**DEFAULTS, "did_list": (DID,), "out": out})
    assert api == cli
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["did_list", "no_verify", "config", "handle"])
def test_backfill_refuses_names_of_other_surfaces(tmp_path: Path, name: str) -> None:
    with pytest.raises(UsageError, match=f"unknown option '{name}' for Backfill"):
        Backfill(dids=[DID], out=tmp_path / "out", **{name: True})


def test_a_misspelt_method_is_refused_everywhere(tmp_path: Path) -> None:
    """`method="lsit"` once ran car mode: now each surface refuses it, naming itself."""
    out = tmp_path / "out"
    with pytest.raises(UsageError) as err:
        Backfill(dids=[DID], out=out, method="lsit")
    assert err.value.message.startswith("method='lsit': "), err.value.message
    with pytest.raises(UsageError) as err:
        settings_from_options({**DEFAULTS, "did_list": (DID,), "out": str(out), "method": "lsit"})
    assert err.value.message.startswith("--method 'lsit': "), err.value.message
    with pytest.raises(UsageError, match="BSKY_BACKFILL_METHOD = 'lsit'"):
        options_from_env({"BSKY_BACKFILL_METHOD": "lsit"})
    assert not out.exists()


def test_engine_defaults_are_the_models(tmp_path: Path) -> None:
    """`RunSettings()` and `SinkConfig()` (built without options: tests, the demo,
    compaction) default to what the options default to."""
    built = Backfill(dids=[DID], out=tmp_path / "out").settings
    bare = RunSettings(out=built.out)
    ignore = {"collections", "filters_given"}  # set from the options, not defaulted
    assert built.model_dump(exclude=ignore) == bare.model_dump(exclude=ignore)
    sink = SinkConfig()
    assert (sink.commit_rows, sink.commit_seconds) == (built.commit_rows, built.commit_seconds)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"workers": 2000}, "workers=2000: "),
        ({"rate_limit": float("nan")}, "rate_limit=nan: "),
        ({"max_car_size": "huge"}, "max_car_size='huge': not a size"),
        ({"give_up_after": "soon"}, "give_up_after='soon': not a duration"),
        ({"pds": ["pds.example", "not a host"]}, "pds='not a host': not a host name"),
        ({"validate": "perhaps"}, "validate='perhaps': "),
        ({"retry_failed": ["Http503", "no such"]}, "retry_failed=["),
    ],
)
def test_api_errors_are_one_line_naming_the_keyword(
    tmp_path: Path, kwargs: dict[str, object], needle: str
) -> None:
    with pytest.raises(UsageError) as err:
        Backfill(dids=[DID], out=tmp_path / "out", **kwargs)
    message = err.value.message
    assert needle in message and "\n" not in message and "--" not in message, message
