"""Retries with exponential backoff and jitter, bounded by the call's deadline.

Only UNAVAILABLE (server not up, not warm, or draining) and RESOURCE_EXHAUSTED (admission limit)
are retried: both mean "the work was not started", so a retry cannot compute anything twice.
Everything else (bad input, a passed deadline, a server bug) is raised at once.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Awaitable, Callable, Optional, TypeVar

import grpc

from rewardserve_client.errors import RewardServeError, from_rpc_error, invalid_argument

T = TypeVar("T")

RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to wait between attempts.

    The n-th retry waits ``min(max_backoff, initial_backoff * backoff_multiplier**n)`` scaled
    by a random factor in ``[1 - jitter, 1]`` (so many clients do not retry in step), and never
    less than the server's retry delay.
    """

    max_retries: int = 3
    initial_backoff: float = 0.1
    max_backoff: float = 5.0
    backoff_multiplier: float = 2.0
    jitter: float = 0.2

    def __post_init__(self) -> None:
        retries = self.max_retries
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise invalid_argument(f"max_retries: must be an integer of at least 0, got {retries!r}")
        for name, low, high in (("initial_backoff", 0.0, None), ("max_backoff", 0.0, None),
                                ("backoff_multiplier", 1.0, None), ("jitter", 0.0, 1.0)):
            value = getattr(self, name)
            if (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low
                    or (high is not None and value > high)):
                bounds = f"in [{low}, {high}]" if high is not None else f"at least {low}"
                raise invalid_argument(f"{name}: must be a number {bounds}, got {value!r}")

    def backoff(self, retry: int, rng: random.Random) -> float:
        """The jittered backoff before retry number ``retry`` (0-based)."""
        base = min(self.max_backoff, self.initial_backoff * self.backoff_multiplier ** retry)
        return base * (1.0 - self.jitter * rng.random())

    def wait_before_retry(self, retry: int, error: RewardServeError, time_left: Optional[float],
                          rng: random.Random) -> Optional[float]:
        """Seconds to wait before retrying, or None when the error must be raised now."""
        if error.code not in RETRYABLE or retry >= self.max_retries:
            return None
        wait = self.backoff(retry, rng)
        if error.retry_delay is not None:
            # The server knows when it will have room; jitter only ever adds to its delay.
            wait = max(wait, error.retry_delay * (1.0 + self.jitter * rng.random()))
        if time_left is not None and wait >= time_left:
            return None  # the retry could not finish in time: report the real cause instead
        return wait


@dataclass
class Retrier:
    """Runs one RPC attempt after another under a policy, a clock and a sleep function."""

    policy: RetryPolicy
    clock: Callable[[], float]
    rng: random.Random

    def _time_left(self, deadline: Optional[float]) -> Optional[float]:
        return None if deadline is None else max(0.0, deadline - self.clock())

    def _deadline(self, timeout: Optional[float]) -> Optional[float]:
        return None if timeout is None else self.clock() + timeout

    def _next_wait(self, retry, exc, deadline, request_id) -> tuple:
        error = from_rpc_error(exc, request_id)
        return error, self.policy.wait_before_retry(retry, error, self._time_left(deadline),
                                                    self.rng)

    def call(self, attempt: Callable[[Optional[float]], T], timeout: Optional[float],
             request_id: str, sleep: Callable[[float], None]) -> T:
        """Call ``attempt(time_left)`` until it succeeds or must fail; raises RewardServeError."""
        deadline = self._deadline(timeout)
        for retry in range(self.policy.max_retries + 1):
            try:
                return attempt(self._time_left(deadline))
            except grpc.RpcError as exc:
                error, wait = self._next_wait(retry, exc, deadline, request_id)
                if wait is None:
                    raise error from exc
            sleep(wait)
        raise AssertionError("unreachable: the last retry always raises")

    async def call_async(self, attempt: Callable[[Optional[float]], Awaitable[T]],
                         timeout: Optional[float], request_id: str,
                         sleep: Callable[[float], Awaitable[None]]) -> T:
        """The coroutine twin of :meth:`call`."""
        deadline = self._deadline(timeout)
        for retry in range(self.policy.max_retries + 1):
            try:
                return await attempt(self._time_left(deadline))
            except grpc.RpcError as exc:
                error, wait = self._next_wait(retry, exc, deadline, request_id)
                if wait is None:
                    raise error from exc
            await sleep(wait)
        raise AssertionError("unreachable: the last retry always raises")
