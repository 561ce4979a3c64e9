"""repo layer: a fetched repository CAR -> its commit and its (key, record CID) leaves.

car.py      read_car: libipld decode (GC paused), errors -> RepoInvalid(InvalidCar)
commit.py   read_commit: the root commit's fields, checked for shape
mst.py      walk_mst: iterative MST walk, keys in order, only what the tree reaches
verify.py   signature, MST structure and block-hash checks (VerificationFailed)
diff.py     what changed since a landed revision (refresh): new, changed, deleted keys
build.py    the writing side (CARs and MSTs) for tests and benchmarks (the simulator has its own)
gcpause.py  gc_paused: the process-wide, re-entrant collector pause
"""
