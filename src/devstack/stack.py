"""``eventfold infra up | down | status``: the whole local stack, without Docker.

``up`` runs in phases so the slow parts overlap: check that no foreign process
holds our ports, install what is missing (apt packages, Maven jars,
concurrently), start every service that is not already running (postgres,
redis, s3, kafka, without waiting), then wait for all of them at once and
provision each as it answers (role and database, bucket, topics).
Services named in ``settings.external`` are only probed, never touched.
"""

from __future__ import annotations

import asyncio
import time

from devstack.apt import install
from devstack.base import InfraError, Progress, Service, ServiceStatus
from devstack.java import JAVA_PACKAGES
from devstack.kafka import cluster, strays
from devstack.postgres import Postgres, server_clusters
from devstack.process import exclusive, live_pid, port_free, stop, tcp_open
from devstack.redis import Redis
from devstack.s3 import S3Proxy
from devstack.sentinel import sentinel_services
from eventfold.settings import Settings


def services(settings: Settings) -> list[Service]:
    """The stack in start order (Kafka last: slowest, and nothing waits on it).

    With more database servers (``EVENTFOLD_DATABASE_SERVERS``), a cluster for each
    after ``main``'s; with Redis Sentinel, a Redis replica and the sentinels follow
    (devstack.sentinel).
    """
    stack = [
        Postgres(settings),
        *server_clusters(settings),
        Redis(settings),
        S3Proxy(settings),
        *cluster(settings),
    ]
    return stack + sentinel_services(settings)


async def _status_of(service: Service) -> ServiceStatus:
    try:
        address = service.address
    except InfraError as exc:
        return ServiceStatus(service.name, "?", not service.external, False, str(exc))
    if service.external:
        problem = await service.probe()
        return ServiceStatus(service.name, address, False, problem is None, problem or "external")
    pid = live_pid(service.pid_path, service.markers)
    if not service.installed():
        return ServiceStatus(service.name, address, True, False, "not installed")
    if pid is None:
        if await tcp_open(service.host, service.port, within=0.5):
            return ServiceStatus(
                service.name, address, True, False, "port taken by a process not started by us"
            )
        return ServiceStatus(service.name, address, True, False, "stopped")
    problem = await service.probe()
    if problem is None:
        return ServiceStatus(service.name, address, True, True, f"pid {pid}")
    return ServiceStatus(service.name, address, True, False, f"pid {pid}, {problem}")


async def status_async(settings: Settings) -> list[ServiceStatus]:
    """Probe every service concurrently; never raises."""
    found = await asyncio.gather(
        *(_status_of(service) for service in services(settings)), return_exceptions=True
    )
    result = []
    for service, item in zip(services(settings), found, strict=True):
        if isinstance(item, BaseException):
            item = ServiceStatus(service.name, "?", not service.external, False, repr(item))
        result.append(item)
    return result


def _port_taken_error(service: Service, port: int) -> InfraError:
    return InfraError(
        f"{service.name}: {service.host}:{port} is already in use by a process eventfold did not"
        f" start. Free the port, or point Eventfold at that server by setting"
        f" {service.env_var} (then `infra up` leaves {service.name} alone)."
    )


async def up_async(settings: Settings, *, progress: Progress = print) -> list[ServiceStatus]:
    """Bring the local stack up (idempotent); raise InfraError on failure."""
    async with exclusive(settings.var_dir / "run" / "infra.lock"):
        return await _up(settings, progress)


async def _up(settings: Settings, progress: Progress) -> list[ServiceStatus]:
    started_at = time.monotonic()
    stack = services(settings)
    managed = [service for service in stack if not service.external]
    for service in stack:
        if service.external:
            progress(f"{service.name}: external ({service.address}), not managed by eventfold")

    # Phase 1: refuse early when a port we need belongs to someone else; checking
    # every port before anything is installed or started avoids half a stack.
    for stray in strays(settings):
        raise InfraError(
            f"{stray.name} (another Kafka layout than EVENTFOLD_KAFKA_BROKERS="
            f"{settings.kafka_brokers} asks for) is running: stop the stack with"
            " `eventfold infra down` first; each layout keeps its own data"
        )
    running = {service.name: live_pid(service.pid_path, service.markers) for service in managed}
    for service in managed:
        if running[service.name] is None:
            for port in service.ports:
                if not port_free(service.host, port) or await tcp_open(
                    service.host, port, within=0.3
                ):
                    raise _port_taken_error(service, port)

    # Phase 2: install. Maven fetches overlap with apt unless apt brings Java or Maven.
    packages = sorted({p for service in managed for p in service.missing_packages()})
    apt_log = settings.var_dir / "log" / "apt.log"

    async def fetch_all() -> None:
        await asyncio.gather(*(service.fetch(progress) for service in managed))

    if JAVA_PACKAGES.intersection(packages):
        await install(packages, progress, apt_log)
        await fetch_all()
    else:
        await asyncio.gather(install(packages, progress, apt_log), fetch_all())

    # Phase 3: start whatever is not running, without waiting for it.
    waiting: list[tuple[Service, int, bool, float]] = []
    for service in managed:
        pid = running[service.name]
        if pid is not None:
            waiting.append((service, pid, False, time.monotonic()))
            continue
        began = time.monotonic()
        try:
            pid = await service.start(progress)
        except OSError as exc:
            raise InfraError(f"{service.name}: could not start: {exc}") from None
        waiting.append((service, pid, True, began))

    # Phase 4: wait for all at once, provision each as soon as it answers.
    async def settle(service: Service, pid: int, fresh: bool, began: float) -> ServiceStatus:
        await service.ready(pid, progress)
        if fresh:
            progress(
                f"{service.name}: ready on {service.address} ({time.monotonic() - began:.1f} s)"
            )
        else:
            progress(f"{service.name}: already running on {service.address} (pid {pid})")
        return ServiceStatus(service.name, service.address, True, True, f"pid {pid}")

    outcomes = await asyncio.gather(*(settle(*entry) for entry in waiting), return_exceptions=True)
    errors = [item for item in outcomes if isinstance(item, BaseException)]
    if errors:
        for item in errors:
            if not isinstance(item, Exception):
                raise item
        raise InfraError(
            "\n".join(
                str(item) if isinstance(item, InfraError) else f"{type(item).__name__}: {item}"
                for item in errors
            )
        )
    by_name = {item.name: item for item in outcomes if isinstance(item, ServiceStatus)}

    result = []
    for service in stack:
        if service.name in by_name:
            result.append(by_name[service.name])
        else:
            found = await _status_of(service)
            if not found.running:
                progress(f"{service.name}: not answering on {found.address}: {found.detail}")
            result.append(found)
    progress(f"stack up in {time.monotonic() - started_at:.1f} s")
    return result


async def down_async(settings: Settings, *, progress: Progress = print) -> list[ServiceStatus]:
    """Stop what ``up`` started (per our pid files), all at once; leave the rest."""

    async def halt(service: Service) -> ServiceStatus:
        if service.external:
            return await _status_of(service)
        pid = live_pid(service.pid_path, service.markers)
        if pid is None:
            return ServiceStatus(service.name, service.address, True, False, "not running")
        progress(f"{service.name}: stopping pid {pid}")
        how = await stop(pid, sig=service.stop_signal, grace=service.stop_timeout)
        service.pid_path.unlink(missing_ok=True)
        progress(f"{service.name}: {how}")
        return ServiceStatus(service.name, service.address, True, False, how)

    # Reverse start order only matters for the progress lines; stops run together.
    # Kafka nodes of the other layout (a cluster while one node is configured, or the
    # reverse) are stopped as well: down leaves nothing of ours running.
    stack = list(reversed([*services(settings), *strays(settings)]))
    async with exclusive(settings.var_dir / "run" / "infra.lock"):
        found = await asyncio.gather(*(halt(service) for service in stack))
    return list(reversed(found))


def up(settings: Settings, *, progress: Progress = print) -> list[ServiceStatus]:
    """Bring the local stack up (idempotent); raise InfraError on failure."""
    return asyncio.run(up_async(settings, progress=progress))


def down(settings: Settings, *, progress: Progress = print) -> list[ServiceStatus]:
    """Stop what ``up`` started (pid files under ``settings.var_dir``)."""
    return asyncio.run(down_async(settings, progress=progress))


def status(settings: Settings) -> list[ServiceStatus]:
    """Probe every service of the stack; never raises."""
    try:
        return asyncio.run(status_async(settings))
    except Exception as exc:
        return [
            ServiceStatus(service.name, "?", not service.external, False, repr(exc))
            for service in services(settings)
        ]
