"""`python -m lib_lora inspect FILE… [--json]`: what a LoRA file contains."""

from __future__ import annotations

import json
import sys

from lib_lora.options import InspectOptions, add_arguments as add_options, from_args

HELP = ("show a LoRA/LyCORIS file's algorithms, architecture, ranks/alphas, per-block norms and metadata "
        "(exit status 1 when a file is damaged or not a LoRA, 2 when one cannot be read)")


def add_arguments(parser) -> None:
    add_options(parser, InspectOptions)


def run(args) -> int:
    from lib_lora.errors import LoraStudioError
    from lib_lora.lora_info import format_report, inspect_file

    o = from_args(InspectOptions, args)
    reports, status = [], 0
    for f in o.files:
        try:
            reports.append(inspect_file(f, allow_pickle=o.allow_pickle, compute_norms=o.norms, with_hash=o.hash))
        except LoraStudioError as exc:  # one unreadable file does not hide the reports of the others
            print(f"error: {exc}", file=sys.stderr)
            status = 2
    if not reports:
        return status
    if o.json:
        print(json.dumps(reports[0] if len(reports) == 1 else reports, indent=2, ensure_ascii=False))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    for r in reports:
        if r["verdict"] != "ok":
            print(f"error: {r['file']}: {r['problem']}", file=sys.stderr)
            status = status or 1
    return status
