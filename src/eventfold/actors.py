"""Who wrote an event: the ``actor`` extension the gateway stamps on every event it accepts.

An actor is ``<kind>:<id>``: ``user:<token sub>``, ``apikey:<key id>``,
``integration:<integration id>``, ``workflow:<run id>`` or ``operator:<name>``
(the CLI). It is never taken from the client: :func:`eventfold.envelope.stamp`
and :meth:`eventfold.publisher.Publisher.publish` overwrite whatever a client
sent, so the history (``GET …/events?actor=``) names who really wrote.

The request being served names its actor in :data:`current` (set once its
credentials are checked, :func:`eventfold.web.authenticate`); processors that
publish on their own behalf (integration syncs, workflow runs) pass theirs
explicitly.
"""

from __future__ import annotations

import getpass
import os
from contextvars import ContextVar

from eventfold.errors import PermanentError

#: The extension attribute's name.
ATTRIBUTE = "actor"
#: The kinds of actor, in the order the contract lists them.
KINDS = ("user", "apikey", "integration", "workflow", "operator")
#: The actor of the request (or command) being handled; None until authenticated.
current: ContextVar[str | None] = ContextVar("actor", default=None)


class MissingActor(PermanentError):
    """An event was about to be published with no actor: a programming error, never input."""


def user(subject: str) -> str:
    """A bearer token's caller: ``user:<sub>``."""
    return f"user:{subject}"


def apikey(key_id: str) -> str:
    """An API key's caller: ``apikey:<id>``."""
    return f"apikey:{key_id}"


def integration(integration_id: str) -> str:
    """An integration's sync or inbound webhook: ``integration:<id>``."""
    return f"integration:{integration_id}"


def workflow(run_id: str) -> str:
    """A workflow run's step: ``workflow:<run id>``."""
    return f"workflow:{run_id}"


def operator(name: str | None = None) -> str:
    """A CLI operator: ``operator:<name>``, the OS user when no name is given."""
    return f"operator:{name or os_user()}"


def os_user() -> str:
    """The OS user running this process (``unknown`` when the platform cannot tell)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER (some containers)
        return os.environ.get("USER") or "unknown"


def resolve(explicit: str | None) -> str:
    """The actor to stamp: ``explicit`` when given, else the current request's.

    Raises :class:`MissingActor` when neither is known, so no event can reach
    the log without naming who wrote it.
    """
    actor = explicit or current.get()
    if not actor:
        raise MissingActor("no actor is known for this publish")
    return actor
