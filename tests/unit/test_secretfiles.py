"""Files holding secrets are private from their creation, never chmod-ed afterwards."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack.redis import Redis
from devstack.s3 import S3Proxy
from eventfold.sealing import dev_keyring
from eventfold.secretfiles import read_or_create, write_private
from eventfold.settings import Settings


@pytest.fixture
def exposed(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Files that held bytes others could read when something chmod-ed them.

    A umask of 022 makes a plain write 0644: a file written first and chmod-ed
    after lets anyone read the secret in between.
    """
    seen: list[str] = []
    real = os.chmod

    def spy(path: str | os.PathLike[str], mode: int, **kw: bool) -> None:
        info = os.stat(path)
        if stat.S_ISREG(info.st_mode) and info.st_size and info.st_mode & 0o077:
            seen.append(os.fspath(path))
        real(path, mode, **kw)

    monkeypatch.setattr(os, "chmod", spy)
    old = os.umask(0o022)
    try:
        yield seen
    finally:
        os.umask(old)


def _jwt_secret(home: Path) -> Path:
    Settings.from_env({"EVENTFOLD_HOME": str(home), "EVENTFOLD_MODE": "dev"})
    return home / "var" / "jwt-secret"


def _sealing_key(home: Path) -> Path:
    dev_keyring(home)
    return home / "var" / "secret-keys"


def _redis_conf(home: Path) -> Path:
    return Redis(Settings(home=home, redis_url="redis://:pw-123@127.0.0.1:16379/0")).write_config()


def _s3_properties(home: Path) -> Path:
    return S3Proxy(Settings(home=home, s3_secret_key="s3-secret-123")).write_properties()


@pytest.mark.parametrize(
    ("write", "secret"),
    [
        (_jwt_secret, None),
        (_sealing_key, "dev1:"),
        (_redis_conf, "pw-123"),
        (_s3_properties, "s3-secret-123"),
    ],
    ids=["jwt-secret", "secret-keys", "redis.conf", "s3proxy.properties"],
)
def test_secret_files_are_private_from_creation(
    tmp_path: Path,
    exposed: list[str],
    write: Callable[[Path], Path],
    secret: str | None,
) -> None:
    path = write(tmp_path)
    assert exposed == []
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert text.strip()
    if secret is not None:
        assert secret in text
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_write_private_replaces_a_readable_file(tmp_path: Path) -> None:
    path = tmp_path / "conf"
    path.write_text("old")
    path.chmod(0o644)
    write_private(path, "new")
    assert (path.read_text(), stat.S_IMODE(path.stat().st_mode)) == ("new", 0o600)


def test_read_or_create_keeps_the_first_secret(tmp_path: Path) -> None:
    path = tmp_path / "var" / "s"
    assert read_or_create(path, lambda: "first") == "first"
    assert read_or_create(path, lambda: "second") == "first"
