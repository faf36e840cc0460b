"""Start/stop a fake AUTOMATIC1111 around LoRA Studio for one test (see README.md).

The fake `modules` package goes first on sys.path; the built-in Lora (optional) loads from builtin_lora/
as A1111 loads extensions-builtin; the X/Y/Z script loads from root_scripts/; our extension from the repo
root. `close()` removes every module imported from here, so each test starts from a clean WebUI.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
_OWNED = ("modules", "networks", "extra_networks_lora", "lora_studio_webui", "xyz_grid.py", "lora_script.py",
          "lora_studio.py")

# A few real SD1.5 layers per block (attention + text encoder), so blocks and names are the real ones.
LAYERS = (
    "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k",
    "model.diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k",
    "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k",
    "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn2.to_k",
    "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k",
    "cond_stage_model.transformer.text_model.encoder.layers.0.self_attn.q_proj",
)
# 17-format positions of those blocks: IN01 → 1, IN04 → 3, M00 → 7, OUT03 → 8, OUT11 → 16; BASE → 0.
POS17 = {LAYERS[0]: 1, LAYERS[1]: 3, LAYERS[2]: 7, LAYERS[3]: 8, LAYERS[4]: 16, LAYERS[5]: 0}


def _purge():
    for name in list(sys.modules):
        if name.split(".")[0] in _OWNED or name in _OWNED:
            del sys.modules[name]


class FakeApp:
    def __init__(self):
        self.routes = []

    def get(self, path, **kw):
        def deco(fn):
            self.routes.append(type("Route", (), {"path": path, "endpoint": fn})())
            return fn
        return deco


def a1111_param(model, layer: str) -> torch.nn.Parameter:
    from tests.models import a1111_name
    mod = model.get_submodule(a1111_name(layer))
    return mod.weight


class FakeWebui:
    def __init__(self, tmp_path: Path, builtin: bool = True, seed: int = 0, layers=LAYERS):
        from tests.models import build_model
        _purge()
        self._path = list(sys.path)
        sys.path.insert(0, str(HERE))
        self.builtin = builtin
        self.lora_dir = tmp_path / "Lora"
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        from modules import sd_models, shared
        shared.cmd_opts.lora_dir = str(self.lora_dir)
        shared.cmd_opts.lyco_dir_backcompat = str(tmp_path / "LyCORIS")
        shared.opts.data["lora_studio_presets_file"] = str(tmp_path / "user_presets.txt")
        self.layers = set(layers) if not callable(layers) else None
        include = layers if callable(layers) else (lambda layer: layer in self.layers)
        self.include = include
        self.model = build_model("sd15", include=include, a1111=True, seed=seed)
        shared.sd_model = self.model
        sd_models.model_data.sd_model = self.model
        self.app = None

    # -- life cycle (initialize_rest + before_ui + app_started) -------------------------------------
    def script_files(self):
        files = [(str(HERE), str(HERE / "root_scripts" / "xyz_grid.py"))]
        if self.builtin:
            files.append((str(HERE / "builtin_lora"), str(HERE / "builtin_lora" / "scripts" / "lora_script.py")))
        files.append((str(REPO), str(REPO / "scripts" / "lora_studio.py")))
        return files

    def start(self):
        from modules import extra_networks, script_callbacks, scripts, ui_extra_networks
        scripts.load_scripts(self.script_files())
        ui_extra_networks.initialize()
        extra_networks.initialize()
        script_callbacks.ui_settings_callback()
        script_callbacks.before_ui_callback()
        self.app = FakeApp()
        script_callbacks.app_started_callback(None, self.app)
        return self

    def reload_ui(self):
        from modules import script_callbacks
        script_callbacks.script_unloaded_callback()
        return self.start()

    def close(self):
        sys.path[:] = self._path
        _purge()

    # -- generation -------------------------------------------------------------------------------------
    def processing(self, prompt, **kw):
        from modules import processing, scripts
        return processing.Processing(prompt=prompt, scripts=scripts.ScriptRunner(), **kw)

    def generate(self, prompt, **kw):
        from modules import processing
        p = self.processing(prompt, **kw)
        return p, processing.process_images(p)

    def add_checkpoint(self, name: str, seed: int = 0, loaded: bool = False):
        """A checkpoint in the WebUI's list (sd_models.checkpoints_list): the same layers with the weights of
        `seed`, or, `loaded`, the weights of the model loaded now (which it then is)."""
        from modules import sd_models, shared

        from tests.models import build_model
        src = self.model if loaded else build_model("sd15", include=self.include, a1111=True, seed=seed)
        state = {k: v.detach().clone() for k, v in src.state_dict().items()}
        info = sd_models.CheckpointInfo(str(self.lora_dir.parent / "Stable-diffusion" / name), state,
                                        shorthash=f"{seed:08x}").register()
        if loaded:
            self.model.sd_checkpoint_info = info
            shared.opts.data["sd_model_checkpoint"] = info.title
        return info

    def weight(self, layer: str) -> torch.Tensor:
        return a1111_param(self.model, layer).detach().clone()

    def weights(self) -> dict:
        return {layer: self.weight(layer) for layer in LAYERS}


def write_lora(webui: FakeWebui, name: str, seed: int = 1, subdir: str = "", **meta) -> Path:
    from safetensors.torch import save_file

    from tests.factory import make_lora
    sd, md = make_lora("sd15", family="kohya", algo="lora", rank=4, seed=seed,
                       layers=webui.include, metadata=dict(meta) if meta else True)
    if "ss_output_name" not in meta:
        md["ss_output_name"] = name
    folder = webui.lora_dir / subdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.safetensors"
    save_file(sd, os.fspath(path), metadata=md)
    return path
