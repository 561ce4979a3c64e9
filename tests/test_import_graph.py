"""The package's import graph: no cycles, and every module imports on its own.

The graph is read from the source (module-level imports, `TYPE_CHECKING` blocks
left out: they never run), so a cycle is caught even where import order happens
to hide it today. Then each module is imported alone in a fresh interpreter
state (a forked child of an interpreter that has imported nothing of ours), so a
module that only works after another one was imported first fails here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.fixture_paths import REPO_ROOT

SRC = REPO_ROOT / "src"


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted((SRC / "bsky_backfill").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, package)
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of ours its module-level code imports."""
    mods = modules()

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for name, (path, package) in mods.items():
        here = name if package else name.rpartition(".")[0]
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            body = node.body if isinstance(node, ast.Try) else [node]
            for stmt in body:
                targets: list[str | None] = []
                if isinstance(stmt, ast.Import):
                    targets = [resolve(a.name) for a in stmt.names]
                elif isinstance(stmt, ast.ImportFrom):
                    base = stmt.module or ""
                    if stmt.level:
                        parts = here.split(".")
                        parts = parts[: len(parts) - (stmt.level - 1)]
                        base = ".".join([*parts, *([stmt.module] if stmt.module else [])])
                    targets = [
                        f"{base}.{a.name}" if f"{base}.{a.name}" in mods else resolve(base)
                        for a in stmt.names
                    ]
                graph[name].update(t for t in targets if t and t.startswith("bsky_backfill"))
        graph[name].discard(name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            nxt = next(edges, None)
            if nxt is not None:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk saw the package
    # It saw real edges (the CLI imports the engine inside its commands, lazily).
    assert "bsky_backfill.run_options" in graph["bsky_backfill.cli"]
    assert "bsky_backfill.engine.scheduler" in graph["bsky_backfill.engine.manager"]
    assert cycles(graph) == []


_CHILD = """
import os, sys, traceback
failed = []
for name in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__(name)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        failed.append(name)
print("FAILED:" + ",".join(failed))
"""


def test_every_module_imports_alone() -> None:
    names = [n for n in modules() if not n.endswith("__main__")]
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, *names],
        capture_output=True,
        text=True,
        env=env,
        timeout=500,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last == "FAILED:", f"{last}\n{result.stderr[-3000:]}"
