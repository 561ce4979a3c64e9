"""Host labels of the counters: bounded, and every series stays monotonic."""

from __future__ import annotations

import random

from bsky_backfill.observe.metrics import OTHER, HostLabels


def test_labels_stay_bounded_and_counters_never_go_down() -> None:
    rng = random.Random(1511)
    labels = HostLabels(limit=20, threshold=50)
    counts: dict[tuple[str, ...], int] = {}
    last: dict[tuple[str, ...], int] = {}
    for step in range(400):
        for _ in range(300):  # a few busy hosts and many idle ones, as on the network
            host = f"h{int(rng.paretovariate(0.8)) % 600}.example"
            key = (host, rng.choice(["getRepo", "listRepos"]), rng.choice(["200", "429"]))
            counts[key] = counts.get(key, 0) + 1
        exposed = labels.relabel(dict(counts))
        assert len({k[0] for k in exposed}) <= 21
        assert sum(exposed.values()) == sum(counts.values())  # nothing lost or counted twice
        for key, value in exposed.items():
            assert value >= last.get(key, 0), (step, key)  # a counter never goes down
        for key in last:
            assert key in exposed  # a series never disappears
        last = exposed
    assert OTHER in {k[0] for k in last}


def test_a_small_run_labels_every_host_at_once() -> None:
    labels = HostLabels()
    exposed = labels.relabel({("a.example", "getRepo", "200"): 1, ("b.example", "x", "200"): 2})
    assert {k[0] for k in exposed} == {"a.example", "b.example"}
