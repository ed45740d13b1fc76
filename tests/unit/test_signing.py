"""Standard Webhooks signing, checked against the reference library (standardwebhooks)."""

from __future__ import annotations

import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from eventfold import signing


def test_our_signature_verifies_with_the_reference_implementation() -> None:
    secret = signing.new_secret()
    body = b'{"specversion":"1.0","id":"e-1","type":"record.upserted"}'
    headers = signing.signed_headers(secret, "e-1", body)
    assert Webhook(secret).verify(body, headers) is not None


def test_reference_signature_verifies_with_ours() -> None:
    secret = signing.new_secret()
    body = b'{"items":[]}'
    ts = int(time.time())
    from datetime import UTC, datetime

    sig = Webhook(secret).sign("msg_1", datetime.fromtimestamp(ts, UTC), body.decode())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(ts), "webhook-signature": sig}
    assert signing.verify(secret, headers, body) == "msg_1"


def test_a_tampered_body_is_refused_by_both() -> None:
    secret = signing.new_secret()
    headers = signing.signed_headers(secret, "e-2", b"{}")
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(b'{"x":1}', headers)
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(secret, headers, b'{"x":1}')


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_stale_or_future_timestamp_is_refused(skew: int) -> None:
    secret = signing.new_secret()
    headers = signing.signed_headers(secret, "e-3", b"{}", now=time.time() + skew)
    with pytest.raises(signing.SignatureInvalid, match="timestamp"):
        signing.verify(secret, headers, b"{}")


def test_any_of_several_signatures_may_match_while_a_secret_rotates() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    headers = signing.signed_headers(new, "e-4", b"{}")
    headers["webhook-signature"] = "v1,AAAA " + headers["webhook-signature"]
    assert signing.verify(new, headers, b"{}") == "e-4"
    with pytest.raises(signing.SignatureInvalid):
        signing.verify(old, headers, b"{}")


def test_missing_headers_are_refused_with_401() -> None:
    with pytest.raises(signing.SignatureInvalid) as info:
        signing.verify(signing.new_secret(), {}, b"{}")
    assert info.value.status == 401


@pytest.mark.parametrize("bad", ["whsec_not-base64!", "whsec_" + "QUFB", "plain"])
def test_malformed_secrets_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="secret"):
        signing.secret_key(bad)
