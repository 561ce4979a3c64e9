"""`run`'s flags from a TOML file (`--config`) and `BSKY_BACKFILL_*` environment variables.

Where it sits: between click and `options.settings_from_options`. click parses the
command line; `merge_options` lays the sources over each other, flag > env >
file > default, and hands back the same dict click made, so everything after
it (validation, `RunSettings`) works unchanged.

Keys are the long flag names without dashes, dashes turned into underscores:
`--rate-limit 5` is `rate_limit = 5` in the file and `BSKY_BACKFILL_RATE_LIMIT=5`
in the environment; `--dids FILE` is `dids`, `--did` is `did`, `--no-verify`
is `no_verify`, `--progress/--no-progress` is `progress = true|false`.
List flags (`did`, `pds`) and `collections` take a TOML list or a
comma-separated string; `since`/`until` a string or a TOML date/datetime.
A relative `dids` in the file is relative to the file's folder, so a config
travels with its DID list; a relative `out` is relative to the working
directory, like `--out` and every CLI's output paths (the dataset lands where
the command runs, not beside the config file). `BSKY_BACKFILL_CONFIG` names a file
when `--config` does not.

Keys, variables and their values are derived from `run_options.CommandOptions`
(the model every surface shares); a wrong key or value is a `UsageError`
(exit 2) naming the key and the file or variable.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from bsky_backfill.errors import UsageError
from bsky_backfill.run_options import BY_KEY, ENV_PREFIX, OPTIONS, Option, usage_error

CONFIG_ENV = ENV_PREFIX + "CONFIG"


def _optional(option: Option) -> tuple[Any, None]:
    """The field's type, checks included, or None (a file sets only some keys)."""
    field = option.field
    kind: Any = field.annotation
    if field.metadata:
        kind = Annotated[(kind, *field.metadata)]
    return (kind | None, None)


_FIELDS: dict[str, Any] = {o.key: _optional(o) for o in OPTIONS}
RunFileOptions: type[BaseModel] = create_model(
    "RunFileOptions",
    __config__=ConfigDict(extra="forbid", str_strip_whitespace=True),
    __doc__="Every flag of `bsky-backfill run`, as a config file or the environment gives it.",
    **_FIELDS,
)
"""`CommandOptions` keyed by file key (the flag's sense: `no_verify`), every key optional."""

KEYS: tuple[str, ...] = tuple(RunFileOptions.model_fields)


def dest_of(key: str) -> str:
    """The click parameter a file key sets (`dids` -> `dids_file`)."""
    return BY_KEY[key].dest


def key_of(flag: str) -> str:
    """`--rate-limit` -> `rate_limit` (the file key and env suffix of a flag)."""
    return flag.lstrip("-").replace("-", "_")


# -- the three sources ---------------------------------------------------------------
def _validate(raw: Mapping[str, Any], where: str, name_key: Callable[[str], str]) -> dict[str, Any]:
    """Check raw values; errors name the key as `name_key(key)` says (file key or env var)."""
    for key in raw:
        if key not in RunFileOptions.model_fields:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {name_key(near[0])}?)" if near else ""
            raise UsageError(f"{where}: unknown key {name_key(key)}{hint}")
    try:
        model = RunFileOptions.model_validate(dict(raw))
    except ValidationError as e:
        named = f"{where}: {{}} = {{!r}}"
        raise usage_error(e, raw, lambda key, value: named.format(name_key(key), value)) from None
    return {k: getattr(model, k) for k in model.model_fields_set}


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and check a TOML config; returns only the keys it sets, paths made absolute."""
    path = Path(path)
    where = f"--config {path}"
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{where}: cannot read ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{where}: not valid TOML: {e}") from None
    except UnicodeDecodeError as e:
        raise UsageError(f"{where}: not UTF-8 text ({e.reason})") from None
    values = _validate(raw, where, lambda key: key)
    for key, value in values.items():
        if BY_KEY[key].spec.file_relative and isinstance(value, str) and value != "-":
            values[key] = str(path.parent / Path(value).expanduser())
    return values


def options_from_env(environ: Mapping[str, str]) -> dict[str, Any]:
    """`BSKY_BACKFILL_<KEY>` variables that name a known key; empty ones count as unset.

    Other variables with the prefix (`BSKY_BACKFILL_CONFIG`, test settings) are
    not flags and are left alone.
    """
    raw = {
        name[len(ENV_PREFIX) :].lower(): value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and value.strip()
    }
    raw = {key: value for key, value in raw.items() if key in RunFileOptions.model_fields}
    return _validate(raw, "environment", lambda key: ENV_PREFIX + key.upper())


def merge_options(
    cli_opts: Mapping[str, Any],
    explicitly_set: set[str],
    config_path: str | Path | None,
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """Lay file, environment and command line over each other: flag > env > file > default.

    Why not click's `default_map` + `auto_envvar_prefix`: click would name the
    variables after the command (`BSKY_BACKFILL_RUN_RATE_LIMIT`, where the contract
    says `BSKY_BACKFILL_RATE_LIMIT`), parse a list variable by splitting on spaces,
    and word a bad value as a bad flag; here every layer is checked by the model
    (`RunFileOptions`) and an error names the file key or the variable. click's own
    `get_parameter_source` still tells which flags were given.

    `cli_opts` is click's dict for `run` (parameter names as keys); `explicitly_set`
    the parameter names given on the command line, which the CLI computes as

        {name for name in ctx.params
         if ctx.get_parameter_source(name) is click.core.ParameterSource.COMMANDLINE}

    `config_path` is `--config` (None: `BSKY_BACKFILL_CONFIG`, else no file).
    Returns a new dict with the same keys as `cli_opts`. Raises `UsageError`.
    """
    path = config_path if config_path is not None else (environ.get(CONFIG_ENV) or None)
    layers = [
        (f"--config {path}", load_config_file(path) if path is not None else {}),
        ("environment", options_from_env(environ)),
    ]
    merged = dict(cli_opts)
    for where, layer in layers:
        for key, value in layer.items():
            option = BY_KEY[key]
            if option.dest not in merged:
                # A caller's dict without this flag (not click's for `run`).
                raise UsageError(f"{where}: {key} is not an option of this command")
            if option.dest not in explicitly_set:
                merged[option.dest] = option.click_value(value)
    if "config_file" in merged and path is not None:
        merged["config_file"] = str(path)
    return merged


def dataset_options(
    given: Mapping[str, Any],
    explicitly_set: set[str],
    config_path: str | Path | None,
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """`out` and `queue` for the commands that read a dataset (status, report, query),
    from the same places `run` takes them (flag > env > file > default), so a run
    made from a config file is inspected with that same file."""
    path = config_path if config_path is not None else (environ.get(CONFIG_ENV) or None)
    merged = dict(given)
    layers = [load_config_file(path) if path is not None else {}, options_from_env(environ)]
    for layer in layers:
        for key in ("out", "queue"):
            if key in layer and key in merged and key not in explicitly_set:
                merged[key] = layer[key]
    return merged


__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KEYS",
    "RunFileOptions",
    "dataset_options",
    "dest_of",
    "key_of",
    "load_config_file",
    "merge_options",
    "options_from_env",
]
