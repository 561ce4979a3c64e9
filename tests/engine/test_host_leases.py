"""Which process of a `--workers` team works which host (engine/host_leases.py),
turn by turn, on a real SQLite state store shared by two processes' views."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from bsky_backfill.engine.host_leases import HOST_LEASE, HostLeases
from bsky_backfill.state.sqlite import SqliteStateStore

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
SECOND = dt.timedelta(seconds=1)


class Process:
    """One process's leases and what it has in flight, turn by turn."""

    def __init__(self, store: SqliteStateStore) -> None:
        self.store = store
        self.leases = HostLeases("team", 2)
        self.in_flight: dict[str, int] = {}
        self.paused: set[str] = set()
        self.full = False  # as many hosts active as --max-active-hosts allows

    def turn(self, due: list[str], now: dt.datetime) -> list[str]:
        """A scheduler turn: settle, then the due hosts it may claim on."""
        self.leases.settle(
            self.store,
            due,
            now,
            lambda h: self.in_flight.get(h, 0),
            self.paused.__contains__,
            full=self.full,
        )
        # As the scheduler: a process that is full starts no other host.
        busy = [h for h in due if not self.full or self.in_flight.get(h)]
        return [h for h in busy if self.leases.may_claim(self.store, h, now)]


@pytest.fixture
def team(tmp_path: Path) -> Iterator[tuple[Process, Process]]:
    path = tmp_path / "state.sqlite"
    with SqliteStateStore(path) as a, SqliteStateStore(path) as b:
        yield Process(a), Process(b)


def test_hosts_spread_by_fair_share_and_move_to_a_process_with_room(
    team: tuple[Process, Process],
) -> None:
    a, b = team
    hosts = ["h1", "h2", "h3", "h4"]
    assert a.turn(hosts, T0) == ["h1", "h2"]  # its share: 4 hosts / 2 processes
    assert b.turn(hosts, T0) == ["h3", "h4"]
    a.in_flight = {"h1": 1, "h2": 1}
    b.in_flight = {"h3": 4, "h4": 1}
    # a's hosts are finished: it gives them back. b now holds more than its share
    # of the two hosts with work, so it drains the less busy one...
    a.in_flight = {}
    assert a.turn(["h3", "h4"], T0 + SECOND) == []
    assert a.leases.held == {}
    assert b.turn(["h3", "h4"], T0 + SECOND) == ["h3"]
    # ...and gives it back once nothing of it is in flight: a takes it.
    b.in_flight = {"h3": 4}
    assert b.turn(["h3", "h4"], T0 + 2 * SECOND) == ["h3"]
    assert list(b.leases.held) == ["h3"]
    assert a.turn(["h3", "h4"], T0 + 3 * SECOND) == ["h4"]


def test_a_paused_host_stays_with_its_process(team: tuple[Process, Process]) -> None:
    """Its breaker lives in that process: another would start afresh on it."""
    a, b = team
    assert a.turn(["h1"], T0) == ["h1"]
    a.paused = {"h1"}
    assert a.turn([], T0 + SECOND) == []  # nothing due, nothing in flight: but paused
    assert b.turn(["h1"], T0 + 10 * SECOND) == []
    a.paused = set()
    a.turn([], T0 + 11 * SECOND)
    assert b.turn(["h1"], T0 + 14 * SECOND) == ["h1"]  # b asked again after a pause of its own


def test_a_killed_process_loses_its_hosts_when_their_leases_end(
    team: tuple[Process, Process],
) -> None:
    a, b = team
    assert a.turn(["h1", "h2"], T0) == ["h1"]
    a.in_flight = {"h1": 1}
    # a renews at its turns; b, asking, is refused while a lives.
    for s in range(0, 100, 10):
        a.turn(["h1", "h2"], T0 + s * SECOND)
        assert b.turn(["h1", "h2"], T0 + s * SECOND) == ["h2"]
    # a is killed after its last turn. b, at its share, keeps to h2; once h2 is done,
    # b has room, and takes h1 when a's lease is over.
    end = a.leases.held["h1"]
    assert end >= T0 + 90 * SECOND + HOST_LEASE - 20 * SECOND  # renewed ahead of time
    b.in_flight = {"h2": 1}
    assert b.turn(["h1", "h2"], end - 2 * SECOND) == ["h2"]
    b.in_flight = {}
    assert b.turn(["h1"], end - SECOND) == []  # before the lease is over: a's
    assert b.leases.held == {}
    assert b.turn(["h1"], end + SECOND) == ["h1"]


def test_a_process_with_no_room_gives_back_the_hosts_it_cannot_work(
    team: tuple[Process, Process],
) -> None:
    a, b = team
    hosts = ["h1", "h2", "h3", "h4"]
    assert a.turn(hosts, T0) == ["h1", "h2"]
    a.in_flight = {"h1": 1}  # h2 is due, but a works as many hosts as it may
    a.full = True
    assert a.turn(hosts, T0 + SECOND) == ["h1"]
    assert list(a.leases.held) == ["h1"]
    assert b.turn(hosts, T0 + SECOND) == ["h2", "h3"]


def test_a_process_at_its_end_frees_every_host(team: tuple[Process, Process]) -> None:
    a, b = team
    assert a.turn(["h1", "h2", "h3"], T0) == ["h1", "h2"]
    a.in_flight = {"h1": 1, "h2": 1}
    a.leases.release_all(a.store)
    assert b.turn(["h1", "h2", "h3"], T0) == ["h1", "h2"]
