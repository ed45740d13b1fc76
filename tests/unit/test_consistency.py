"""Consistency tokens (eventfold.consistency)."""

from __future__ import annotations

import base64

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventfold.consistency import decode, encode, from_offsets
from eventfold.errors import BadRequest


def token_of(body: bytes) -> str:
    return "ct1." + base64.urlsafe_b64encode(body).rstrip(b"=").decode()


@pytest.mark.parametrize("positions", [{}, {0: 0}, {0: 5, 3: 17, 7: 2**62}])
def test_encode_decode_round_trip(positions: dict[int, int]) -> None:
    token = encode(positions)
    assert token.startswith("ct1.")
    assert "=" not in token
    assert decode(token) == positions


@settings(max_examples=50, deadline=None, database=None)
@given(st.dictionaries(st.integers(0, 1000), st.integers(0, 2**63 - 1), max_size=20))
def test_round_trip_property(positions: dict[int, int]) -> None:
    assert decode(encode(positions)) == positions


def test_encoding_is_independent_of_insertion_order() -> None:
    assert encode({2: 1, 0: 9}) == encode({0: 9, 2: 1})


def test_from_offsets_keeps_the_highest_offset_per_partition() -> None:
    token = from_offsets([(0, 5), (1, 3), (0, 9), (0, 7), (1, 1), (4, 0)])
    assert decode(token) == {0: 9, 1: 3, 4: 0}


def test_from_offsets_of_nothing_is_an_empty_token() -> None:
    assert decode(from_offsets([])) == {}


@pytest.mark.parametrize(
    "token",
    [
        "",
        "ct1",
        "ct2." + encode({0: 1})[4:],
        "CT1." + encode({0: 1})[4:],
        encode({0: 1})[4:],
        "ct1.!!!not-base64!!!",
        "ct1.a",
        "ct1." + "é",
        token_of(b"not json"),
        token_of(b"[1, 2]"),
        token_of(b'"string"'),
        token_of(b"42"),
        token_of(b'{"x": 1}'),
        token_of(b'{"0": "abc"}'),
        token_of(b'{"0": {"a": 1}}'),
        token_of(b'{"0": null}'),
        token_of(b'{"0": -1}'),
        token_of(b'{"-1": 5}'),
        "ct1." + "A" * 5000,
        encode({p: 1 for p in range(400)}),
    ],
)
def test_malformed_token_is_bad_request(token: str) -> None:
    with pytest.raises(BadRequest) as exc:
        decode(token)
    assert exc.value.status == 400


def test_a_token_just_under_the_length_limit_is_accepted() -> None:
    positions = {p: 1 for p in range(200)}
    token = encode(positions)
    assert len(token) <= 4096
    assert decode(token) == positions


@settings(max_examples=100, deadline=None, database=None)
@given(st.text(max_size=80))
def test_arbitrary_text_is_either_a_token_or_bad_request(text: str) -> None:
    for candidate in (text, "ct1." + text):
        try:
            result = decode(candidate)
        except BadRequest:
            continue
        assert all(p >= 0 and o >= 0 for p, o in result.items())


def test_tokens_are_valid_json_inside() -> None:
    body = encode({1: 2})[4:]
    assert orjson.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))) == {"1": 2}
