"""Test doubles for workflow steps: an HTTP receiver and a real SMTP server (aiosmtpd),
and helpers to define workflows and wait for runs through the public API."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.message
import time
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

import orjson
import pytest_asyncio
from aiohttp import web
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.conftest import free_port

if TYPE_CHECKING:  # the conftest imports this module for its fixture
    from tests.integration.conftest import TenantApi


@dataclasses.dataclass
class Call:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    status: int


class Receiver:
    """A third party's HTTP server: ``decide(path, nth)`` → (status, JSON answer)."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self.decide: Callable[[str, int], tuple[int, Any]] = lambda _p, _n: (200, {"ok": True})
        self.delay = 0.0
        #: Calls started per path (answered or not).
        self.started: dict[str, int] = {}
        #: Seconds each call to a path waits before its answer.
        self.delays: dict[str, float] = {}
        #: Paths whose first call is recorded and then never answered (a hung third party).
        self.hang_first: set[str] = set()
        self.hung = asyncio.Event()
        self.changed = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.base = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.base = f"http://127.0.0.1:{self._runner.addresses[0][1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.started[request.path] = self.started.get(request.path, 0) + 1
        self.changed.set()
        if request.path in self.hang_first:
            self.hang_first.discard(request.path)
            self.calls.append(Call(request.method, request.path, dict(request.headers), None, 0))
            self.hung.set()
            await asyncio.sleep(3600)
        if self.delay or request.path in self.delays:
            await asyncio.sleep(self.delays.get(request.path, self.delay))
        nth = 1 + sum(1 for c in self.calls if c.path == request.path)
        status, answer = self.decide(request.path, nth)
        body = orjson.loads(raw) if raw else None
        self.calls.append(Call(request.method, request.path, dict(request.headers), body, status))
        self.changed.set()
        return web.json_response(answer, status=status)

    def to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    async def wait_for(self, condition: Callable[[], bool], within: float = 30) -> None:
        async with asyncio.timeout(within):
            while not condition():
                self.changed.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), 0.5)


@pytest_asyncio.fixture(loop_scope="session")
async def receiver() -> AsyncIterator[Receiver]:
    """A started :class:`Receiver` (the integration tests' conftest offers it)."""
    r = Receiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


class _Handler:
    def __init__(
        self, inbox: list[email.message.Message], refuse: list[int], peers: list[Any]
    ) -> None:
        self.inbox = inbox
        self.refuse = refuse
        self.peers = peers

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.peers.append(session.peer)
        if self.refuse:
            return f"{self.refuse.pop(0)} try again later"
        content = envelope.content if isinstance(envelope.content, bytes) else b""
        self.inbox.append(email.message_from_bytes(content))
        return "250 OK"


class Mailbox:
    """A real SMTP server on 127.0.0.1 (aiosmtpd); ``refuse``: codes DATA gets first."""

    def __init__(self, port: int | None = None) -> None:
        self.received: list[email.message.Message] = []
        self.refuse: list[int] = []
        #: The client address of each mail's connection (one per DATA, refused or not).
        self.peers: list[Any] = []
        self.port = port or free_port()
        self._controller = Controller(
            _Handler(self.received, self.refuse, self.peers), hostname="127.0.0.1", port=self.port
        )

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def of(self, run: str) -> list[email.message.Message]:
        """The mails a run sent (its Message-IDs name it)."""
        return [m for m in self.received if run in str(m.get("Message-ID", ""))]

    async def wait_for(self, run: str, count: int = 1, within: float = 30) -> None:
        deadline = time.monotonic() + within
        while len(self.of(run)) < count:
            assert time.monotonic() < deadline, f"{len(self.of(run))} mails, wanted {count}"
            await asyncio.sleep(0.05)


async def define(tenant: TenantApi, definition: dict[str, Any]) -> dict[str, Any]:
    """POST the workflow and wait until it is projected (a trigger after this is seen)."""
    doc = await tenant.call("POST", "/workflows", roles=("admin",), json=definition)
    assert doc.status == 202, await doc.text()
    body: dict[str, Any] = await doc.json()
    seen = await tenant.read(f"/workflows/{body['id']}", body["consistency_token"])
    assert seen.status == 200, await seen.text()
    return body


async def runs_of(tenant: TenantApi, workflow: str) -> list[dict[str, Any]]:
    doc = await tenant.read_json(f"/workflows/{workflow}/runs?limit=1000")
    items: list[dict[str, Any]] = doc["items"]
    return items


async def wait_run(
    tenant: TenantApi,
    workflow: str,
    done: Callable[[dict[str, Any]], bool],
    *,
    count: int = 1,
    within: float = 30,
) -> list[dict[str, Any]]:
    """Wait until ``workflow`` has ``count`` runs and ``done`` holds for each; newest first."""
    deadline = time.monotonic() + within
    while True:
        items = await runs_of(tenant, workflow)
        if len(items) >= count and all(done(r) for r in items):
            return items
        assert time.monotonic() < deadline, f"runs never got there: {items}"
        await asyncio.sleep(0.1)


async def wait_record(
    tenant: TenantApi, path: str, done: Callable[[dict[str, Any]], bool], *, within: float = 30
) -> dict[str, Any]:
    """The record at ``path`` once ``done`` holds for it.

    A step's record write is acknowledged by Kafka before its run goes on, and the
    projector applies it a little later: a read right after the run is not a token read.
    """
    deadline = time.monotonic() + within
    while True:
        resp = await tenant.read(path)
        if resp.status == 200:
            record: dict[str, Any] = await resp.json()
            if done(record):
                return record
        else:
            record = {"status": resp.status}
        assert time.monotonic() < deadline, f"the record never got there: {record}"
        await asyncio.sleep(0.1)


def finished(run: dict[str, Any]) -> bool:
    return run["status"] in ("succeeded", "failed", "cancelled")


def step(run: dict[str, Any], step_id: str) -> dict[str, Any]:
    found: dict[str, Any] = next(s for s in run["steps"] if s["id"] == step_id)
    return found
