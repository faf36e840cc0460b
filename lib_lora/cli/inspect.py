"""`python -m lib_lora inspect FILE… [--json]`: what a LoRA file contains."""

from __future__ import annotations

import json
import sys

HELP = ("show a LoRA/LyCORIS file's algorithms, architecture, ranks/alphas, per-block norms and metadata "
        "(exit status 1 when a file is damaged or not a LoRA, 2 when one cannot be read)")


def add_arguments(parser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help=".safetensors file(s) to inspect")
    parser.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    parser.add_argument("--no-norms", action="store_true", help="skip the per-block ΔW norms (faster)")
    parser.add_argument("--no-hash", action="store_true", help="skip hashing the file body")
    parser.add_argument("--allow-pickle", action="store_true",
                        help="also read .pt/.ckpt/.bin files (weights-only unpickling)")


def run(args) -> int:
    from lib_lora.errors import LoraStudioError
    from lib_lora.lora_info import format_report, inspect_file

    reports, status = [], 0
    for f in args.files:
        try:
            reports.append(inspect_file(f, allow_pickle=args.allow_pickle, compute_norms=not args.no_norms,
                                        with_hash=not args.no_hash))
        except LoraStudioError as exc:  # one unreadable file does not hide the reports of the others
            print(f"error: {exc}", file=sys.stderr)
            status = 2
    if not reports:
        return status
    if args.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    for r in reports:
        if r["verdict"] != "ok":
            print(f"error: {r['file']}: {r['problem']}", file=sys.stderr)
            status = status or 1
    return status
