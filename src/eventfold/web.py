"""HTTP plumbing shared by the read API and the ingest gateway.

Typed app keys for shared resources, one middleware turning every error into
problem+json, request ids, metrics, authentication and JSON body helpers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from eventfold import actors, faults, ids, tracing
from eventfold.apikeys import UnknownApiKey
from eventfold.appkeys import (
    ADMISSION,
    API_KEYS,
    AUTH_LIMIT,
    CURSORS,
    LOG_END,
    METRICS,
    PLACEMENT,
    RATE_LIMITER,
    REQUEST_DEADLINE,
    SETTINGS,
    TENANTS,
    VERIFIER,
    WAIT_SLOTS,
    WATCHER,
    WATCHERS,
)
from eventfold.auth import Principal
from eventfold.consistency import decode
from eventfold.errors import (
    BadRequest,
    FieldError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Problem,
    TooManyRequests,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from eventfold.logs import correlation_id
from eventfold.ratelimit import DECISION_KEY
from eventfold.tenancy import DELETED, Tenant

log = logging.getLogger("eventfold.http")
#: One line per answered request (``EVENTFOLD_ACCESS_LOG``), see :func:`request_middleware`.
access_log = logging.getLogger("eventfold.access")

DEFAULT_REQUEST_DEADLINE = 20.0

PROBLEM_JSON = "application/problem+json"
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)
C = TypeVar("C", str, int)
_UNBOUNDED = "__eventfold_unbounded__"
_ESSENTIAL = "__eventfold_essential__"


def unbounded(handler: H) -> H:
    """Exempt a long-lived handler (a stream) from the request deadline and the in-flight limit."""
    setattr(handler, _UNBOUNDED, True)
    return handler


def essential(handler: H) -> H:
    """Exempt a handler operators rely on under load (health, metrics) from the in-flight limit."""
    setattr(handler, _ESSENTIAL, True)
    return handler


def json_response(
    data: Any, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson."""
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def problem_response(problem: Problem, request: web.Request | None = None) -> web.Response:
    """The RFC 9457 answer for ``problem``."""
    return web.Response(
        body=orjson.dumps(problem.body(request.path if request is not None else None)),
        status=problem.status,
        content_type=PROBLEM_JSON,
        headers=problem.headers,
    )


def _from_http_exception(exc: web.HTTPException) -> Problem:
    if isinstance(exc, web.HTTPNotFound):
        return NotFound("no such route")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        return MethodNotAllowed(f"allowed: {allowed}", headers={"Allow": allowed})
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return PayloadTooLarge("the request body is over the limit")
    problem = Problem(exc.reason or "error")
    problem.status, problem.title, problem.slug = exc.status, exc.reason or "Error", "http"
    return problem


@web.middleware
async def request_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, problem+json for every error, the latency histogram and the access log.

    The access log line (logger ``eventfold.access``, INFO, unless
    ``EVENTFOLD_ACCESS_LOG`` is off) names the method, the route template (never
    the path: it holds ids), the status, the duration in milliseconds and the
    path's tenant; the request id is the line's ``correlation_id``, as on every
    other line the request logs. A stream is logged when it ends.
    """
    given = request.headers.get("X-Request-ID", "")
    rid = given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex
    token = correlation_id.set(rid)
    # No actor until this request's credentials are checked (a kept-alive
    # connection serves its requests in one task, so one context).
    acting = actors.current.set(None)
    started = time.perf_counter()
    try:
        response = await _admit(request, handler)
        response.headers["X-Request-ID"] = rid
        resource = request.match_info.route.resource
        template = resource.canonical if resource is not None else "unmatched"
        metrics = request.app[METRICS]
        elapsed = time.perf_counter() - started
        metrics.http_requests.labels(template, request.method, str(response.status)).observe(
            elapsed
        )
        # Answered requests only: a made-up tenant in a refused request is not activity.
        tenant = request.match_info.get("tenant")
        if tenant and response.status < 400:
            metrics.top_tenant_requests.add(tenant)
        if request.app[SETTINGS].access_log:
            access_log.info(
                "request",
                extra={
                    "method": request.method,
                    "route": template,
                    "status": response.status,
                    "duration_ms": round(elapsed * 1000, 3),
                    "tenant": tenant,
                },
            )
        return response
    finally:
        actors.current.reset(acting)
        correlation_id.reset(token)


@web.middleware
async def tracing_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The request's server span (:mod:`eventfold.tracing`), a child of its ``traceparent``
    header; installed only while tracing is on. Named by the route template, as metrics."""
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    attributes = {"http.request.method": request.method, "http.route": route}
    with tracing.server_span(request.headers, f"{request.method} {route}", attributes) as span:
        response = await handler(request)
        tracing.set_attributes(
            span,
            {
                "http.response.status_code": response.status,
                "eventfold.tenant": request.match_info.get("tenant"),
                "eventfold.request_id": response.headers.get("X-Request-ID"),
            },
        )
        if response.status >= 500:
            tracing.failed(span, f"HTTP {response.status}")
        return response


#: Response headers a browser script may read across origins.
CORS_EXPOSED = "ETag, X-Request-ID, RateLimit-Limit, RateLimit-Remaining, RateLimit-Reset, " \
    "RateLimit-Policy, Retry-After, Location"  # fmt: skip
_CORS_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE"


def cors_middleware(origins: tuple[str, ...]) -> Middleware:
    """CORS for ``origins`` (``*``: any): preflights answered here, headers on every answer.

    Outermost, so error answers carry the headers too and a browser shows the
    problem document instead of an opaque CORS failure.
    """
    allowed = frozenset(origins)

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin is None or not ("*" in allowed or origin in allowed):
            return await handler(request)
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            response: web.StreamResponse = web.Response(status=204)
            response.headers["Access-Control-Allow-Methods"] = _CORS_METHODS
            requested = request.headers.get("Access-Control-Request-Headers")
            if requested:
                # Any request header may be sent: credentials are bearer tokens, not cookies.
                response.headers["Access-Control-Allow-Headers"] = requested
            response.headers["Access-Control-Max-Age"] = "600"
        else:
            response = await handler(request)
            response.headers["Access-Control-Expose-Headers"] = CORS_EXPOSED
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers.add("Vary", "Origin")
        return response

    return cors


def compression_middleware(min_bytes: int) -> Middleware:
    """gzip answers of at least ``min_bytes`` when the client sends ``Accept-Encoding: gzip``."""

    @web.middleware
    async def compress(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if (
            type(response) is web.Response  # not streams (SSE), not already prepared
            and isinstance(response.body, bytes)
            and len(response.body) >= min_bytes
            and "gzip" in request.headers.get("Accept-Encoding", "").lower()
            and "Content-Encoding" not in response.headers
        ):
            response.enable_compression(web.ContentCoding.gzip)
            response.headers.add("Vary", "Accept-Encoding")
        return response

    return compress


async def _admit(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer within the process's limit of requests in flight (:class:`Admission`).

    An address that failed authentication too often is answered 429 first, before
    it takes a slot (:mod:`eventfold.authlimit`).
    """
    admission = request.app.get(ADMISSION)
    route = request.match_info.handler
    limit = request.app.get(AUTH_LIMIT)
    if limit is not None and limit.failures.tracking and not getattr(route, _ESSENTIAL, False):
        retry = limit.failures.retry_after(limit.address(request))
        if retry is not None:
            request.app[METRICS].auth_blocked.inc()
            return problem_response(
                TooManyRequests(
                    "too many failed authentications from this address; retry later",
                    headers={"Retry-After": str(retry)},
                ),
                request,
            )
    if (
        admission is None
        or not admission.limit
        or getattr(route, _UNBOUNDED, False)
        or getattr(route, _ESSENTIAL, False)
    ):
        return await _answer(request, handler)
    if admission.in_flight >= admission.limit:
        request.app[METRICS].http_requests_shed.inc()
        return problem_response(
            Unavailable("the server is answering as many requests as it can; retry shortly"),
            request,
        )
    admission.in_flight += 1
    try:
        return await _answer(request, handler)
    finally:
        admission.in_flight -= 1


async def _answer(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        if getattr(request.match_info.handler, _UNBOUNDED, False):
            return await handler(request)
        async with asyncio.timeout(request.app.get(REQUEST_DEADLINE, DEFAULT_REQUEST_DEADLINE)):
            return await handler(request)
    except Problem as problem:
        if isinstance(problem, Unauthorized):
            auth_failed(request)
        return problem_response(problem, request)
    except web.HTTPException as exc:
        if exc.status < 400:
            return exc
        return problem_response(_from_http_exception(exc), request)
    except Exception as exc:
        if faults.is_retriable(exc):
            # A dependency is down or slow: the client's retry is the remedy, not a bug hunt.
            log.warning("dependency unavailable", extra={"path": request.path, "error": repr(exc)})
            return problem_response(
                Unavailable("a service this request needs is unavailable; retry shortly"),
                request,
            )
        log.exception("unhandled error", extra={"path": request.path})
        return problem_response(Problem("an internal error occurred"), request)


def auth_failed(request: web.Request) -> None:
    """Count a failed authentication against the request's client address."""
    limit = request.app.get(AUTH_LIMIT)
    if limit is not None and limit.failures.enabled:
        request.app[METRICS].auth_failures.inc()
        limit.failures.failed(limit.address(request))


#: An API key accepted from this process's cache while the request carries a
#: consistency token: checked again (fresh) once the wait is over.
_RECHECK_KEY = web.RequestKey("recheck_api_key", str)


async def authenticate(request: web.Request) -> Principal:
    """The caller (see :func:`_caller`), who is from now on the request's actor: every
    event the request publishes carries its ``actor`` (:mod:`eventfold.actors`)."""
    principal = await _caller(request)
    actors.current.set(principal.actor)
    return principal


async def _caller(request: web.Request) -> Principal:
    """The caller from ``Authorization: Bearer`` or ``X-API-Key``; 401 when missing or invalid.

    A bearer token wins when both are sent. Credentials are checked before any
    wait: only a well-formed API key whose id is unknown (it may have been
    created by the write whose ``X-Consistency-Token`` the request carries) waits
    for the projection, in the shared slots of :class:`WaitSlots`, and is then
    looked up again; a token that no write produced leaves it a 401. A key
    accepted from the cache is checked again after the tenant's wait
    (:func:`authorize_tenant`), so a key revoked by that write is refused.
    """
    header = request.headers.get("Authorization", "")
    api_key = request.headers.get("X-API-Key")
    if api_key is not None and not header:
        directory = request.app.get(API_KEYS)
        if directory is None:
            raise Unauthorized("API keys are not accepted by this server")
        if not after_a_write(request):
            return await directory.authenticate(api_key)
        try:
            principal = await directory.authenticate(api_key)
        except UnknownApiKey as unknown:
            try:
                await wait_for_consistency(request)
            except BadRequest:
                raise unknown from None
            return await directory.authenticate(api_key, fresh=True)
        request[_RECHECK_KEY] = api_key
        return principal
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("a bearer token or an API key is required")
    return request.app[VERIFIER].verify(token.strip())


async def authorize_tenant(
    request: web.Request, role: str, *, deleted_ok: bool = False
) -> tuple[Principal, Tenant]:
    """Authenticate, check ``role`` for the path's tenant, and load that tenant.

    Order matters: credentials (401), then role and tenant match (403), then the
    identifier (422), then the tenant's rate limit (429, before any wait), then
    the consistency token (400, 429 past the tenant's waits, 503 past the wait),
    then existence (404 for platform admins, 403 for others), then its state: a
    deleted tenant is 403 to its own credentials and 404 to platform admins
    (unless ``deleted_ok``: its ``GET /v1/tenants/{t}``), and a write to a
    suspended one is 403 naming the reason.
    """
    principal = await authenticate(request)
    tenant_id = request.match_info["tenant"]
    principal.require(role, tenant_id)
    ids.check("tenant", tenant_id)
    tenant = await request.app[TENANTS].get(tenant_id)
    if tenant is not None and principal.tenant == tenant.id and tenant.status != DELETED:
        # (A deleted tenant's bucket went with its keys: refusals do not bring it back.)
        await rate_limit(request, tenant)
    await wait_for_consistency(request, tenant_id)
    recheck = request.get(_RECHECK_KEY)
    if recheck is not None:
        principal = await request.app[API_KEYS].authenticate(recheck, fresh=True)
        principal.require(role, tenant_id)
    if tenant is None or after_a_write(request):
        # After a write: that write may have changed the tenant (suspended, deleted).
        tenant = await request.app[TENANTS].get(tenant_id, fresh=tenant is not None)
    if tenant is None:
        if principal.is_platform_admin:
            raise NotFound(f"tenant {tenant_id} does not exist")
        raise Forbidden(f"tenant {tenant_id} is not available to these credentials")
    if tenant.status == DELETED:
        if not principal.is_platform_admin:
            raise Forbidden(f"tenant {tenant_id} was deleted")
        if not deleted_ok:
            raise NotFound(f"tenant {tenant_id} was deleted")
        return principal, tenant
    tenant.check_method(request.method)
    return principal, tenant


async def rate_limit(request: web.Request, tenant: Tenant) -> None:
    """Take a token of the tenant's bucket (its own credentials only; platform admins
    are not the tenant's traffic); 429 when empty. Redis down: served, counted."""
    limiter = request.app.get(RATE_LIMITER)
    if limiter is None:
        return
    decision = await limiter.check(tenant.id, tenant.limits)
    if decision is None:
        return
    request[DECISION_KEY] = decision
    if not decision.allowed:
        raise TooManyRequests(
            f"tenant {tenant.id} is over its rate limit "
            f"({decision.limits.requests_per_second:g}/s, burst {decision.limits.burst})",
            headers=decision.headers(),
        )


def after_a_write(request: web.Request) -> bool:
    """Whether the request carries an ``X-Consistency-Token``: what it reads must include
    that write's effects, so a cache filled before it is not trusted."""
    return bool(request.headers.get("X-Consistency-Token"))


async def wait_for_consistency(request: web.Request, tenant: str | None = None) -> None:
    """Honour ``X-Consistency-Token``: wait (at most the configured time) for the projection.

    With ``tenant``, also for that tenant's events deferred past the checkpoints.
    A malformed token, or one naming positions past the end of the log, is a 400
    (at once: the end is checked while the wait runs, see :mod:`eventfold.logend`);
    past the tenant's limit of concurrent waits, a 429 at once.
    """
    token = request.headers.get("X-Consistency-Token")
    if not token:
        return
    required = decode(token)
    app = request.app
    watcher = app[WATCHER]
    watchers = app.get(WATCHERS)
    if tenant is not None and watchers is not None and len(watchers) > 1:
        watcher = watchers[await app[PLACEMENT].directory.server_of(tenant)]
    within = app[SETTINGS].consistency_wait_seconds
    slots = app.get(WAIT_SLOTS)
    with slots.take(tenant or "") if slots is not None else contextlib.nullcontext():
        started = time.perf_counter()
        if tenant is None:
            waiting = watcher.wait_for(required, within)
        else:
            waiting = watcher.wait_for_tenant(tenant, required, within)
        ok = await _unless_past_the_end(app, waiting, required, watcher.positions)
        app[METRICS].consistency_waits.observe(time.perf_counter() - started)
    if not ok:
        raise Unavailable("the projection has not caught up with this token yet", retry_after=1)


async def _unless_past_the_end(
    app: web.Application,
    waiting: Awaitable[bool],
    required: Mapping[int, int],
    committed: Mapping[int, int],
) -> bool:
    """The wait's outcome, unless the log's end shows the token forged first (a 400).

    The end is checked alongside the wait, not before it: a token just written
    usually exceeds the cached end, and its read should not pay a Kafka round
    trip on top of the projection's.
    """
    log_end = app.get(LOG_END)
    if log_end is None or log_end.covers(required, committed):
        return await waiting
    wait = asyncio.ensure_future(waiting)
    check = asyncio.ensure_future(log_end.verify(required, committed))
    try:
        await asyncio.wait((wait, check), return_when=asyncio.FIRST_COMPLETED)
        if check.done():
            check.result()  # raises BadRequest for a forged token
        return await wait
    finally:
        for task in (wait, check):
            if not task.done():
                task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.gather(wait, check, return_exceptions=True)


#: The deepest nesting of arrays and objects a request body may have (the outermost
#: container is level 1). orjson parses 1024 levels but writes only 254, and a body is
#: written again inside an envelope, a history row, a webhook delivery: a body it
#: parsed but could not write again was a 500 after the fact. Real documents stay far
#: below; anything deeper is refused where bodies are parsed (:func:`parse_json`).
MAX_JSON_DEPTH = 64


async def read_body(request: web.Request) -> bytes:
    """The raw request body: 413 over ``max_body_bytes``, 415 for multipart forms."""
    limit = request.app[SETTINGS].max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    if request.content_type.startswith("multipart/"):
        raise UnsupportedMediaType("send JSON, not a multipart form")
    body = await request.read()
    if len(body) > limit:
        raise PayloadTooLarge(f"the request body is over {limit} bytes")
    return body


async def read_json(request: web.Request) -> Any:
    """The request body parsed as JSON (see :func:`read_body` and :func:`parse_json`).

    Any other Content-Type is read as JSON: ``curl -d`` sends a form type by
    default, and a clear 400 on a non-JSON body serves that user better than a 415.
    """
    return parse_json(await read_body(request))


def parse_json(body: bytes) -> Any:
    """Parse a request body: the one place every JSON body of a request is read.

    400 when empty, malformed or nested deeper than :data:`MAX_JSON_DEPTH` (naming
    the path where it goes past), 422 when a string or key holds U+0000, which no
    PostgreSQL text or jsonb value can store (the write would fail after it was
    accepted). Both walks run only when the raw bytes say they may find something.
    """
    if not body:
        raise BadRequest("the request body is empty; send JSON")
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    # Fewer brackets than the limit cannot nest past it (brackets in strings only add).
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH:
        deep = _past_depth(value, MAX_JSON_DEPTH)
        if deep is not None:
            raise BadRequest(
                f"the JSON nests deeper than {MAX_JSON_DEPTH} levels",
                errors=[FieldError(deep or "/", f"nested deeper than {MAX_JSON_DEPTH} levels")],
            )
    # JSON can only spell U+0000 as the escape \u0000 (a raw NUL byte is malformed).
    if b"\\u0000" in body:
        where = _nul_path(value)
        if where is not None:
            raise ValidationFailed(
                "text may not contain the NUL character (U+0000)",
                errors=[FieldError(where or "/", "contains U+0000")],
            )
    return value


def _pointer_part(key: object) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _children(value: Any) -> Any:
    if isinstance(value, dict):
        return value.items()
    if isinstance(value, list):
        return enumerate(value)
    return ()


def _past_depth(value: Any, limit: int) -> str | None:
    """The JSON pointer of the first container nested deeper than ``limit``, if any.

    Walked level by level, without building paths (4x faster than a recursive
    walk on a 1000-event batch); the path is looked for only once one is too deep.
    """
    level = [value]
    for _ in range(limit):
        deeper: list[Any] = []
        for container in level:
            kind = type(container)
            if kind is dict:
                children = container.values()
            elif kind is list:
                children = container
            else:
                continue
            for child in children:
                if type(child) is dict or type(child) is list:
                    deeper.append(child)
        if not deeper:
            return None
        level = deeper
    return _path_to(value, level[0], limit)


def _path_to(value: Any, target: Any, limit: int) -> str:
    """The JSON pointer of ``target`` (by identity) inside ``value``, at most ``limit`` down."""
    for key, child in _children(value):
        if child is target:
            return f"/{_pointer_part(key)}"
        if limit > 1 and isinstance(child, dict | list):
            found = _path_to(child, target, limit - 1)
            if found:
                return f"/{_pointer_part(key)}{found}"
    return ""


def _nul_path(value: Any) -> str | None:
    """The JSON pointer of the first string or key holding U+0000, if any."""
    if isinstance(value, str):
        return "" if "\x00" in value else None
    for key, child in _children(value):
        if isinstance(key, str) and "\x00" in key:
            return f"/{_pointer_part(key)}"
        found = _nul_path(child)
        if found is not None:
            return f"/{_pointer_part(key)}{found}"
    return None


def after_cursor(request: web.Request, kind: str, default: C) -> C:
    """The position in the ``after`` cursor of listing ``kind``; ``default`` without one.

    422 when the cursor is not one this listing issued, or holds a position of
    another type than ``default``'s.
    """
    raw = request.query.get("after")
    if not raw:
        return default
    position = request.app[CURSORS].decode(kind, raw)
    if type(position) is not type(default):
        raise ValidationFailed("bad cursor", errors=[FieldError("/after", "invalid cursor")])
    result: C = position
    return result


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter within ``[lo, hi]``; 422 otherwise."""
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = lo - 1
    if not lo <= value <= hi:
        raise ValidationFailed(
            f"{name} must be an integer from {lo} to {hi}",
            errors=[FieldError(f"/{name}", f"must be an integer from {lo} to {hi}")],
        )
    return value
