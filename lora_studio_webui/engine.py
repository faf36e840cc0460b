"""What a generation needs from the core: tags → loaded networks → one Patcher per loaded model.

Coexistence with the built-in Lora (docs/spec/webui_integration.md §4, rules a–f):
(a) we own the tag, so the built-in's `loaded_networks` stays empty and its patched forwards do nothing;
(b) if the built-in holds networks anyway (another extension called it), we refuse and say so;
    before our first patch we make it put back any weights it merged earlier, so its backups never hold our delta
    and it never restores over our weights;
(c)/(e)/(f) are the Patcher's job (exact backups, per-layer keys incl. the block vector, fp32 deltas);
(d) `forget()` runs from on_model_loaded: weights may have been reloaded in place, our backups are stale.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import zlib
from dataclasses import dataclass, field

from lib_lora.errors import LoraStudioError
from lib_lora.network import NetworkCache
from lib_lora.syntax import format_number

from . import env
from .library import Library

FIELD_BLOCKS = "LoRA Studio blocks"      # infotext: resolved block weights per LoRA
FIELD_HASHES = "Lora hashes"             # same key and format as the built-in, so its paste handler works


@dataclass
class Activation:
    """The last activation: one `lib_lora.activate.Activated` per applied tag (its `entry` is the library file,
    its `report` the patcher's), the warnings said, the patcher's report and the time taken."""
    loras: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    report: object = None
    seconds: float = 0.0

    @property
    def entries(self) -> list:
        """(LoraTag, ResolvedBlocks, library file) per applied tag, as the infotext records them."""
        return [(a.tag, a.blocks, a.entry) for a in self.loras]


def applied_line(a) -> str:
    """`name (N modules, te 1, unet 0.8, blocks preset face)` for the console line of an activation."""
    n = a.report.applied if a.report is not None else 0
    return (f"{a.name} ({n} modules, te {format_number(a.active.te)}, unet {format_number(a.active.unet)}"
            + (f", blocks {a.blocks.source}" if a.blocks.source else "") + ")")


def batch_seed(p) -> int:
    """Seed of the current batch: random letters are drawn once per batch and the hires pass
    (same batch, same seeds) draws the very same values."""
    seeds = getattr(p, "seeds", None) or getattr(p, "all_seeds", None) or [getattr(p, "seed", 0)]
    try:
        return int(seeds[0])
    except (TypeError, ValueError, IndexError):
        return 0


def tag_seed(seed: int, index: int, name: str) -> int:
    return (seed * 1_000_003 + zlib.crc32(f"{index}:{name}".encode())) & 0xFFFF_FFFF


class Engine:
    def __init__(self):
        self.lock = threading.RLock()
        self.library = Library(env.lora_dirs)
        # loaded files by (path, mtime, size): X/Y/Z epoch and A/B grids reload the same few files
        self.networks = NetworkCache(8)
        self._presets = None
        self._presets_path = None
        self._presets_mtime = None
        self.patcher = None
        self.host_model = None             # the sd_model the patcher's Host was built from
        self.last = Activation()
        self.active = []                   # ActiveLora list currently applied
        self.has_schedule = False
        self._step_state = None
        self._stamps = None
        self._te_sig = ()                  # text-encoder state the WebUI's conditioning cache was filled with
        # Called after each of our writes: a live merge (live_merge.py) under our LoRAs re-stamps its tensors,
        # so that our in-place writes never read as "another checkpoint was loaded".
        self.after_write = None

    # -- shared state ---------------------------------------------------------------------------
    def presets(self):
        from lib_lora.presets import PresetStore
        path = str(env.opt(env.PREFIX + "presets_file", "") or "") or str(default_presets_path())
        mtime = _mtime(path)
        if self._presets is None or self._presets_path != path:
            self._presets = PresetStore(user_path=path)
            self._presets_path = path
        elif mtime != self._presets_mtime and mtime is not None:
            self._presets.reload()          # edited outside (another tool, LBW file): pick it up, no restart
        self._presets_mtime = mtime
        return self._presets

    def _patcher_for(self, sd_model):
        from lib_lora.delta_cache import AUTO
        from lib_lora.host import Host
        from lib_lora.patcher import Patcher
        if self.patcher is None or self.host_model is not sd_model:
            if self.patcher is not None:
                self.restore()
            self.patcher = Patcher(Host.from_a1111(sd_model), cache_budget())
            self.host_model = sd_model
        else:
            budget = cache_budget()
            if budget != (AUTO if self.patcher.cache.auto else self.patcher.cache.max_bytes):
                self.patcher.cache.resize(budget)      # the setting changed
        self.patcher.dense_lowrank = dense_lowrank()   # the setting, re-read like the budget
        return self.patcher

    def _stamp(self) -> None:
        """Remember each layer tensor's identity and in-place version counter after our own writes."""
        self._stamps = _stamps(self.patcher.host) if self.patcher is not None else None
        if self.after_write is not None:
            self.after_write()

    def on_model_loaded(self, sd_model) -> None:
        """A1111 also fires this after a VAE reload, when U-Net/TE weights (maybe patched by us) are untouched:
        keep our backups then. Anything else (new model, weights loaded in place) → forget."""
        with self.lock:
            if self.patcher is not None and sd_model is self.host_model and self._stamps is not None:
                from lib_lora.host import Host
                if _stamps(Host.from_a1111(sd_model)) == self._stamps:
                    return
            self.forget()

    def forget(self, *_):
        """The model's weights were (re)loaded: our backups and layer map are stale (never restore them)."""
        with self.lock:
            self._stamps = None
            if self.patcher is not None:
                try:
                    self.patcher.forget()
                except Exception:
                    pass
            self.patcher, self.host_model, self.active, self.has_schedule = None, None, [], False

    def restore(self):
        with self.lock:
            if self.patcher is not None:
                self.patcher.restore()
                self._stamp()
            self.active, self.has_schedule, self._step_state = [], False, None
            self._te_sig = ("restored",)    # unknown to the cache owner: the next activation re-syncs
            self.last = Activation()

    # -- the built-in Lora (coexistence) ------------------------------------------------------
    def flush_builtin(self, sd_model, clear_loaded: bool = False) -> str | None:
        """Make the built-in put back weights it merged earlier. Returns a conflict message or None."""
        nets = env.builtin_lora()
        if nets is None:
            return None
        if clear_loaded:
            nets.loaded_networks.clear()
        if nets.loaded_networks:
            names = ", ".join(getattr(n, "name", "?") for n in nets.loaded_networks)
            return (f"the built-in Lora extension holds networks ({names}), loaded by another extension; "
                    f"LoRA Studio applied nothing so that no LoRA is applied twice. Remove those tags or "
                    f"disable the other extension.")
        import torch
        # The built-in copies its backup in place and relies on the caller's no_grad (its forward runs inside
        # processing's); Script.process → handler.register runs outside it, where copy_ into a Parameter fails.
        with torch.no_grad():
            for mod in sd_model.modules() if hasattr(sd_model, "modules") else []:
                if getattr(mod, "network_current_names", ()) != ():
                    nets.network_restore_weights_from_backup(mod)
                    mod.network_current_names = ()
        return None

    # -- activation ---------------------------------------------------------------------------------
    def found_tags(self, params_list, act):
        """(index, tag, library entry) for each tag that parses and names a known file, in prompt order;
        every problem becomes a warning in `act` (shared by the A1111 and Forge paths)."""
        from lib_lora import syntax

        seen_paths = set()
        tags = syntax.parse_item_lists([params.items for params in params_list])  # links ZYX to its partner
        for index, tag in enumerate(tags):
            act.warnings += tag.warnings
            if tag.errors:
                act.warnings += [f"{e} (skipped)" for e in tag.errors]
                continue
            entry = self.library.find(tag.name)
            if entry is None:
                act.warnings.append(self.library.not_found_message(tag.name))
                continue
            if entry.path in seen_paths:
                act.warnings.append(f"`{tag.name}` appears more than once; every occurrence is applied and "
                                    f"their effects add up")
            seen_paths.add(entry.path)
            yield index, tag, entry

    def activate(self, p, params_list) -> Activation:
        from lib_lora.activate import activate_tag, attach_reports, te_signature, unused_message

        t0 = time.perf_counter()
        act = Activation()
        sd_model = getattr(p, "sd_model", None) or env.shared().sd_model
        with self.lock:
            if not params_list:
                if self.patcher is not None and (self.active or self.host_model is not sd_model):
                    self.restore()
                self._sync_conds(p, ())
                self.last = act
                return act
            conflict = self.flush_builtin(sd_model)
            if conflict:
                act.warnings.append(conflict)
                if self.patcher is not None:
                    self.restore()
                self._sync_conds(p, ())
                self.last = act
                return act
            patcher = self._patcher_for(sd_model)
            model_arch = patcher.host.arch
            presets = self.presets()
            allow_pickle = bool(env.opt(env.PREFIX + "allow_pickle", False))
            seed = batch_seed(p)
            for index, tag, entry in self.found_tags(params_list, act):
                try:
                    net = self.networks.get(entry.path, allow_pickle)
                except LoraStudioError as e:
                    act.warnings.append(f"`{tag.name}`: {e} (skipped)")
                    continue
                except Exception as e:                     # never let a broken file stop the others
                    act.warnings.append(f"`{tag.name}`: cannot be loaded ({type(e).__name__}: {e}); skipped")
                    continue
                a = activate_tag(tag, net, presets, model_arch, tag_seed(seed, index, tag.name), act.warnings,
                                 entry=entry)
                if a is not None:
                    act.loras.append(a)
            actives = [a.active for a in act.loras]
            act.report = patcher.apply(actives)
            attach_reports(act.loras, act.report)
            for a in act.loras:
                if a.report is not None and a.report.error:
                    act.warnings.append(a.report.error)
                    continue
                # Part of a LoRA silently missing is how "this LoRA does nothing" bugs look: always say so.
                msg = unused_message(a)
                if msg:
                    act.warnings.append(msg)
            self._stamp()
            self._sync_conds(p, te_signature(actives))
            self.active = actives
            self.has_schedule = any(a.gated for a in actives)
            self._step_state = None
            act.seconds = time.perf_counter() - t0
            self.last = act
            return act

    def _sync_conds(self, p, sig: tuple) -> None:
        """A1111 caches text conditioning by prompt text (class-level, across batches and generations). When
        the text encoder's LoRA state changed while the text did not (random letters drawn per batch, an edited
        preset, a switched setting), drop those caches so conds are computed with the weights now in place."""
        if sig != self._te_sig:
            drop_cached_conds(p)
        self._te_sig = sig

    def set_step(self, step: int) -> None:
        """on_cfg_denoiser: switch start=/stop= gated U-Net deltas (only when a tag asked for it)."""
        if not self.has_schedule or self.patcher is None:
            return
        with self.lock:
            if self._step_state == step:
                return
            self._step_state = step
            self.patcher.set_step(step)
            self._stamp()

    def patched_sum(self) -> float:
        """float64 sum of every weight the patcher currently holds patched (cheap: only those layers)."""
        if self.patcher is None:
            return 0.0
        total = 0.0
        for layer in self.patcher.patched_layers:
            ref = self.patcher.host.get(layer)
            if ref is not None:
                for w, _ in ref.part_tensors():
                    total += float(w.detach().double().sum())
        return total

    def checksum(self) -> dict:
        """Sum and a short digest over the weights of every layer the patcher may touch (debug/verification)."""
        sd_model = self.host_model or env.shared().sd_model
        return weights_checksum(sd_model)


def drop_cached_conds(p) -> None:
    """Empty the conditioning caches on `p` (A1111: [key, conds]; Forge: [key, conds, extra]): a key of None
    never matches, so the next pass recomputes them with the weights now in place."""
    for attr in ("cached_c", "cached_uc", "cached_hr_c", "cached_hr_uc"):
        cache = getattr(p, attr, None)
        if isinstance(cache, list) and len(cache) >= 2:
            cache[0] = cache[1] = None


DENSE_CHOICES = {"automatic": "auto", "on": True, "off": False}   # setting `dense_lowrank` → Patcher's


def dense_lowrank() -> bool | str:
    """Setting `dense_lowrank` as Patcher(dense_lowrank=…): "auto", True or False (an unknown value: "auto")."""
    return DENSE_CHOICES.get(str(env.opt(env.PREFIX + "dense_lowrank", "automatic")), "auto")


def cache_budget() -> int:
    """Setting `cache_mb` in bytes; -1 (default, and any negative value) = automatic."""
    from lib_lora.delta_cache import AUTO
    try:
        mb = int(float(env.opt(env.PREFIX + "cache_mb", -1)))
    except (TypeError, ValueError):
        mb = -1
    return AUTO if mb < 0 else mb * 1024 * 1024


def _stamps(host) -> tuple:
    out = []
    for name, ref in host.layers.items():
        for w, _ in ref.part_tensors():
            out.append((name, id(w), w._version))
    return tuple(out)


def weights_checksum(sd_model) -> dict:
    import torch
    total = 0.0
    h = hashlib.sha256()
    n = 0
    with torch.no_grad():
        for name, t in sd_model.state_dict().items():
            if not (name.startswith("model.diffusion_model.") or name.startswith("cond_stage_model.")
                    or name.startswith("conditioner.")) or not t.is_floating_point():
                continue
            s = float(t.double().sum())
            total += s
            h.update(f"{name}:{s:.10e}".encode())
            n += 1
    return {"tensors": n, "sum": total, "digest": h.hexdigest()[:16]}


def _mtime(path):
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return None


def default_presets_path():
    return env.data_path() / "lora_studio" / "presets.txt"


ENGINE = Engine()
