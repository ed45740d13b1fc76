"""Library errors sorted into retriable and permanent (eventfold.faults)."""

from __future__ import annotations

import asyncpg
import pytest
from botocore.exceptions import (  # type: ignore[import-untyped]
    ClientError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from redis import exceptions as redis_errors

from eventfold.errors import PermanentError, RetriableError
from eventfold.faults import is_retriable


def s3_refusal(status: int, code: str) -> ClientError:
    """An S3 answer with HTTP ``status`` and error ``code``."""
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:9000/b/k"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:9000/b/k"), True),
        (s3_refusal(503, "ServiceUnavailable"), True),
        (s3_refusal(200, "SlowDown"), True),
        (s3_refusal(429, "TooManyRequests"), True),
        (s3_refusal(403, "AccessDenied"), False),
        (s3_refusal(404, "NoSuchBucket"), False),
        (redis_errors.ConnectionError("away"), True),
        (redis_errors.ResponseError("WRONGTYPE"), False),
        (asyncpg.CannotConnectNowError("starting"), True),
        (ConnectionRefusedError(111, "refused"), True),
        (FileNotFoundError("x"), False),
        (RetriableError("x"), True),
        (PermanentError("x"), False),
        (ValueError("a bug"), False),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v),
)
def test_retriable_or_permanent(exc: BaseException, retriable: bool) -> None:
    assert is_retriable(exc) is retriable
