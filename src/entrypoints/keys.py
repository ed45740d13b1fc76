"""``eventfold keys new|rotate``: make a sealing key, and re-seal what PostgreSQL holds with it.

Rotation without downtime, in three steps an operator can follow:

1. ``eventfold keys new --id k2`` prints a fresh ``k2:<base64>`` entry;
2. put it FIRST in ``EVENTFOLD_SECRET_KEYS`` (keeping the old keys after it) and
   restart the processes one by one: new values are sealed with ``k2``, old ones
   still open with the keys after it;
3. ``eventfold keys rotate`` re-seals every value at rest in PostgreSQL that a
   key other than the first sealed: the records' data keys
   (:mod:`eventfold.datakeys`), webhook secrets, integration credentials. Each
   row is updated only if it still holds the value read (a concurrent change
   wins), in batches, with progress on stderr. Idempotent: a second run finds
   nothing to do.

Values inside the log (a webhook's sealed secret in its ``webhook.created``)
cannot be re-sealed: keep every key that sealed one for as long as a replay may
read it (the operations guide says so).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg

from entrypoints.output import print_json
from eventfold.clients import open_pool
from eventfold.events.integration import headers_purpose, secret_purpose
from eventfold.events.webhook import SECRET_PURPOSE
from eventfold.sealing import Keyring, SealError, keyring, new_key_spec
from eventfold.settings import Settings

#: Rows re-sealed per transaction.
BATCH = 500


@dataclass(frozen=True, slots=True)
class SealedColumn:
    """A column of sealed values, and the purpose each row's value was sealed for."""

    table: str
    column: str
    purpose: Callable[[asyncpg.Record], str]


COLUMNS = (
    SealedColumn("data_keys", "sealed", lambda r: f"datakey:{r['tenant']}"),
    SealedColumn("webhooks", "secret_sealed", lambda r: SECRET_PURPOSE),
    SealedColumn("integrations", "headers_sealed", lambda r: headers_purpose(r["id"])),
    SealedColumn("integrations", "webhook_secret_sealed", lambda r: secret_purpose(r["id"])),
)


def add_parser(sub: Any) -> None:
    """Register ``eventfold keys`` on the CLI's subparsers."""
    keys = sub.add_parser("keys", help="sealing keys: make one, re-seal with the first")
    actions = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    new = actions.add_parser("new", help="print a fresh id:base64key entry")
    new.add_argument("--id", default="k1", help="the key's id (letters, digits, - and _)")
    rotate = actions.add_parser(
        "rotate", help="re-seal every value at rest with the first key of EVENTFOLD_SECRET_KEYS"
    )
    rotate.add_argument("--json", action="store_true", help="machine-readable output")


def command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``eventfold keys ACTION``; the exit status."""
    if args.keys_command == "new":
        try:
            spec = new_key_spec(args.id)
            Keyring.parse(spec)  # the id's rules
        except SealError as exc:
            print(f"eventfold: {exc}", file=sys.stderr)
            return 2
        print(spec)
        return 0
    ring = keyring(settings)
    counts = asyncio.run(_rotate(settings, ring))
    if args.json:
        print_json({"key": ring.keys[0][0], "resealed": counts})
    else:
        total = sum(counts.values())
        print(f"re-sealed {total} value(s) with key {ring.keys[0][0]}")
    return 0


async def _rotate(settings: Settings, ring: Keyring) -> dict[str, int]:
    """Re-seal on every database server (each holds its tenants' sealed values)."""
    counts = {f"{c.table}.{c.column}": 0 for c in COLUMNS}
    for server in settings.server_urls:
        pool = await open_pool(settings.on_server(server))
        try:
            for c in COLUMNS:
                counts[f"{c.table}.{c.column}"] += await reseal(pool, ring, c)
        finally:
            await pool.close()
    return counts


async def reseal(pool: asyncpg.Pool, ring: Keyring, column: SealedColumn) -> int:
    """Re-seal ``column``'s values not sealed with ``ring``'s first key; how many."""
    current = ring.keys[0][0]
    done, after = 0, ""
    name = f"{column.table}.{column.column}"
    while True:
        async with pool.acquire(timeout=10) as conn, conn.transaction():
            rows = await conn.fetch(
                f"SELECT * FROM eventfold.{column.table} WHERE id > $1"
                f" AND {column.column} IS NOT NULL AND split_part({column.column}, '.', 2) <> $2"
                f" ORDER BY id LIMIT {BATCH} FOR UPDATE",
                after,
                current,
            )
            for row in rows:
                old = row[column.column]
                purpose = column.purpose(row)
                fresh = ring.seal(ring.open(old, purpose=purpose), purpose=purpose)
                await conn.execute(
                    f"UPDATE eventfold.{column.table} SET {column.column} = $2"
                    f" WHERE id = $1 AND {column.column} = $3",
                    row["id"],
                    fresh,
                    old,
                )
        if not rows:
            return done
        done += len(rows)
        after = rows[-1]["id"]
        print(f"{name}: {done} re-sealed", file=sys.stderr)
