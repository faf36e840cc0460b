"""`python -m lib_lora ui`: the standalone LoRA Studio app (every tab, outside the WebUI)."""

from __future__ import annotations

import argparse
import os
import sys

HELP = "start the LoRA Studio app in the browser (binds to 127.0.0.1 unless --listen)"

DEFAULT_LORA_DIR = os.path.join("models", "Lora")
DEFAULT_CKPT_DIR = os.path.join("models", "Stable-diffusion")
DEFAULT_TAGGER_DIR = os.path.join("models", "TaggerModels")
PRESETS_FILE_NAME = "lora_studio_presets.txt"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lora-dir", action="append", metavar="DIR",
                        help=f"LoRA/LyCORIS folder; repeat for several (default: ./{DEFAULT_LORA_DIR})")
    parser.add_argument("--ckpt-dir", action="append", metavar="DIR",
                        help=f"checkpoint folder; repeat for several (default: ./{DEFAULT_CKPT_DIR})")
    parser.add_argument("--tagger-models-dir", metavar="DIR",
                        help=f"WD14 tagger models folder (default: ./{DEFAULT_TAGGER_DIR})")
    parser.add_argument("--presets-file", metavar="FILE",
                        help=f"user block-weight presets file (default: {PRESETS_FILE_NAME} in the first LoRA "
                             "folder, so pointing --lora-dir at a WebUI's models/Lora shares its presets)")
    parser.add_argument("--port", type=int, default=7870, help="port to serve on (default: 7870)")
    parser.add_argument("--listen", action="store_true",
                        help="bind 0.0.0.0 (reachable from the network); file writes then need --allow-writes")
    parser.add_argument("--allow-writes", action="store_true",
                        help="with --listen: allow actions that write files (saving presets, captions, downloads)")
    parser.add_argument("--no-browser", action="store_true",
                        help="do not open a browser tab (never opened when no display is available)")


def run(args: argparse.Namespace) -> int:
    # Before gradio is imported anywhere: no telemetry or version check calls from a local tool.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from lib_lora.ui import app

    ctx = app.build_context(
        lora_dirs=args.lora_dir or [DEFAULT_LORA_DIR],
        checkpoint_dirs=args.ckpt_dir or [DEFAULT_CKPT_DIR],
        tagger_models_dir=args.tagger_models_dir or DEFAULT_TAGGER_DIR,
        presets_file=args.presets_file,
        listen=args.listen,
        allow_writes=args.allow_writes,
    )
    print(app.describe(ctx, listen=args.listen), file=sys.stderr, flush=True)
    app.launch(ctx, port=args.port, listen=args.listen, open_browser=not args.no_browser)
    return 0
