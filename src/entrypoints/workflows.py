"""``eventfold workflows list|runs|show``: a tenant's workflows and runs from the read model.

``list --tenant T`` lists the live workflows; ``runs --tenant T [--workflow W]
[--limit N]`` their runs, newest first; ``show RUN [--tenant T]`` one run with
its steps (the tenant is looked up when not given). Each takes ``--json``.
Exit status 1 when the tenant, workflow or run is not found.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import asyncpg
import orjson

from entrypoints.output import print_json
from eventfold.clients import close_placement, open_placement, open_pool
from eventfold.ids import check
from eventfold.settings import Settings
from eventfold.workflows import reads


def add_parser(sub: Any) -> None:
    """Register ``eventfold workflows`` on the CLI's subparsers."""
    workflows = sub.add_parser("workflows", help="workflow definitions and their runs")
    actions = workflows.add_subparsers(dest="workflows_command", required=True, metavar="ACTION")
    listing = actions.add_parser("list", help="a tenant's workflows")
    listing.add_argument("--tenant", required=True)
    runs = actions.add_parser("runs", help="runs, newest first")
    runs.add_argument("--tenant", required=True)
    runs.add_argument("--workflow", help="only this workflow's runs")
    runs.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    show = actions.add_parser("show", help="one run with its steps")
    show.add_argument("run", help="the run id")
    show.add_argument("--tenant", help="the run's tenant (looked up when absent)")
    for action in (listing, runs, show):
        action.add_argument("--json", action="store_true", help="machine-readable output")


def _line(run: dict[str, Any]) -> str:
    finished = run["finished_at"].isoformat() if run["finished_at"] else "-"
    steps = " ".join(f"{s['id']}:{s['status']}" for s in run["steps"])
    return (
        f"{run['id']}  {run['workflow']} v{run['workflow_version']}  {run['status']:<9}  "
        f"{run['started_at'].isoformat()} → {finished}  {steps}"
    )


async def _main(settings: Settings, args: argparse.Namespace, pool: asyncpg.Pool) -> int:
    command = args.workflows_command
    tenant = args.tenant
    async with pool.acquire(timeout=10) as conn:
        if command == "show" and tenant is None:
            tenant = await conn.fetchval(
                "SELECT tenant FROM eventfold.workflow_runs WHERE id = $1", args.run
            )
            if tenant is None:
                print(f"eventfold: no run {args.run}", file=sys.stderr)
                return 1
        check("tenant", tenant)
        try:
            if command == "list":
                items = await reads.list_workflows(conn, tenant, "", 10_000)
                if args.json:
                    print_json({"items": items})
                for w in [] if args.json else items:
                    trigger = w["trigger"]
                    print(
                        f"{w['id']}  v{w['version']}  {'enabled' if w['enabled'] else 'paused':<8}"
                        f"  {','.join(trigger['types'])} in {trigger['collection']}"
                        f"  {len(w['steps'])} steps  {w['name']}"
                    )
                return 0
            if command == "runs":
                runs = await reads.list_runs(conn, tenant, args.workflow, None, max(1, args.limit))
                if args.json:
                    print_json({"items": runs})
                for item in [] if args.json else runs:
                    print(_line(item))
                return 0
            run = await reads.get_run(conn, tenant, args.run)
        except asyncpg.UndefinedTableError:
            print(f"eventfold: no tenant {tenant} (or its projection predates workflows)",
                  file=sys.stderr)  # fmt: skip
            return 1
    if run is None:
        print(f"eventfold: no run {args.run} in tenant {tenant}", file=sys.stderr)
        return 1
    if args.json:
        print_json(run)
        return 0
    print(_line({**run, "steps": []}))
    if run["reason"]:
        print(f"  reason: {run['reason']}")
    for s in run["steps"]:
        detail = s["error"] or (
            orjson.dumps(s["output"]).decode() if s["output"] is not None else ""
        )
        print(f"  {s['id']:<16} {s['kind']:<8} {s['status']:<9} attempts {s['attempts']}  {detail}")
    return 0


def command(settings: Settings, args: argparse.Namespace) -> int:
    """Run ``eventfold workflows ACTION``; the exit status."""

    async def main() -> int:
        pool = await open_pool(settings, attempts=3)
        try:
            placed = await open_placement(settings, pool)
            try:
                if args.tenant is not None:
                    return await _main(settings, args, await placed.pool_for(args.tenant))
                # ``show RUN`` without its tenant: the run's server is the one that has it
                # (main's answers "no run" when none has).
                for server_pool in placed.pools.values():
                    async with server_pool.acquire(timeout=10) as conn:
                        found = await conn.fetchval(
                            "SELECT true FROM eventfold.workflow_runs WHERE id = $1", args.run
                        )
                    if found:
                        return await _main(settings, args, server_pool)
                return await _main(settings, args, placed.home)
            finally:
                await close_placement(placed)
        finally:
            await pool.close()

    return asyncio.run(main())
