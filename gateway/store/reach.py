"""Saying plainly that Redis does not answer: one line naming the URL (password hidden) and the
setting, for `gateway keys` (which then exits) and for serve and admin at start (which retry)."""

from __future__ import annotations

import asyncio
import logging
import os

from redis.exceptions import ConnectionError as RedisConnectionError, RedisError

from gateway.store.faults import FAULTS, Unavailable

from gateway.store.connection import redact_redis_url

log = logging.getLogger("gateway")
REACH_DEADLINE = 2.5  # seconds Redis has to answer a first PING (down, paused, or a wrong address)
ERRORS = (*FAULTS, TimeoutError)


def failure(url: str, exc: BaseException) -> str:
    """One line for a Redis that did not answer: where, which setting, why; never the password."""
    where = f"Redis at {redact_redis_url(url)}"
    if isinstance(exc, Unavailable) and exc.__cause__ is not None:
        exc = exc.__cause__  # the store's own error: say what Redis said
    if isinstance(exc, TimeoutError):  # our own deadline (asyncio.timeout)
        why = f"no answer within {REACH_DEADLINE:g} s"
    elif isinstance(exc, RedisError) and not isinstance(exc, RedisConnectionError):
        return f"{where} answered with an error: {exc}"
    else:
        why, cause = str(exc) or type(exc).__name__, exc
        while cause is not None:  # "Error 111 connecting to h:p. Connect call failed" -> "Connection refused"
            if isinstance(cause, OSError) and cause.errno:
                why = os.strerror(cause.errno)
                break
            cause = cause.__cause__ or cause.__context__
    return f"cannot reach {where} (set --redis or GATEWAY_REDIS_URL): {why}"


async def reach(store) -> None:
    """Fail fast on a Redis that is down or paused, before the command's real work."""
    async with asyncio.timeout(REACH_DEADLINE):
        await store.ping()


async def watch(store, url: str, meanwhile: str) -> None:
    """Until Redis first answers: one error line naming the setting, then one line once it answers.

    The process keeps running and retrying (its own tasks reconnect by themselves); this only
    says so, instead of leaving a mistyped --redis to be found from the 503s.
    """
    failed = False
    while True:
        try:
            await reach(store)
        except ERRORS as exc:
            if not failed:
                log.error("%s; retrying, %s", failure(url, exc), meanwhile)
                failed = True
            await asyncio.sleep(1.0)
            continue
        if failed:
            log.info("Redis at %s answers", redact_redis_url(url))
        return
