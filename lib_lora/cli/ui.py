"""`python -m lib_lora ui`: the standalone LoRA Studio app (every tab, outside the WebUI)."""

from __future__ import annotations

import argparse
import os
import sys

from lib_lora.options import DEFAULT_IMAGE_DIR, DEFAULT_LORA_DIR, AppOptions, add_arguments as add_options, from_args
from lib_lora.options import DEFAULT_TAGGER_MODELS_DIR as DEFAULT_TAGGER_DIR

HELP = "start the LoRA Studio app in the browser (binds to 127.0.0.1 unless --listen)"
__all__ = ["HELP", "DEFAULT_LORA_DIR", "DEFAULT_TAGGER_DIR", "DEFAULT_IMAGE_DIR", "add_arguments", "run",
           "build_context"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_options(parser, AppOptions)


def run(args: argparse.Namespace) -> int:
    # Before gradio is imported anywhere: no telemetry or version check calls from a local tool.
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from lib_lora.ui import app

    o = from_args(AppOptions, args)
    ctx = build_context(o)
    print(app.describe(ctx, listen=o.listen), file=sys.stderr, flush=True)
    app.launch(ctx, port=o.port, listen=o.listen, open_browser=o.open_browser, auth=_logins(o) or None)
    return 0


def _logins(o: AppOptions) -> list[tuple[str, str]]:
    from lib_lora.ui import app
    auth = []
    if o.auth:
        auth.append(app.parse_auth(o.auth))
    if o.auth_file:
        auth.extend(app.read_auth_file(o.auth_file))
    return auth


def build_context(o: AppOptions):
    """The app's UiContext from its options. Everything the user typed is checked before the (slow) Gradio
    import and nothing is created for it: a typo in --lora-dir must not silently make a new empty folder;
    only the documented defaults are created."""
    from lib_lora.errors import LoraStudioError
    from lib_lora.ui import app

    app.check_port(o.port)
    if not _logins(o) and o.listen:
        raise LoraStudioError("--listen makes the app reachable from the network: add --auth USER:PASSWORD "
                              "or --auth-file FILE")
    for d in o.lora_dir:
        app.existing_folder(d, "--lora-dir")
    for d in o.image_dir:
        app.existing_folder(d, "--image-dir")
    for d in o.checkpoint_dir:
        app.existing_folder(d, "--checkpoint-dir")
    from lib_lora.options import DEFAULT_CHECKPOINT_DIR
    ckpts = o.checkpoint_dir or ([DEFAULT_CHECKPOINT_DIR] if os.path.isdir(DEFAULT_CHECKPOINT_DIR) else [])
    if o.tagger_models_dir:
        app.existing_folder(o.tagger_models_dir, "--tagger-models-dir")
    return app.build_context(
        lora_dirs=o.lora_dir or [DEFAULT_LORA_DIR],
        checkpoint_dirs=ckpts,
        tagger_models_dir=o.tagger_models_dir or DEFAULT_TAGGER_DIR,
        image_dirs=o.image_dir or [DEFAULT_IMAGE_DIR],
        presets_file=o.presets_file,
        listen=o.listen,
        allow_writes=o.allow_writes,
    )
