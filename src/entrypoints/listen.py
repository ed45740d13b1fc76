"""The listening socket of a process's HTTP server, bound before anything else starts.

``eventfold run``, ``serve`` and ``process`` bind ``EVENTFOLD_HTTP_HOST``:
``EVENTFOLD_HTTP_PORT`` first and only then start their app and processors: a taken
address stops the command with exit status 1 and one line naming it (a second
process on one host needs a port of its own), before a processor joins its consumer
group or a client connects, and without a traceback.
"""

from __future__ import annotations

import socket

from eventfold.errors import PermanentError
from eventfold.settings import Settings

#: Connections waiting to be accepted (aiohttp's own default).
BACKLOG = 128


class CannotListen(PermanentError):
    """The address cannot be bound (another process has it, or no such address);
    ``str()`` is one line naming it and the settings that chose it."""


def listen(settings: Settings, what: str) -> list[socket.socket]:
    """Non-blocking sockets listening on the settings' HTTP address (one per address the
    host resolves to, as the server would bind them itself), for serving ``what``.

    Raises :class:`CannotListen` when an address is taken or the host cannot be resolved.
    """
    host, port = settings.http_host, settings.http_port
    bound: list[socket.socket] = []
    try:
        found = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, *_, address in dict.fromkeys((f, a) for f, *_, a in found):
            # SO_REUSEADDR as asyncio's create_server sets it: a restart need not wait for
            # the old process's connections in TIME_WAIT; a live listener still refuses.
            bound.append(socket.create_server(address, family=family, backlog=BACKLOG))
    except OSError as exc:
        for sock in bound:
            sock.close()
        raise CannotListen(
            f"cannot serve {what} on {host}:{port} (EVENTFOLD_HTTP_HOST, EVENTFOLD_HTTP_PORT):"
            f" {exc.strerror or exc}"
        ) from exc
    for sock in bound:
        sock.setblocking(False)
    return bound
