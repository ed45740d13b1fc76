"""The error hierarchy and RFC 9457 problem bodies (eventfold.errors)."""

from __future__ import annotations

import pytest

from eventfold.errors import (
    ApplyError,
    BadRequest,
    Conflict,
    EventfoldError,
    FieldError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    PermanentError,
    PreconditionFailed,
    Problem,
    RetriableError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)

STATUSES = [
    (Problem, 500, "internal"),
    (BadRequest, 400, "bad-request"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not-found"),
    (MethodNotAllowed, 405, "method-not-allowed"),
    (Conflict, 409, "conflict"),
    (PreconditionFailed, 412, "precondition-failed"),
    (PayloadTooLarge, 413, "payload-too-large"),
    (UnsupportedMediaType, 415, "unsupported-media-type"),
    (ValidationFailed, 422, "validation"),
    (Unavailable, 503, "unavailable"),
]


@pytest.mark.parametrize(("cls", "status", "slug"), STATUSES)
def test_status_and_problem_type_of_each_class(cls: type[Problem], status: int, slug: str) -> None:
    problem = cls("something happened")
    body = problem.body()
    assert problem.status == status
    assert body["status"] == status
    assert body["type"] == f"https://eventfold.dev/problems/{slug}"
    assert body["title"] == cls.title
    assert body["detail"] == "something happened"
    assert str(problem) == "something happened"


def test_body_has_exactly_the_rfc9457_fields_without_errors() -> None:
    assert NotFound("no such record").body() == {
        "type": "https://eventfold.dev/problems/not-found",
        "title": "Not Found",
        "status": 404,
        "detail": "no such record",
    }


def test_body_lists_errors_only_when_present() -> None:
    problem = ValidationFailed(
        "invalid", errors=[FieldError("/0/data/id", "bad id"), FieldError("/1", "bad")]
    )
    assert problem.body()["errors"] == [
        {"path": "/0/data/id", "message": "bad id"},
        {"path": "/1", "message": "bad"},
    ]
    assert "errors" not in ValidationFailed("invalid", errors=[]).body()


def test_body_includes_instance_when_given() -> None:
    assert BadRequest("x").body("/v1/tenants/acme")["instance"] == "/v1/tenants/acme"
    assert "instance" not in BadRequest("x").body()


@pytest.mark.parametrize("retry_after", [1, 30])
def test_unavailable_sets_retry_after(retry_after: int) -> None:
    assert Unavailable("down", retry_after=retry_after).headers["Retry-After"] == str(retry_after)


def test_unavailable_defaults_retry_after_to_one_second() -> None:
    assert Unavailable("down").headers == {"Retry-After": "1"}


def test_explicit_retry_after_header_wins() -> None:
    assert Unavailable("down", headers={"Retry-After": "9"}).headers["Retry-After"] == "9"


def test_unauthorized_sets_www_authenticate_bearer() -> None:
    header = Unauthorized("the token has expired").headers["WWW-Authenticate"]
    assert header.startswith('Bearer realm="eventfold"')
    assert 'error="invalid_token"' in header
    assert "the token has expired" in header


def test_other_problems_carry_no_headers_by_default() -> None:
    assert Forbidden("no").headers == {}
    assert ValidationFailed("no").errors == []


def test_instances_do_not_share_header_or_error_containers() -> None:
    a, b = BadRequest("a"), BadRequest("b")
    a.headers["X"] = "1"
    a.errors.append(FieldError("/", "x"))
    assert b.headers == {}
    assert b.errors == []


@pytest.mark.parametrize(
    ("exc", "retriable"),
    [
        (Unavailable("down"), True),
        (RetriableError("timeout"), True),
        (BadRequest("x"), False),
        (Unauthorized("x"), False),
        (Forbidden("x"), False),
        (NotFound("x"), False),
        (Conflict("x"), False),
        (ValidationFailed("x"), False),
        (PayloadTooLarge("x"), False),
        (ApplyError("x"), False),
    ],
)
def test_retriable_versus_permanent(exc: EventfoldError, retriable: bool) -> None:
    assert isinstance(exc, EventfoldError)
    assert isinstance(exc, RetriableError) is retriable
    assert isinstance(exc, PermanentError) is not retriable


def test_apply_error_is_not_an_http_problem() -> None:
    assert not isinstance(ApplyError("x"), Problem)


def test_field_error_as_dict() -> None:
    assert FieldError("/a~1b", "msg").as_dict() == {"path": "/a~1b", "message": "msg"}
