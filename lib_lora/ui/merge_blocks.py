"""The checkpoint merge's block weights in the Merge tab: model A's architecture sets the sliders (26 for
SD1/SD2, 20 for SDXL), merge presets fill them, the sliders become the --block-weights list, and a bar diagram
shows m per block."""

from __future__ import annotations

from pathlib import Path

from lib_lora.blocks import FORMATS
from lib_lora.errors import LoraStudioError
from lib_lora.syntax import format_number
from lib_lora.ui import lora_tab
from lib_lora.ui.files import checkpoint_path, model_arch
from lib_lora.ui.jobs import error_line


def full_count(arch: str | None) -> int:
    return 20 if arch == "sdxl" else 26


def arch_of_a(ctx, a_name) -> tuple[str | None, str]:
    """(arch or None, one line about model A for the tab)."""
    from lib_lora.arch import label
    if not a_name:
        return None, "Pick model A: its architecture sets the block sliders (26 for SD1/SD2, 20 for SDXL)."
    try:
        arch = model_arch(checkpoint_path(ctx, a_name, "A"))
    except Exception as exc:  # noqa: BLE001 — a damaged header is one line here too
        return None, error_line(exc)
    if arch == "unknown":
        return None, f"⚠ Model A '{a_name}' is not an SD1/SD2/SDXL checkpoint; pick a Stable Diffusion model."
    n = full_count(arch)
    return arch, f"Model A is {label(arch)}: {n} block weights (BASE first)."


def slider_visibility(arch: str | None) -> list[bool]:
    shown = set(FORMATS[full_count(arch)])
    return [i in shown for i in range(26)]


def merge_store(ctx):
    """The checkpoint-merge presets: presets.default_merge_store (shipped merge presets + the user file beside
    the LoRA presets file) where the core has it, else the block presets; built once per context."""
    if ctx.merge_presets is None:
        from lib_lora import presets as store_module
        factory = getattr(store_module, "default_merge_store", None)
        if factory is None:
            ctx.merge_presets = ctx.presets
        else:
            name = getattr(store_module, "MERGE_USER_FILE_NAME", None)
            user = Path(ctx.presets_path).with_name(name) if ctx.presets_path and name else None
            try:
                ctx.merge_presets = factory(user_path=user)
            except LoraStudioError:     # an unreadable user file: the shipped merge presets still work
                ctx.merge_presets = factory()
    return ctx.merge_presets


def merge_presets(ctx, arch: str | None) -> list[str]:
    """Presets a merge can take for `arch`: numbers only, the full count (26 / 20) or one less (no BASE).
    A NAME_XL variant is shown as NAME, which means it for SDXL models."""
    from lib_lora.merge.checkpoint import _numbers
    store = merge_store(ctx)
    if store is None:
        return []
    full = full_count(arch)
    out = []
    for name in store.names():
        vals = store.get(name, arch if arch in ("sd1", "sd2", "sdxl") else None)
        if vals and len(vals) in (full, full - 1) and _numbers(",".join(vals)) is not None:
            out.append(name)
    listed = set(out)
    return [n for n in out if not (n.upper().endswith("_XL") and n[:-3] in listed)]


def preset_vector(ctx, preset, arch: str | None, alpha) -> list[float]:
    """The 26 slot values a preset gives for `arch` (BASE from `alpha` when the preset has none)."""
    from lib_lora.merge.checkpoint import resolve_weights
    if not preset:
        raise LoraStudioError("Pick a merge preset first.")
    store = merge_store(ctx)
    if store is None:
        raise LoraStudioError(f"Presets are unavailable: {ctx.presets_problem or 'no presets store'}.")
    return resolve_weights(arch or "sd1", float(alpha), str(preset), None, store)


def block_text(arch: str | None, values) -> str:
    """The sliders (26, slot order) → the --block-weights list of `arch`'s full format (BASE first)."""
    return ",".join(format_number(round(float(values[s]), 6)) for s in FORMATS[full_count(arch)])


def weights_vector(arch, alpha, per_block, values) -> list[float]:
    """m per slot as the merge will use it (for the diagram)."""
    if per_block:
        return [float(v) for v in values]
    return [float(alpha)] * 26


def diagram(arch, alpha, per_block, *values) -> str:
    """Bar diagram of m per block (0 keeps A, 1 takes B), columns as model A's architecture has them."""
    vec = weights_vector(arch, alpha, per_block, values)
    return lora_tab.render_bars([abs(v) for v in vec], None, "m per block: 0 = model A, 1 = model B "
                                + ("(per block)" if per_block else "(alpha everywhere)"), arch=arch or "sd1")
