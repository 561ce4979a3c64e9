"""The retry policy (a pure function) and how a rate bucket reads server feedback."""

from __future__ import annotations

import datetime as dt
import time

from bsky_backfill.errors import HostPaused, RateLimited, RepoUnavailable, TransientError
from bsky_backfill.xrpc.ratelimit import RateBucket, reset_at, retry_after_seconds
from bsky_backfill.xrpc.retry import RetryPolicy, error_code, next_attempt, retried_by_default
from bsky_backfill.xrpc.slot import HostSlot, bucket_name

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)


def test_terminal_errors_are_never_retried() -> None:
    assert (
        next_attempt(RetryPolicy(), RepoUnavailable("gone", code="RepoTakendown"), 1, NOW, 0.5)
        is None
    )


def test_unknown_exceptions_are_transient_and_bounded_like_the_rest() -> None:
    policy = RetryPolicy(max_attempts=3, give_up_after=None, jitter=0)
    assert next_attempt(policy, ValueError("bug"), 1, NOW, 0.5) == NOW + dt.timedelta(seconds=2)
    assert next_attempt(policy, ValueError("bug"), 3, NOW, 0.5) is None
    assert error_code(ValueError("bug")) == "InternalError"
    assert error_code(TransientError("x", code="Http503")) == "Http503"


def test_a_repo_is_failed_for_good_only_when_tries_and_time_are_both_spent() -> None:
    policy = RetryPolicy(max_attempts=3, give_up_after=86_400, base_seconds=2, jitter=0)
    error = TransientError("refused", code="ConnectionError")
    # a burst of failures within one bad minute: tries spent, time not: retried
    first = NOW - dt.timedelta(seconds=60)
    assert next_attempt(policy, error, 10, NOW, 0.5, failing_since=first) is not None
    # a day of failures but only two tries: retried
    day = NOW - dt.timedelta(hours=25)
    assert next_attempt(policy, error, 2, NOW, 0.5, failing_since=day) is not None
    # both spent: failed for good
    assert next_attempt(policy, error, 3, NOW, 0.5, failing_since=day) is None
    # no failure time kept (in-memory retries of a page): tries alone decide
    assert next_attempt(policy, error, 3, NOW, 0.5) is None


def test_backoff_is_capped_at_about_an_hour_without_overflowing() -> None:
    policy = RetryPolicy(give_up_after=None, max_attempts=10_000, jitter=0.5)
    for attempt in (12, 13, 100, 5000):
        when = next_attempt(policy, TransientError("x"), attempt, NOW, 0.999)
        assert when is not None
        assert 3600 <= (when - NOW).total_seconds() < 1.5 * 3600 + 1


def test_host_paused_waits_for_the_host() -> None:
    later = NOW + dt.timedelta(minutes=20)
    when = next_attempt(RetryPolicy(), HostPaused("down", retry_at=later), 1, NOW, 0.5)
    assert when == later


def test_retry_failed_leaves_verdicts_about_the_repo_alone() -> None:
    for code in ("ConnectionError", "Http503", "ResolveFailed", "BlockedPrivateAddress",
                 "InternalError", "Timeout"):  # fmt: skip
        assert retried_by_default(code), code
    for code in ("RepoTakendown", "VerificationFailed", "DidNotFound", "RepoNotFound"):
        assert not retried_by_default(code), code


def test_transient_backoff_grows_and_is_bounded() -> None:
    policy = RetryPolicy(
        max_attempts=5, base_seconds=2, cap_seconds=10, jitter=0, give_up_after=None
    )
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


def test_429_with_reset_header_pauses_until_the_end_of_that_second() -> None:
    bucket = RateBucket(10.0)
    reset = int(time.time()) + 42
    bucket.observe(429, {"RateLimit-Remaining": "0", "RateLimit-Reset": str(reset)})
    assert bucket.paused_until == reset + 1


def test_a_whole_second_reset_means_the_end_of_that_second() -> None:
    now = 1_700_000_000.25
    # the reference PDS floors (now_ms + msBeforeNext) / 1000: the window may end
    # anywhere within the second it names, so only its end is safe
    assert reset_at("1700000042", now) == 1_700_000_043.0
    assert reset_at("1700000042.5", now) == 1_700_000_042.5  # exact: taken as it is
    assert reset_at("30", now) == now + 30  # seconds from now (not whole from the epoch)
    assert reset_at("soon", now) is None


async def _acquire_all(bucket: RateBucket, n: int) -> None:
    for _ in range(n):
        await bucket.acquire()


def test_the_tightest_of_several_published_policies_holds() -> None:
    """xrpc-server reports whichever limiter is tightest; a bucket keeps all it heard of."""
    import asyncio

    bucket = RateBucket(None)
    now = time.time()
    g_reset, r_reset = int(now) + 100, int(now) + 50
    route = {"RateLimit-Limit": "10", "RateLimit-Remaining": "6",
             "RateLimit-Reset": str(r_reset), "RateLimit-Policy": "10;w=60"}  # fmt: skip
    glob = {"RateLimit-Limit": "100", "RateLimit-Remaining": "2",
            "RateLimit-Reset": str(g_reset), "RateLimit-Policy": "100;w=300"}  # fmt: skip
    bucket.in_flight = 1
    bucket.observe(200, route)
    bucket.in_flight = 1
    bucket.observe(200, glob)
    assert set(bucket.quotas) == {(10, 60.0), (100, 300.0)}
    assert bucket.server_remaining == 2 and bucket.server_reset == g_reset + 1
    asyncio.run(_acquire_all(bucket, 2))  # every request counts against every policy
    assert bucket.quotas[(10, 60.0)].remaining == 4
    assert bucket.quotas[(100, 300.0)].remaining == 0
    delay = bucket._delay(time.time())
    assert g_reset + 1 - time.time() - 1 < delay <= g_reset + 1.02 - time.time()
    assert "budget used up" in bucket.pause_reason


def test_a_window_that_rolled_over_is_probed_one_request_at_a_time() -> None:
    bucket = RateBucket(None)
    now = time.time()
    bucket.in_flight = 1
    bucket.observe(200, {"RateLimit-Limit": "5", "RateLimit-Remaining": "0",
                         "RateLimit-Reset": str(now - 0.5)})  # fmt: skip
    assert bucket._delay(time.time()) == 0  # over: forgotten, one probe may go
    assert not bucket.quotas
    bucket.in_flight = 1
    assert bucket._delay(time.time()) > 0  # the probe is out: wait for its answer


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
