"""Library exceptions sorted into Eventfold's retriable and permanent classes.

Processors and routes decide retry, dead-letter or fail from :func:`is_retriable` and
:func:`is_poison`, never from an error's text. The ingest gateway asks
:func:`send_outcome_unknown` whether a failed send may still have landed (then
the producer is replaced and the same envelopes are sent again).
"""

from __future__ import annotations

import functools
import sys

import asyncpg
from redis import exceptions as redis_errors
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
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,  # the connection closed under us
)

#: PostgreSQL refusing the data itself: retrying the same event fails the same way.
_PG_DATA: tuple[type[BaseException], ...] = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.RaiseError,  # a trigger or function raising on this data
    asyncpg.ProgramLimitExceededError,
)

#: Redis answering "not now" (loading, failing over, out of memory) rather than "never".
_REDIS_TRANSIENT: tuple[type[BaseException], ...] = (
    redis_errors.ConnectionError,  # includes BusyLoadingError, AuthenticationError
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
    redis_errors.ClusterDownError,
    redis_errors.OutOfMemoryError,
    redis_errors.MaxConnectionsError,
)

#: Redis refusing the command itself (wrong type, bad arguments): a bug, not an outage.
_REDIS_PERMANENT: tuple[type[BaseException], ...] = (
    redis_errors.ResponseError,
    redis_errors.DataError,
)

#: OSErrors about files, not networks: a bug or a deployment problem, never an outage.
_LOCAL_OS: tuple[type[BaseException], ...] = (
    FileNotFoundError,
    FileExistsError,
    IsADirectoryError,
    NotADirectoryError,
    PermissionError,
)


@functools.cache
def _kafka_classes() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """``(any Kafka error, Kafka refusing the records or our rights)``; empty before aiokafka loads.

    aiokafka is imported here only once some module has imported it: a Kafka
    error cannot exist before that, and the read API, which never talks to
    Kafka, stays without it (a few MB of its memory budget).
    """
    kafka_errors = sys.modules.get("aiokafka.errors")
    if kafka_errors is None:
        return (), ()
    definite = (
        kafka_errors.MessageSizeTooLargeError,
        kafka_errors.RecordTooLargeError,
        kafka_errors.InvalidTopicError,
        kafka_errors.TopicAuthorizationFailedError,
        kafka_errors.ClusterAuthorizationFailedError,
        kafka_errors.CorruptRecordException,
        kafka_errors.UnsupportedVersionError,
        kafka_errors.IncompatibleBrokerVersion,
        kafka_errors.InvalidRequiredAcksError,
    )
    return (kafka_errors.KafkaError,), definite


def _kafka() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    if "aiokafka.errors" not in sys.modules:
        return (), ()
    return _kafka_classes()


#: S3 error codes that say "not now" (throttling, a server-side failure).
_S3_TRANSIENT_CODES = frozenset(
    {"SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling"}
)


def _s3_retriable(exc: BaseException) -> bool | None:
    """Whether an S3 (botocore) failure may pass when tried again; None for other errors.

    botocore is looked up, not imported, as aiokafka is (:func:`_kafka_classes`): the API
    and the gateway never open an S3 client, and its import costs tens of MB.
    """
    errors = sys.modules.get("botocore.exceptions")
    if errors is None:
        return None
    if isinstance(exc, errors.ClientError):
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
        code = str(exc.response.get("Error", {}).get("Code", ""))
        return status >= 500 or status == 429 or code in _S3_TRANSIENT_CODES
    if isinstance(exc, errors.BotoCoreError):
        return True  # connection, endpoint and read-timeout failures: the network, not us
    return None


def is_retriable(exc: BaseException) -> bool:
    """Whether trying the same operation again later may succeed."""
    if isinstance(exc, RetriableError):
        return True
    if isinstance(exc, PermanentError):
        return False
    s3 = _s3_retriable(exc)
    if s3 is not None:
        return s3
    if isinstance(exc, RedisError):
        return isinstance(exc, _REDIS_TRANSIENT) or not isinstance(exc, _REDIS_PERMANENT)
    if isinstance(exc, _LOCAL_OS):
        return False
    kafka_any, _ = _kafka()
    return isinstance(exc, (*_PG_TRANSIENT, *kafka_any, ConnectionError, OSError, TimeoutError))


def is_poison(exc: BaseException) -> bool:
    """Whether ``exc`` says one event's data can never be applied as it is."""
    return isinstance(exc, (PermanentError, *_PG_DATA))


def send_outcome_unknown(exc: BaseException) -> bool:
    """Whether a failed Kafka send may have been written, or may succeed if sent again.

    True for timeouts, lost connections and a producer that broke or closed
    (an idempotent producer whose sequence numbers went astray included): the
    caller replaces the producer and sends the same envelopes (same ids) again.
    False when the broker refused the records themselves.
    """
    kafka_any, kafka_definite = _kafka()
    if isinstance(exc, kafka_definite):
        return False
    return isinstance(exc, (*kafka_any, TimeoutError, ConnectionError, OSError))
