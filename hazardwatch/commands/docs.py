"""``hazardwatch docs generate [--check]``: the reference documents generated from the code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("docs", help="reference documents generated from the code")
    dsub = p.add_subparsers(dest="docs_command", required=True, metavar="ACTION")
    g = dsub.add_parser("generate", help="write the site-file, HTTP API, metrics and command-line references",
                        description="Writes docs/reference/*.md from the pydantic models, the OpenAPI "
                                    "description, the metrics in the code and the command line's help.")
    g.add_argument("--out", default="docs/reference", help="folder to write into (default docs/reference)")
    g.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file is stale")
    g.set_defaults(func=generate)


def generate(args: argparse.Namespace) -> int:
    from hazardwatch.reference import generate as build
    from hazardwatch.reference import stale

    out = Path(args.out)
    if args.check:
        old = stale(out)
        if old:
            print(f"✗ stale in {out}: {', '.join(old)} — run `hazardwatch docs generate`", file=sys.stderr)
            return 1
        print(f"✓ {out} matches the code")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in build().items():
        path = out / name
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        path.write_text(text, encoding="utf-8")
        print(f"✓ {path}")
    return 0
