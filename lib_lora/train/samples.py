"""Sample images during training, as sd-scripts' `--sample_prompts` makes them.

The prompt file is sd-scripts' format: a .txt with one prompt per line (`#` comments, blank lines skipped) and
options after " --": `--n` negative prompt, `--w`/`--h` size, `--s` steps, `--l` CFG scale, `--d` seed,
`--ss` sampler; or a .toml (`[[prompt]]` tables) / .json (a list of objects) with the keys prompt,
negative_prompt, width, height, sample_steps, scale, seed, sample_sampler (.toml: a [prompt] table of shared
values with one [[prompt.subset]] per prompt). Images are rendered with
`lib_lora.sd.sample` on the model being trained (the LoRA active, in eval mode) and saved as
`<output_dir>/sample/<name>_e000003_00_<timestamp>_<seed>.png` (`_000300_` for step samples).

Sampling never changes the run: it uses its own generator, no gradients, and restores the network's train
mode; the trainer reseeds the global RNG before every batch anyway.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from lib_lora.errors import LoraStudioError

# sd-scripts' names that are the samplers lib_lora.sd.sample implements (k_euler is the same Euler there)
SAMPLER_ALIASES = {"euler": "euler", "k_euler": "euler", "ddim": "ddim"}


def sampler_name(name: str, where: str = "sample_sampler") -> str:
    low = (name or "ddim").strip().lower()
    if low not in SAMPLER_ALIASES:
        raise LoraStudioError(f"{where} '{name}' is not available in LoRA Studio; use ddim or euler (k_euler).")
    return SAMPLER_ALIASES[low]


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    steps: int = 30
    scale: float = 7.5
    seed: int | None = None
    sampler: str | None = None


def _from_line(line: str, where: str) -> SamplePrompt:
    parts = line.split(" --")
    p = SamplePrompt(parts[0].strip())
    for part in parts[1:]:
        key, _, value = part.strip().partition(" ")
        key, value = key.lower(), value.strip()     # sd-scripts matches the option letters case-insensitively
        try:
            if key == "n":
                p.negative = value
            elif key == "w":
                p.width = int(value)
            elif key == "h":
                p.height = int(value)
            elif key == "s":
                p.steps = int(value)
            elif key == "l":
                p.scale = float(value)
            elif key == "d":
                p.seed = int(value)
            elif key == "ss":
                p.sampler = sampler_name(value, f"{where}: --ss")
            # sd-scripts ignores options it does not know (--am, --cn, …): so do we, they change no image here
        except ValueError:
            raise LoraStudioError(f"{where}: --{key} {value!r} is not a number; write e.g. --{key} 512.") from None
    return p


def _from_dict(d: dict, where: str) -> SamplePrompt:
    if not isinstance(d, dict) or not str(d.get("prompt", "")).strip():
        raise LoraStudioError(f"{where}: every entry needs a 'prompt'.")
    try:
        return SamplePrompt(
            str(d["prompt"]), str(d.get("negative_prompt", "") or ""), int(d.get("width", 512)),
            int(d.get("height", 512)), int(d.get("sample_steps", 30)), float(d.get("scale", 7.5)),
            None if d.get("seed") is None else int(d["seed"]),
            None if d.get("sample_sampler") is None else sampler_name(str(d["sample_sampler"]), where))
    except (TypeError, ValueError) as exc:
        raise LoraStudioError(f"{where}: a value is not a number ({exc}); fix that entry.") from None


def read_prompts(path: str) -> list[SamplePrompt]:
    """The prompts of a sample_prompts file (.txt, .toml or .json), checked; one clear error otherwise."""
    from lib_lora.fileio import read_small_text

    where = f"sample_prompts '{path}'"
    if not os.path.isfile(path):
        raise LoraStudioError(f"{where} does not exist; give the path of a prompt file (one prompt per line).")
    if path.lower().endswith(".toml"):
        from lib_lora.train.config import read_toml_file

        # sd-scripts' form: a [prompt] table of shared values and [[prompt.subset]] tables, one per image
        table = read_toml_file(path, "sample_prompts").get("prompt")
        if not isinstance(table, dict) or not isinstance(table.get("subset"), list):
            raise LoraStudioError(f"{where}: write a [prompt] table with one [[prompt.subset]] per prompt.")
        shared = {k: v for k, v in table.items() if k != "subset"}
        prompts = [_from_dict({**shared, **sub}, where) for sub in table["subset"]]
    elif path.lower().endswith(".json"):
        try:
            data = json.loads(read_small_text(path, "sample_prompts"))
        except ValueError as exc:
            raise LoraStudioError(f"{where}: not valid JSON ({exc}); fix that line.") from None
        prompts = [_from_dict(e, where) for e in (data if isinstance(data, list) else [data])]
    else:
        text = read_small_text(path, "sample_prompts")
        prompts = [_from_line(ln.strip(), where) for ln in text.splitlines()
                   if ln.strip() and not ln.strip().startswith("#")]
    if not prompts:
        raise LoraStudioError(f"{where} has no prompt; write one prompt per line.")
    for i, p in enumerate(prompts):
        if p.width % 8 or p.height % 8 or min(p.width, p.height) < 64:
            raise LoraStudioError(f"{where}: prompt {i + 1} size {p.width}x{p.height} is not a multiple of 8 "
                                  "(at least 64); use e.g. --w 512 --h 512.")
        if not 1 <= p.steps <= 1000:
            raise LoraStudioError(f"{where}: prompt {i + 1} has --s {p.steps}; use 1 to 1000 steps.")
    return prompts


def due(cfg, epoch: int | None, step: int) -> bool:
    """sd-scripts' rule: step 0 only with sample_at_first; sample_every_n_epochs, when set, replaces
    sample_every_n_steps; step samples are not taken at an epoch's end."""
    if not cfg.sample_prompts:
        return False
    if step == 0 and epoch is None:
        return bool(cfg.sample_at_first)
    if cfg.sample_every_n_epochs:
        return epoch is not None and epoch % cfg.sample_every_n_epochs == 0
    if cfg.sample_every_n_steps:
        return epoch is None and step % cfg.sample_every_n_steps == 0
    return False


def check_model(model) -> None:
    missing = [p for p in ("unet", "te", "vae") if p not in getattr(model, "parts", ())]
    if missing or not hasattr(model, "decode_latents"):
        raise LoraStudioError("sample_prompts needs the whole model (U-Net, text encoder, VAE decoder); this one "
                              f"lacks {', '.join(missing) or 'a VAE decoder'}; remove sample_prompts.")


def render(model, net, cfg, prompts: list[SamplePrompt], run_seed: int, epoch: int | None, step: int,
           log=print) -> list[str]:
    """All prompts as PNGs under output_dir/sample; the paths. The network is in eval mode meanwhile."""
    from lib_lora.sd.sample import generate

    folder = os.path.join(cfg.output_dir, "sample")
    os.makedirs(folder, exist_ok=True)
    default_sampler = sampler_name(cfg.sample_sampler)
    was_training = net.training
    net.eval()
    out = []
    try:
        for i, p in enumerate(prompts):
            # sd-scripts draws an unseeded prompt's seed at random; a fixed one per prompt keeps epochs comparable
            seed = p.seed if p.seed is not None else (run_seed + i) % (1 << 31)
            image = generate(model, p.prompt, p.negative, seed=seed, steps=p.steps, cfg=p.scale, width=p.width,
                             height=p.height, sampler=p.sampler or default_sampler, clip_skip=cfg.clip_skip or 1,
                             max_length=cfg.max_token_length or 75)
            num = f"e{epoch:06d}" if epoch is not None else f"{step:06d}"
            stem = (cfg.output_name + "_") if cfg.output_name else ""
            path = os.path.join(folder, f"{stem}{num}_{i:02d}_{time.strftime('%Y%m%d%H%M%S')}_{seed}.png")
            _save_png(image, path)
            out.append(path)
    finally:
        net.train(was_training)
    log(f"sample images: {len(out)} in {folder}")
    return out


def _save_png(image, path: str) -> None:
    from lib_lora import fileio

    fileio.atomic_write(path, lambda f: image.save(f, format="PNG"), overwrite=False)
