"""PostgreSQL 15 from the Debian packages, as our own cluster under var/postgres.

PostgreSQL refuses to run as root, so when we are root the cluster belongs to
the ``postgres`` account the package creates. Local socket connections use peer
authentication (only that account, and root, reach the socket directory under
var/), TCP connections need the password (scram-sha-256).

The application connects as a role of its own that is no superuser
(``postgres_bootstrap.sql`` says what it may do), so a flaw in Eventfold does
not hand out the whole cluster.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import signal
import stat
from importlib import resources
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urlsplit

from devstack.base import InfraError, Progress, Service, as_root, oneline
from devstack.process import run, spawn, wait_ready
from eventfold.settings import Settings

BIN = Path("/usr/lib/postgresql/15/bin")
OS_USER = "postgres"

CONFIG = """\
# Written by `eventfold infra up` on every start; edit src/devstack/postgres.py.
listen_addresses = '{listen}'
port = {port}
unix_socket_directories = '{socket_dir}'
unix_socket_permissions = 0700
max_connections = 200
shared_buffers = 256MB
effective_cache_size = 1GB
work_mem = 8MB
maintenance_work_mem = 128MB
# Durability stays on: the projections' exactly-once story relies on a commit
# (rows + Kafka checkpoints) surviving a crash, and tests should see that.
fsync = on
synchronous_commit = on
full_page_writes = on
wal_level = replica
max_wal_size = 1GB
checkpoint_completion_target = 0.9
password_encryption = scram-sha-256
logging_collector = off
log_destination = 'stderr'
log_line_prefix = '%m [%p] %q%u@%d '
log_min_duration_statement = 1000
timezone = 'UTC'
"""

HBA = """\
# Written by `eventfold infra up`; TCP always asks for the password.
local   all   all                 peer
host    all   all   0.0.0.0/0     scram-sha-256
host    all   all   ::/0          scram-sha-256
"""

#: The role and database of the application (a psql script; see its header).
BOOTSTRAP_SQL = (resources.files("devstack") / "postgres_bootstrap.sql").read_text()


class Postgres(Service):
    """Our own PostgreSQL 15 cluster in var/postgres/data."""

    name: ClassVar[str] = "postgres"
    env_var: ClassVar[str] = "EVENTFOLD_DATABASE_URL"
    # SIGINT is PostgreSQL's "fast" shutdown; SIGTERM would wait for clients to leave.
    stop_signal: ClassVar[signal.Signals] = signal.SIGINT
    stop_timeout: ClassVar[float] = 30.0
    start_timeout: ClassVar[float] = 60.0

    @property
    def _url(self) -> tuple[str, int, str, str, str]:
        parts = urlsplit(self.settings.database_url)
        return (
            parts.hostname or "127.0.0.1",
            parts.port or 5432,
            unquote(parts.username or "eventfold"),
            unquote(parts.password or ""),
            unquote(parts.path.lstrip("/")) or "eventfold",
        )

    @property
    def host(self) -> str:
        """The listen address, from ``settings.database_url``."""
        return self._url[0]

    @property
    def port(self) -> int:
        """The port, from ``settings.database_url``."""
        return self._url[1]

    @property
    def root(self) -> Path:
        """var/postgres: the cluster and its socket directory."""
        return self.var / "postgres"

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (PGDATA)."""
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        """Where the unix socket lives (not /var/run/postgresql)."""
        return self.root / "run"

    @property
    def markers(self) -> tuple[str, ...]:
        """The postmaster keeps its command line, which names our data directory."""
        return ("postgres", f"-D {self.data_dir}")

    @property
    def os_user(self) -> str | None:
        """The account the cluster runs as: ``postgres`` when we are root."""
        return OS_USER if as_root() else None

    @property
    def admin(self) -> str:
        """The cluster's superuser (initdb's): the account it runs as."""
        return self.os_user or pwd.getpwuid(os.geteuid()).pw_name

    def missing_packages(self) -> list[str]:
        """postgresql-15 unless its initdb is there."""
        return [] if (BIN / "initdb").exists() else ["postgresql-15"]

    def _own(self, path: Path, mode: int) -> None:
        path.mkdir(parents=True, exist_ok=True)
        if self.os_user is not None:
            account = pwd.getpwnam(self.os_user)
            os.chown(path, account.pw_uid, account.pw_gid)
        path.chmod(mode)

    def _make_reachable(self, progress: Progress) -> None:
        """Let the postgres account traverse every folder above var/postgres.

        Only the search bit (o+x) is added, and only where it is missing (a
        checkout under /root, say): the account still cannot list those folders.
        """
        if self.os_user is None:
            return
        for folder in reversed(self.root.parents):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH:
                progress(f"postgres: allowing the {self.os_user} account to traverse {folder}")
                folder.chmod(mode | stat.S_IXOTH)

    async def _initdb(self, progress: Progress) -> None:
        progress(f"postgres: initialising cluster in {self.data_dir}")
        await run(
            [
                str(BIN / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.admin,
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--data-checksums",
            ],
            what="initdb",
            user=self.os_user,
            cwd=self.root,
            log_path=self.log_path,
        )
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\ninclude_if_exists = 'eventfold.conf'\n")

    def _write_config(self) -> None:
        listen = "*" if self.host in ("0.0.0.0", "::", "*") else self.host
        (self.data_dir / "eventfold.conf").write_text(
            CONFIG.format(listen=listen, port=self.port, socket_dir=self.socket_dir)
        )
        (self.data_dir / "pg_hba.conf").write_text(HBA)
        if self.os_user is not None:
            account = pwd.getpwnam(self.os_user)
            for name in ("eventfold.conf", "pg_hba.conf"):
                os.chown(self.data_dir / name, account.pw_uid, account.pw_gid)

    async def start(self, progress: Progress) -> int:
        """initdb once, rewrite our config, and launch the postmaster."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._make_reachable(progress)
        self._own(self.root, 0o755)
        self._own(self.socket_dir, 0o700)
        if not (self.data_dir / "PG_VERSION").exists():
            if self.data_dir.exists() and any(self.data_dir.iterdir()):
                raise InfraError(
                    f"{self.data_dir} is not empty but holds no cluster; move it away and retry"
                )
            self._own(self.data_dir, 0o700)
            await self._initdb(progress)
        self._write_config()
        progress(f"postgres: starting on {self.address}")
        return spawn(
            [str(BIN / "postgres"), "-D", str(self.data_dir)],
            log_path=self.log_path,
            pid_path=self.pid_path,
            cwd=self.root,
            user=self.os_user,
        )

    async def _accepting(self) -> bool:
        # Over TCP as the application role: the server asks for a password, which
        # pg_isready takes as "accepting" without logging a failed login (a socket
        # check as root would log "role root does not exist" on every poll).
        _, _, role, _, db = self._url
        try:
            await run(
                [
                    str(BIN / "pg_isready"),
                    "-q",
                    "-h",
                    self.host,
                    "-p",
                    str(self.port),
                    "-U",
                    role,
                    "-d",
                    db,
                    "-t",
                    "1",
                ],
                what="pg_isready",
            )
        except InfraError:
            return False
        return True

    async def ready(self, pid: int | None, progress: Progress) -> None:
        """Wait for connections, then make sure the role and database exist."""
        await wait_ready(
            self._accepting,
            what="postgres",
            within=self.start_timeout,
            pid=pid,
            log_path=self.log_path,
        )
        _, _, role, password, db = self._url
        if role == self.admin:
            raise InfraError(
                f"postgres: the application role {role!r} is the cluster's superuser; "
                "name another user in EVENTFOLD_DATABASE_URL"
            )
        await run(
            [
                str(BIN / "psql"),
                "-X",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                str(self.socket_dir),
                "-p",
                str(self.port),
                "-U",
                self.admin,
                "-d",
                "postgres",
            ],
            what="postgres: creating role and database",
            # The password goes through the environment, never on a command line.
            env={
                **os.environ,
                "APP_ROLE": role,
                "APP_PASSWORD": password or role,
                "APP_DATABASE": db,
            },
            user=self.os_user,
            stdin=BOOTSTRAP_SQL.encode(),
            cwd=self.root,
        )
        problem = await self.probe()
        if problem is not None:
            raise InfraError(f"postgres: started but {problem}; see {self.log_path}")

    async def probe(self) -> str | None:
        """Connect with ``settings.database_url`` and run ``SELECT 1``."""
        import asyncpg  # deferred: only status and up need it

        try:
            conn = await asyncpg.connect(self.settings.database_url, timeout=3)
            try:
                await conn.fetchval("SELECT 1", timeout=3)
            finally:
                await conn.close(timeout=3)
        except Exception as exc:
            return oneline(exc)
        return None


class PostgresServer(Postgres):
    """Another local cluster, for a server of ``EVENTFOLD_DATABASE_SERVERS``: its own
    data under var/postgres-NAME, its port from that server's URL."""

    env_var: ClassVar[str] = "EVENTFOLD_DATABASE_SERVERS"

    @property
    def root(self) -> Path:
        """var/postgres-NAME: this cluster and its socket directory."""
        return self.var / self.name

    @property
    def external(self) -> bool:
        """A server's URL on another host is the user's own (we only probe it)."""
        return urlsplit(self.settings.database_url).hostname not in _LOCAL_HOSTS


_LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def server_clusters(settings: Settings) -> list[Service]:
    """A :class:`PostgresServer` for each server past ``main`` in ``settings``, or, when
    none is set, in the last ``up`` that had some (so ``down`` and ``status`` without
    the setting still reach the clusters it started)."""
    remembered = settings.var_dir / "postgres-servers"
    if settings.database_servers:
        remembered.parent.mkdir(parents=True, exist_ok=True)
        remembered.write_text("\n".join(settings.database_servers) + "\n")
    else:
        try:
            servers = tuple(remembered.read_text().split())
        except FileNotFoundError:
            servers = ()
        settings = dataclasses.replace(settings, database_servers=servers)
    out: list[Service] = []
    for name, url in list(settings.server_urls.items())[1:]:
        cls = type(f"PostgresServer_{name}", (PostgresServer,), {"name": f"postgres-{name}"})
        out.append(cls(dataclasses.replace(settings, database_url=url)))
    return out
