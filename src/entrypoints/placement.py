"""``eventfold tenants placement|move``: which database server holds which tenants; moves.

Without ``--tenant``, each server (``main`` first) with its URL's host and port and
how many tenants the directory places there; with ``--tenant T`` (repeatable), the
server of each. Each takes ``--json``. With one server every tenant is ``main``'s.
``move T --to S`` moves a tenant while it is written and read
(:mod:`eventfold.tenantmove`), with progress on stderr; exit status 1 when it cannot.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from entrypoints import audit
from entrypoints.output import print_json
from eventfold.clients import close_placement, open_placement, open_pool
from eventfold.ids import check
from eventfold.placement import ENTRY_SECONDS
from eventfold.settings import Settings

if TYPE_CHECKING:
    from eventfold.tenantmove import MoveReport


def add_parser(sub: Any) -> None:
    """Register ``eventfold tenants`` on the CLI's subparsers."""
    tenants = sub.add_parser("tenants", help="tenants across database servers")
    actions = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    placement = actions.add_parser("placement", help="each server's tenants, or a tenant's server")
    placement.add_argument("--tenant", action="append", help="this tenant's server (repeatable)")
    placement.add_argument("--json", action="store_true", help="machine-readable output")
    move = actions.add_parser(
        "move", help="move a tenant to another server while it is written and read"
    )
    move.add_argument("tenant")
    move.add_argument("--to", required=True, metavar="SERVER", help="the server to move it to")
    move.add_argument(
        "--grace",
        type=float,
        default=3 * ENTRY_SECONDS,
        metavar="SECONDS",
        help="wait this long after the switch before the old copy goes"
        f" (default {3 * ENTRY_SECONDS:g})",
    )
    move.add_argument("--json", action="store_true", help="machine-readable output")


async def _servers(settings: Settings) -> list[dict[str, Any]]:
    """Every server with its address and the number of tenants placed on it."""
    pool = await open_pool(settings, attempts=3)
    try:
        placed = await open_placement(settings, pool)
        try:
            counts = await placed.directory.counts()
        finally:
            await close_placement(placed)
    finally:
        await pool.close()
    out = []
    for name, url in settings.server_urls.items():
        parts = urlsplit(url)
        address = f"{parts.hostname or '127.0.0.1'}:{parts.port or 5432}"
        out.append({"server": name, "address": address, "tenants": counts.get(name, 0)})
    return out


async def _tenants(settings: Settings, tenants: list[str]) -> dict[str, str]:
    pool = await open_pool(settings, attempts=3)
    try:
        placed = await open_placement(settings, pool)
        try:
            return await placed.directory.servers_of(tenants)
        finally:
            await close_placement(placed)
    finally:
        await pool.close()


async def _move(settings: Settings, args: argparse.Namespace) -> MoveReport:
    # deferred: every CLI process builds the parser (which imports this module), and a
    # served process needs neither the fold nor the move
    from eventfold.tenantmove import move_tenant

    pool = await open_pool(settings, attempts=3)
    try:
        placed = await open_placement(settings, pool)
        try:
            report = await move_tenant(
                settings,
                placed,
                args.tenant,
                args.to,
                grace=args.grace,
                progress=lambda line: print(f"eventfold: {line}", file=sys.stderr, flush=True),
            )
        finally:
            await close_placement(placed)
    finally:
        await pool.close()
    figures = {
        "from": report.source,
        "to": report.target,
        "rows": report.rows,
        "seconds": round(report.seconds, 3),
    }
    await audit.record(
        settings, "tenant.move", {report.tenant: figures}, operator=audit.operator_of(args.operator)
    )
    return report


def command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``eventfold tenants placement|move``; the exit status (1: the move failed)."""
    if args.tenants_command == "move":
        from eventfold.tenantmove import MoveRefused, MoveStalled  # deferred: see _move

        check("tenant", args.tenant)
        try:
            report = asyncio.run(_move(settings, args))
        except (MoveRefused, MoveStalled) as exc:
            print(f"eventfold tenants move: {exc}", file=sys.stderr)
            return 1
        doc = {
            "tenant": report.tenant,
            "from": report.source,
            "to": report.target,
            "handover": {str(p): o for p, o in sorted(report.handover.items())},
            "rows": report.rows,
            "seconds": round(report.seconds, 3),
            "handover_seconds": round(report.handover_seconds, 3),
        }
        if args.json:
            print_json(doc)
        else:
            print(
                f"{report.tenant}: moved from {report.source} to {report.target}"
                f" ({report.rows} rows, {report.seconds:.1f} s)"
            )
        return 0
    if args.tenant:
        for tenant in args.tenant:
            check("tenant", tenant)
        found = asyncio.run(_tenants(settings, list(dict.fromkeys(args.tenant))))
        if args.json:
            print_json(found)
        for tenant, server in [] if args.json else found.items():
            print(f"{tenant} {server}")
        return 0
    servers = asyncio.run(_servers(settings))
    if args.json:
        print_json(servers)
    for s in [] if args.json else servers:
        print(f"{s['server']:<12} {s['address']:<24} {s['tenants']} tenants")
    return 0
