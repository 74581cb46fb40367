"""ipcpool.retry: the handler and ack retry policies, with tenacity's sleep captured instead of slept."""

from __future__ import annotations

import asyncio

import pytest

from ipcpool.config import AckConfig, RetryConfig, ack_retry_window
from ipcpool.retry import (
    ack_retrying,
    ack_wait_strategy,
    async_ack_retrying,
    handler_retrying,
)


class Boom(Exception):
    pass


class AckWait(Exception):
    pass


def _failing(counter: list[int], exc: BaseException):
    def fn():
        counter.append(1)
        raise exc

    return fn


def _run_handler(policy: RetryConfig, exc: BaseException | None = None) -> tuple[int, list[float]]:
    sleeps: list[float] = []
    calls: list[int] = []
    retrying = handler_retrying(policy, sleep=sleeps.append)
    with pytest.raises(type(exc) if exc else Boom):
        retrying(_failing(calls, exc or Boom("handler failed")))
    return len(calls), sleeps


# -- handler retries ---------------------------------------------------------------------------


@pytest.mark.parametrize("attempts", [1, 2, 3, 7])
def test_handler_retrying_makes_exactly_attempts_tries_and_reraises(attempts):
    tries, sleeps = _run_handler(RetryConfig(attempts=attempts, delay=0.1, backoff=2.0, max_delay=5.0))
    assert tries == attempts
    assert len(sleeps) == attempts - 1


def test_handler_retrying_reraises_the_original_exception():
    original = Boom("the reason")
    retrying = handler_retrying(RetryConfig(attempts=2, delay=0.0), sleep=lambda s: None)
    with pytest.raises(Boom) as info:
        retrying(_failing([], original))
    assert info.value is original


def test_handler_retrying_returns_after_a_success():
    calls: list[int] = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise Boom("not yet")
        return "done"

    sleeps: list[float] = []
    assert handler_retrying(RetryConfig(attempts=5, delay=0.1), sleep=sleeps.append)(flaky) == "done"
    assert len(calls) == 3
    assert sleeps == [0.1, 0.2]


def test_handler_retrying_as_an_attempt_loop():
    sleeps: list[float] = []
    tries = 0
    with pytest.raises(Boom):
        for attempt in handler_retrying(RetryConfig(attempts=4, delay=0.5, backoff=1.0), sleep=sleeps.append):
            with attempt:
                tries += 1
                raise Boom("x")
    assert tries == 4
    assert sleeps == [0.5, 0.5, 0.5]


def test_handler_waits_follow_delay_and_backoff():
    _, sleeps = _run_handler(RetryConfig(attempts=5, delay=0.1, backoff=2.0, max_delay=5.0))
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])


def test_handler_waits_are_capped_at_max_delay():
    _, sleeps = _run_handler(RetryConfig(attempts=6, delay=1.0, backoff=3.0, max_delay=5.0))
    assert sleeps == pytest.approx([1.0, 3.0, 5.0, 5.0, 5.0])


def test_handler_waits_fixed_without_backoff():
    _, sleeps = _run_handler(RetryConfig(attempts=4, delay=0.25, backoff=1.0, max_delay=5.0))
    assert sleeps == [0.25, 0.25, 0.25]


@pytest.mark.parametrize("backoff", [1.0, 2.0])
def test_handler_first_wait_is_capped_at_max_delay_too(backoff):
    # "Seconds before the first retry; multiplied by backoff each time, capped at max_delay."
    _, sleeps = _run_handler(RetryConfig(attempts=3, delay=1.0, backoff=backoff, max_delay=0.5))
    assert all(s <= 0.5 for s in sleeps), sleeps


def test_handler_zero_delay_never_waits():
    _, sleeps = _run_handler(RetryConfig(attempts=3, delay=0.0, backoff=2.0, max_delay=5.0))
    assert sleeps == [0.0, 0.0]


def test_handler_default_policy_waits():
    _, sleeps = _run_handler(RetryConfig())
    assert sleeps == pytest.approx([0.1, 0.2])


def test_handler_retrying_does_not_retry_base_exceptions():
    calls: list[int] = []
    retrying = handler_retrying(RetryConfig(attempts=5, delay=0.0), sleep=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        retrying(_failing(calls, KeyboardInterrupt()))
    assert len(calls) == 1


def test_handler_before_sleep_is_called_between_attempts():
    seen: list[int] = []
    retrying = handler_retrying(RetryConfig(attempts=3, delay=0.0),
                                before_sleep=lambda state: seen.append(state.attempt_number),
                                sleep=lambda s: None)
    with pytest.raises(Boom):
        retrying(_failing([], Boom()))
    assert seen == [1, 2]


def test_handler_retrying_is_fresh_per_call():
    policy = RetryConfig(attempts=2, delay=0.0)
    for _ in range(3):
        calls: list[int] = []
        with pytest.raises(Boom):
            handler_retrying(policy, sleep=lambda s: None)(_failing(calls, Boom()))
        assert len(calls) == 2


def _run_ack(policy: AckConfig) -> tuple[int, list[float]]:
    sleeps: list[float] = []
    calls: list[int] = []
    retrying = ack_retrying(policy, retry_on=AckWait).copy(sleep=sleeps.append)
    with pytest.raises(AckWait):
        retrying(_failing(calls, AckWait()))
    return len(calls), sleeps


@pytest.mark.parametrize("max_retries", [0, 1, 3, 5])
def test_ack_retrying_stops_after_one_plus_max_retries(max_retries):
    tries, sleeps = _run_ack(AckConfig(max_retries=max_retries, retry_delay=5.0))
    assert tries == 1 + max_retries
    assert sleeps == [5.0] * max_retries


def test_ack_retrying_really_stops_without_sleep_injection():
    calls: list[int] = []
    retrying = ack_retrying(AckConfig(max_retries=2, retry_delay=0.0), retry_on=AckWait)
    with pytest.raises(AckWait):
        retrying(_failing(calls, AckWait()))
    assert len(calls) == 3


def test_ack_retrying_only_retries_the_given_exception():
    calls: list[int] = []
    retrying = ack_retrying(AckConfig(max_retries=3, retry_delay=0.0), retry_on=AckWait).copy(sleep=lambda s: None)
    with pytest.raises(ValueError):
        retrying(_failing(calls, ValueError("other")))
    assert len(calls) == 1


def test_ack_waits_with_backoff():
    _, sleeps = _run_ack(AckConfig(max_retries=3, retry_delay=5.0, backoff=2.0))
    assert sleeps == pytest.approx([5.0, 10.0, 20.0])


def test_ack_waits_with_jitter_stay_in_range():
    _, sleeps = _run_ack(AckConfig(max_retries=20, retry_delay=1.0, jitter=0.5, retention=10_000.0))
    assert len(sleeps) == 20
    assert all(1.0 <= s <= 1.5 for s in sleeps)
    # The jitter is really added: 20 uniform draws from [0, 0.5] are never all exactly 0 (nor all equal).
    assert max(sleeps) > 1.0 and len(set(sleeps)) > 1, sleeps


@pytest.mark.parametrize("retry_delay", [0.25, 1.5])
def test_ack_waits_use_the_configured_retry_delay(retry_delay):
    _, sleeps = _run_ack(AckConfig(max_retries=2, retry_delay=retry_delay))
    assert sleeps == pytest.approx([retry_delay, retry_delay])


def test_ack_total_wait_matches_the_configured_retry_window():
    policy = AckConfig(timeout=2.0, max_retries=3, retry_delay=1.5, backoff=2.0, jitter=0.0)
    _, sleeps = _run_ack(policy)
    assert policy.timeout * (policy.max_retries + 1) + sum(sleeps) == pytest.approx(ack_retry_window(policy))


def test_ack_wait_strategy_is_a_tenacity_wait():
    import tenacity

    assert isinstance(ack_wait_strategy(AckConfig()), tenacity.wait.wait_base)


def test_async_ack_retrying_stops_after_one_plus_max_retries():
    calls: list[int] = []

    async def main():
        async for attempt in async_ack_retrying(AckConfig(max_retries=2, retry_delay=0.0), retry_on=AckWait):
            with attempt:
                calls.append(1)
                raise AckWait()

    with pytest.raises(AckWait):
        asyncio.run(main())
    assert len(calls) == 3
