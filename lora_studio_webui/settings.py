"""Settings section "LoRA Studio" (keys prefixed `lora_studio_`, never the built-in's `lora_*` keys)."""

from __future__ import annotations

from . import env

SECTION = ("lora_studio", "LoRA Studio")


def options():
    import gradio as gr
    from modules import shared
    from .engine import DENSE_CHOICES, default_presets_path
    O = shared.OptionInfo
    return {
        env.PREFIX + "take_over": O(True, "Handle <lora:…> and <lyco:…> tags with LoRA Studio (block weights, presets)")
        .info("off: the built-in Lora extension handles them, without block weights").needs_reload_ui(),
        env.PREFIX + "extra_dirs": O("", "Extra LoRA folders, besides --lora-dir and --lyco-dir-backcompat",
                                     gr.Textbox, {"lines": 2}).info("one folder per line"),
        env.PREFIX + "cache_mb": O(-1, "Delta cache size (MB; -1 = automatic, 0 = off)", gr.Number, {"precision": 0})
        .info("memory for faster weight, preset and X/Y/Z changes. A kept delta takes as much memory as the weights "
              "it changes (in their dtype on fp16/bf16 models) and makes a change of its layer one add (~1.5× a "
              "memory copy instead of 3-9×). 0 = the built-in Lora's memory (the backups only): every LoRA is "
              "rewritten from its factors at each change. When a LoRA does not fit, the part that fits is kept "
              "and reused, the rest is rewritten from factors. Automatic = half of the free memory of the device "
              "the weights are on (RAM on CPU, VRAM on GPU), re-read at every generation"),
        env.PREFIX + "dense_lowrank": O("automatic", "Keep plain LoRA/LoCon deltas in the delta cache too",
                                        gr.Radio, {"choices": list(DENSE_CHOICES)})
        .info("on: from a LoRA's second generation on, a change is one add per layer where the cache has room "
              "(2-5× faster on fp16/bf16 models) for as much memory as the weights it changes; off: always "
              "rewritten from their factors (a rank-r product per layer, no memory beyond the backups); automatic: "
              "on for fp16/bf16 weights only (on fp32 weights the factor product is already about as fast). "
              "LoHa, LoKr and the rest use the cache either way"),
        env.PREFIX + "presets_file": O("", "User presets file (LoRA Block Weight format)", gr.Textbox)
        .info(f"empty: {default_presets_path()}"),
        env.PREFIX + "allow_pickle": O(False, "Allow loading .pt/.ckpt LoRA files (pickle can run code)"),
        env.PREFIX + "tagger_image_dirs": O("", "Tagger: folders it may read images from and write captions into",
                                            gr.Textbox, {"lines": 2})
        .info("one folder per line; empty: the LoRA and checkpoint folders").needs_reload_ui(),
        env.PREFIX + "ui_warnings": O(False, "Show LoRA Studio warnings as pop-ups in the web UI")
        .info("they always go to the console and under the generated image"),
    }


def on_ui_settings():
    from modules import shared
    for key, info in options().items():
        info.section = SECTION
        shared.opts.add_option(key, info)
