"""The benchmark harness (`make bench`, `python -m bench`): see `bench/__main__.py`.

Not a test suite: figures depend on the machine and on what else runs on it.
Every measured piece runs as its own child process (`bench.proc`), so its peak
RSS and CPU time are its own, not the simulator's.
"""
