"""``eventfold tenants placement``: which database server holds which tenants.

Without ``--tenant``, each server (``main`` first) with its URL's host and port and
how many tenants the directory places there; with ``--tenant T`` (repeatable), the
server of each. Each takes ``--json``. With one server every tenant is ``main``'s.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any
from urllib.parse import urlsplit

from entrypoints.output import print_json
from eventfold.clients import close_placement, open_placement, open_pool
from eventfold.ids import check
from eventfold.settings import Settings


def add_parser(sub: Any) -> None:
    """Register ``eventfold tenants`` on the CLI's subparsers."""
    tenants = sub.add_parser("tenants", help="tenants across database servers")
    actions = tenants.add_subparsers(dest="tenants_command", required=True, metavar="ACTION")
    placement = actions.add_parser("placement", help="each server's tenants, or a tenant's server")
    placement.add_argument("--tenant", action="append", help="this tenant's server (repeatable)")
    placement.add_argument("--json", action="store_true", help="machine-readable output")


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


def command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``eventfold tenants placement``; the exit status."""
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
