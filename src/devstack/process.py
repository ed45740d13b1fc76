"""Process plumbing for the local stack: detached starts, pid files, waits, stops.

Services are started fully detached (double fork, new session, stdin from
/dev/null, output appended to a log file) so they outlive ``eventfold infra up``
and never become zombies of a long-lived caller. A pid file alone is not proof
of ownership: pids are reused, so every check also matches the process's
command line against a marker only our own start would produce.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path

from devstack.base import InfraError
from eventfold.backoff import Backoff

Probe = Callable[[], Awaitable[bool]]


@contextlib.asynccontextmanager
async def exclusive(lock_path: Path, *, patience: float = 300.0) -> AsyncIterator[None]:
    """Hold an exclusive lock on ``lock_path`` (two ``up`` at once would start twice).

    The lock is polled rather than waited on, so the event loop stays free.
    """
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + patience
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InfraError(
                        f"another `eventfold infra` command holds {lock_path}; retry later"
                    ) from None
                await asyncio.sleep(0.2)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def read_pid(path: Path) -> int | None:
    """The pid written in ``path``, or None when the file is absent or garbled."""
    try:
        return int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None


def _state(stat_path: Path) -> bytes:
    # The state follows the parenthesised name, which may itself hold spaces.
    return stat_path.read_bytes().rsplit(b")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    """Whether any thread of ``pid`` still runs.

    A zombie thread-group leader is not enough to call a process dead: a JVM's
    first thread often exits while the others are still shutting the broker
    down, and /proc then shows the leader as "Z" with an empty command line.
    """
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    for task in tasks:
        try:
            if _state(task / "stat") not in (b"Z", b"X"):
                return True
        except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
            continue
    return False


def cmdline(pid: int) -> str | None:
    """The command line of a running process, or None when it is gone or exiting."""
    try:
        if _state(Path(f"/proc/{pid}/stat")) in (b"Z", b"X"):
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip() or None


def is_ours(pid: int, markers: Sequence[str]) -> bool:
    """Whether ``pid`` is alive and its command line holds every marker."""
    line = cmdline(pid)
    return line is not None and all(marker in line for marker in markers)


def live_pid(pid_path: Path, markers: Sequence[str]) -> int | None:
    """The pid recorded in ``pid_path`` if that process is still ours.

    A stale pid file (process gone, or the pid reused by something else) is
    removed, so the next start does not trip over it.
    """
    pid = read_pid(pid_path)
    if pid is None:
        return None
    if is_ours(pid, markers):
        return pid
    pid_path.unlink(missing_ok=True)
    return None


def spawn(
    argv: Sequence[str],
    *,
    log_path: Path,
    pid_path: Path,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
) -> int:
    """Start ``argv`` detached from us and record its pid; return the pid.

    The double fork hands the service to init straight away. A close-on-exec
    pipe carries the grandchild's pid back, then either EOF (exec succeeded) or
    the reason exec failed, so a missing binary is an error here and not a
    silent timeout later.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    pid_path.parent.mkdir(parents=True, exist_ok=True)
    exe = shutil.which(argv[0]) or argv[0]
    environ = dict(os.environ if env is None else env)
    account = pwd.getpwnam(user) if user else None
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    if account is not None:
        os.fchown(log_fd, account.pw_uid, account.pw_gid)
    read_end, write_end = os.pipe()
    try:
        child = os.fork()
        if child == 0:  # pragma: no cover - runs in the forked child only
            _child(exe, argv, environ, cwd, log_fd, read_end, write_end, account)
        os.close(write_end)
        chunks = []
        while chunk := os.read(read_end, 4096):
            chunks.append(chunk)
        os.waitpid(child, 0)
    finally:
        os.close(log_fd)
        os.close(read_end)
        with contextlib.suppress(OSError):
            os.close(write_end)
    first, _, error = b"".join(chunks).decode(errors="replace").partition("\n")
    if not first.isdigit():
        raise InfraError(f"could not start {argv[0]}: {first or 'fork failed'}")
    if error:
        raise InfraError(f"could not start {argv[0]}: {error.strip()}")
    pid = int(first)
    pid_path.write_text(f"{pid}\n")
    return pid


def _child(  # pragma: no cover - runs in the forked child only
    exe: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: Path,
    log_fd: int,
    read_end: int,
    write_end: int,
    account: pwd.struct_passwd | None,
) -> None:
    try:
        os.close(read_end)
        os.setsid()
        grandchild = os.fork()
        if grandchild:
            os.write(write_end, f"{grandchild}\n".encode())
            os._exit(0)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        if account is not None:
            os.initgroups(account.pw_name, account.pw_gid)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
        os.chdir(cwd)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
        os.execve(exe, list(argv), dict(env))  # noqa: S606 - argv, never a shell string
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            os.write(write_end, f"{type(exc).__name__}: {exc}\n".encode())
    os._exit(127)


async def tcp_open(host: str, port: int, within: float = 1.0) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), within)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def port_free(host: str, port: int) -> bool:
    """Whether we could bind ``host:port`` right now (nobody listens there)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


async def wait_ready(
    probe: Probe,
    *,
    what: str,
    within: float,
    pid: int | None,
    log_path: Path,
) -> None:
    """Poll ``probe`` until it answers True; fail fast when the process dies.

    Polls start tight (services that are already up answer at once) and back
    off to a quarter second, which costs nothing next to a JVM start.
    """
    deadline = time.monotonic() + within
    backoff = Backoff(0.05, 0.25)
    while True:
        if await probe():
            return
        if pid is not None and not alive(pid):
            raise InfraError(f"{what} exited during start-up; see {log_path}")
        if time.monotonic() > deadline:
            raise InfraError(f"{what} did not become ready within {within:.0f} s; see {log_path}")
        await backoff.sleep()


async def stop(pid: int, *, sig: signal.Signals, grace: float) -> str:
    """Signal ``pid`` and wait for it to go; SIGKILL it after ``grace`` seconds.

    Returns a short account for the progress line ("stopped", "killed").
    """
    # Ownership was checked before the signal; from here on only liveness counts,
    # since an exiting JVM no longer shows its command line.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not alive(pid):
            return "stopped"
        await asyncio.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    for _ in range(50):
        if not alive(pid):
            break
        await asyncio.sleep(0.1)
    return f"killed after {grace:.0f} s"


async def run(
    argv: Sequence[str],
    *,
    what: str,
    env: Mapping[str, str] | None = None,
    user: str | None = None,
    stdin: bytes | None = None,
    cwd: Path | None = None,
    log_path: Path | None = None,
) -> str:
    """Run a short command to completion and return its output.

    On failure the output goes into the InfraError (and into ``log_path`` when
    given, since Maven or apt output is long), so the user sees why.
    """
    full = ["runuser", "-u", user, "--", *argv] if user else list(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=None if env is None else dict(env),
            cwd=cwd,
        )
    except FileNotFoundError as exc:
        raise InfraError(f"{what}: {exc.filename or argv[0]} not found") from None
    out_bytes, _ = await proc.communicate(stdin)
    out = out_bytes.decode(errors="replace")
    if log_path is not None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("a") as log:
            log.write(f"$ {' '.join(full)}\n{out}\n")
    if proc.returncode != 0:
        tail = "\n".join(out.strip().splitlines()[-15:])
        where = f" (full output in {log_path})" if log_path is not None else ""
        raise InfraError(f"{what} failed (exit {proc.returncode}){where}:\n{tail}")
    return out
