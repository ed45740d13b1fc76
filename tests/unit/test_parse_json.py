"""The one parser of request bodies (eventfold.web.parse_json): depth, NUL, malformed."""

from __future__ import annotations

import pytest

from eventfold.errors import BadRequest, ValidationFailed
from eventfold.web import MAX_JSON_DEPTH, parse_json


def arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_the_limit_itself_is_accepted_and_one_more_level_refused_with_its_path() -> None:
    assert parse_json(arrays(MAX_JSON_DEPTH)) is not None
    with pytest.raises(BadRequest) as refused:
        parse_json(arrays(MAX_JSON_DEPTH + 1))
    assert refused.value.status == 400
    assert [e.as_dict() for e in refused.value.errors] == [
        {"path": "/0" * MAX_JSON_DEPTH, "message": f"nested deeper than {MAX_JSON_DEPTH} levels"}
    ]


def test_the_path_escapes_keys_and_follows_the_first_deep_branch() -> None:
    deep = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    body = b'{"shallow": [1, {"x": 2}], "a/b~c": ' + deep + b"}"
    with pytest.raises(BadRequest) as refused:
        parse_json(body)
    assert refused.value.errors[0].path == "/a~1b~0c" + "/0" * (MAX_JSON_DEPTH - 1)


def test_many_shallow_containers_are_not_deep() -> None:
    wide = b"[" + b",".join([b'{"a": [1, {"b": []}]}'] * 5000) + b"]"
    assert len(parse_json(wide)) == 5000


def test_brackets_inside_strings_do_not_count() -> None:
    assert parse_json(b'{"s": "' + b"[" * 500 + b'"}') == {"s": "[" * 500}


@pytest.mark.parametrize(
    ("body", "path"),
    [
        (b'"a\\u0000"', "/"),
        (b'{"k": ["ok", "a\\u0000b"]}', "/k/1"),
        (b'{"k\\u0000": 1}', "/k\x00"),
        (b'{"x/y": {"z": "\\u0000"}}', "/x~1y/z"),
    ],
)
def test_nul_is_refused_where_it_is(body: bytes, path: str) -> None:
    with pytest.raises(ValidationFailed) as refused:
        parse_json(body)
    assert [e.path for e in refused.value.errors] == [path]


def test_an_escaped_backslash_before_u0000_is_plain_text() -> None:
    assert parse_json(b'{"s": "C:\\\\u0000"}') == {"s": "C:\\u0000"}


@pytest.mark.parametrize(
    "body", [b"", b"{", b"[1,]", b'"\\ud800"', b"1e400", b"\xff", b'{"a": 1}x', b"\x00"]
)
def test_malformed_bodies_are_400(body: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json(body)
