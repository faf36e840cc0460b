"""`python -m lib_lora VERB ...` — every action of LoRA Studio is scriptable."""

from __future__ import annotations

import argparse
import importlib
import sys

# verb -> module under lib_lora.cli; imported only when used, so `--help` stays fast.
VERBS = {
    "ui": "ui",
    "inspect": "inspect",
    "bake": "bake",
    "bake-lora": "bake_lora",
    "tag": "tag",
}


def _load(verb: str):
    return importlib.import_module(f"lib_lora.cli.{VERBS[verb]}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lib_lora", description="LoRA Studio command line")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for verb in VERBS:
        try:
            mod = _load(verb)
        except ImportError as exc:  # a verb whose optional dependency is missing stays listed
            p = sub.add_parser(verb, help=f"(unavailable: {exc})")
            p.set_defaults(_unavailable=str(exc))
            continue
        p = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from lib_lora.errors import LoraStudioError

    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    if getattr(args, "_unavailable", None):
        print(f"error: '{args.verb}' is unavailable: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except LoraStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
