"""The ``eventfold`` command: run, serve, process, infra, token, dlq, replay, verify, events."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from consumers.registry import PROCESSORS
from eventfold.settings import Settings, SettingsError


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="eventfold", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="everything in one process: API, ingest and processors")
    run.add_argument("--no-token", action="store_true", help="do not print a dev admin token")

    serve = sub.add_parser("serve", help="serve one HTTP part alone")
    serve.add_argument("part", choices=["api", "ingest"])

    process = sub.add_parser("process", help="run one stream processor alone")
    process.add_argument("name", choices=sorted(PROCESSORS))
    process.add_argument("--burst", action="store_true", help="stop once caught up with the log")

    infra = sub.add_parser("infra", help="the local stack: Kafka, PostgreSQL, Redis, S3")
    infra.add_argument("action", choices=["up", "down", "status"])
    infra.add_argument("--json", action="store_true", help="machine-readable output")

    token = sub.add_parser("token", help="print a signed bearer token (JWT)")
    token.add_argument("--tenant", required=True, help="tenant id, or * for platform admins")
    token.add_argument("--roles", required=True, help="comma-separated roles")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--subject", default="eventfold-cli")
    token.add_argument("--json", action="store_true")

    dlq = sub.add_parser("dlq", help="events the projector parked (dead letters)")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")
    for name, text in (
        ("list", "list parked events, oldest first per record"),
        ("show", "one parked event with its envelope"),
        ("redrive", "apply parked events again, in order (after a fix)"),
    ):
        action = dlq_sub.add_parser(name, help=text)
        action.add_argument("--tenant", help="only this tenant")
        action.add_argument("--json", action="store_true", help="machine-readable output")
        if name == "show":
            action.add_argument("event_id", help="the parked event's id")
        else:
            action.add_argument("--key", help="only this record (collection/id)")
        if name == "redrive":
            action.add_argument("--dry-run", action="store_true", help="report, change nothing")

    from consumers.rebuild.commands import add_parsers as add_rebuild_parsers

    add_rebuild_parsers(sub)

    from consumers.workflows.commands import add_parsers as add_workflow_parsers

    add_workflow_parsers(sub)

    schemas = sub.add_parser("schemas", help="the JSON Schemas of the event types")
    schemas.add_argument("action", choices=["export", "check"])
    schemas.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        # A usage error like argparse's: one line, exit status 2, no traceback.
        print(f"eventfold: {exc}", file=sys.stderr)
        return 2
    handler = {
        "run": _run,
        "serve": _serve,
        "process": _process,
        "infra": _infra,
        "token": _token,
        "schemas": _schemas,
        "dlq": _dlq,
        "replay": _replay,
        "verify": _verify,
        "events": _events,
        "workflows": _workflows,
    }[args.command]
    try:
        return handler(settings, args)
    except KeyboardInterrupt:
        return 130


def _replay(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.rebuild.commands import replay_command

    return replay_command(settings, args)


def _verify(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.rebuild.commands import verify_command

    return verify_command(settings, args)


def _workflows(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.workflows.commands import workflows_command

    return workflows_command(settings, args)


def _events(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.rebuild.commands import events_command

    return events_command(settings, args)


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from eventfold.auth import issue_token
    from eventfold.bootstrap import Parts

    url = f"http://{settings.http_host}:{settings.http_port}"
    lines = [f"eventfold: serving on {url} (API, ingest and processors in one process)"]
    if settings.mode == "dev" and not os.environ.get("EVENTFOLD_JWT_SECRET"):
        # The contract's dev default: a generated secret, shown so other tools can sign tokens.
        lines.append(
            f"eventfold: dev JWT secret (EVENTFOLD_JWT_SECRET, kept in var/jwt-secret): "
            f"{settings.jwt_secret}"
        )
    # A production log is read by more people than may hold a platform-admin token.
    if settings.mode == "dev" and not args.no_token:
        dev = issue_token(
            settings.jwt_secret,
            tenant="*",
            roles=["platform-admin"],
            subject="dev",
            ttl_seconds=86400,
        )
        lines.append(f"eventfold: dev platform-admin token (24 h): {dev}")
    return _serve_app(settings, Parts(), lines)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from eventfold.bootstrap import Parts

    parts = Parts(api=args.part == "api", ingest=args.part == "ingest", processors=())
    url = f"http://{settings.http_host}:{settings.http_port}"
    return _serve_app(settings, parts, [f"eventfold: serving {args.part} on {url}"])


def _serve_app(settings: Settings, parts: Any, banner: list[str]) -> int:
    from aiohttp import web

    from eventfold.bootstrap import create_app
    from eventfold.logs import setup_logging

    setup_logging(settings.log_level)

    def announce(_msg: str) -> None:
        for line in banner:
            print(line, flush=True)

    web.run_app(
        create_app(settings, parts),
        host=settings.http_host,
        port=settings.http_port,
        print=announce,
        access_log=None,
        shutdown_timeout=10,
    )
    return 0


def _process(settings: Settings, args: argparse.Namespace) -> int:
    from eventfold import gctune, malloctrim
    from eventfold.bootstrap import open_pool, supervise
    from eventfold.logs import setup_logging
    from eventfold.metrics import Metrics

    setup_logging(settings.log_level)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        pool = await open_pool(settings)
        gctune.settle(gctune.GC_THRESHOLD_0_BATCH)  # the process's own: nothing to restore
        try:
            # Stream processors read sockets as served processes do: the same heap holes.
            async with malloctrim.trimming():
                await supervise(args.name, settings, pool, Metrics(), stop, burst=args.burst)
        finally:
            await pool.close()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
    return 0


def _infra(settings: Settings, args: argparse.Namespace) -> int:
    from eventfold import infra

    quiet = args.json or args.action == "status"

    def progress(msg: str) -> None:
        if not quiet:
            print(msg, flush=True)

    try:
        if args.action == "up":
            statuses = infra.up(settings, progress=progress)
        elif args.action == "down":
            statuses = infra.down(settings, progress=progress)
        else:
            statuses = infra.status(settings)
    except infra.InfraError as exc:
        print(f"eventfold infra {args.action}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        _print_json([s.__dict__ if hasattr(s, "__dict__") else _as_dict(s) for s in statuses])
    else:
        for s in statuses:
            state = "up" if s.running else "down"
            kind = "managed" if s.managed else "external"
            print(f"{s.name:<9} {state:<5} {s.address:<28} {kind:<9} {s.detail}")
    if args.action == "up" and not all(s.running for s in statuses):
        return 1
    if args.action == "status" and not all(s.running for s in statuses):
        return 3
    return 0


def _as_dict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from eventfold.auth import issue_token

    roles = [r.strip() for r in args.roles.split(",") if r.strip()]
    try:
        token = issue_token(
            settings.jwt_secret,
            tenant=args.tenant,
            roles=roles,
            subject=args.subject,
            ttl_seconds=args.ttl,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    except ValueError as exc:
        print(f"eventfold token: {exc}", file=sys.stderr)
        return 2
    if args.json:
        _print_json({"token": token, "tenant": args.tenant, "roles": roles, "ttl": args.ttl})
    else:
        print(token)
    return 0


def _dlq(settings: Settings, args: argparse.Namespace) -> int:
    from consumers.projector import parking
    from consumers.projector.redrive import redrive
    from eventfold.bootstrap import open_pool

    consumer = f"{settings.consumer_group_prefix}.projector"

    async def main() -> int:
        pool = await open_pool(settings, attempts=3)
        try:
            if args.dlq_command == "redrive":
                report = await redrive(
                    pool, consumer, tenant=args.tenant, key=args.key, dry_run=args.dry_run,
                    topic=settings.events_topic,
                )  # fmt: skip
                if report.applied and not args.dry_run:
                    from consumers.cache.processor import refresh_after_redrive

                    await refresh_after_redrive(settings, pool, report.keys)
                if args.json:
                    _print_json(
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
                        state = f", still parked: {left} ({k['error']})" if left else ""
                        print(
                            f"{k['tenant']} {k['key']}: {prefix} {k['applied']}, "
                            f"rejected {k['rejected']}{state}"
                        )
                    print(
                        f"{prefix} {report.applied} events, {report.rejected} rejected, "
                        f"{report.still_parked} still parked"
                    )
                return 1 if report.still_parked else 0
            async with pool.acquire(timeout=10) as conn:
                rows = await parking.list_parked(
                    conn,
                    consumer,
                    tenant=args.tenant,
                    key=getattr(args, "key", None),
                    event_id=getattr(args, "event_id", None),
                )
        finally:
            await pool.close()
        if args.dlq_command == "show":
            if not rows:
                print(f"eventfold dlq show: no parked event {args.event_id}", file=sys.stderr)
                return 1
            row = rows[0]
            try:
                envelope: Any = orjson.loads(row.envelope)
            except orjson.JSONDecodeError:
                envelope = row.envelope.decode(errors="replace")
            doc = {**row.summary(), "envelope": envelope}
            if args.json:
                _print_json(doc)
            else:
                for name, value in doc.items():
                    print(f"{name:<10} {value}")
            return 0
        if args.json:
            _print_json([r.summary() for r in rows])
        else:
            if not rows:
                print("no parked events")
            for r in rows:
                print(
                    f"{r.tenant} {r.key} {r.event_id} {r.event_type} "
                    f"p{r.partition}@{r.offset} {r.error}"
                )
        return 0

    return asyncio.run(main())


def _schemas(settings: Settings, args: argparse.Namespace) -> int:
    from eventfold.schema_files import check_schemas, export_schemas

    root = settings.home / "schemas"
    if args.action == "export":
        written = export_schemas(root)
        if args.json:
            _print_json({"written": [str(p) for p in written]})
        else:
            for path in written:
                print(path)
        return 0
    drift = check_schemas(root)
    if args.json:
        _print_json({"drift": drift})
    for line in drift:
        print(f"schema drift: {line}", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
