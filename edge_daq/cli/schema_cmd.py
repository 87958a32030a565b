"""``edge-daq schema gateway|rig|profile``: the JSON Schema of a kind of config file, for editors and CI.

``--write-dir DIR`` writes all three as ``DIR/KIND.schema.json``; ``edge-daq schema --write-dir config/schemas``
regenerates the copies shipped in the package (a unit test fails when they are stale).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal, TextIO, cast

KINDS: tuple[Literal["gateway", "rig", "profile"], ...] = (
    "gateway",
    "rig",
    "profile",
)  # edge_daq.config.schema.KINDS: a test checks they agree


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("kind", nargs="?", choices=KINDS, help="which file: the gateway file, a rig file, a profile")
    parser.add_argument(
        "--write-dir", type=Path, metavar="DIR", help="write every schema as DIR/KIND.schema.json instead"
    )
    parser.epilog = (
        "The shipped copies are in config/schemas/ of a checkout (edge_daq/_shipped_config/schemas/ when "
        "installed); a YAML file refers to one with a first line such as "
        "'# yaml-language-server: $schema=../schemas/rig.schema.json' (see the README's \"Editing with a schema\")."
    )


def run_schema(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from edge_daq.config.schema import SchemaKind, file_name, render

    if args.write_dir is not None:
        if args.kind is not None:
            err.write("edge-daq schema: give a kind or --write-dir, not both\n")
            return 2
        try:
            args.write_dir.mkdir(parents=True, exist_ok=True)
            for kind in KINDS:
                path = args.write_dir / file_name(kind)
                path.write_text(render(kind), encoding="utf-8")
                out.write(f"wrote {path}\n")
        except OSError as error:
            err.write(f"edge-daq schema: cannot write {error.filename}: {error.strerror}\n")
            return 1
        return 0
    if args.kind is None:
        err.write(f"edge-daq schema: give a kind ({', '.join(KINDS)}) or --write-dir DIR\n")
        return 2
    out.write(render(cast(SchemaKind, args.kind)))
    return 0
