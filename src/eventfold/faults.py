"""Library exceptions sorted into Eventfold's retriable and permanent classes.

Processors and routes decide retry, park or fail from :func:`is_retriable` and
:func:`is_poison`, never from an error's text.
"""

from __future__ import annotations

import asyncpg
from aiokafka.errors import KafkaError
from redis.exceptions import RedisError

from eventfold.errors import PermanentError, RetriableError

#: PostgreSQL failures where the same statement may well succeed later.
_PG_TRANSIENT: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.QueryCanceledError,  # statement_timeout, or a cancel during a restart
    asyncpg.AdminShutdownError,
    asyncpg.InterfaceError,  # the connection closed under us
)

#: PostgreSQL refusing the data itself: retrying the same event fails the same way.
_PG_DATA: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.RaiseError,  # a trigger or function raising on this data
    asyncpg.ProgramLimitExceededError,
)


def is_retriable(exc: BaseException) -> bool:
    """Whether trying the same operation again later may succeed."""
    if isinstance(exc, RetriableError):
        return True
    if isinstance(exc, PermanentError):
        return False
    return isinstance(
        exc, (*_PG_TRANSIENT, KafkaError, RedisError, ConnectionError, OSError, TimeoutError)
    )


def is_poison(exc: BaseException) -> bool:
    """Whether ``exc`` says one event's data can never be applied as it is."""
    return isinstance(exc, (PermanentError, *_PG_DATA))
