"""Java services whose jars come from Maven Central (Kafka, s3proxy).

Each has a ``pom.xml`` under infra/ that only lists dependencies; Maven's
``dependency:copy-dependencies`` puts them in var/<service>/libs, and the JVM
runs them straight from there. A stamp (the pom's hash) makes the fetch a
no-op until the pom changes, and a fresh folder replaces the old one whole, so
two versions never share a class path.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import ClassVar

from devstack.base import InfraError, Progress, Service
from devstack.process import run

#: Debian packages that must be in place before any jar can be fetched or run.
JAVA_PACKAGES = frozenset({"openjdk-17-jre-headless", "maven"})


class JavaService(Service):
    """A service run as ``java -cp 'var/<name>/libs/*' <main> ...``."""

    #: Folder under infra/ holding the pom.xml (and any templates).
    infra_name: ClassVar[str]
    main_class: ClassVar[str]
    heap: ClassVar[tuple[str, str]] = ("-Xms64m", "-Xmx256m")

    @property
    def infra_dir(self) -> Path:
        """infra/<service> in the checkout: pom.xml and templates."""
        return self.home / "infra" / self.infra_name

    @property
    def root(self) -> Path:
        """var/<service>: jars, generated config, data."""
        return self.var / self.infra_name

    @property
    def libs(self) -> Path:
        """The class path folder Maven fills."""
        return self.root / "libs"

    @property
    def _stamp(self) -> Path:
        return self.libs / ".pom.sha256"

    def _pom_hash(self) -> str:
        return hashlib.sha256((self.infra_dir / "pom.xml").read_bytes()).hexdigest()

    def missing_packages(self) -> list[str]:
        """A JRE (17+) and Maven unless they are on the PATH."""
        missing = [] if shutil.which("java") else ["openjdk-17-jre-headless"]
        if not self.jars_fetched() and not shutil.which("mvn"):
            missing.append("maven")
        return missing

    def installed(self) -> bool:
        """Java present and the jars fetched."""
        return shutil.which("java") is not None and self.jars_fetched()

    def jars_fetched(self) -> bool:
        """Whether var/<service>/libs holds the jars of the current pom."""
        try:
            return self._stamp.read_text().strip() == self._pom_hash()
        except FileNotFoundError:
            return False

    async def fetch(self, progress: Progress) -> None:
        """Copy the pom's runtime dependencies into libs/ with Maven (cached)."""
        if not (self.infra_dir / "pom.xml").is_file():
            raise InfraError(f"{self.name}: {self.infra_dir / 'pom.xml'} is missing")
        if self.jars_fetched():
            return
        progress(f"{self.name}: fetching jars with Maven (first run only)")
        fresh = self.root / "libs.tmp"
        shutil.rmtree(fresh, ignore_errors=True)
        await run(
            [
                "mvn",
                "-q",
                "-B",
                "-f",
                str(self.infra_dir / "pom.xml"),
                "dependency:copy-dependencies",
                f"-DoutputDirectory={fresh}",
            ],
            what=f"{self.name}: mvn dependency:copy-dependencies",
            cwd=self.home,
            log_path=self.var / "log" / f"{self.name}-fetch.log",
        )
        (fresh / ".pom.sha256").write_text(self._pom_hash() + "\n")
        shutil.rmtree(self.libs, ignore_errors=True)
        fresh.rename(self.libs)

    def java_argv(self, *args: str, extra: tuple[str, ...] = ()) -> list[str]:
        """``java`` with a small heap, our class path and main class."""
        return [
            shutil.which("java") or "java",
            *self.heap,
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            "-Dfile.encoding=UTF-8",
            *extra,
            "-cp",
            f"{self.libs}/*",
            self.main_class,
            *args,
        ]
