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

    u = sub.add_parser("user", help="add or update an account")
    u.add_argument("name")
    u.add_argument("--role", choices=["annotator", "admin"], default="annotator")
    u.add_argument("--password", required=True)
    u.add_argument("--site")

    args = p.parse_args(argv)
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
            from labeling.accounts import set_user

            summary = set_user(ctx.db, args.name, args.password, role=args.role, site=args.site)
        print(json.dumps(summary, default=str))
        return 0 if summary.get("ok", True) else 1
    except (UserError, ValueError, OSError) as e:   # bad names, passwords, paths: a sentence, not a trace
        print(json.dumps({"ok": False, "error": str(e)}))
        return 1


if __name__ == "__main__":
    sys.exit(main())
