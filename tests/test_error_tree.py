"""The one error tree (errors.py): every error the product raises on purpose sits in
exactly one of its branches, and each layer's names are the tree's own classes."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import bsky_backfill
from bsky_backfill import errors
from bsky_backfill.errors import (
    BackfillError,
    BatchRefused,
    CommitRefused,
    FatalError,
    LeaseLostError,
    StateStoreError,
    StateStoreUnavailable,
    TerminalError,
    TransientError,
    UsageError,
)

BRANCHES = (UsageError, FatalError, TransientError, TerminalError)


def _product_errors() -> list[type[BaseException]]:
    """Every exception class defined anywhere in the package (simulator aside)."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages(bsky_backfill.__path__, "bsky_backfill."):
        if info.name.startswith("bsky_backfill.simulate") or info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == info.name:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return list(found.values())


def test_every_product_error_is_in_exactly_one_branch() -> None:
    classes = _product_errors()
    ours = [c for c in classes if issubclass(c, BackfillError)]
    assert len(ours) >= 15, ours  # the walk found the tree
    for cls in ours:
        if cls is BackfillError or cls in BRANCHES:
            continue
        branches = [b for b in BRANCHES if issubclass(cls, b)]
        assert len(branches) == 1, (cls, branches)


def test_the_store_and_sink_names_are_the_tree_s_own() -> None:
    from bsky_backfill.sinks import BatchRefused as SinkBatchRefused
    from bsky_backfill.state import errors as state_errors

    assert state_errors.StateStoreError is StateStoreError
    assert state_errors.LeaseLostError is LeaseLostError
    assert SinkBatchRefused is BatchRefused
    # A refused commit means "put the repos back", so it is transient, never fatal;
    # an unusable store is fatal, and its in-store retry is part of that branch.
    assert issubclass(LeaseLostError, CommitRefused) and issubclass(BatchRefused, CommitRefused)
    assert issubclass(CommitRefused, TransientError) and not issubclass(CommitRefused, FatalError)
    assert issubclass(StateStoreUnavailable, StateStoreError)
    assert issubclass(StateStoreError, FatalError)
    assert LeaseLostError("gone", ["did:plc:a"]).dids == ("did:plc:a",)


def test_codes_and_stages_are_set_on_the_classes() -> None:
    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, BackfillError):
            assert cls.code and cls.code[0].isupper(), cls
            assert cls.stage in {
                "run",
                "state",
                "fetch",
                "resolve",
                "decode",
                "commit",
                "sink",
                "compact",
            }


# Internal signals outside the tree, each caught and mapped into it at one boundary:
# their base class is what the library around them expects.
OUTSIDE_THE_TREE = {
    # a ValueError for key parsing; identity/ and repo/verify.py map it to a verdict
    "bsky_backfill.identity.didkey.KeyParseError",
    # a ValueError inside the DNS client; identity/handle.py maps it to HandleNotFound
    "bsky_backfill.identity.dns.DnsError",
    # a ValueError inside CAR reading; repo/ maps it to RepoInvalid or a transient cut body
    "bsky_backfill.repo.car.TruncatedCar",
    # an OSError, because it is raised inside aiohttp's connect; xrpc/client.py maps it
    "bsky_backfill.xrpc.ssrf.BlockedAddressOSError",
    # control flow inside a refresh (a diff lacking a block: fetch the whole repo);
    # engine/repo_task.py catches it, it never reaches a user
    "bsky_backfill.engine.refresh.NeedsWholeRepo",
}


def test_the_only_errors_outside_the_tree_are_the_boundary_signals() -> None:
    outside = {
        f"{c.__module__}.{c.__qualname__}"
        for c in _product_errors()
        if not issubclass(c, BackfillError)
    }
    assert outside == OUTSIDE_THE_TREE
