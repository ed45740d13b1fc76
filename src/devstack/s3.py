"""An S3-compatible server for the event archive: s3proxy on the filesystem.

s3proxy (org.gaul:s3proxy, jars from Maven Central) serves the S3 API over its
``filesystem-nio2`` blob store (the jclouds ``filesystem`` one is deprecated),
so archived segments are plain files under var/s3/<bucket>/. It checks AWS v2
and v4 signatures with the same access key and secret the application uses.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from devstack.base import InfraError, Progress, oneline
from devstack.java import JavaService
from devstack.process import spawn, wait_ready
from eventfold.s3 import open_s3
from eventfold.secretfiles import write_private
from eventfold.settings import Settings

PROPERTIES = """\
# Written by `eventfold infra up` on every start; edit src/devstack/s3.py.
s3proxy.endpoint=http://{host}:{port}
s3proxy.authorization=aws-v2-or-v4
s3proxy.identity={identity}
s3proxy.credential={credential}
s3proxy.ignore-unknown-headers=true
jclouds.provider=filesystem-nio2
jclouds.filesystem.basedir={basedir}
jclouds.identity={identity}
jclouds.credential={credential}
jclouds.regions={region}
"""


async def ensure_bucket(settings: Settings) -> bool:
    """Create ``settings.s3_bucket`` unless it exists; True when it was created."""
    async with open_s3(settings) as client:
        try:
            await client.head_bucket(Bucket=settings.s3_bucket)
            return False
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code not in ("404", "NoSuchBucket", "NotFound"):
                raise
        try:
            await client.create_bucket(Bucket=settings.s3_bucket)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                return False
            raise
        return True


class S3Proxy(JavaService):
    """s3proxy with the filesystem-nio2 provider, data in var/s3."""

    name: ClassVar[str] = "s3"
    env_var: ClassVar[str] = "EVENTFOLD_S3_ENDPOINT"
    infra_name: ClassVar[str] = "s3proxy"
    main_class: ClassVar[str] = "org.gaul.s3proxy.Main"
    heap: ClassVar[tuple[str, str]] = ("-Xms64m", "-Xmx256m")
    start_timeout: ClassVar[float] = 60.0

    @property
    def _endpoint(self) -> tuple[str, int]:
        parts = urlsplit(self.settings.s3_endpoint)
        default = 443 if parts.scheme == "https" else 80
        return parts.hostname or "127.0.0.1", parts.port or default

    @property
    def host(self) -> str:
        """The listen address, from ``settings.s3_endpoint``."""
        return self._endpoint[0]

    @property
    def port(self) -> int:
        """The port, from ``settings.s3_endpoint``."""
        return self._endpoint[1]

    @property
    def markers(self) -> tuple[str, ...]:
        """The main class and our generated properties file."""
        return (self.main_class, str(self.root / "s3proxy.properties"))

    def write_properties(self) -> Path:
        """s3proxy.properties, private from its creation: it holds the secret key."""
        basedir = self.var / "s3"
        basedir.mkdir(parents=True, exist_ok=True)
        properties = self.root / "s3proxy.properties"
        write_private(
            properties,
            PROPERTIES.format(
                host=self.host,
                port=self.port,
                identity=self.settings.s3_access_key,
                credential=self.settings.s3_secret_key,
                basedir=basedir,
                region=self.settings.s3_region,
            ),
        )
        return properties

    async def start(self, progress: Progress) -> int:
        """Write the properties file and launch s3proxy."""
        if urlsplit(self.settings.s3_endpoint).scheme != "http":
            raise InfraError("s3: the local server speaks plain http; use an http:// endpoint")
        properties = self.write_properties()
        progress(f"s3: starting s3proxy on {self.address}")
        return spawn(
            self.java_argv(
                "--properties",
                str(properties),
                extra=(f"-Dlogback.configurationFile={self.infra_dir / 'logback.xml'}",),
            ),
            log_path=self.log_path,
            pid_path=self.pid_path,
            cwd=self.root,
        )

    async def _http_answers(self) -> bool:
        """Any HTTP answer on / means Jetty is up; the bucket call checks the rest."""
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), 1
            )
        except (OSError, TimeoutError):
            return False
        try:
            writer.write(f"HEAD / HTTP/1.1\r\nHost: {self.address}\r\n\r\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 2)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        return line.startswith(b"HTTP/")

    async def ready(self, pid: int | None, progress: Progress) -> None:
        """Wait for HTTP, then create the archive bucket if missing."""
        await wait_ready(
            self._http_answers,
            what="s3proxy",
            within=self.start_timeout,
            pid=pid,
            log_path=self.log_path,
        )
        try:
            if await ensure_bucket(self.settings):
                progress(f"s3: created bucket {self.settings.s3_bucket}")
        except Exception as exc:
            raise InfraError(
                f"s3: could not create bucket {self.settings.s3_bucket}: {oneline(exc)};"
                f" see {self.log_path}"
            ) from None

    async def probe(self) -> str | None:
        """HEAD the archive bucket with the configured credentials."""
        try:
            async with open_s3(self.settings) as client:
                await client.head_bucket(Bucket=self.settings.s3_bucket)
        except Exception as exc:
            return oneline(exc)
        return None
