"""The options of `bsky-backfill run`: one typed model, the single source of truth.

Where it sits: at the outer edge, before options.py turns checked options into
a `RunSettings`. Every surface is derived from the fields below (type, default,
bounds, help = the field's docstring):

- the command line: `run_flags` puts one click option per field on `run`;
- a TOML file and `BSKY_BACKFILL_*` variables: settings_file.py's
  `RunFileOptions` has the same types and checks, every key optional;
- the Python API: `bsky_backfill.Backfill(**kwargs)` validates its keyword
  arguments with `RunOptions` itself.

`RunOptions` is the run; `CommandOptions` adds what only the command has (the
terminal, the metrics server, log lines), so those are flags, keys and
variables but no `Backfill` arguments.

Names: a field's flag is `--name-with-dashes` unless its `Flag` says otherwise;
the file key and the variable are the flag without its dashes (`--rate-limit`:
`rate_limit`, `BSKY_BACKFILL_RATE_LIMIT`; `--no-verify`: `no_verify`); click's
parameter name is that key unless `Flag.dest` keeps an older one; the API's
keyword is the field's name (or its alias). Values keep the user's form (text
for sizes, durations and dates), so every surface checks them alike.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import click
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.fields import FieldInfo

from bsky_backfill.errors import UsageError
from bsky_backfill.option_values import (
    RETRY_DEFAULT,
    Count,
    DnsServer,
    Duration,
    Host,
    HostList,
    HttpUrl,
    Moment,
    Nsids,
    RetryCodes,
    Seconds,
    Size,
    Text,
    TextList,
)
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS

ENV_PREFIX = "BSKY_BACKFILL_"


@dataclass(frozen=True, slots=True)
class Flag:
    """How a field is spelt on the command line, where the defaults do not fit."""

    flag: str = ""
    """The long flag; "" = `--` and the field's name with dashes."""
    dest: str = ""
    """click's parameter name (the key of its dict); "" = the file key."""
    metavar: str | None = None
    invert: bool = False
    """The flag states the field's opposite (`--no-verify` sets `verify` false)."""
    help: str = ""
    """The flag's help where the field's docstring does not fit it (an inverted flag)."""
    switch: bool = False
    """`--x/--no-x`, unset unless given (the default is decided at run time)."""
    joined: bool = False
    """A list given on the command line as one comma-separated value."""
    flag_value: str | None = None
    """The value of the flag given without one (`--retry-failed` alone)."""
    file_relative: bool = False
    """A path that a config file gives relative to its own folder."""


_DEFAULT_TYPES = ", ".join(sorted(c.removeprefix("app.bsky.") for c in DEFAULT_COLLECTIONS))


class RunOptions(BaseModel):
    """Every option of a run: `bsky-backfill run`'s flags and `Backfill(...)`'s arguments."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    dids_file: Annotated[
        Text | None, Flag("--dids", dest="dids_file", metavar="FILE", file_relative=True)
    ] = None
    """Accounts, one per line: DIDs, handles, at:// URIs or bsky.app profile URLs
    (# comments; - = stdin)."""
    dids: Annotated[TextList, Flag("--did", dest="did_list", metavar="DID")] = Field(
        default_factory=list
    )
    """A DID or handle (repeatable)."""
    all_from_plc: bool = False
    """Every DID in the PLC directory."""
    from_relay: Annotated[Host | None, Flag(metavar="URL")] = None
    """Every repo the relay's hosts list."""
    pds: Annotated[HostList, Flag(metavar="URL")] = Field(default_factory=list)
    """Every repo on this PDS (repeatable)."""
    collections: Annotated[Nsids, Flag(metavar="NSID[,NSID...]", joined=True)] = Field(
        default=None,
        description="Record types to keep; patterns like app.bsky.feed.* allowed. Default: "
        f"every app.bsky type: {_DEFAULT_TYPES}.",
    )
    since: Annotated[Moment | None, Flag(metavar="ISO8601")] = None
    """Keep records with createdAt >= since."""
    until: Annotated[Moment | None, Flag(metavar="ISO8601")] = None
    """Keep records with createdAt < until."""
    out: Annotated[Text, Flag(metavar="DIR")] = "bsky-data"
    """The dataset: one Parquet table per collection, _deadletters, _state."""
    queue: Annotated[str | None, Flag(metavar="URL")] = None
    """State store; default SQLite under OUT/_state."""
    plc_url: Annotated[HttpUrl, Flag(metavar="URL")] = "https://plc.directory"
    """The PLC directory that resolves did:plc DIDs."""
    dns_server: Annotated[DnsServer | None, Flag(metavar="HOST[:PORT]")] = None
    """DNS server for handles' _atproto TXT records (default: the system's)."""
    method: Literal["car", "list"] = "car"
    """car: each repo whole (getRepo), verified; list: listRecords pages per collection."""
    rate_limit: Annotated[float, Field(ge=0, le=1e6, allow_inf_nan=False), Flag(metavar="N")] = 10.0
    """Requests per second per PDS host (0: no limit); the host's RateLimit headers
    and 429s always win."""
    allow_private_hosts: bool = False
    """Allow loopback/private PDS hosts."""
    verify: Annotated[
        bool, Flag("--no-verify", invert=True, help="Skip commit-signature / MST verification.")
    ] = True
    """Check commit signatures and MST structure."""
    validate_records: Annotated[
        bool, Flag("--no-validate", invert=True, help="Skip lexicon validation of records.")
    ] = Field(default=True, alias="validate")
    """Check records against their bundled lexicon (keyword `validate`)."""
    workers: Annotated[int, Field(ge=1, le=1024), Flag(metavar="N")] = 1
    """Processes on this machine (each PDS host is worked by one of them at a time)."""
    refresh: bool = False
    """Fetch only what changed since the last run."""
    compact: bool = False
    """When the run has finished, compact the dataset (see `compact`)."""
    host_concurrency: Annotated[Count, Flag(metavar="N")] = 4
    """Repos fetched at once from one host."""
    commit_rows: Annotated[Count, Flag(metavar="N")] = 200_000
    """Commit the open batch at this many rows..."""
    commit_seconds: Annotated[Seconds, Flag(metavar="S")] = 10.0
    """...or when it is this old."""
    connect_timeout: Annotated[Seconds, Flag(metavar="S")] = 10.0
    """Seconds to wait for a connection to a host."""
    read_timeout: Annotated[Seconds, Flag(metavar="S")] = 60.0
    """Abandon a request after this long without a byte, or when its answer is not
    complete within twice this plus 1 s per 50 kB received (retried)."""
    max_car_size: Annotated[Size, Flag(metavar="SIZE")] = "4GiB"
    """Dead-letter repos whose CAR is larger (RepoTooLarge)."""
    max_attempts: Annotated[Count, Flag(metavar="N")] = 6
    """Attempts per repo for transient errors before it is dead-lettered."""
    retry_base: Annotated[Seconds, Flag(metavar="S")] = 2.0
    """First retry delay; doubles per attempt (with jitter)."""
    retry_cap: Annotated[Seconds, Flag(metavar="S")] = 3600.0
    """Longest delay between two attempts, and longest pause of a failing host."""
    give_up_after: Annotated[Duration, Flag(metavar="DURATION")] = "24h"
    """A repo (or host) failing transiently is dead-lettered only after this long
    and --max-attempts tries (e.g. 90s, 30m, 24h; 0: tries alone)."""
    unreachable_after: Annotated[Duration, Flag(metavar="DURATION")] = "10m"
    """Give up on the PLC directory, a relay or a --pds host that has not answered
    once in this run after this long (likely a wrong URL)."""
    retry_failed: Annotated[RetryCodes, Flag(metavar="[CODE,...]", flag_value=RETRY_DEFAULT)] = None
    """First put failed repos back to pending: every code but verdicts about the repo
    (RepoTakendown, VerificationFailed, ...), or the codes named. Their dead letters
    stay as history (_superseded) and are counted once."""
    stream_size: Annotated[Size, Flag(metavar="SIZE")] = "64MiB"
    """Repos at least this big are extracted in parts (bounded memory)."""
    max_retry_after: Annotated[Seconds, Flag(metavar="S")] = 3600.0
    """Longest pause a host's Retry-After / RateLimit-Reset can impose (longer ones are cut)."""
    global_host_rate: Annotated[Count | None, Flag(metavar="N")] = None
    """Requests/s per host for all workers together (PostgreSQL queue; shared egress IP)."""


class CommandOptions(RunOptions):
    """`run`'s options that are about the command, not the run: no `Backfill` arguments."""

    progress: Annotated[bool | None, Flag(switch=True)] = None
    """Live progress (default: on a TTY)."""
    metrics_port: Annotated[int | None, Field(ge=0, le=65535), Flag(metavar="N")] = None
    """Serve Prometheus metrics on this port."""
    metrics_host: Annotated[str, Flag(metavar="ADDR")] = "127.0.0.1"
    """Address the metrics server listens on (0.0.0.0: every interface)."""
    log_format: Literal["text", "json"] = "text"
    """Log lines on stderr: human text or JSON lines."""


# -- the names of one option on every surface ---------------------------------------
@dataclass(frozen=True, slots=True)
class Option:
    """One field and its names: API keyword, flag, file key, variable, click parameter."""

    name: str
    """The field's name (`RunSettings`-like, what options.py reads)."""
    api: str
    """The keyword of `Backfill(...)` and of `RunOptions.model_validate`."""
    flag: str
    key: str
    env: str
    dest: str
    spec: Flag
    field: FieldInfo

    @property
    def default(self) -> Any:
        return self.field.get_default(call_default_factory=True)

    @property
    def is_list(self) -> bool:
        return _origin(self.field.annotation) is list

    def click_value(self, value: Any) -> Any:
        """A value in the flag's sense, in the form click hands it (tuples, joined text)."""
        if self.is_list and value is not None:
            return ",".join(value) if self.spec.joined else tuple(value)
        return value

    def model_value(self, value: Any) -> Any:
        """click's value of the flag -> the field's (`--no-verify` given: verify false)."""
        return not value if self.spec.invert else value


def _bare(annotation: Any) -> Any:
    """`list[str]` of `Annotated[list[str] | None, ...]`: the type without Annotated and None."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _bare(inner[0]) if len(inner) == 1 else annotation
    return annotation


def _origin(annotation: Any) -> Any:
    """The container of a field's type (list for `list[str] | None`), else the type."""
    bare = _bare(annotation)
    return typing.get_origin(bare) or bare


def _option(name: str, field: FieldInfo) -> Option:
    spec = next((m for m in field.metadata if isinstance(m, Flag)), Flag())
    flag = spec.flag or "--" + name.replace("_", "-")
    key = flag.removeprefix("--").replace("-", "_")
    return Option(
        name=name,
        api=field.alias or name,
        flag=flag,
        key=key,
        env=ENV_PREFIX + key.upper(),
        dest=spec.dest or key,
        spec=spec,
        field=field,
    )


OPTIONS: tuple[Option, ...] = tuple(_option(n, f) for n, f in CommandOptions.model_fields.items())
"""Every option of `run`, in the order `--help` lists them."""

RUN_OPTION_NAMES = frozenset(RunOptions.model_fields)
"""The fields that are the run's (and `Backfill`'s)."""

BY_KEY = {o.key: o for o in OPTIONS}
BY_API = {o.api: o for o in OPTIONS}

DEFAULTS: dict[str, Any] = {
    o.dest: o.click_value(not o.default if o.spec.invert else o.default) for o in OPTIONS
}
"""Every `run` option's default, keyed and shaped as click hands them."""


# -- checking, with errors naming the option as the user wrote it -------------------
def usage_error(
    error: ValidationError, given: Mapping[str, Any], label: Callable[[str, Any], str]
) -> UsageError:
    """The first problem of `error` as one line: `label(name, value)`, then what is wrong.

    `given` holds the values as the user gave them, keyed as the model was fed; of
    a list, the item at fault is shown."""
    err = error.errors()[0]
    loc = err["loc"]
    name = str(loc[0]) if loc else "?"
    value = given.get(name)
    if len(loc) > 1 and isinstance(loc[1], int) and isinstance(value, list | tuple):
        value = value[loc[1]] if loc[1] < len(value) else value
    message = str(err["msg"]).removeprefix("Value error, ")
    return UsageError(f"{label(name, value)}: {message}")


def from_click(params: Mapping[str, Any]) -> CommandOptions:
    """click's dict for `run` (keyed by parameter) -> checked options; errors name the flag."""
    given = {o.api: o.model_value(params[o.dest]) for o in OPTIONS if o.dest in params}
    try:
        return CommandOptions.model_validate(given)
    except ValidationError as e:
        raise usage_error(e, given, lambda name, value: f"{BY_API[name].flag} {value!r}") from None


def from_keywords(kwargs: Mapping[str, Any]) -> RunOptions:
    """`Backfill(**kwargs)` -> checked options; errors name the keyword (`since='x'`)."""
    for name in kwargs:
        if name not in BY_API or BY_API[name].name not in RUN_OPTION_NAMES:
            raise UsageError(f"unknown option {name!r} for Backfill")
    try:
        return RunOptions.model_validate(dict(kwargs))
    except ValidationError as e:
        raise usage_error(e, kwargs, lambda name, value: f"{name}={value!r}") from None


# -- the command line ----------------------------------------------------------------
def _click_type(option: Option) -> Any:
    kind = _bare(option.field.annotation)
    if typing.get_origin(kind) is Literal:
        return click.Choice(typing.get_args(kind))
    return kind if kind in (int, float) else None


def run_flags(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate `run` with one click option per field (their order is `--help`'s)."""
    for option in reversed(OPTIONS):
        spec, default = option.spec, DEFAULTS[option.dest]
        kwargs: dict[str, Any] = {
            "default": default,
            "help": spec.help or option.field.description,
            "metavar": spec.metavar,
            "show_default": default not in (None, False, ()),
        }
        decls = [option.flag, option.dest]
        if spec.switch:
            decls[0] = f"{option.flag}/--no-{option.flag.removeprefix('--')}"
            kwargs["show_default"] = False
        elif _origin(option.field.annotation) is bool:
            kwargs["is_flag"] = True
        elif option.is_list and not spec.joined:
            kwargs["multiple"] = True
        elif spec.flag_value is not None:
            kwargs.update(is_flag=False, flag_value=spec.flag_value)
        if not kwargs.get("is_flag"):
            kwargs["type"] = _click_type(option)
        command = click.option(*decls, **kwargs)(command)
    return command


__all__ = [
    "BY_API",
    "BY_KEY",
    "DEFAULTS",
    "ENV_PREFIX",
    "OPTIONS",
    "RUN_OPTION_NAMES",
    "CommandOptions",
    "Flag",
    "Option",
    "RunOptions",
    "from_click",
    "from_keywords",
    "run_flags",
    "usage_error",
]
