"""The AlwaysVisible script: checks at every generation that `<lora>` still reaches LoRA Studio."""

from __future__ import annotations

from modules import scripts

from . import env


class LoraStudioScript(scripts.Script):
    def title(self):
        return "LoRA Studio"

    def show(self, is_img2img):
        return scripts.AlwaysVisible

    def ui(self, is_img2img):
        from . import block_sliders
        return block_sliders.build(is_img2img)   # per-block sliders for the tag under the cursor

    def process(self, p, *args):
        from . import forge
        if forge.active() and not forge.supported():
            return
        from . import handler
        try:
            handler.verify(p)
        except Exception as e:          # never block a generation
            env.emit(p, f"could not check the `lora` registration: {e}")
        from . import xyz_merge
        try:
            xyz_merge.process(p)        # X/Y/Z merge cells: this cell's live merge, or the grid's end
        except Exception as e:
            env.emit(p, f"merge grid: {type(e).__name__}: {e}")
