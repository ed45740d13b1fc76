"""What every local service shares: its status record, errors, and life cycle.

A service is started in two steps so that ``up`` can overlap the slow parts:
``start`` prepares files and launches the process without waiting, and
``ready`` waits for it to answer and then provisions it (role and database,
bucket, topics). ``probe`` is the cheap protocol-level check ``status`` uses.
"""

from __future__ import annotations

import abc
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from eventfold.settings import Settings

Progress = Callable[[str], None]


class InfraError(Exception):
    """A local-stack failure; the message is meant for the user as it stands."""


@dataclass(frozen=True)
class ServiceStatus:
    """One service of the stack as ``up``, ``down`` and ``status`` report it."""

    name: str
    address: str
    #: False when the user points at their own service (``settings.external``).
    managed: bool
    #: Whether it answers on its address.
    running: bool
    #: "pid 1234", "external", "not installed", "stopped", or error text.
    detail: str


class Service(abc.ABC):
    """One service of the local stack, managed through a pid file under var/."""

    name: ClassVar[str]
    #: The variable a user sets to bring their own instance instead.
    env_var: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    stop_timeout: ClassVar[float] = 20.0
    start_timeout: ClassVar[float] = 60.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.var: Path = settings.var_dir
        self.home: Path = settings.home

    @property
    @abc.abstractmethod
    def host(self) -> str:
        """The host the service listens on."""

    @property
    @abc.abstractmethod
    def port(self) -> int:
        """The TCP port the service listens on."""

    @property
    def ports(self) -> tuple[int, ...]:
        """Every port the service binds (checked for conflicts before a start)."""
        return (self.port,)

    @property
    def address(self) -> str:
        """``host:port`` as shown to the user."""
        return f"{self.host}:{self.port}"

    @property
    def external(self) -> bool:
        """Whether the user brings their own instance (we only probe it)."""
        return self.name in self.settings.external

    @property
    def pid_path(self) -> Path:
        """Our pid file for this service."""
        return self.var / "run" / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        """Where the service's own output goes."""
        return self.var / "log" / f"{self.name}.log"

    @property
    @abc.abstractmethod
    def markers(self) -> tuple[str, ...]:
        """Substrings of the command line that only our own start produces."""

    def missing_packages(self) -> list[str]:
        """Debian packages to install before this service can start."""
        return []

    async def fetch(self, progress: Progress) -> None:  # noqa: B027 - optional hook
        """Download what the service runs (jars); a no-op when cached."""

    def installed(self) -> bool:
        """Whether everything the service runs is on this machine."""
        return not self.missing_packages()

    @abc.abstractmethod
    async def start(self, progress: Progress) -> int:
        """Prepare files and launch the process without waiting; return its pid."""

    @abc.abstractmethod
    async def ready(self, pid: int | None, progress: Progress) -> None:
        """Wait until the service answers, then provision it (idempotent)."""

    @abc.abstractmethod
    async def probe(self) -> str | None:
        """A protocol-level check: None when healthy, else what went wrong."""


def as_root() -> bool:
    """Whether we run as root (then servers that refuse root get their own user)."""
    return os.geteuid() == 0


def oneline(exc: BaseException) -> str:
    """An exception as one line for a status detail: type and first line of text."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
