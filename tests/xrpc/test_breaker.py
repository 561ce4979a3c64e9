"""The per-host circuit breaker, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import pytest

from bsky_backfill.errors import HostPaused, HostUnreachable, RateLimited, TransientError
from bsky_backfill.xrpc.breaker import (
    Breaker,
    BreakerBoard,
    BreakerPolicy,
    BreakerState,
    Outcome,
    is_host_failure,
)

REFUSED = TransientError("connection refused", code="ConnectionError")


class Clock:
    def __init__(self) -> None:
        self.t = 1_000_000.0

    def __call__(self) -> float:
        return self.t


def breaker(clock: Clock, **kw: float | int | None) -> Breaker:
    policy = BreakerPolicy(jitter=0.0, **kw)  # type: ignore[arg-type]
    return Breaker("pds.example", policy, clock=clock, rand=lambda: 0.5)


def test_what_counts_as_a_host_failure() -> None:
    assert is_host_failure(REFUSED)
    assert is_host_failure(TransientError("x", code="Timeout"))
    assert is_host_failure(TransientError("x", code="Http503"))
    assert not is_host_failure(TransientError("x", code="TruncatedBody"))
    assert not is_host_failure(RateLimited("429"))
    assert not is_host_failure(HostPaused("held"))
    assert not is_host_failure(ValueError("bug"))


def test_several_failures_in_a_row_pause_the_host_and_one_probe_goes_per_pause() -> None:
    clock = Clock()
    b = breaker(clock, threshold=3, base_seconds=10, cap_seconds=40)
    for _ in range(2):
        assert b.check() is False
        b.failure(REFUSED)
    assert b.state is BreakerState.CLOSED  # two in a row: not yet
    b.failure(REFUSED)
    assert b.state is BreakerState.OPEN and b.resume_at == clock.t + 10
    with pytest.raises(HostPaused) as held:
        b.check()
    assert held.value.retry_at is not None
    assert b.claimable(busy=0) == 0
    assert "ConnectionError" in b.reason
    pauses = []
    for _ in range(4):  # each failed probe doubles the pause, up to the cap
        clock.t = b.resume_at
        assert b.claimable(busy=0) == 1 and b.claimable(busy=1) == 0
        assert b.check() is True  # the probe
        with pytest.raises(HostPaused):
            b.check()  # only one
        assert b.claimable(busy=0) == 0
        before = clock.t
        b.failure(REFUSED, probe=True)
        pauses.append(b.resume_at - before)
    assert pauses == [20, 40, 40, 40]
    clock.t = b.resume_at
    assert b.check() is True
    b.success()
    assert b.state is BreakerState.CLOSED and b.claimable(busy=0) is None
    assert b.check() is False and b.pauses == 0


def test_a_success_resets_the_count_and_stragglers_do_not_extend_a_pause() -> None:
    clock = Clock()
    b = breaker(clock, threshold=3, base_seconds=10)
    b.failure(REFUSED)
    b.failure(REFUSED)
    b.success()
    b.failure(REFUSED)
    assert b.state is BreakerState.CLOSED
    b.failure(REFUSED)
    b.failure(REFUSED)
    resume = b.resume_at
    clock.t += 5
    b.failure(REFUSED)  # a request sent before the pause fails late
    assert b.resume_at == resume
    assert b.holds(REFUSED) and not b.holds(TransientError("x", code="TruncatedBody"))


def test_a_host_failing_past_the_time_budget_is_given_up() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1, base_seconds=30, cap_seconds=30, give_up_after=100)
    b.answered = True
    b.failure(REFUSED)
    while b.state is BreakerState.OPEN:
        clock.t = b.resume_at
        assert b.check() is True
        b.failure(REFUSED, probe=True)
    assert b.state is BreakerState.GIVEN_UP
    assert clock.t - 1_000_000.0 >= 100
    with pytest.raises(HostUnreachable) as gone:
        b.check()
    assert gone.value.code == "ConnectionError"  # retryable with run --retry-failed
    assert b.claimable(busy=0) is None  # drain its repos quickly


def test_an_operator_endpoint_that_never_answered_is_given_up_sooner() -> None:
    clock = Clock()
    board = BreakerBoard(
        BreakerPolicy(threshold=1, base_seconds=1, cap_seconds=1, jitter=0,
                      give_up_after=86_400, unreachable_after=5),
        clock=clock,
    )  # fmt: skip
    board.mark_operator("PLC.example:443")
    plc, pds = board.get("plc.example:443"), board.get("pds.example")
    assert plc.operator and not pds.operator
    for b in (plc, pds):
        b.failure(REFUSED)
        for _ in range(10):
            clock.t = b.resume_at
            if b.state is BreakerState.OPEN:
                b.check()
                b.failure(REFUSED, probe=True)
    assert plc.state is BreakerState.GIVEN_UP
    assert pds.state is BreakerState.OPEN
    # one that answered before gets the full budget
    other = board.get("relay.example")
    board.mark_operator("relay.example")
    other.success()
    other.failure(REFUSED)
    for _ in range(10):
        clock.t = other.resume_at
        other.check()
        other.failure(REFUSED, probe=True)
    assert other.state is BreakerState.OPEN


def test_outcome_reports_once_and_frees_an_unanswered_probe() -> None:
    clock = Clock()
    b = breaker(clock, threshold=1, base_seconds=10)
    b.failure(REFUSED)
    clock.t = b.resume_at
    outcome = Outcome(b)
    outcome.failed(TransientError("x", code="TruncatedBody"))  # not about the host
    outcome.close()
    assert not b.probing and b.state is BreakerState.OPEN
    outcome = Outcome(b)
    outcome.answered(503, TransientError("x", code="Http503"))
    outcome.failed(REFUSED)  # already reported
    outcome.close()
    assert b.state is BreakerState.OPEN and b.pauses == 2
    clock.t = b.resume_at
    outcome = Outcome(b)
    outcome.answered(400)
    outcome.close()
    assert b.state is BreakerState.CLOSED


def test_board_tells_listeners_about_pauses() -> None:
    clock = Clock()
    board = BreakerBoard(BreakerPolicy(threshold=1, jitter=0), clock=clock)
    seen: list[tuple[str, BreakerState]] = []
    board.listeners.append(lambda b: seen.append((b.host, b.state)))
    b = board.get("Pds.Example")
    b.failure(REFUSED)
    clock.t = b.resume_at
    b.check()
    b.success()
    assert seen == [("pds.example", BreakerState.OPEN), ("pds.example", BreakerState.CLOSED)]
    assert board.paused() == []
