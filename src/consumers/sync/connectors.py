"""Connector kinds: how the runner reads a third party, page by page.

A connector turns an integration's configuration into pages of items, each
with the cursor to store once its events are acknowledged. It raises the
:class:`SourceError` subclasses below for what the third party did wrong;
the runner owns backoff, circuits, pausing, publishing and cursors.

To add a kind: a module defining a class that satisfies :class:`Connector`,
registered in :data:`CONNECTORS` under its kind name (and the name added to
``eventfold.events.integration.Kind``), plus tests against a real aiohttp
server playing the third party.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
import orjson

from eventfold.egress import (
    AllowList,
    EgressRefused,
    ResponseTooLarge,
    check_url,
    failure_text,
    read_capped,
)
from eventfold.errors import PermanentError, RetriableError
from eventfold.events.integration import PollConfig
from eventfold.syncpages import BadPage, page_items


class SourceError(Exception):
    """The third party failed a request (the subclasses say how)."""

    reason = "error"


class SourceUnavailable(SourceError, RetriableError):
    """5xx, a timeout or a broken connection: back off, then the circuit."""

    reason = "unavailable"


class SourceRateLimited(SourceError, RetriableError):
    """429: wait ``retry_after`` seconds (from ``Retry-After``)."""

    reason = "rate_limited"

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceRefusedCredentials(SourceError, PermanentError):
    """401/403: the integration is paused until someone fixes its headers."""

    reason = "unauthorized"


class SourceBroken(SourceError, PermanentError):
    """Another 4xx, an unreadable page, a refused address: counts as a failure."""

    reason = "bad_response"


@dataclass(frozen=True, slots=True)
class Page:
    """One page: its items and the cursor to store once they are acknowledged."""

    items: list[Any]
    #: Where the next run resumes after this page (the next page's cursor, or
    #: this page's own when it is the last: a source appends to it).
    resume_cursor: str | None
    #: Whether there is a further page in this run.
    more: bool


@dataclass(frozen=True, slots=True)
class SourceContext:
    """What a connector gets from the runner: HTTP, opened headers and bounds."""

    session: aiohttp.ClientSession
    allow: AllowList
    headers: Mapping[str, str]
    timeout: float
    max_bytes: int
    max_items: int


class Connector(Protocol):
    """A kind of third-party source."""

    def pages(self, ctx: SourceContext, cursor: str | None) -> AsyncIterator[Page]:
        """The pages from ``cursor`` (None: the beginning), in order."""
        ...


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date), None when absent/bad."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


#: How often in a row a source may answer the cursor it was asked for as the next one.
_MAX_REPEATS = 3


class HttpPoll:
    """The generic cursor poller of CONTRACT.md (``kind: "http-poll"``)."""

    def __init__(self, config: PollConfig) -> None:
        self.config = config

    async def pages(self, ctx: SourceContext, cursor: str | None) -> AsyncIterator[Page]:
        """GET ``url`` (``?cursor_param=cursor`` once there is one) until no next cursor."""
        cfg = self.config
        repeats = 0
        while True:
            body = await self._fetch(ctx, cursor)
            try:
                items = page_items(body, cfg.items_field)
            except BadPage as exc:
                raise SourceBroken(str(exc)) from None
            if len(items) > ctx.max_items:
                raise SourceBroken(f"the page holds {len(items)} items, over {ctx.max_items}")
            raw_next = body.get(cfg.cursor_field)
            next_cursor = (
                str(raw_next) if isinstance(raw_next, (str, int)) and raw_next != "" else None
            )
            if next_cursor is not None and next_cursor == cursor:
                # A page re-served in place of the one asked for: ask again, a few
                # times; a source stuck on its own cursor would loop forever.
                repeats += 1
                if repeats > _MAX_REPEATS:
                    raise SourceBroken("the source keeps answering the cursor it was asked for")
            else:
                repeats = 0
            yield Page(
                items, next_cursor if next_cursor is not None else cursor, next_cursor is not None
            )
            if next_cursor is None:
                return
            cursor = next_cursor

    async def _fetch(self, ctx: SourceContext, cursor: str | None) -> Any:
        try:
            url = check_url(self.config.url, ctx.allow)
        except EgressRefused as exc:
            raise SourceBroken(f"refused target: {exc.public}") from None
        if cursor is not None:
            url = url.update_query({self.config.cursor_param: cursor})
        try:
            async with ctx.session.get(
                url,
                headers=dict(ctx.headers),
                timeout=aiohttp.ClientTimeout(total=ctx.timeout),
                allow_redirects=False,
            ) as resp:
                status = resp.status
                if status == 429:
                    raise SourceRateLimited(
                        "HTTP 429 from the source",
                        parse_retry_after(resp.headers.get("Retry-After")),
                    )
                if status in (401, 403):
                    raise SourceRefusedCredentials(
                        f"HTTP {status} from the source: credentials refused; fix the headers"
                        " and resume the integration"
                    )
                if status >= 500:
                    raise SourceUnavailable(f"HTTP {status} from the source")
                if status != 200:
                    raise SourceBroken(f"HTTP {status} from the source")
                raw = await read_capped(resp, ctx.max_bytes)
        except SourceError:
            raise
        except ResponseTooLarge as exc:
            raise SourceBroken(str(exc)) from None
        except TimeoutError:
            raise SourceUnavailable(f"no answer within {ctx.timeout:g} s") from None
        except aiohttp.ClientError as exc:
            # last_error is the tenant's to read: the kind of failure, no address.
            raise SourceUnavailable(failure_text(exc)) from None
        except EgressRefused as exc:
            raise SourceBroken(f"refused target: {exc.public}") from None
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise SourceBroken("the page is not JSON") from None


#: Kind → connector factory (from the integration's config).
CONNECTORS: dict[str, Callable[[PollConfig], Connector]] = {"http-poll": HttpPoll}
