"""`python -m lib_lora ui`: the standalone LoRA Studio app (every tab, outside the WebUI)."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "start the LoRA Studio app in the browser (binds to 127.0.0.1 unless --listen)"

DEFAULT_LORA_DIR = os.path.join("models", "Lora")
DEFAULT_TAGGER_DIR = os.path.join("models", "TaggerModels")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora-dir", action="append", metavar="DIR",
                        help=f"LoRA/LyCORIS folder (must exist); repeat for several (default: ./{DEFAULT_LORA_DIR}, "
                             "created if missing)")
    parser.add_argument("--tagger-models-dir", metavar="DIR",
                        help=f"WD14 tagger models folder (must exist; default: ./{DEFAULT_TAGGER_DIR}, created if "
                             "missing)")
    parser.add_argument("--presets-file", metavar="FILE",
                        help="user block-weight presets file (default: lora_studio_presets.txt in the first LoRA "
                             "folder; the CLI's bake verbs read the same file)")
    parser.add_argument("--port", type=int, default=7870, help="port to serve on, 1-65535 (default: 7870)")
    parser.add_argument("--listen", action="store_true",
                        help="bind 0.0.0.0 (reachable from the network); needs --auth or --auth-file, and file "
                             "writes then need --allow-writes")
    parser.add_argument("--auth", metavar="USER:PASSWORD",
                        help="require this login (needed with --listen)")
    parser.add_argument("--auth-file", metavar="FILE",
                        help="require a login from this file: one USER:PASSWORD per line, '#' comments")
    parser.add_argument("--allow-writes", action="store_true",
                        help="with --listen: allow actions that write files (saving presets, captions, downloads)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a browser tab (never opened when no display is available)")


def run(args: argparse.Namespace) -> int:
    # Before gradio is imported anywhere: no telemetry or version check calls from a local tool.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from lib_lora.errors import LoraStudioError
    from lib_lora.ui import app

    # Everything the user typed is checked before the (slow) Gradio import and nothing is created for it:
    # a typo in --lora-dir must not silently make a new empty folder.
    port = app.check_port(args.port)
    auth = []
    if args.auth:
        auth.append(app.parse_auth(args.auth))
    if args.auth_file:
        auth.extend(app.read_auth_file(args.auth_file))
    if args.listen and not auth:
        raise LoraStudioError("--listen makes the app reachable from the network: add --auth USER:PASSWORD "
                              "or --auth-file FILE")
    for d in args.lora_dir or []:
        app.existing_folder(d, "--lora-dir")
    if args.tagger_models_dir:
        app.existing_folder(args.tagger_models_dir, "--tagger-models-dir")
    ctx = app.build_context(
        lora_dirs=args.lora_dir or [DEFAULT_LORA_DIR],
        checkpoint_dirs=[],
        tagger_models_dir=args.tagger_models_dir or DEFAULT_TAGGER_DIR,
        presets_file=args.presets_file,
        listen=args.listen,
        allow_writes=args.allow_writes,
    )
    print(app.describe(ctx, listen=args.listen), file=sys.stderr, flush=True)
    app.launch(ctx, port=port, listen=args.listen, open_browser=not args.no_browser, auth=auth or None)
    return 0
