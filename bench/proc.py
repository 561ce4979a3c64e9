"""Run one measured child process: wall time, CPU time and peak memory of that child alone.

Where it sits: every figure of the bench (product, ceiling, baseline) comes
from a child started here. `os.wait4` gives the child's own rusage (user +
system CPU, `ru_maxrss` = the peak RSS of its largest process), unlike
`getrusage(RUSAGE_CHILDREN)`, which is the maximum over *every* child ever
waited for (the simulator's repo builders included). A sampler thread also
sums the RSS of the child's whole process tree from /proc every 50 ms, for
products that fork worker processes (peak of the sum, sampled).

A trap this module avoids: on exec, Linux folds the *old* address space's
high-water RSS into the child's `ru_maxrss`, and a child forked (or vforked)
from the bench process starts with the bench's address space, which holds
the whole simulated network (gigabytes). So children are not started from
the bench process itself but from a small spawner process (`Spawner`,
started before the network is built): `run_child` / `run_children` hand
their jobs to it when one is running (`start_spawner`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_PAGE = os.sysconf("SC_PAGE_SIZE")
#: The repository root: children import `bench` from here whatever their cwd.
ROOT = Path(__file__).resolve().parents[1]


@dataclass
class ChildResult:
    """What one child process did and cost."""

    argv: list[str]
    returncode: int
    wall_s: float
    cpu_user_s: float
    cpu_sys_s: float
    max_rss_bytes: int
    """`ru_maxrss` from wait4: peak RSS of the child (or of its largest descendant)."""
    tree_rss_peak_bytes: int
    """Peak of the summed RSS of the child and its descendants (sampled every 50 ms)."""
    stdout: str = field(repr=False, default="")
    stderr: str = field(repr=False, default="")

    @property
    def cpu_s(self) -> float:
        return self.cpu_user_s + self.cpu_sys_s

    def tail(self, n: int = 600) -> str:
        """The end of stderr (or stdout), for a failure message."""
        return (self.stderr.strip() or self.stdout.strip())[-n:]


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except (OSError, ValueError):
                continue
    return out


def run_child(argv: Sequence[str], log: Path, *, timeout_s: float = 3600.0) -> ChildResult:
    """Run `argv` to completion; its stdout goes to `log`, its stderr to `log` + ".err"."""
    return run_children([(argv, log)], timeout_s=timeout_s)[0]


def run_children(
    jobs: Sequence[tuple[Sequence[str], Path]], *, timeout_s: float = 3600.0
) -> list[ChildResult]:
    """Run several children at once (each measured alone); their results in order."""
    if _spawner is not None:
        return _spawner.run(jobs, timeout_s)
    return _run_concurrently(jobs, timeout_s)


def _run_concurrently(
    jobs: Sequence[tuple[Sequence[str], Path]], timeout_s: float
) -> list[ChildResult]:
    results: list[ChildResult | None] = [None] * len(jobs)

    def one(i: int) -> None:
        argv, log = jobs[i]
        results[i] = _run_here(argv, log, timeout_s)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if any(r is None for r in results):
        raise RuntimeError("a measured child could not be run")
    return [r for r in results if r is not None]


class Spawner:
    """A small process that starts the measured children (see the module docstring).

    Protocol: one JSON line per request on its stdin (`{"jobs": [[argv, log], ...],
    "timeout_s": N}`), one JSON line of results on its stdout.
    """

    def __init__(self) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.proc"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        self._lock = threading.Lock()

    def run(
        self, jobs: Sequence[tuple[Sequence[str], Path]], timeout_s: float
    ) -> list[ChildResult]:
        request = {"jobs": [[list(a), str(log)] for a, log in jobs], "timeout_s": timeout_s}
        with self._lock:
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
        if not line:
            raise RuntimeError("the bench's spawner process died")
        return [ChildResult(**r) for r in json.loads(line)]

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)


_spawner: Spawner | None = None


def start_spawner() -> Spawner:
    """Start the spawner (once, while this process is still small); later children use it."""
    global _spawner
    if _spawner is None:
        _spawner = Spawner()
    return _spawner


def stop_spawner() -> None:
    global _spawner
    if _spawner is not None:
        _spawner.close()
        _spawner = None


def _spawner_main() -> None:
    """The spawner process: run each request's jobs concurrently, answer with their results."""
    for line in sys.stdin:
        request = json.loads(line)
        jobs = [(argv, Path(log)) for argv, log in request["jobs"]]
        results = _run_concurrently(jobs, float(request["timeout_s"]))
        sys.stdout.write(json.dumps([dataclasses.asdict(r) for r in results]) + "\n")
        sys.stdout.flush()


def _run_here(argv: Sequence[str], log: Path, timeout_s: float) -> ChildResult:
    """Run `argv` to completion; its stdout goes to `log`, its stderr to `log` + ".err"."""
    env = dict(os.environ)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    err_log = log.with_name(log.name + ".err")
    peak = [0]
    with open(log, "w") as out_f, open(err_log, "w") as err_f:
        start = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdout=out_f, stderr=err_f)
        done = threading.Event()

        def sample() -> None:
            while not done.wait(0.05):
                peak[0] = max(peak[0], sum(_rss(p) for p in _descendants(proc.pid)))

        sampler = threading.Thread(target=sample, name="bench-rss", daemon=True)
        sampler.start()
        deadline = time.monotonic() + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
            time.sleep(0.005)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    return ChildResult(
        argv=list(argv),
        returncode=proc.returncode,
        wall_s=wall,
        cpu_user_s=usage.ru_utime,
        cpu_sys_s=usage.ru_stime,
        max_rss_bytes=usage.ru_maxrss * 1024,  # KiB on Linux
        tree_rss_peak_bytes=max(peak[0], usage.ru_maxrss * 1024),
        stdout=log.read_text(errors="replace"),
        stderr=err_log.read_text(errors="replace"),
    )


def python_module(module: str, *args: str) -> list[str]:
    """argv for `python -m module args` with this interpreter."""
    return [sys.executable, "-m", module, *args]


if __name__ == "__main__":
    _spawner_main()
