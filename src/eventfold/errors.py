"""The one error root of Eventfold, split into retriable and permanent.

Processors decide retry, dead-letter or fail from the class alone; the HTTP layer
turns a :class:`Problem` into an RFC 9457 ``application/problem+json`` answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


class EventfoldError(Exception):
    """Root of every error Eventfold raises on purpose."""


class RetriableError(EventfoldError):
    """Trying the same thing again later may succeed (a dependency is down, a timeout)."""


class PermanentError(EventfoldError):
    """The same input will fail the same way: do not retry, report or dead-letter it."""


@dataclass(frozen=True, slots=True)
class FieldError:
    """One validation failure: a JSON pointer into the input and what is wrong there."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """The ``errors[]`` item of a problem document."""
        return {"path": self.path, "message": self.message}


class Problem(EventfoldError):
    """An error the client caused or must see, answered as problem+json.

    ``status`` picks the HTTP code; ``headers`` carries e.g. ``Retry-After`` or
    ``WWW-Authenticate``.
    """

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors or []
        self.headers = headers or {}

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The RFC 9457 document for this problem."""
        doc: dict[str, Any] = {
            "type": f"https://eventfold.dev/problems/{self.slug}",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if instance:
            doc["instance"] = instance
        if self.errors:
            doc["errors"] = [e.as_dict() for e in self.errors]
        return doc


class BadRequest(Problem, PermanentError):
    """Malformed input: bad JSON, a bad header."""

    status, title, slug = 400, "Bad Request", "bad-request"


class Unauthorized(Problem, PermanentError):
    """Missing, invalid or expired credentials."""

    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.headers.setdefault(
            "WWW-Authenticate",
            f'Bearer realm="eventfold", error="invalid_token", error_description="{detail}"',
        )


class Forbidden(Problem, PermanentError):
    """Valid credentials without the role, or for another tenant."""

    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(Problem, PermanentError):
    """No such route, tenant, record or event."""

    status, title, slug = 404, "Not Found", "not-found"


class MethodNotAllowed(Problem, PermanentError):
    """The route exists but not with this method."""

    status, title, slug = 405, "Method Not Allowed", "method-not-allowed"


class Conflict(Problem, PermanentError):
    """The thing exists already (a tenant id)."""

    status, title, slug = 409, "Conflict", "conflict"


class PreconditionFailed(Problem, PermanentError):
    """``If-Match`` does not match the current version."""

    status, title, slug = 412, "Precondition Failed", "precondition-failed"


class PayloadTooLarge(Problem, PermanentError):
    """A body or a batch over its limit."""

    status, title, slug = 413, "Content Too Large", "payload-too-large"


class UnsupportedMediaType(Problem, PermanentError):
    """A body in a media type the route does not take."""

    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class ValidationFailed(Problem, PermanentError):
    """Well-formed input that breaks a schema or an identifier rule."""

    status, title, slug = 422, "Unprocessable Content", "validation"


class TooManyRequests(Problem, RetriableError):
    """The tenant is over its rate limit; ``Retry-After`` says when to try again."""

    status, title, slug = 429, "Too Many Requests", "rate-limited"


class Unavailable(Problem, RetriableError):
    """A dependency is down or a wait ran out; the client should retry later."""

    status, title, slug = 503, "Service Unavailable", "unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1, **kw: Any) -> None:
        super().__init__(detail, **kw)
        self.headers.setdefault("Retry-After", str(retry_after))


class ApplyError(PermanentError):
    """An event a projection cannot apply (it goes to the dead-letter topic)."""
