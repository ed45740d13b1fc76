"""The ``eventfold`` command: run, serve, process, replay, verify, workflows and the rest.

Every subcommand: run, serve, process, infra, token, dlq, replay, verify, events,
workflows, schemas, keys, tenants.

Each command loads what it runs: serving imports the app and its clients, a
stream processor only its own package (:mod:`entrypoints.registry`), ``token``
and ``schemas`` neither. The function-level imports below are those, each
marked ``deferred``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

from entrypoints import dlq, keys, placement, replay, workflows
from entrypoints.listen import CannotListen, listen
from entrypoints.output import print_json
from entrypoints.registry import PROCESSORS
from eventfold import tracing
from eventfold.auth import issue_token
from eventfold.logs import setup_logging
from eventfold.schema_files import check_schemas, export_schemas
from eventfold.settings import Settings, SettingsError, cluster_bootstrap


def parser() -> argparse.ArgumentParser:
    """The command's argument parser (every subcommand; building it imports no app)."""
    p = argparse.ArgumentParser(prog="eventfold", description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument(
        "--operator",
        help="who acts, for the audit trail of replay, verify and dlq redrive (default: the "
        "OS user); their events name the actor operator:NAME",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="everything in one process: API, ingest and processors")
    run.add_argument("--no-token", action="store_true", help="do not print a dev admin token")

    serve = sub.add_parser("serve", help="serve HTTP parts without the processors")
    serve.add_argument(
        "part",
        nargs="+",
        choices=["api", "ingest"],
        help="api (reads), ingest (writes), or both on one port",
    )

    process = sub.add_parser("process", help="run one stream processor alone")
    process.add_argument("name", choices=sorted(PROCESSORS))
    process.add_argument("--burst", action="store_true", help="stop once caught up with the log")

    infra = sub.add_parser("infra", help="the local stack: Kafka, PostgreSQL, Redis, S3")
    infra.add_argument("action", choices=["up", "down", "status"])
    infra.add_argument("--json", action="store_true", help="machine-readable output")
    infra.add_argument(
        "--brokers",
        type=int,
        choices=range(1, 10),
        metavar="N",
        help="Kafka nodes to run (1-9; default EVENTFOLD_KAFKA_BROKERS, else 1)",
    )
    infra.add_argument(
        "--redis-sentinel",
        action="store_true",
        help="with a Redis replica and three sentinels (remembered for later commands)",
    )

    token = sub.add_parser("token", help="print a signed bearer token (JWT)")
    token.add_argument("--tenant", required=True, help="tenant id, or * for platform admins")
    token.add_argument("--roles", required=True, help="comma-separated roles")
    token.add_argument("--ttl", type=int, default=3600, help="lifetime in seconds")
    token.add_argument("--subject", default="eventfold-cli")
    token.add_argument("--json", action="store_true")

    dlq.add_parser(sub)
    replay.add_parsers(sub)
    workflows.add_parser(sub)
    keys.add_parser(sub)
    placement.add_parser(sub)

    schemas = sub.add_parser("schemas", help="the JSON Schemas of the event types")
    schemas.add_argument("action", choices=["export", "check"])
    schemas.add_argument("--json", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        # A usage error like argparse's: one line, exit status 2, no traceback.
        print(f"eventfold: {exc}", file=sys.stderr)
        return 2
    service = _traced_service(args)
    if service is not None:
        try:
            tracing.configure(service)
        except tracing.TracingError as exc:
            print(f"eventfold: {exc}", file=sys.stderr)
            return 2
    handler = {
        "run": _run,
        "serve": _serve,
        "process": _process,
        "infra": _infra,
        "token": _token,
        "schemas": _schemas,
        "dlq": dlq.command,
        "replay": replay.replay_command,
        "verify": replay.verify_command,
        "events": replay.events_command,
        "workflows": workflows.command,
        "keys": keys.command,
        "tenants": placement.command,
    }[args.command]
    try:
        return handler(settings, args)
    except KeyboardInterrupt:
        return 130
    finally:
        tracing.shutdown()  # exports the spans still pending


def _traced_service(args: argparse.Namespace) -> str | None:
    """The default ``service.name`` of a command that serves or processes (None: no tracing)."""
    if args.command == "run":
        return "eventfold"
    if args.command == "serve":
        return "eventfold-" + "-".join(p for p in ("api", "ingest") if p in args.part)
    if args.command == "process":
        return f"eventfold-{args.name}"
    return None


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from entrypoints.bootstrap import Parts  # deferred: start-up cost (the app and its clients)

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
    return _serve_app(settings, Parts(), lines, "run")


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from entrypoints.bootstrap import Parts  # deferred: start-up cost (the app and its clients)

    named = [p for p in ("api", "ingest") if p in args.part]
    parts = Parts(api="api" in named, ingest="ingest" in named, processors=())
    url = f"http://{settings.http_host}:{settings.http_port}"
    banner = [f"eventfold: serving {' and '.join(named)} on {url}"]
    return _serve_app(settings, parts, banner, "serve")


def _serve_app(settings: Settings, parts: Any, banner: list[str], command: str) -> int:
    """Serve ``parts`` until SIGINT/SIGTERM; exit status 1, with one line, when the
    address is taken (bound before the app, its clients and processors start)."""
    from aiohttp import web  # deferred: start-up cost (the app and its clients)

    from entrypoints.bootstrap import create_app  # deferred: start-up cost

    setup_logging(settings.log_level)
    try:
        socks = listen(settings, "HTTP")
    except CannotListen as exc:
        print(f"eventfold {command}: {exc}", file=sys.stderr)
        return 1

    def announce(_msg: str) -> None:
        for line in banner:
            print(line, flush=True)

    try:
        web.run_app(
            create_app(settings, parts),
            sock=socks,
            print=announce,
            access_log=None,
            shutdown_timeout=10,
        )
    finally:
        for sock in socks:
            sock.close()
    return 0


def _process(settings: Settings, args: argparse.Namespace) -> int:
    from entrypoints import process  # deferred: start-up cost (the aiohttp app and its clients)

    setup_logging(settings.log_level)
    return process.main(settings, args.name, burst=args.burst)


def _infra(settings: Settings, args: argparse.Namespace) -> int:
    if importlib.util.find_spec("devstack") is None:
        print(
            "eventfold infra: the local stack is managed from a source checkout"
            " (`make infra`); an installed package has no src/devstack",
            file=sys.stderr,
        )
        return 2
    import devstack as infra  # deferred: not in the wheel, only a checkout has it

    if args.redis_sentinel:
        settings = infra.with_sentinels(settings)

    quiet = args.json or args.action == "status"
    if args.brokers is not None:
        if "kafka" in settings.external:
            print(
                "eventfold infra: --brokers sizes the local Kafka; EVENTFOLD_KAFKA_BOOTSTRAP"
                " points at your own",
                file=sys.stderr,
            )
            return 2
        settings = dataclasses.replace(
            settings,
            kafka_brokers=args.brokers,
            kafka_bootstrap=cluster_bootstrap(settings.kafka_bootstrap, args.brokers),
        )

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
        print_json([s.__dict__ if hasattr(s, "__dict__") else _as_dict(s) for s in statuses])
    else:
        # Columns as wide as their longest entry (kafka-3, redis-sentinel-2, ...).
        width = max((len(s.name) for s in statuses), default=0)
        for s in statuses:
            state = "up" if s.running else "down"
            kind = "managed" if s.managed else "external"
            print(f"{s.name:<{width}} {state:<5} {s.address:<28} {kind:<9} {s.detail}")
    if args.action == "up" and not all(s.running for s in statuses):
        return 1
    if args.action == "status" and not all(s.running for s in statuses):
        return 3
    return 0


def _as_dict(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}


def _token(settings: Settings, args: argparse.Namespace) -> int:
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
        print_json({"token": token, "tenant": args.tenant, "roles": roles, "ttl": args.ttl})
    else:
        print(token)
    return 0


def _schemas(settings: Settings, args: argparse.Namespace) -> int:
    root = settings.home / "schemas"
    if args.action == "export":
        written = export_schemas(root)
        if args.json:
            print_json({"written": [str(p) for p in written]})
        else:
            for path in written:
                print(path)
        return 0
    drift = check_schemas(root)
    if args.json:
        print_json({"drift": drift})
    for line in drift:
        print(f"schema drift: {line}", file=sys.stderr)
    return 1 if drift else 0


if __name__ == "__main__":
    raise SystemExit(main())
