"""`python -m lib_lora VERB ...` — every action of LoRA Studio is scriptable."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# verb -> module under lib_lora.cli. Only the chosen verb's arguments are built, and verb modules import
# torch/onnxruntime/gradio inside run(), so `--help` and argument errors come back at once.
VERBS = {
    "ui": "ui",
    "inspect": "inspect",
    "bake": "bake",
    "bake-lora": "bake_lora",
    "tag": "tag",
    "merge": "merge",
    "resize": "resize",
    "merge-loras": "merge_loras",
    "extract": "extract",
    "train": "train",
}


def _load(verb: str):
    return importlib.import_module(f"lib_lora.cli.{VERBS[verb]}")


def _chosen_verb(argv: list[str]) -> str | None:
    for a in argv:
        if a in VERBS:
            return a
        if not a.startswith("-"):
            return None  # an unknown verb: argparse reports it
    return None


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The full parser; given the command line `argv`, only the verb it names gets its arguments (fast)."""
    from lib_lora import __version__

    parser = argparse.ArgumentParser(prog="python -m lib_lora", description="LoRA Studio command line")
    parser.add_argument("--version", action="version", version=f"LoRA Studio {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    chosen = None if argv is None else _chosen_verb(argv)
    for verb in VERBS:
        try:
            mod = _load(verb)
            if argv is None or verb == chosen:
                p = sub.add_parser(verb, help=mod.HELP, description=mod.HELP)
                mod.add_arguments(p)
            else:
                p = sub.add_parser(verb, help=mod.HELP)
        except ImportError as exc:  # a verb whose optional dependency is missing stays listed
            p = sub.add_parser(verb, help=f"(unavailable: {exc})")
            p.set_defaults(_unavailable=str(exc))
            continue
        p.set_defaults(_run=mod.run)
    return parser


def _quiet_stdout() -> None:
    """The reader of our output went away (`… | head`): drop what is left instead of a traceback at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def main(argv: list[str] | None = None) -> int:
    from lib_lora.errors import LoraStudioError

    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 0
    if getattr(args, "_unavailable", None):
        print(f"error: '{args.verb}' is unavailable: {args._unavailable}", file=sys.stderr)
        return 2
    try:
        rc = int(args._run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not as "Exception ignored" at interpreter exit
        return rc
    except LoraStudioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # as a tool killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
