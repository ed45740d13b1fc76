"""The effects of workflow steps: an http call, a record event, an email.

Each returns a :class:`~eventfold.workflows.machine.Result`; a failure is
``retriable`` when trying again may succeed (408, 429, 5xx, a timeout, a lost
connection, an SMTP 4xx, Kafka unavailable) and permanent otherwise. Each
carries an identity fixed by run and step, so doing it twice is one effect for
a receiver that honours it: ``Idempotency-Key`` (http), ``Message-ID`` (email),
the event id (record: the projector and the gateway keep one).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from dataclasses import dataclass
from email.header import Header
from email.mime.text import MIMEText
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import aiosmtplib
import orjson

from eventfold import actors, tracing
from eventfold.egress import (
    AllowList,
    EgressRefused,
    check_url,
    failure_text,
    read_capped,
    refusal_of,
)
from eventfold.envelope import CloudEvent, EnvelopeInvalid
from eventfold.errors import RetriableError
from eventfold.events import validate_data
from eventfold.faults import is_retriable
from eventfold.workflows import ids
from eventfold.workflows.machine import Effect, Result

#: Bytes of an http step's answer read at most (the output is its JSON).
RESPONSE_CAP = 1024 * 1024
#: Statuses that are retried (as timeouts are).
RETRIED_STATUSES = frozenset({408, 429})
SOURCE = "eventfold/workflows"
_RECORD_TYPES = {"upsert": "record.upserted", "patch": "record.patched", "delete": "record.deleted"}


async def http(
    session: aiohttp.ClientSession,
    allow: AllowList,
    effect: Effect,
    headers: dict[str, Any] | None = None,
) -> Result:
    """Call the step's URL with its Idempotency-Key; the JSON answer is the output.

    ``headers`` (unsealed and rendered by the caller) replace the step's own, whose
    values a stored definition only shows as ``(sealed)``."""
    spec = effect.spec
    url = str(spec.get("url", ""))
    try:
        check_url(url, allow)
    except EgressRefused as exc:
        return Result(ok=False, error=f"refused: {exc.public}")
    sent = {str(k): str(v) for k, v in (headers or {}).items()}
    sent["Idempotency-Key"] = ids.idempotency_key(effect.run, effect.step)
    # The step's span goes on at the receiver, as a webhook delivery's does.
    sent.update(tracing.current_carrier())
    body = spec.get("body")
    data = None
    if body is not None:
        data = orjson.dumps(body)
        sent.setdefault("Content-Type", "application/json")
    try:
        async with asyncio.timeout(float(spec.get("timeout_seconds", 10.0))):
            async with session.request(
                str(spec.get("method", "POST")), url, data=data, headers=sent,
                allow_redirects=False,
            ) as resp:  # fmt: skip
                raw = await read_capped(resp, RESPONSE_CAP)
                status = resp.status
    except TimeoutError:
        return Result(ok=False, error="timed out", retriable=True)
    except (aiohttp.ClientError, OSError) as exc:
        return Result(ok=False, error=failure_text(exc), retriable=refusal_of(exc) is None)
    except Exception as exc:  # the answer over the cap
        return Result(ok=False, error=str(exc))
    if 200 <= status < 300:
        try:
            output: Any = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            output = None
        return Result(ok=True, output=output)
    retriable = status in RETRIED_STATUSES or status >= 500
    return Result(ok=False, error=f"HTTP {status}", retriable=retriable)


def record_event(tenant: str, effect: Effect, at: str) -> CloudEvent:
    """The record event of a record step: id fixed by run and step, caused by the run."""
    spec = effect.spec
    data = spec.get("data")
    if spec.get("op") == "delete":
        data = None
    return CloudEvent.model_validate(
        {
            "specversion": "1.0",
            "id": ids.record_event_id(effect.run, effect.step),
            "source": SOURCE,
            "type": _RECORD_TYPES.get(str(spec.get("op")), "record.upserted"),
            "subject": f"{spec.get('collection')}/{spec.get('record')}",
            "time": at,
            "datacontenttype": "application/json",
            "data": data,
            "tenant": tenant,
            "causationid": effect.run,
            "actor": actors.workflow(effect.run),
        }
    )


async def record(publisher: Any, tenant: str, effect: Effect, at: str) -> Result:
    """Publish the step's record event (acknowledged by Kafka before it succeeds)."""
    try:
        event = record_event(tenant, effect, at)
        validate_data(event)
    except EnvelopeInvalid as exc:
        problems = "; ".join(f"{e.path} {e.message}" for e in exc.errors)[:500]
        return Result(ok=False, error=f"invalid record event: {problems}")
    except ValueError as exc:
        return Result(ok=False, error=f"invalid record event: {exc}"[:500])
    try:
        [published] = await publisher.publish(tenant, [event], actor=actors.workflow(effect.run))
    except Exception as exc:
        if isinstance(exc, RetriableError) or is_retriable(exc):
            return Result(ok=False, error="the event log did not acknowledge", retriable=True)
        raise
    return Result(ok=True, output={"event_id": event.id, "duplicate": published.duplicate})


@dataclass(frozen=True, slots=True)
class Smtp:
    """Where email steps send through (``EVENTFOLD_SMTP_URL``)."""

    host: str
    port: int
    username: str | None
    password: str | None
    use_tls: bool
    start_tls: bool
    sender: str
    #: The name this client gives in EHLO (looked up once: aiosmtplib asks the
    #: resolver for the host's FQDN on every connection otherwise).
    local_hostname: str = "localhost"

    @classmethod
    def parse(cls, url: str, sender: str) -> Smtp:
        """``smtp://user:pass@host:port?starttls=true`` (``smtps://``: TLS from the start)."""
        parts = urlsplit(url)
        query = {k: v[-1].lower() for k, v in parse_qs(parts.query).items()}
        tls = parts.scheme == "smtps"
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or (465 if tls else 25),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            use_tls=tls,
            start_tls=query.get("starttls") in ("true", "1", "yes"),
            sender=sender,
            local_hostname=socket.getfqdn(),
        )


class Mailer:
    """Sends the email steps' mail over kept SMTP connections, at most ``size`` at once.

    A connection per mail costs a TCP handshake, EHLO (TLS and login when set) and
    QUIT, on this side and the server's: most of an email step's work when runs come
    by the hundred a second. Idle connections are kept for the next mail; one the
    server closed meanwhile fails its first command, and the mail goes once more on a
    new connection (any retry carries the same ``Message-ID``). A connection that
    failed in any other way is closed, not kept.
    """

    def __init__(self, smtp: Smtp, size: int) -> None:
        self.smtp = smtp
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aiosmtplib.SMTP] = []

    def _client(self) -> aiosmtplib.SMTP:
        smtp = self.smtp
        return aiosmtplib.SMTP(
            hostname=smtp.host,
            port=smtp.port,
            local_hostname=smtp.local_hostname,
            username=smtp.username,
            password=smtp.password,
            use_tls=smtp.use_tls,
            start_tls=smtp.start_tls if smtp.start_tls else False,
            timeout=30,
            tls_context=ssl.create_default_context() if (smtp.use_tls or smtp.start_tls) else None,
        )

    async def send(self, msg: MIMEText) -> None:
        """Send ``msg``; aiosmtplib's errors (and OSError, TimeoutError) as they come."""
        async with self._slots:
            kept = self._idle.pop() if self._idle else None
            if kept is not None and kept.is_connected:
                try:
                    await kept.send_message(msg)
                except aiosmtplib.SMTPServerDisconnected:
                    kept.close()  # closed by the server while idle: a new connection
                except BaseException:
                    kept.close()
                    raise
                else:
                    self._idle.append(kept)
                    return
            client = self._client()
            await client.connect()
            try:
                await client.send_message(msg)
            except BaseException:
                client.close()
                raise
            self._idle.append(client)

    async def close(self) -> None:
        """Say goodbye on the idle connections (best effort)."""
        idle, self._idle = self._idle, []
        for client in idle:
            try:
                await asyncio.wait_for(client.quit(), 2)
            except (aiosmtplib.SMTPException, OSError, TimeoutError):
                client.close()


async def email(mailer: Mailer, effect: Effect) -> Result:
    """Send the step's mail with its fixed Message-ID; an SMTP 4xx is retried."""
    spec = effect.spec
    to = [str(a) for a in spec.get("to") or []]
    message_id = ids.message_id(effect.run, effect.step)
    try:
        # compat32 MIMEText: the default policy's header objects cost a third of a step.
        text = str(spec.get("text", ""))
        msg = MIMEText(text, "plain", "us-ascii" if text.isascii() else "utf-8")
        msg["From"] = mailer.smtp.sender
        msg["To"] = ", ".join(to)
        subject = str(spec.get("subject", ""))
        msg["Subject"] = subject if subject.isascii() else Header(subject, "utf-8").encode()
        msg["Message-ID"] = message_id
        msg["Date"] = formatdate(usegmt=True)
    except ValueError as exc:
        return Result(ok=False, error=f"invalid email: {exc}"[:300])
    try:
        await mailer.send(msg)
    except aiosmtplib.SMTPRecipientsRefused as exc:
        codes = [r.code for r in exc.recipients]
        temporary = bool(codes) and all(400 <= c < 500 for c in codes)
        return Result(ok=False, error=f"SMTP refused the recipients ({codes})", retriable=temporary)
    except aiosmtplib.SMTPResponseException as exc:
        return Result(
            ok=False, error=f"SMTP {exc.code}: {exc.message}"[:300], retriable=400 <= exc.code < 500
        )
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
        return Result(
            ok=False, error=f"SMTP connection failed: {type(exc).__name__}", retriable=True
        )
    except ValueError as exc:
        return Result(ok=False, error=f"invalid email: {exc}"[:300])
    return Result(ok=True, output={"message_id": message_id, "to": to})
