"""What the store raises when Redis cannot do what was asked, so that no caller needs redis-py.

``Unavailable``: Redis did not answer in time, the connection failed, or it refused the
command. The reads (``KeyStore.get``/``get_many``, the gateway's hot path) raise only this;
``FAULTS`` is everything a call into the store can raise for a Redis fault (the writes and the
subscription pass redis-py's errors and socket errors through), for ``except store.FAULTS``.
"""

from __future__ import annotations

from redis.exceptions import RedisError


class Unavailable(Exception):
    """Redis could not answer (down, slow, unreachable, or it refused the command).
    ``outage``: False when Redis itself may be fine (this process's pool was full, or an error
    about this one call): the caller should not back off from Redis for it."""

    def __init__(self, message: str = "", *, outage: bool = True) -> None:
        super().__init__(message)
        self.outage = outage


FAULTS: tuple[type[BaseException], ...] = (Unavailable, RedisError, OSError)
