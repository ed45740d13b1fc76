"""The S3 archive's layout: where the archiver writes a tenant's events, and a rebuild reads them.

Per tenant, gzip-compressed JSON lines (the log's own bytes, one event a line),
one object per closed segment of a partition, and a manifest per partition
listing its segments in order (``{"segments": [{"key", "first_offset",
"last_offset", ...}]}``):

    tenant=<id>/date=<YYYY-MM-DD>/<partition>-<first offset>-<last offset>.jsonl.gz
    tenant=<id>/manifest/partition=<partition>.json

The archiver (``consumers/archiver``) writes this layout and a rebuild from the
archive (``consumers/rebuild``) reads it; both name its keys through here.
"""

from __future__ import annotations


def tenant_prefix(tenant: str) -> str:
    """Where every archived object of ``tenant`` lives (its segments and manifests)."""
    return f"tenant={tenant}/"


def object_key(tenant: str, day: str, partition: int, first: int, last: int) -> str:
    """``tenant=<id>/date=<day>/<partition>-<first>-<last>.jsonl.gz``, zero-padded to sort."""
    return f"tenant={tenant}/date={day}/{partition:03d}-{first:020d}-{last:020d}.jsonl.gz"


def manifest_key(tenant: str, partition: int) -> str:
    """The manifest of ``tenant``'s segments from one partition."""
    return f"tenant={tenant}/manifest/partition={partition:03d}.json"
