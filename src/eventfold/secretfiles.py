"""Files holding secrets: readable by their owner only from the first byte on.

Writing a file and ``chmod``-ing it afterwards leaves a moment in which the
secret sits in a file others may read (umask 022 makes it 0644). These helpers
create a private temporary file (``mkstemp``: ``O_EXCL``, mode 0600), write it,
and only then give it its name, so the name never points at a readable secret.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _private_temp(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def write_private(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``, mode 0600 (a config file holding a password)."""
    tmp = _private_temp(path, text)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_or_create(path: Path, make: Callable[[], str]) -> str:
    """The secret kept in ``path``; made by ``make()`` (mode 0600) when there is none.

    Of processes starting at once, the first one's secret wins and all read it
    back: ``link()`` refuses to replace an existing name.
    """
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    tmp = _private_temp(path, make())
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()
