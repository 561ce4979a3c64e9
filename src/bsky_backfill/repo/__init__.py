"""repo layer: a fetched repository CAR -> its commit and its (key, record CID) leaves.

car.py      read_car: libipld decode (GC paused), errors -> RepoInvalid(InvalidCar)
commit.py   read_commit: the root commit's fields, checked for shape
mst.py      walk_mst / walk_verified: iterative MST walks, keys in order, whole trees or subtrees
verify.py   signature, MST structure and block-hash checks (VerificationFailed)
lazy.py     read_car_lazy: a frame index and blocks decoded on access (big repos)
native.py   verification's per-block loops in C (_native.c) when built, else None (Python twins)
diff.py     what changed since a landed revision (refresh): new, changed, deleted keys
build.py    the writing side (CARs and MSTs) for tests and benchmarks (the simulator has its own)
gcpause.py  gc_paused: the process-wide, re-entrant collector pause
"""
