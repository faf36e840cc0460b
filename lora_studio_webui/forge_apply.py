"""Block weights on Forge through Forge's own LoRA patching (docs/spec/webui_integration.md §10).

Forge turns a LoRA state dict into patches keyed by parameter names (`diffusion_model.<ldm path>.weight` for
the U-Net, `clip_l.…`/`clip_g.…` for the text encoders) and records them with
`add_patches(filename=, patches=, strength_patch=, strength_model=, online_mode=)` on clones of
`sd_model.forge_objects_original.unet/clip`; the weights are merged later, once per render. One strength per
call, so we split each LoRA's patches by block and call `add_patches` once per distinct effective strength:
te × w[BASE] for the text encoders, unet × w[block] in the table, unet outside it (time_embed, out, …).

Forge's patcher keys its patch sets (and its "already merged" check) by (filename, strength_patch,
strength_model, online_mode), so each group gets its own identifier naming file, tag position and blocks:
two groups never overwrite each other, and a changed block split always triggers a re-merge.

Everything Forge-specific is feature-tested (forge.py); when something is missing we say so once and leave the
tags to Forge's built-in Lora (te/unet only). Nothing here raises into Forge.
"""

from __future__ import annotations

import os
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from . import env
from .forge import backend, builtin_handler, model_arch, model_problem, startup_problem

HASH_PREFIX = "lora_studio:"
EMPTY_HASH = str([])                     # what Forge's sd_model starts with and its built-in sets for no LoRA
UNMATCHED_LIMIT = 12                     # Forge's own rule: more unmatched keys = LoRA for another model
FALLBACK = ("block weights cannot be applied on this Forge version ({why}); LoRAs are applied by Forge's "
            "built-in Lora with te/unet weights only. Update LoRA Studio or Forge.")


# -- grouping ------------------------------------------------------------------------------------------------
def slot_of_key(key) -> int | None:
    """Block slot of a Forge U-Net patch key (`diffusion_model.<ldm path>.weight`, or a (key, offset, …) tuple)."""
    from lib_lora.blocks import slot_of_layer
    name = key[0] if isinstance(key, tuple) else key
    if not isinstance(name, str) or not name.startswith("diffusion_model."):
        return None
    return slot_of_layer("model." + name)


def group_unet(patches: dict, active) -> dict:
    """U-Net patches split by effective strength: {strength: (slots in the group, {key: patch})}.
    Slot -1 stands for keys outside the block table (they get `unet`)."""
    from lib_lora.activate import strength

    out: dict = {}
    for key, patch in patches.items():
        slot = slot_of_key(key)
        slots, group = out.setdefault(strength(active, slot), (set(), {}))
        slots.add(-1 if slot is None else slot)
        group[key] = patch
    return out


@dataclass
class ForgeLora:
    """What Forge applies of one file (the `network` of its ActiveLora): patches keyed as add_patches takes them."""
    name: str
    path: Path
    unet: dict
    clip: dict


def _label(slots) -> str:
    from lib_lora.blocks import BLOCK_NAMES
    return "+".join("outside" if s < 0 else BLOCK_NAMES[s] for s in sorted(slots))


class ForgeApplier:
    """Our `lora`/`lyco` activation on Forge (used by handler.LoraStudioNetwork when forge.active())."""

    def __init__(self, sd_keep: int = 4):
        self.sd_keep = sd_keep
        self._state_dicts: OrderedDict = OrderedDict()
        self._te_sig = ()
        self.last_calls: list = []                # (part, identifier, strength, n keys) of the last build

    def notice(self, p, key: str, message: str) -> None:
        """Once per generation and kind: kept on p itself (an id(p) could be reused by the next generation)."""
        said = getattr(p, "_lora_studio_notices", None) or frozenset()
        if key not in said:
            try:
                p._lora_studio_notices = said | {key}
            except Exception:
                pass
            env.emit(p, message)

    def state_dict(self, path, load_file, allow_pickle: bool = False):
        """(Forge's state dict of the file without the keys of damaged modules, damage message or None):
        damaged modules (NaN/Inf, rank 0, bad shapes) are left out as the core leaves them out
        (LoraNetwork.damaged_keys), so a partly damaged LoRA never puts NaN into the model on Forge either."""
        st = os.stat(path)
        key = (str(path), st.st_mtime_ns, st.st_size)
        hit = self._state_dicts.get(key)
        if hit is None:
            sd = load_file(str(path), safe_load=True)
            damaged, message = _damage(path, allow_pickle)
            if damaged:
                sd = {k: v for k, v in sd.items() if k not in damaged}
            hit = (sd, message)
            self._state_dicts[key] = hit
            while len(self._state_dicts) > self.sd_keep:
                self._state_dicts.popitem(last=False)
        else:
            self._state_dicts.move_to_end(key)
        return hit

    # -- entry point -------------------------------------------------------------------------------------
    def activate(self, p, params_list) -> None:
        try:
            self._activate(p, list(params_list))
        except Exception as e:
            traceback.print_exc()
            env.emit(p, f"internal error while applying LoRAs on Forge ({type(e).__name__}: {e}); "
                        f"this image is made without LoRAs.")
            try:
                self._reset(p, getattr(p, "sd_model", None) or env.loaded_model())
            except Exception:
                traceback.print_exc()

    def _reset(self, p, sd) -> None:
        if sd is not None and getattr(sd, "current_lora_hash", None) != EMPTY_HASH:
            sd.forge_objects.unet = sd.forge_objects_original.unet
            sd.forge_objects.clip = sd.forge_objects_original.clip
            sd.forge_objects_after_applying_lora = sd.forge_objects.shallow_copy()
            sd.current_lora_hash = EMPTY_HASH
        self._sync_conds(p, ())

    def _fallback(self, p, params_list, why: str) -> None:
        self.notice(p, "fallback", FALLBACK.format(why=why))
        h = builtin_handler()
        if h is None:
            try:                               # nobody applies LoRAs now: at least drop our earlier patches
                self._reset(p, getattr(p, "sd_model", None) or env.loaded_model())
            except Exception:
                pass
            return
        from modules import extra_networks
        from lib_lora import syntax
        plain = []
        for params in params_list:
            tag = syntax.parse_items(params.items)
            if tag.ok and tag.name:
                plain.append(extra_networks.ExtraNetworkParams(
                    items=[tag.name, syntax.format_number(tag.te), syntax.format_number(tag.unet_multiplier)]))
        h.activate(p, plain)

    def _activate(self, p, params_list) -> None:
        from lib_lora.activate import activate_tag, strength
        from lib_lora.errors import LoraStudioError
        from lib_lora.patcher import LoraReport

        from . import infotext
        from .engine import ENGINE, Activation, applied_line, batch_seed, tag_seed

        t0 = time.perf_counter()
        sd = getattr(p, "sd_model", None) or env.loaded_model()
        why = startup_problem() or model_problem(sd)
        if why:
            self._fallback(p, params_list, why)
            return
        load_lora, keys_unet, keys_clip, load_file = backend()
        if not params_list:
            self._reset(p, sd)
            infotext.clear(p)
            return
        act = Activation()
        arch = model_arch(sd)
        orig = sd.forge_objects_original
        unet0, clip0 = getattr(orig, "unet", None), getattr(orig, "clip", None)
        # Fresh key maps: Forge's functions default to one shared dict across calls.
        unet_keys = keys_unet(unet0.model, {}) if unet0 is not None else {}
        clip_keys = keys_clip(clip0.cond_stage_model, {}) if clip0 is not None else {}
        online = _online_mode(unet0)
        presets = ENGINE.presets()
        allow_pickle = bool(env.opt(env.PREFIX + "allow_pickle", False))
        seed = batch_seed(p)
        plan = []                                  # (part, identifier, strength, patches)
        for index, tag, entry in ENGINE.found_tags(params_list, act):
            if entry.path.suffix.lower() != ".safetensors" and not allow_pickle:
                act.warnings.append(f"`{tag.name}`: {entry.path.name} is a pickle file; enable \"Allow loading "
                                    f".pt/.ckpt LoRA files\" in Settings → LoRA Studio to use it (skipped)")
                continue
            if tag.start is not None or tag.stop is not None:
                self.notice(p, "schedule", f"start=/stop= are not supported on Forge (it merges LoRA weights once "
                                           f"per image); `{tag.name}` is applied for all steps.")
            if tag.dyn is not None:
                self.notice(p, "dyn", f"dyn= is not supported on Forge; `{tag.name}` is applied at full rank.")
            try:
                lora_sd, damage = self.state_dict(entry.path, load_file, allow_pickle)
            except Exception as e:
                msg = str(e) if isinstance(e, LoraStudioError) else f"{type(e).__name__}: {e}"
                act.warnings.append(f"`{tag.name}`: cannot be loaded ({msg}); skipped")
                continue
            p_unet, rest = load_lora(lora_sd, unet_keys) if unet_keys else ({}, lora_sd)
            p_clip, rest = load_lora(rest, clip_keys) if clip_keys else ({}, rest)
            if damage:
                act.warnings.append(damage)
                if not (p_unet or p_clip):          # every module damaged: that line says it all
                    continue
            if len(rest) > UNMATCHED_LIMIT or not (p_unet or p_clip):
                act.warnings.append(f"`{tag.name}` does not match this model ({len(rest)} keys unmatched; a LoRA "
                                    f"for another model type?); skipped")
                continue
            if rest:
                env.log.info("`%s`: %d keys not matched: %s", tag.name, len(rest), sorted(rest)[:5])
            # without a block table (Flux, SD3) nothing is block-weighted: no slots, no unlisted warning
            slots = [slot_of_key(k) for k in p_unet] + [0] * len(p_clip) if arch is not None else []
            a = activate_tag(tag, ForgeLora(tag.name, entry.path, p_unet, p_clip), presets, arch,
                             tag_seed(seed, index, tag.name), act.warnings, entry=entry, slots=slots)
            if a is None:
                continue
            if a.active.blocks is not None and arch is None:
                act.warnings.append(f"`{tag.name}`: block weights need an SD1/SD2/SDXL U-Net; this model has no "
                                    f"block table, so it is applied without them")
                a.active.blocks = None
            base = f"{entry.path}@{entry.path.stat().st_mtime_ns}#lora_studio:{index}"
            te_strength = strength(a.active, 0, is_te=True)
            if p_clip and te_strength != 0.0:
                plan.append(("clip", f"{base}:BASE", te_strength, p_clip))
            for s, (group_slots, group) in sorted(group_unet(p_unet, a.active).items()):
                if s != 0.0:
                    plan.append(("unet", f"{base}:{_label(group_slots)}", s, group))
            a.report = LoraReport(tag.name, applied=len(p_unet) + len(p_clip), active=a.active)
            act.loras.append(a)
        target = HASH_PREFIX + str([(part, ident, s, online) for part, ident, s, _ in plan])
        if not plan:
            self._reset(p, sd)
        elif getattr(sd, "current_lora_hash", None) != target:
            self._build(sd, plan, online, act)
            sd.current_lora_hash = target
        self._sync_conds(p, tuple((ident, s) for part, ident, s, _ in plan if part == "clip"))
        for w in act.warnings:
            env.emit(p, w)
        if act.loras:
            infotext.record(p, act)
            line = (f"[LoRA Studio] applied on Forge {', '.join(applied_line(a) for a in act.loras)}: "
                    f"{len(plan)} patch group(s)")
            # Forge activates again for every batch and the hires pass: say it once per generation and plan
            if getattr(p, "_lora_studio_applied_line", None) != line:
                try:
                    p._lora_studio_applied_line = line
                except Exception:
                    pass
                print(f"{line} in {time.perf_counter() - t0:.2f}s")
        else:
            infotext.clear(p)
        ENGINE.last = act

    def _build(self, sd, plan, online, act) -> None:
        """Clones of the originals + our patch groups, stored where Forge's built-in stores its result."""
        orig = sd.forge_objects_original
        objs = {part: getattr(orig, part).clone() for part in {part for part, *_ in plan}}
        calls, missed = [], 0
        for part, ident, s, group in plan:
            loaded = objs[part].add_patches(filename=ident, patches=group, strength_patch=s, strength_model=1.0,
                                            online_mode=online)
            n = len(loaded) if loaded is not None else len(group)
            missed += len(group) - n
            calls.append((part, ident, s, n))
        if missed:
            act.warnings.append(f"{missed} LoRA key(s) have no matching parameter in this model and were skipped")
        # Assign only once every call succeeded: a failure above leaves Forge's objects as they were.
        fo = sd.forge_objects
        fo.unet = objs.get("unet", orig.unet)
        fo.clip = objs.get("clip", orig.clip)
        sd.forge_objects_after_applying_lora = fo.shallow_copy()
        self.last_calls = calls

    def _sync_conds(self, p, sig: tuple) -> None:
        """Forge caches conditioning by prompt text (lists of 2 or 3 items): drop them when the text encoder's
        patches changed while the text did not (random letters per batch, edited presets)."""
        if sig != self._te_sig:
            from .engine import drop_cached_conds
            drop_cached_conds(p)
        self._te_sig = sig


def _damage(path, allow_pickle: bool) -> tuple[frozenset, str | None]:
    """(file keys of damaged modules, the core's one-line damage message) by the core's own load-time checks.
    A file the core cannot read at all (another model family Forge may still support) has none."""
    from lib_lora.network import load_network
    try:
        net = load_network(path, allow_pickle=allow_pickle, allow_empty=True)
    except Exception:
        return frozenset(), None
    return net.damaged_keys, net.damage_message


def _online_mode(unet) -> bool:
    """Forge's rule: online LoRA only when asked for and the U-Net is stored quantised."""
    try:
        from backend.args import dynamic_args
        online = bool(dynamic_args.get("online_lora", False))
    except Exception:
        return False
    try:
        import torch
        if unet is None or unet.model.storage_dtype in (torch.float32, torch.float16, torch.bfloat16):
            return False
    except Exception:
        return False
    return online


APPLIER = ForgeApplier()
