"""`run`'s flags from a TOML file (`--config`) and `BSKY_BACKFILL_*` environment variables.

Where it sits: between click and `cli._settings_from_options`. click parses the
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

Every value is checked by a pydantic model; a wrong key or value is a
`UsageError` (exit 2) naming the key and the file or variable.
"""

from __future__ import annotations

import datetime as dt
import difflib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from bsky_backfill.errors import UsageError
from bsky_backfill.records.collections import is_collection_pattern
from bsky_backfill.syntax import is_valid_nsid

ENV_PREFIX = "BSKY_BACKFILL_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"

# File key -> click parameter name, where they differ.
_DEST = {"dids": "dids_file", "did": "did_list", "config": "config_file"}
# Keys holding paths that a file gives relative to its own folder (`out` is not
# one: output goes where the command runs).
_PATH_KEYS = ("dids",)


def _split_list(value: Any) -> Any:
    """'a, b c' -> ['a', 'b', 'c'] (env vars and TOML strings); lists pass through."""
    if isinstance(value, str):
        return [part for part in value.replace(",", " ").split() if part]
    return value


def _to_text(value: Any) -> Any:
    """TOML dates and numbers where the flag takes text (`since`, `max_car_size`)."""
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return value


StrList = Annotated[list[str], BeforeValidator(_split_list)]


def _retry_codes(value: Any) -> Any:
    """`retry_failed = true` (or "true"): the default codes, as `--retry-failed` alone."""
    if value is True or (isinstance(value, str) and value.strip().lower() in ("true", "1", "*")):
        return ["*"]
    return _split_list(value)


RetryCodes = Annotated[list[str], BeforeValidator(_retry_codes)]
Text = Annotated[str, BeforeValidator(_to_text)]


class RunFileOptions(BaseModel):
    """Every flag of `bsky-backfill run`, as a config file or the environment gives it.

    All optional: only the keys present are laid over the command line's defaults.
    Checks here are those that name the key well; `cli.py` checks the rest again.
    """

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    dids: str | None = None
    """File of DIDs, one per line; '-' = standard input."""
    did: StrList | None = None
    all_from_plc: bool | None = None
    from_relay: str | None = None
    pds: StrList | None = None
    collections: StrList | None = None
    since: Text | None = None
    until: Text | None = None
    out: str | None = None
    queue: str | None = None
    plc_url: str | None = None
    dns_server: str | None = None
    method: Literal["car", "list"] | None = None
    rate_limit: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    allow_private_hosts: bool | None = None
    no_verify: bool | None = None
    no_validate: bool | None = None
    progress: bool | None = None
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str | None = None
    workers: int | None = Field(default=None, ge=1)
    refresh: bool | None = None
    compact: bool | None = None
    host_concurrency: int | None = Field(default=None, ge=1)
    global_host_rate: int | None = Field(default=None, ge=1)
    commit_rows: int | None = Field(default=None, ge=1)
    commit_seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    connect_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    read_timeout: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    max_car_size: Text | None = None
    stream_size: Text | None = None
    max_attempts: int | None = Field(default=None, ge=1)
    retry_base: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    retry_cap: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    give_up_after: Text | None = None
    unreachable_after: Text | None = None
    retry_failed: RetryCodes | None = None
    """true: every retryable code; a list (or comma-separated string): those codes."""
    max_retry_after: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    log_format: Literal["text", "json"] | None = None

    @field_validator("collections")
    @classmethod
    def _nsids(cls, names: list[str] | None) -> list[str] | None:
        if names is not None:
            if not names:
                raise ValueError("is empty")
            bad = [n for n in names if not (is_valid_nsid(n) or is_collection_pattern(n))]
            if bad:
                raise ValueError(f"{bad[0]!r} is not a valid NSID or a pattern like app.bsky.*")
        return names

    @field_validator("since", "until")
    @classmethod
    def _iso(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{value!r} is not an ISO 8601 date or datetime") from None
        return value

    @field_validator("plc_url", "from_relay")
    @classmethod
    def _http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"{value!r} must be an http(s) URL")
        return value


KEYS: tuple[str, ...] = tuple(RunFileOptions.model_fields)


def dest_of(key: str) -> str:
    """The click parameter a file key sets (`dids` -> `dids_file`)."""
    return _DEST.get(key, key)


def key_of(flag: str) -> str:
    """`--rate-limit` -> `rate_limit` (the file key and env suffix of a flag)."""
    return flag.lstrip("-").replace("-", "_")


# -- the three sources ---------------------------------------------------------------
def _validate(raw: Mapping[str, Any], where: str, name_key: Any) -> dict[str, Any]:
    """Check raw values; errors name the key as `name_key(key)` says (file key or env var)."""
    for key in raw:
        if key not in RunFileOptions.model_fields:
            near = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {name_key(near[0])}?)" if near else ""
            raise UsageError(f"{where}: unknown key {name_key(key)}{hint}")
    try:
        model = RunFileOptions.model_validate(dict(raw))
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        msg = str(err["msg"]).removeprefix("Value error, ")
        value = raw.get(key)
        raise UsageError(f"{where}: {name_key(key)} = {value!r}: {msg}") from None
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
    for key in _PATH_KEYS:
        value = values.get(key)
        if isinstance(value, str) and value != "-":
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


def _as_click_value(key: str, value: Any) -> Any:
    """Shape a checked value like click's: tuples for repeatable flags, text for lists."""
    if key in ("did", "pds"):
        return tuple(value)
    if key in ("collections", "retry_failed"):
        return ",".join(value)
    return value


def merge_options(
    cli_opts: Mapping[str, Any],
    explicitly_set: set[str],
    config_path: str | Path | None,
    environ: Mapping[str, str],
) -> dict[str, Any]:
    """Lay file, environment and command line over each other: flag > env > file > default.

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
            dest = dest_of(key)
            if dest not in merged:
                # A key of the model that this version's `run` has no flag for.
                raise UsageError(f"{where}: {key} is not an option of this version's `run`")
            if dest not in explicitly_set:
                merged[dest] = _as_click_value(key, value)
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
