"""The replay marker is recognised on envelope dicts and on parsed envelopes alike."""

from __future__ import annotations

from eventfold.envelope import CloudEvent
from eventfold.replay import REPLAY_ATTRIBUTE, REPLAY_HEADER, has_replay_header, is_replay


def _event(**extra: object) -> CloudEvent:
    return CloudEvent.model_validate(
        {"specversion": "1.0", "id": "e1", "source": "t", "type": "record.upserted", **extra}
    )


def test_marker_on_a_parsed_envelope() -> None:
    assert is_replay(_event(**{REPLAY_ATTRIBUTE: "r1"}))
    assert not is_replay(_event())
    assert not is_replay(_event(**{REPLAY_ATTRIBUTE: ""}))


def test_marker_on_an_envelope_dict() -> None:
    assert is_replay({"type": "x", REPLAY_ATTRIBUTE: "r1"})
    assert not is_replay({"type": "x"})


def test_marker_as_a_header() -> None:
    assert has_replay_header([(REPLAY_HEADER, b"r1")])
    assert not has_replay_header([(REPLAY_HEADER, b"")])
    assert not has_replay_header(None)
