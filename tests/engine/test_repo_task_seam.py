"""The per-repo task knows its run only through `RepoOutcomes` (engine/repo_task.py).

Read from the source: repo_task.py imports nothing of the run's own modules (not
even for type checking), and every use of its outcomes object is a name the
protocol declares; and the run (`Backfill`) has every name the protocol declares.
"""

from __future__ import annotations

import ast

from bsky_backfill.engine.manager import Backfill
from bsky_backfill.engine.repo_task import RepoOutcomes
from tests.fixture_paths import REPO_ROOT

ENGINE = REPO_ROOT / "src" / "bsky_backfill" / "engine"
RUN_MODULES = {"manager", "scheduler", "commits", "resolve_loop", "source_loop", "takeover"}


def declared() -> set[str]:
    return {name for name in vars(RepoOutcomes) if not name.startswith("_")}


def test_repo_task_imports_no_module_of_the_run() -> None:
    tree = ast.parse((ENGINE / "repo_task.py").read_text(encoding="utf-8"))
    imported = {
        node.module.rpartition(".")[2]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & RUN_MODULES, imported & RUN_MODULES


def test_repo_task_uses_only_what_the_protocol_declares() -> None:
    tree = ast.parse((ENGINE / "repo_task.py").read_text(encoding="utf-8"))
    aliases = {"outcomes", "run"}  # `self.outcomes`, and the local `run = self.outcomes`
    used: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        local = isinstance(base, ast.Name) and base.id in aliases
        if local or (isinstance(base, ast.Attribute) and base.attr == "outcomes"):
            used.add(node.attr)
    assert used, "the walk found no use of the outcomes"
    assert used <= declared(), used - declared()


def test_the_run_implements_every_name_of_the_protocol() -> None:
    missing = {name for name in declared() if not hasattr(Backfill, name)}
    # `settings`, `store` and `file_metadata` are instance attributes of a run.
    assert missing <= {"settings", "store", "file_metadata"}, missing
