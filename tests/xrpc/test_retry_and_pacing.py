"""The retry policy (a pure function) and how a rate bucket reads server feedback."""

from __future__ import annotations

import datetime as dt
import time

from bsky_backfill.errors import RateLimited, RepoUnavailable, TransientError
from bsky_backfill.xrpc.ratelimit import RateBucket, retry_after_seconds
from bsky_backfill.xrpc.retry import RetryPolicy, next_attempt
from bsky_backfill.xrpc.slot import HostSlot, bucket_name

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_terminal_errors_are_never_retried() -> None:
    assert (
        next_attempt(RetryPolicy(), RepoUnavailable("gone", code="RepoTakendown"), 1, NOW, 0.5)
        is None
    )
    assert next_attempt(RetryPolicy(), ValueError("bug"), 1, NOW, 0.5) is None


def test_transient_backoff_grows_and_is_bounded() -> None:
    policy = RetryPolicy(max_attempts=5, base_seconds=2, cap_seconds=10, jitter=0)
    delays = [
        (next_attempt(policy, TransientError("x"), attempt, NOW, 0.5) - NOW).total_seconds()  # type: ignore[operator]
        for attempt in range(1, 5)
    ]
    assert delays == [2, 4, 8, 10]
    assert next_attempt(policy, TransientError("x"), 5, NOW, 0.5) is None


def test_jitter_spreads_within_bounds() -> None:
    policy = RetryPolicy(base_seconds=10, jitter=0.5)
    low = next_attempt(policy, TransientError("x"), 1, NOW, 0.0)
    high = next_attempt(policy, TransientError("x"), 1, NOW, 0.999)
    assert low == NOW + dt.timedelta(seconds=5)
    assert high is not None and NOW + dt.timedelta(seconds=14.9) < high < NOW + dt.timedelta(
        seconds=15
    )


def test_rate_limited_waits_at_least_until_the_server_says() -> None:
    later = NOW + dt.timedelta(minutes=4)
    when = next_attempt(RetryPolicy(), RateLimited("429", retry_at=later), 1, NOW, 0.5)
    assert when == later


def test_retry_after_forms() -> None:
    now = time.time()
    assert retry_after_seconds({"Retry-After": "7"}, now) == 7
    http_date = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(now + 30))
    wait = retry_after_seconds({"Retry-After": http_date}, now)
    assert wait is not None and 28 <= wait <= 31
    assert retry_after_seconds({}, now) is None


def test_bare_429_backs_off_exponentially() -> None:
    bucket = RateBucket(None, backoff_base=1.0, backoff_cap=100.0)
    pauses = []
    for _ in range(4):
        bucket.in_flight = 1
        before = time.time()
        bucket.observe(429, {})
        pauses.append(bucket.paused_until - before)
    assert 0.4 < pauses[0] < 1.6
    assert pauses[3] > pauses[0] * 2  # 8x base with jitter in [0.5, 1.5]
    assert "429" in bucket.describe()


def test_429_with_reset_header_pauses_until_reset() -> None:
    bucket = RateBucket(10.0)
    reset = int(time.time()) + 42
    bucket.observe(429, {"RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)})
    assert abs(bucket.paused_until - reset) < 1.5


def test_published_budget_accounts_for_requests_in_flight() -> None:
    bucket = RateBucket(None)
    bucket.in_flight = 4  # this response + 3 others still out
    bucket.observe(
        200, {"RateLimit-Remaining": "10", "RateLimit-Reset": str(int(time.time()) + 60)}
    )
    assert bucket.server_remaining == 7


def test_a_429_pauses_the_whole_host() -> None:
    slot = HostSlot("pds.example", rate=None, concurrency=2)
    slot.bucket("com.atproto.repo.listRecords")
    slot.observe("com.atproto.sync.getRepo", 429, {"Retry-After": "30"})
    assert all(b.paused_until > time.time() + 25 for b in slot.buckets.values())
    assert bucket_name("com.atproto.sync.getRepo") != bucket_name("com.atproto.repo.listRecords")


def test_rate_limit_headers_are_bounded_before_anyone_acts_on_them() -> None:
    from bsky_backfill.xrpc.ratelimit import RateBucket, bounded_rate_headers

    now = 1_700_000_000.0
    headers = {
        "Retry-After": "1000000000000", "RateLimit-Reset": "1000000000000",
        "RateLimit-Remaining": "nan", "RateLimit-Limit": "1e400", "Content-Type": "x",
    }  # fmt: skip
    bounded = bounded_rate_headers(headers, now, cap=3600)
    assert bounded["Retry-After"] == "3600"
    assert float(bounded["RateLimit-Reset"]) == now + 3600
    assert "RateLimit-Remaining" not in bounded and "RateLimit-Limit" not in bounded
    assert bounded["Content-Type"] == "x"
    year = bounded_rate_headers({"Retry-After": "31536000"}, now, cap=60)
    assert year["Retry-After"] == "60"
    date = bounded_rate_headers({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, now, cap=60)
    assert date["Retry-After"] == "60"
    bucket = RateBucket(10.0)
    bucket.in_flight = 1
    bucket.observe(429, bounded)  # no OverflowError, a pause of at most the cap
    assert (
        bucket.paused_until <= now + 3600 + 1
        or bucket.paused_until <= __import__("time").time() + 3601
    )
