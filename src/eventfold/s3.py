"""The one way to open an S3 client: the archiver, a rebuild from the archive and the dev stack.

aiobotocore is imported when a client is opened, not with this module: the API
and the gateway never open one, and botocore's import is heavy (tens of MB).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from eventfold.settings import Settings


def s3_client_config() -> Any:
    """The botocore config for our S3 endpoints: path-style, classic checksums.

    Path-style because a local endpoint has no wildcard DNS for bucket host
    names; checksums only when required because botocore >= 1.36 otherwise
    adds CRC32 trailers that not every S3-compatible server accepts.
    """
    from aiobotocore.config import AioConfig  # deferred: start-up cost (see module docstring)

    return AioConfig(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=3,
        read_timeout=10,
        retries={"max_attempts": 2, "mode": "standard"},
    )


@contextlib.asynccontextmanager
async def open_s3(settings: Settings) -> AsyncIterator[Any]:
    """An S3 client for ``settings``' endpoint and credentials, closed on leaving.

    Creating a client loads botocore's service descriptions (large JSON files):
    open one for a whole job, not one per call.
    """
    from aiobotocore.session import get_session  # deferred: start-up cost

    async with get_session().create_client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key,
        aws_secret_access_key=settings.s3_secret_key,
        config=s3_client_config(),
    ) as client:
        yield client
