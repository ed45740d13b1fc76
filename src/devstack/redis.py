"""Redis 7 from the Debian package, as our own instance under var/redis.

Redis holds two kinds of keys, in two logical databases of this one server:
state that must not vanish (rate-limit buckets, dedup keys, analytics windows,
stream slots: ``EVENTFOLD_REDIS_URL``, database 0) and the record cache, which
may (``settings.cache_url``: database 1). An eviction policy is the server's,
not a database's, so the local server evicts nothing (``noeviction``): past
``maxmemory`` a write fails, which the cache's breaker and the callers' fail-open
paths handle, rather than losing state silently; every cache entry has a TTL.
A deployment gives the cache a server of its own with ``allkeys-lru``
(docker-compose.yml's ``redis-cache``). Append-only persistence stays on: the
state survives a restart of the stack, and the cache stays warm.

With Redis Sentinel (:mod:`devstack.sentinel`) this server may start as a
replica: after a failover the sentinels' configs name another master, and a
server started again follows that one instead of coming back as a second master.
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from devstack.base import Progress, Service, oneline
from devstack.process import spawn, wait_ready
from eventfold.secretfiles import write_private
from eventfold.settings import Settings

CONFIG = """\
# Written by `eventfold infra up` on every start; edit src/devstack/redis.py.
bind {host}
port {port}
protected-mode no
daemonize no
dir {dir}
appendonly yes
appendfsync everysec
# No RDB snapshots: with the AOF on, Redis restores from the AOF, and each
# snapshot forked a child that wrote the whole dataset (~2 s on these 2 cores,
# once a minute under load: write-to-visible p99 51-71 -> 23-34 ms without).
save ""
maxmemory 512mb
# Database 0 holds state that must not vanish: past maxmemory, writes fail instead
# of evicting (the policy is the server's; the cache, in database 1, has TTLs).
maxmemory-policy noeviction
tcp-keepalive 60
loglevel notice
databases 16
{auth}{replication}"""

#: Under var/: one folder per sentinel port, each with the config that sentinel keeps.
SENTINEL_DIR = "redis-sentinel"


def sentinel_master(settings: Settings) -> tuple[str, int] | None:
    """The master the local sentinels last agreed on, from the configs they rewrite.

    A sentinel writes the master it monitors (``sentinel monitor NAME HOST PORT Q``)
    and the epoch of that choice into its config on every failover, so the file of
    the highest epoch names the current master, also while every process is down.
    None when no sentinel has run here yet.
    """
    best: tuple[int, tuple[str, int]] | None = None
    for config in sorted((settings.var_dir / SENTINEL_DIR).glob("*/sentinel.conf")):
        epoch, master = 0, None
        for line in config.read_text().splitlines():
            words = line.split()
            if words[:3] == ["sentinel", "monitor", settings.redis_sentinel_service]:
                master = (words[3], int(words[4]))
            elif words[:3] == ["sentinel", "config-epoch", settings.redis_sentinel_service]:
                epoch = int(words[3])
        if master is not None and (best is None or epoch > best[0]):
            best = (epoch, master)
    return None if best is None else best[1]


def missing_redis() -> list[str]:
    """The Debian package of redis-server (also Sentinel's program) unless it is on the PATH."""
    return [] if shutil.which("redis-server") else ["redis-server"]


def same_server(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two addresses name one server (sentinels write IPs, settings may not)."""
    if a[1] != b[1]:
        return False
    try:
        return socket.gethostbyname(a[0]) == socket.gethostbyname(b[0])
    except OSError:  # not resolvable here: only the same name is the same server
        return a[0] == b[0]


class Redis(Service):
    """Our own redis-server with a generated config in var/redis."""

    name: ClassVar[str] = "redis"
    env_var: ClassVar[str] = "EVENTFOLD_REDIS_URL"
    stop_timeout: ClassVar[float] = 15.0
    start_timeout: ClassVar[float] = 20.0

    @property
    def _url(self) -> tuple[str, int, str]:
        parts = urlsplit(self.settings.redis_url)
        return parts.hostname or "127.0.0.1", parts.port or 6379, unquote(parts.password or "")

    @property
    def host(self) -> str:
        """The bind address, from ``settings.redis_url``."""
        return self._url[0]

    @property
    def port(self) -> int:
        """The port, from ``settings.redis_url``."""
        return self._url[1]

    @property
    def password(self) -> str:
        """The password of ``settings.redis_url`` (empty: none)."""
        return self._url[2]

    @property
    def root(self) -> Path:
        """var/redis: config, append-only file and snapshots."""
        return self.var / "redis"

    @property
    def url(self) -> str:
        """The URL that reaches this server: ``settings.redis_url``."""
        return self.settings.redis_url

    def master(self) -> tuple[str, int] | None:
        """The server this one replicates on start; None: it starts as a master.

        The master the local sentinels last named, unless that is this server.
        """
        found = sentinel_master(self.settings)
        if found is None or same_server(found, (self.host, self.port)):
            return None
        return found

    @property
    def markers(self) -> tuple[str, ...]:
        """Redis retitles itself (``redis-server host:port``), so only its name is stable."""
        return ("redis-server",)

    def missing_packages(self) -> list[str]:
        """redis-server unless it is on the PATH (it runs the sentinels too)."""
        return missing_redis()

    def write_config(self) -> Path:
        """var/redis/redis.conf, private from its creation: it may hold the password."""
        self.root.mkdir(parents=True, exist_ok=True)
        password = self.password
        master = self.master()
        replication = ""
        if master is not None:
            replication = f"replicaof {master[0]} {master[1]}\n"
            replication += f'masterauth "{password}"\n' if password else ""
        config = self.root / "redis.conf"
        write_private(
            config,
            CONFIG.format(
                host=self.host,
                port=self.port,
                dir=self.root,
                auth=f'requirepass "{password}"\n' if password else "",
                replication=replication,
            ),
        )
        return config

    async def start(self, progress: Progress) -> int:
        """Write the config and launch redis-server."""
        config = self.write_config()
        master = self.master()
        role = f" as a replica of {master[0]}:{master[1]}" if master else ""
        progress(f"{self.name}: starting on {self.address}{role}")
        return spawn(
            [shutil.which("redis-server") or "redis-server", str(config)],
            log_path=self.log_path,
            pid_path=self.pid_path,
            cwd=self.root,
        )

    async def _pong(self) -> bool:
        return await self.probe() is None

    async def ready(self, pid: int | None, progress: Progress) -> None:
        """Wait until it answers PING (after loading its append-only file)."""
        await wait_ready(
            self._pong,
            what=self.name,
            within=self.start_timeout,
            pid=pid,
            log_path=self.log_path,
        )

    async def probe(self) -> str | None:
        """PING this server through redis-py (credentials from ``settings.redis_url``)."""
        from redis.asyncio import Redis as Client  # deferred: only status and up need it

        client = Client.from_url(self.url, socket_connect_timeout=2, socket_timeout=2)
        try:
            await client.ping()
        except Exception as exc:
            return oneline(exc)
        finally:
            await client.aclose()
        return None
