"""Retry policies built from config, on tenacity (the one module that imports it).

Two policies: the worker's handler retries (``[retry]``: attempts counts the
first try) and the sender's ack retries (``[ack]``: max_retries counts attempts
*after* the first, as the original system's MAX_RETRIES did).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tenacity

from ipcpool.config import AckConfig, RetryConfig


def handler_retrying(
    policy: RetryConfig,
    *,
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
    sleep: Callable[[float], None] | None = None,
) -> tenacity.Retrying:
    """Retry a failing handler ``attempts`` times in all, backing off exponentially."""
    kwargs: dict[str, Any] = {}
    if sleep is not None:
        kwargs["sleep"] = sleep
    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(policy.attempts),
        wait=_backoff(policy.delay, policy.backoff, policy.max_delay),
        retry=tenacity.retry_if_exception_type(Exception),
        before_sleep=before_sleep,
        reraise=True,
        **kwargs,
    )


def _backoff(delay: float, multiplier: float, max_delay: float) -> tenacity.wait.wait_base:
    if multiplier <= 1:
        return tenacity.wait_fixed(min(delay, max_delay) if max_delay else delay)
    cap = max_delay or delay
    return tenacity.wait_exponential(multiplier=delay, exp_base=multiplier, min=min(delay, cap), max=cap)


def ack_wait_strategy(policy: AckConfig) -> tenacity.wait.wait_base:
    """Pause between ack attempts: retry_delay, times backoff each time, plus jitter."""
    if policy.backoff <= 1:
        wait: tenacity.wait.wait_base = tenacity.wait_fixed(policy.retry_delay)
    else:
        wait = tenacity.wait_exponential(
            multiplier=policy.retry_delay, exp_base=policy.backoff, min=policy.retry_delay,
            max=policy.retry_delay * policy.backoff ** max(policy.max_retries, 1),
        )
    if policy.jitter > 0:
        wait = wait + tenacity.wait_random(0, policy.jitter)
    return wait


def ack_retrying(
    policy: AckConfig,
    *,
    retry_on: type[BaseException],
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.Retrying:
    """1 + max_retries attempts, each raising ``retry_on`` when its wait ran out."""
    return tenacity.Retrying(**_ack_policy(policy, retry_on, before_sleep))


def async_ack_retrying(
    policy: AckConfig,
    *,
    retry_on: type[BaseException],
    before_sleep: Callable[[tenacity.RetryCallState], None] | None = None,
) -> tenacity.AsyncRetrying:
    """:func:`ack_retrying` for an asyncio sender (its pauses are ``asyncio.sleep``)."""
    return tenacity.AsyncRetrying(**_ack_policy(policy, retry_on, before_sleep))


def _ack_policy(policy: AckConfig, retry_on: type[BaseException],
                before_sleep: Callable[[tenacity.RetryCallState], None] | None) -> dict[str, Any]:
    """The sender's ack retries, for either loop."""
    return {
        "stop": tenacity.stop_after_attempt(policy.max_retries + 1),
        "wait": ack_wait_strategy(policy),
        "retry": tenacity.retry_if_exception_type(retry_on),
        "before_sleep": before_sleep,
        "reraise": True,
    }
