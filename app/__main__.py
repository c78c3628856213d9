"""Command line: `python -m app serve|import|export|setup|user`. Each data command prints a one-line JSON summary."""
from __future__ import annotations

import argparse
import json
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m app", description="Preflab: label, train, compare.")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("serve", help="run the web app")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=7860)
    s.add_argument("--auth", action="store_true", help="require login even on 127.0.0.1")

    i = sub.add_parser("import", help="import prompts, responses or labels from JSONL, CSV or Parquet")
    i.add_argument("file")
    i.add_argument("--site")
    i.add_argument("--required", type=int, help="annotations needed per created task")
    i.add_argument("--skip-bad-rows", action="store_true", help="import the good rows of a file that has errors")
    i.add_argument("--map", action="append", default=[], metavar="OURS=THEIRS",
                   help="column mapping, e.g. --map prompt=question")

    e = sub.add_parser("export", help="export labels for training elsewhere")
    e.add_argument("--kind", choices=["preference", "unpaired", "sft"], required=True)
    e.add_argument("--ties", choices=["drop", "keep"], default="drop")
    e.add_argument("out", help="output file (.jsonl or .parquet)")

    sub.add_parser("setup", help="convert the default model and seed the demo project (idempotent)")

    u = sub.add_parser("user", help="add or update an account (the password is asked for, or read from stdin)")
    u.add_argument("name")
    u.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    u.add_argument("--site")
    u.add_argument("--site-only", action="store_true", help="serve this annotator only tasks of --site")
    switch = u.add_mutually_exclusive_group()
    switch.add_argument("--disable", action="store_true", help="switch the account off (its sessions end)")
    switch.add_argument("--enable", action="store_true", help="switch a disabled account on again")

    args = p.parse_args(argv)
    import os

    os.umask(0o077)   # everything the app writes (database, exports, runs) is readable by this user only
    from app.context import UserError

    try:
        if args.cmd == "serve":
            from app.server import serve

            serve(host=args.host, port=args.port, auth=args.auth)
            return 0
        from app.context import AppContext

        ctx = AppContext()
        if args.cmd == "import":
            from labeling.importer import import_file, parse_mapping

            summary = import_file(ctx.db, args.file, site=args.site, required=args.required,
                                  skip_bad_rows=args.skip_bad_rows, mapping=parse_mapping(args.map))
        elif args.cmd == "export":
            from labeling.label_export import export

            summary = export(ctx.db, args.kind, args.out, ties=args.ties)
        elif args.cmd == "setup":
            from app.first_start import setup

            summary = setup(ctx)
        elif args.cmd == "user":
            from labeling.accounts import set_disabled, set_user

            if args.disable or args.enable:
                summary = set_disabled(ctx.db, args.name, disabled=args.disable)
            else:
                summary = set_user(ctx.db, args.name, read_password(args.name), role=args.role, site=args.site,
                                   site_only=args.site_only or None)   # None: as the account was
        print(json.dumps(summary, default=str))
        return 0 if summary.get("ok", True) else 1
    except (UserError, ValueError, OSError) as e:   # bad names, passwords, paths: a sentence, not a trace
        print(json.dumps({"ok": False, "error": str(e)}))
        return 1


def read_password(name: str) -> str:
    """From a prompt (typed twice, not shown) or, when stdin is not a terminal, its first line: never from the
    command line, which other users see in the process list and the shell keeps in its history."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    first = getpass.getpass(f"Password for {name}: ")
    if getpass.getpass("Again: ") != first:
        raise ValueError("The two passwords differ; nothing was changed.")
    return first


if __name__ == "__main__":
    sys.exit(main())
