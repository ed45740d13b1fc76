"""Redis Sentinel in the local stack: a replica of our Redis and three sentinels, under var/.

``eventfold infra up --redis-sentinel`` (or ``EVENTFOLD_REDIS_SENTINELS`` set)
adds them to the stack: the replica (``replicaof`` the primary) on the port after
the primary's, data in var/redis-replica, and a sentinel on each address of
``EVENTFOLD_REDIS_SENTINELS`` (default :data:`DEFAULT_SENTINELS`), each with its
config in var/redis-sentinel/PORT. They watch the master as
``EVENTFOLD_REDIS_SENTINEL_SERVICE`` with quorum 2 and short deadlines, so a
local failover takes a few seconds.

The stack remembers that it runs Sentinel (var/redis-sentinel/sentinels), so
``status``, ``down`` and a later ``up`` see the same processes without the flag:
after a failover a plain ``up`` must not bring the old primary back as a second
master. Each sentinel config is written once and then belongs to its sentinel,
which rewrites it with what it learnt (replicas, the other sentinels, the current
master and its epoch); the Redis servers read the current master from those
files before they start (:func:`devstack.redis.sentinel_master`). To go back to
one Redis: ``infra down``, then remove var/redis-sentinel and var/redis-replica.
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

from devstack.base import InfraError, Progress, Service, oneline
from devstack.process import spawn, wait_ready
from devstack.redis import SENTINEL_DIR, Redis, missing_redis, same_server, sentinel_master
from eventfold.secretfiles import write_private
from eventfold.settings import Settings

#: Where ``--redis-sentinel`` puts the sentinels unless EVENTFOLD_REDIS_SENTINELS says.
DEFAULT_SENTINELS = ("127.0.0.1:26379", "127.0.0.1:26380", "127.0.0.1:26381")
#: Sentinels that must agree that the master is down before a failover.
QUORUM = 2
#: How long the master may not answer before a sentinel thinks it down (ms).
DOWN_AFTER_MS = 1000
#: A failover that has not completed by then is retried by another sentinel (ms).
FAILOVER_TIMEOUT_MS = 5000

CONFIG = """\
# Written by `eventfold infra up` once; from then on redis-sentinel keeps it
# (it rewrites it with the replicas, the other sentinels and the current master).
bind {host}
port {port}
protected-mode no
daemonize no
dir {dir}
sentinel resolve-hostnames yes
sentinel monitor {service} {master_host} {master_port} {quorum}
sentinel down-after-milliseconds {service} {down_after}
sentinel failover-timeout {service} {failover_timeout}
sentinel parallel-syncs {service} 1
{auth}"""


def with_sentinels(settings: Settings) -> Settings:
    """``settings`` for a stack with Sentinel: the default local sentinels unless some are set."""
    if settings.redis_sentinels:
        return settings
    return dataclasses.replace(settings, redis_sentinels=DEFAULT_SENTINELS)


def _remembered(settings: Settings) -> Path:
    return settings.var_dir / SENTINEL_DIR / "sentinels"


def sentinel_services(settings: Settings) -> list[Service]:
    """The replica and the sentinels, when this stack runs Sentinel; else none.

    It does when ``settings.redis_sentinels`` is set or an earlier ``up`` started
    sentinels here. Not for a Redis of the user's own (``EVENTFOLD_REDIS_URL``):
    its replicas and sentinels are theirs too.
    """
    if "redis" in settings.external:
        return []
    addresses = settings.redis_sentinels
    if not addresses:
        try:
            addresses = tuple(_remembered(settings).read_text().split())
        except FileNotFoundError:
            return []
        settings = dataclasses.replace(settings, redis_sentinels=addresses)
    return [
        RedisReplica(settings),
        *(_sentinel_class(n)(settings, n) for n in range(1, len(addresses) + 1)),
    ]


class RedisReplica(Redis):
    """A replica of our Redis on the next port, data in var/redis-replica."""

    name: ClassVar[str] = "redis-replica"
    env_var: ClassVar[str] = "EVENTFOLD_REDIS_SENTINELS"

    @property
    def port(self) -> int:
        """The port after the primary's."""
        return self._url[1] + 1

    @property
    def root(self) -> Path:
        """var/redis-replica: its config and append-only file."""
        return self.var / "redis-replica"

    @property
    def url(self) -> str:
        """``settings.redis_url`` with this server's port (same credentials)."""
        parts = urlsplit(self.settings.redis_url)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@{self.address}" if userinfo else self.address
        return urlunsplit(parts._replace(netloc=netloc))

    def master(self) -> tuple[str, int] | None:
        """The master the sentinels last named, else (before they ran) the primary."""
        found = sentinel_master(self.settings)
        if found is None:
            return self.host, self._url[1]
        return None if same_server(found, (self.host, self.port)) else found


class RedisSentinel(Service):
    """One ``redis-server --sentinel`` with its config in var/redis-sentinel/PORT."""

    name: ClassVar[str] = "redis-sentinel"
    env_var: ClassVar[str] = "EVENTFOLD_REDIS_SENTINELS"
    start_timeout: ClassVar[float] = 30.0

    def __init__(self, settings: Settings, number: int) -> None:
        super().__init__(settings)
        #: Its place (from 1) in ``settings.redis_sentinels``.
        self.number = number

    @property
    def _address(self) -> tuple[str, int]:
        return self.settings.sentinel_addresses[self.number - 1]

    @property
    def host(self) -> str:
        """Its address's host, from ``settings.redis_sentinels``."""
        return self._address[0]

    @property
    def port(self) -> int:
        """Its address's port, from ``settings.redis_sentinels``."""
        return self._address[1]

    @property
    def root(self) -> Path:
        """var/redis-sentinel/PORT: the config the sentinel keeps."""
        return self.var / SENTINEL_DIR / str(self.port)

    @property
    def markers(self) -> tuple[str, ...]:
        """Redis retitles itself ``redis-server host:port [sentinel]``."""
        return ("redis-server", "sentinel")

    def missing_packages(self) -> list[str]:
        """redis-server (it runs the sentinels too) unless it is on the PATH."""
        return missing_redis()

    def write_config(self) -> Path:
        """The first config, monitoring the current master; an existing one is the sentinel's."""
        config = self.root / "sentinel.conf"
        if config.exists():
            return config
        self.root.mkdir(parents=True, exist_ok=True)
        primary = Redis(self.settings)
        master = sentinel_master(self.settings) or (primary.host, primary.port)
        password = primary.password
        service = self.settings.redis_sentinel_service
        # Private from its creation (as redis.py's): it may hold the password.
        write_private(
            config,
            CONFIG.format(
                host=self.host,
                port=self.port,
                dir=self.root,
                service=service,
                master_host=master[0],
                master_port=master[1],
                quorum=QUORUM,
                down_after=DOWN_AFTER_MS,
                failover_timeout=FAILOVER_TIMEOUT_MS,
                auth=f'sentinel auth-pass {service} "{password}"\n' if password else "",
            ),
        )
        return config

    async def start(self, progress: Progress) -> int:
        """Write the config (once), remember the layout, launch the sentinel."""
        config = self.write_config()
        _remembered(self.settings).write_text("\n".join(self.settings.redis_sentinels) + "\n")
        progress(f"{self.name}: starting on {self.address}")
        return spawn(
            [shutil.which("redis-server") or "redis-server", str(config), "--sentinel"],
            log_path=self.log_path,
            pid_path=self.pid_path,
            cwd=self.root,
        )

    async def _formed(self) -> bool:
        """It monitors a master and knows the other sentinels and a replica."""
        try:
            state = await self._master_state()
        except Exception:
            return False
        others = len(self.settings.redis_sentinels) - 1
        return int(state["num-other-sentinels"]) >= others and int(state["num-slaves"]) >= 1

    async def ready(self, pid: int | None, progress: Progress) -> None:
        """Wait until it could take part in a failover (peers and a replica known)."""
        await wait_ready(
            self._formed, what=self.name, within=self.start_timeout, pid=pid, log_path=self.log_path
        )
        if self.number == 1:
            progress(
                "redis: Eventfold follows failovers with"
                f" EVENTFOLD_REDIS_SENTINELS={','.join(self.settings.redis_sentinels)}"
            )

    async def _master_state(self) -> dict[str, Any]:
        from redis.asyncio import Redis as Client  # deferred: only status and up need it

        client = Client(host=self.host, port=self.port, socket_connect_timeout=2, socket_timeout=2)
        try:
            # One sentinel asked: its answer is the master's state (typed for many).
            state = await client.sentinel_master(self.settings.redis_sentinel_service)
            if not isinstance(state, dict):
                raise InfraError(f"{self.name}: unexpected answer {state!r}")
        finally:
            await client.aclose()
        return state

    async def probe(self) -> str | None:
        """Ask it for the master it monitors (None when it names one)."""
        try:
            await self._master_state()
        except Exception as exc:
            return oneline(exc)
        return None


@functools.cache
def _sentinel_class(number: int) -> type[RedisSentinel]:
    """A class per sentinel: a service's name (its pid and log files) is its class's."""
    return type(f"RedisSentinel{number}", (RedisSentinel,), {"name": f"redis-sentinel-{number}"})
