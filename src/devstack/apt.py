"""Installing the Debian packages the stack runs (PostgreSQL 15, Redis, Java, Maven).

Package maintainer scripts like to start the distribution's own servers on the
default ports, which are the ports our instances want. A temporary
``policy-rc.d`` answering 101 ("action forbidden") is Debian's documented way to
keep them from starting, and the PostgreSQL packages are told not to create a
``main`` cluster at all: our own cluster under var/ is the one that counts.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

from devstack.base import InfraError, Progress, as_root
from devstack.process import run

POLICY_RC_D = Path("/usr/sbin/policy-rc.d")
CREATECLUSTER_CONF = Path("/etc/postgresql-common/createcluster.conf")


@contextlib.contextmanager
def _services_held() -> Iterator[None]:
    """Forbid service starts for the duration, unless a policy is already in place."""
    if POLICY_RC_D.exists():
        yield
        return
    POLICY_RC_D.write_text(
        "#!/bin/sh\n# eventfold infra: no service starts during install\nexit 101\n"
    )
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def _no_main_cluster() -> None:
    """Tell postgresql-common not to create (and start) a distribution cluster."""
    try:
        text = CREATECLUSTER_CONF.read_text()
    except FileNotFoundError:
        return
    if re.search(r"^\s*create_main_cluster\s*=\s*false", text, re.M):
        return
    text = re.sub(r"^\s*#?\s*create_main_cluster\s*=.*$", "", text, flags=re.M)
    CREATECLUSTER_CONF.write_text(text.rstrip("\n") + "\ncreate_main_cluster = false\n")


async def install(packages: list[str], progress: Progress, log_path: Path) -> None:
    """``apt-get install`` the given packages (root only; otherwise say what to run)."""
    if not packages:
        return
    wanted = " ".join(sorted(set(packages)))
    if not as_root() or shutil.which("apt-get") is None:
        raise InfraError(
            f"missing packages: {wanted}; install them (e.g. `sudo apt-get install -y {wanted}`)"
            " and run `eventfold infra up` again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    apt = ["apt-get", "-y", "-q", "-o", "Dpkg::Options::=--force-confold"]
    progress(f"apt: installing {wanted} (first run only)")
    with _services_held():
        await run(["apt-get", "update", "-q"], what="apt-get update", env=env, log_path=log_path)
        if any(p.startswith("postgresql") for p in packages):
            # postgresql-common first, so its createcluster.conf exists to be edited
            # before postgresql-15's postinst would create the main cluster.
            await run(
                [*apt, "install", "--no-install-recommends", "postgresql-common"],
                what="apt-get install postgresql-common",
                env=env,
                log_path=log_path,
            )
            _no_main_cluster()
        await run(
            [*apt, "install", "--no-install-recommends", *sorted(set(packages))],
            what=f"apt-get install {wanted}",
            env=env,
            log_path=log_path,
        )
