"""``eventfold replay``, ``verify`` and ``events``: the operator's side of rebuilds.

The rebuild itself is :mod:`consumers.rebuild.rebuild`; this module parses the
options, runs it and prints its reports.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

import asyncpg
import orjson

from entrypoints import audit
from eventfold import cachefill, gctune, readmodel
from eventfold.clients import close_placement, open_placement, open_pool
from eventfold.ids import check
from eventfold.settings import HOME_SERVER, Settings

if TYPE_CHECKING:
    from consumers.rebuild.rebuild import Report


def add_parsers(sub: Any) -> None:
    """Register the subcommands on the CLI's subparsers."""
    replay = sub.add_parser("replay", help="rebuild projections from the log (blue-green)")
    replay.add_argument(
        "--tenant", action="append", help="only this tenant; repeatable (default: every tenant)"
    )
    start = replay.add_mutually_exclusive_group()
    start.add_argument("--from-time", type=_iso, help="fold the log from this ISO 8601 time")
    start.add_argument(
        "--from-archive", action="store_true", help="fold the S3 archive, then Kafka after it"
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="report what would change, swap nothing"
    )
    replay.add_argument(
        "--outdated",
        action="store_true",
        help="only tenants whose schema another projection version built",
    )
    replay.add_argument("--rate", type=float, help="at most this many events per second")
    replay.add_argument("--json", action="store_true", help="machine-readable output")

    verify = sub.add_parser("verify", help="compare projections with a fresh fold of the log")
    verify.add_argument(
        "--tenant", action="append", help="only this tenant; repeatable (default: every tenant)"
    )
    verify.add_argument("--from-archive", action="store_true", help="fold the archive first")
    verify.add_argument("--json", action="store_true", help="machine-readable output")

    events = sub.add_parser("events", help="browse a tenant's event history")
    events.add_argument("--tenant", required=True)
    events.add_argument("--type")
    events.add_argument("--subject")
    events.add_argument("--since", type=_iso)
    events.add_argument("--until", type=_iso)
    events.add_argument("--limit", type=int, default=100)
    events.add_argument("--json", action="store_true", help="machine-readable output")


def _figures(report: dict[str, Any]) -> dict[str, Any]:
    """A rebuild report's figures (its audit event's details): scalars only, no tenant."""
    return {
        k: v for k, v in report.items() if k != "tenant" and isinstance(v, str | int | float | bool)
    }


def _iso(text: str) -> datetime:
    try:
        at = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 time: {text}") from exc
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError(f"give a time zone (e.g. Z): {text}")
    return at


class ProgressLine:
    """A progress bar with events/s on a terminal, plain lines every few seconds otherwise."""

    def __init__(self, tenant: str, out: TextIO = sys.stderr) -> None:
        self.tenant, self.out = tenant, out
        self.tty = out.isatty()
        self.last = 0.0

    def __call__(self, events: int, seconds: float, share: float | None) -> None:
        """Show ``events`` folded in ``seconds``, ``share`` of the log covered (ETA from it)."""
        now = time.monotonic()
        if share != 1.0 and now - self.last < (0.2 if self.tty else 5.0):
            return
        self.last = now
        rate = events / seconds if seconds else 0.0
        text = f"{self.tenant}: {events} events, {rate:,.0f} events/s, {seconds:.1f}s"
        if share:
            eta = seconds * (1 - share) / share
            text += f", {share:.0%}, ETA {eta:.0f}s"
        if self.tty:
            width = 20
            filled = int(width * (share or 0))
            bar = "#" * filled + "-" * (width - filled)
            self.out.write(f"\r[{bar}] {text}\033[K")
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def done(self) -> None:
        """End the bar's line."""
        if self.tty and self.last:
            self.out.write("\n")
            self.out.flush()


def replay_command(settings: Settings, args: argparse.Namespace) -> int:
    """Rebuild (or dry-run) the projections; exit 0 when every one was swapped in."""
    return _run(settings, args, compare_only=args.dry_run, verify=False)


def verify_command(settings: Settings, args: argparse.Namespace) -> int:
    """Compare projections with a fresh fold; exit 0 only when all are equal."""
    args.from_time = None
    args.rate = None
    return _run(settings, args, compare_only=True, verify=True)


def _run(settings: Settings, args: argparse.Namespace, *, compare_only: bool, verify: bool) -> int:
    for tenant in args.tenant or ():
        check("tenant", tenant)

    # deferred: every CLI process builds the parser (which imports this module), and
    # the API and the gateway need neither the fold nor aiokafka's consumer (~7 MB of
    # RSS in a served process)
    from consumers.rebuild.rebuild import Options, all_tenants, rebuild_many

    async def on_server(server: str, pool: asyncpg.Pool, asked: list[str]) -> list[Report]:
        """Rebuild (or compare) ``asked`` (every tenant when empty) on one database server."""
        scoped = settings.on_server(server)
        tenants = asked or await all_tenants(pool)
        if asked:
            async with pool.acquire(timeout=10) as conn:
                gone = await readmodel.deleted_tenants(conn, tenants)
            for tenant in sorted(gone):
                print(f"eventfold: tenant {tenant} was deleted: skipped", file=sys.stderr)
            tenants = [t for t in tenants if t not in gone]
        if getattr(args, "outdated", False):
            async with pool.acquire(timeout=10) as conn:
                outdated = await readmodel.outdated_tenants(conn)
            tenants = [t for t in tenants if t in outdated]
        if not tenants:
            return []
        # Every tenant of the server in one pass over the log (each has its own shadow
        # and swap).
        label = tenants[0] if len(tenants) == 1 else f"{len(tenants)} tenants"
        bar = ProgressLine(label if server == HOME_SERVER else f"{label} on {server}")
        opts = Options(
            from_time=args.from_time,
            from_archive=args.from_archive,
            compare_only=compare_only,
            rate=args.rate,
            progress=bar,  # stderr: stdout stays the JSON document
        )
        reports = await rebuild_many(scoped, pool, tenants, opts)
        bar.done()
        return reports

    async def main() -> list[Report]:
        pool = await open_pool(settings, attempts=3)
        gctune.settle()  # the process's own: nothing to restore
        reports: list[Report] = []
        try:
            placed = await open_placement(settings, pool)
            try:
                asked = list(dict.fromkeys(args.tenant or ()))
                # Each server rebuilds its own tenants (eventfold.placement).
                by_server: dict[str, list[str]] = {s: [] for s in placed.pools}
                for tenant, server in (await placed.directory.servers_of(asked)).items():
                    by_server[server].append(tenant)
                for server, server_pool in placed.pools.items():
                    if asked and not by_server[server]:
                        continue
                    mine = sorted(by_server[server], key=asked.index)
                    reports += await on_server(server, server_pool, mine)
            finally:
                await close_placement(placed)
            if reports:
                await cachefill.forget_tenants(settings, {r.tenant for r in reports if r.swapped})
                figures = {r.tenant: _figures(r.as_dict()) for r in reports}
                action = "verify" if compare_only else "replay"
                await audit.record(
                    settings, action, figures, operator=audit.operator_of(args.operator)
                )
        finally:
            await pool.close()
        return reports

    reports = asyncio.run(main())
    if args.json:
        sys.stdout.write(
            orjson.dumps(
                {"dry_run": compare_only and not verify, "tenants": [r.as_dict() for r in reports]},
                option=orjson.OPT_INDENT_2,
            ).decode()
            + "\n"
        )
    else:
        for r in reports:
            d = r.diff
            what = (
                ("equal" if d.equal else "DIFFERS")
                if verify
                else ("would change" if compare_only else "swapped in")
            )
            print(
                f"{r.tenant}: {what}; {r.events} events folded in {r.seconds:.1f}s; "
                f"added {d.added}, changed {d.changed}, removed {d.removed}, "
                f"history rows differing {d.history_differs}, "
                f"platform rows differing {d.platform_differs}, "
                f"workflow rows differing {d.workflows_differs}"
            )
            if r.error:
                print(f"{r.tenant}: not swapped: {r.error}", file=sys.stderr)
            for rec in d.records:
                print(
                    f"  {rec['change']} {rec['collection']}/{rec['id']} "
                    f"live v{rec['live_version']} rebuilt v{rec['rebuilt_version']}"
                )
            for row in d.history:
                print(
                    f"  history {row['id']} {row['type']}: "
                    f"live {_outcome(row['live_status'], row['live_reason'])}, "
                    f"rebuilt {_outcome(row['rebuilt_status'], row['rebuilt_reason'])}"
                )
            for row in d.platform:
                print(f"  {row['change']} {row['table']}/{row['id']}")
    if verify:
        return 0 if all(r.diff.equal for r in reports) else 1
    return 0 if compare_only or all(r.swapped for r in reports) else 1


def _outcome(status: str | None, reason: str | None) -> str:
    """A history row's status as verify prints it: ``rejected (why)``, or ``absent``."""
    if status is None:
        return "absent"
    return f"{status} ({reason})" if reason else status


def events_command(settings: Settings, args: argparse.Namespace) -> int:
    """Print a tenant's event history, oldest first, filtered."""
    check("tenant", args.tenant)
    limit = max(1, min(int(args.limit), 10_000))

    async def main() -> list[dict[str, Any]]:
        pool = await open_pool(settings, attempts=3)
        try:
            placed = await open_placement(settings, pool)
            try:
                async with placed.acquire(args.tenant) as conn:
                    rows = await readmodel.browse_history(
                        conn,
                        args.tenant,
                        event_type=args.type,
                        subject=args.subject,
                        since=args.since,
                        until=args.until,
                        limit=limit,
                    )
            finally:
                await close_placement(placed)
        finally:
            await pool.close()
        return [dict(r) for r in rows]

    rows = asyncio.run(main())
    if args.json:
        sys.stdout.write(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for r in rows:
            reason = f" ({r['reason']})" if r["reason"] else ""
            print(
                f"{r['time'].isoformat()} {r['id']} {r['type']} {r['subject'] or '-'} "
                f"{r['status']}{reason} p{r['partition']}@{r['offset']}"
            )
    return 0
