"""`python -m lib_lora inspect FILE… [--json]`: what a LoRA file contains."""

from __future__ import annotations

import json

HELP = "show a LoRA/LyCORIS file's algorithms, architecture, ranks/alphas, per-block norms and metadata"


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".safetensors file(s) to inspect")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    parser.add_argument("--no-norms", action="store_true", help="skip the per-block ΔW norms (faster)")
    parser.add_argument("--no-hash", action="store_true", help="skip hashing the file body")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read .pt/.ckpt/.bin files (weights-only unpickling)")


def run(args) -> int:
    from lib_lora.inspect import format_report, inspect_file

    reports = [inspect_file(f, allow_pickle=args.allow_pickle, compute_norms=not args.no_norms,
                            with_hash=not args.no_hash) for f in args.files]
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0
