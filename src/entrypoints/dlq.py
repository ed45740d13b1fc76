"""``eventfold dlq list|show|redrive``: the projector's dead letters, from a shell.

``dlq`` is the dead-letter queue: the events the projector could not apply (and
those of the same record waiting behind them) in :mod:`eventfold.deadletters`;
``redrive`` applies them again in order, as ``POST …/dead-letters/redrive`` does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import orjson

from entrypoints import audit
from entrypoints.output import print_json
from eventfold import deadletters
from eventfold.cachefill import refresh_after_redrive
from eventfold.clients import close_placement, open_placement, open_pool
from eventfold.settings import Settings


def add_parser(sub: Any) -> None:
    """Register ``dlq`` on the CLI's subparsers."""
    dlq = sub.add_parser("dlq", help="the dead-letter queue: events the projector could not apply")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for name, text in (
        ("list", "list dead letters, oldest first per record"),
        ("show", "one dead letter with its envelope"),
        ("redrive", "apply dead letters again, in order (after a fix)"),
    ):
        action = dlq_sub.add_parser(name, help=text)
        action.add_argument("--tenant", help="only this tenant")
        action.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "show":
            action.add_argument("event_id", help="the dead letter's event id")
        else:
            action.add_argument("--key", help="only this record (collection/id)")
        if name == "redrive":
            action.add_argument("--dry-run", action="store_true", help="report, change nothing")


def _figures(keys: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """A redrive's figures per tenant (its audit event's details)."""
    out: dict[str, dict[str, Any]] = {}
    for k in keys:
        figures = out.setdefault(str(k["tenant"]), {"applied": 0, "rejected": 0, "keys": 0})
        figures["applied"] += int(k["applied"])
        figures["rejected"] += int(k["rejected"])
        figures["keys"] += 1
    return out


def command(settings: Settings, args: argparse.Namespace) -> int:
    """``eventfold dlq list|show|redrive``; its exit status (1: something is left)."""
    # deferred: the fold, for this command only
    from eventfold.projection.redrive import RedriveReport, redrive

    consumer = f"{settings.consumer_group_prefix}.projector"

    async def main() -> int:
        pool = await open_pool(settings, attempts=3)
        placed = await open_placement(settings, pool)
        try:
            # A tenant's dead letters are on its server; without --tenant, every server's.
            pools = (
                [await placed.pool_for(args.tenant)] if args.tenant else list(placed.pools.values())
            )
            if args.dlq_command == "redrive":
                report = RedriveReport()
                for server_pool in pools:
                    part = await redrive(
                        server_pool, consumer, tenant=args.tenant, key=args.key,
                        dry_run=args.dry_run, topic=settings.events_topic,
                    )  # fmt: skip
                    if part.applied and not args.dry_run:
                        await refresh_after_redrive(settings, server_pool, part.keys)
                    report.applied += part.applied
                    report.rejected += part.rejected
                    report.still_parked += part.still_parked
                    report.keys += part.keys
                if (report.applied or report.rejected) and not args.dry_run:
                    await audit.record(
                        settings,
                        "dead-letters.redrive",
                        _figures(report.keys),
                        operator=audit.operator_of(args.operator),
                    )
                if args.json:
                    print_json(
                        {
                            "applied": report.applied,
                            "rejected": report.rejected,
                            "still_parked": report.still_parked,
                            "keys": report.keys,
                            "dry_run": args.dry_run,
                        }
                    )
                else:
                    prefix = "would apply" if args.dry_run else "applied"
                    for k in report.keys:
                        left = k["still_parked"]
                        state = f", dead letters left: {left} ({k['error']})" if left else ""
                        print(
                            f"{k['tenant']} {k['key']}: {prefix} {k['applied']}, "
                            f"rejected {k['rejected']}{state}"
                        )
                    print(
                        f"{prefix} {report.applied} events, {report.rejected} rejected, "
                        f"{report.still_parked} left as dead letters"
                    )
                return 1 if report.still_parked else 0
            rows = []
            for server_pool in pools:
                async with server_pool.acquire(timeout=10) as conn:
                    rows += await deadletters.list_letters(
                        conn,
                        consumer,
                        tenant=args.tenant,
                        key=getattr(args, "key", None),
                        event_id=getattr(args, "event_id", None),
                    )
        finally:
            await close_placement(placed)
            await pool.close()
        if args.dlq_command == "show":
            if not rows:
                print(f"eventfold dlq show: no dead letter {args.event_id}", file=sys.stderr)
                return 1
            row = rows[0]
            try:
                envelope: Any = orjson.loads(row.envelope)
            except orjson.JSONDecodeError:
                envelope = row.envelope.decode(errors="replace")
            doc = {**row.summary(), "envelope": envelope}
            if args.json:
                print_json(doc)
            else:
                for name, value in doc.items():
                    print(f"{name:<10} {value}")
            return 0
        if args.json:
            print_json([r.summary() for r in rows])
        else:
            if not rows:
                print("no dead letters")
            for r in rows:
                print(
                    f"{r.tenant} {r.key} {r.event_id} {r.event_type} "
                    f"p{r.partition}@{r.offset} {r.error}"
                )
        return 0

    return asyncio.run(main())
