"""Checkpoint merge, streamed: weighted sum A·(1−m)+B·m, add difference A+(B−C)·m and supermerger's train
difference, m per block (`MODES`, `MODE_HELP`).

Inputs are read through memory maps one tensor (one row chunk) at a time and the output is written as it is
produced, so memory stays far below one model whatever its size. The rules:

- The output has exactly A's keys and shapes. Keys only in B or C are left out (counted in the result).
- A key is merged when it has a block slot (`blocks.checkpoint_key_slot`), is floating point in every
  input and present in B (and C). Otherwise A's tensor is copied unchanged: integer/bool buffers (never
  averaged), keys without "model" (the noise schedule: betas, alphas_cumprod…), keys B or C lacks.
- The VAE (`first_stage_model.`) follows the BASE slot, as the text encoders do.
- Shapes must be equal, except that A may have more input channels (dim 1) than B/C with every other
  dimension equal (an inpainting model's 9-channel conv_in against a normal model's 4): the leading channels
  are merged and A's extra channels kept, so an inpainting model must be A. Any other difference is refused
  before any tensor is read.
- Arithmetic is float64, cast once to the output type: `dtype` (fp16/bf16/fp32) for merged and VAE/U-Net/
  text-encoder tensors, else A's type of that tensor; the noise schedule and integer buffers keep A's type.
- Models of different architectures are refused from their headers alone.
"""

from __future__ import annotations

import functools
import json
import math
import os
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace

from lib_lora import blocks, fileio
from lib_lora.errors import LoraFileError, LoraStudioError

# The one list of checkpoint merge modes (the CLI and the merge tab build their choices from it).
MODES = ("weighted", "add-diff", "train-diff")
MODE_HELP = {
    "weighted": "weighted sum A·(1−m) + B·m: m = 0 keeps A, m = 1 copies B",
    "add-diff": "add difference A + (B − C)·m: adds what B learned on top of C (C = B's base model) to A",
    "train-diff": "train difference (supermerger): A + 1.8·m·q·(B − C), q = |B − A| / (|B − C| + |B − A|) per "
                  "weight; adds B − C mostly where A is far from B, as if A had been trained on it",
}
NEEDS_C = ("add-diff", "train-diff")   # modes that take a third model C
DTYPE_NAMES = ("fp16", "bf16", "fp32")
RECIPE_KEY = "lora_studio_merge"
# Threads computing merged pieces while the main thread writes (and one more hashes the inputs).
WORKERS = max(1, min(4, os.cpu_count() or 2))
_CHUNK_ELEMS = 1 << 21     # elements per produced piece: bounds the output-side temporaries
_HASH_PLACEHOLDER = "0" * 64  # same length as a sha256 hex, so the header is patched in place


@dataclass
class MergeResult:
    out: str
    arch: str
    weights: list            # 26 slot values of m
    merged: int = 0          # keys computed from the inputs
    copied: int = 0          # keys taken from A unchanged (buffers, schedule, keys B/C lack)
    missing_in_others: int = 0   # of those: merge-able keys that B or C lacks
    left_out: int = 0        # keys only in B or C
    partial: list = field(default_factory=list)   # keys merged on A's leading input channels only
    vae_baked: int = 0       # keys taken from the VAE file
    recipe: dict = field(default_factory=dict)
    hashes_cached: list = field(default_factory=list)   # roles whose recipe hash came from the hash cache


# ---------------------------------------------------------------- inputs

class TensorDict:
    """{key: tensor} behind MappedTensors' reader interface (names, dtypes and shapes without reading data;
    `get`), the model source the merge plans and produces from when the tensors are already in memory."""

    def __init__(self, tensors: dict):
        self._t = tensors

    def keys(self):
        return list(self._t)

    def __contains__(self, key):
        return key in self._t

    def dtype(self, key):
        return self._t[key].dtype

    def shape(self, key):
        return tuple(self._t[key].shape)

    def get(self, key):
        return self._t[key]

    def close(self):
        pass


class _Loaded(TensorDict):
    """A pickle checkpoint (loaded whole: only with the pickle opt-in)."""

    def __init__(self, path, allow_pickle: bool):
        self.path = os.fspath(path)
        tensors, self.metadata = fileio.read_tensors(path, allow_pickle=allow_pickle)
        super().__init__(tensors)

    def close(self):
        self._t = {}


def _check_input(path, role: str) -> str:
    name = os.fspath(path)
    if not os.path.exists(name):
        raise LoraFileError(f"model {role} '{name}' not found; check --{role.lower()}")
    if os.path.isdir(name):
        raise LoraFileError(f"model {role} '{name}' is a folder; pass the .safetensors file with --{role.lower()}")
    return name


def _open(path, role: str, allow_pickle: bool):
    name = _check_input(path, role)
    if name.lower().endswith(fileio.PICKLE_SUFFIXES):
        return _Loaded(name, allow_pickle)
    return fileio.MappedTensors(name)


def model_arch(reader) -> str:
    """"sd1" / "sd2" / "sdxl" / "unknown" from key names and shapes only (no tensor is read)."""
    from lib_lora.host import detect_host_arch

    layers = {}
    for k in reader.keys():
        for suffix in (".weight", ".in_proj_weight"):
            if k.endswith(suffix):
                layers[k[: -len(suffix)]] = SimpleNamespace(weight=SimpleNamespace(shape=reader.shape(k)))
    return detect_host_arch(layers)


# ---------------------------------------------------------------- block weights

def _numbers(text: str) -> list[float] | None:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        return None


def resolve_weights(arch: str, alpha: float, block_weights=None, base_alpha: float | None = None,
                    presets=None) -> list[float]:
    """m for each of the 26 slots. `block_weights`: None (every block `alpha`), a list of numbers, or text:
    numbers separated by commas/spaces, or a preset name (`presets`: a PresetStore, normally a
    MergePresetStore; default the shipped merge presets, `presets.default_merge_store()`). SD1/SD2 take 26 values (BASE first) or 25 (no BASE), SDXL 20 or 19; without BASE in the
    list, BASE is `base_alpha` or else `alpha`. `base_alpha` always overrides BASE."""
    from lib_lora.arch import ARCH_LABELS

    full = 20 if arch == "sdxl" else 26
    label = ARCH_LABELS.get(arch, arch)
    vec = [float(alpha)] * 26
    if block_weights is not None:
        values = block_weights
        what = "--block-weights"
        if isinstance(values, str):
            nums = _numbers(values)
            if nums is None:
                values, what = _preset_values(values.strip(), arch, presets, full, label), \
                    f"preset '{values.strip()}'"
            else:
                values = nums
        values = [float(v) for v in values]
        if len(values) not in (full, full - 1):
            raise LoraStudioError(f"{what} has {len(values)} values; a {label} merge takes {full} (BASE first) "
                                  f"or {full - 1} (without BASE: --base-alpha or --alpha sets it)")
        if len(values) == full - 1:
            values = [float(alpha)] + values
        for slot, v in zip(blocks.FORMATS[full], values):
            vec[slot] = v
    if base_alpha is not None:
        vec[0] = float(base_alpha)
    bad = [blocks.BLOCK_NAMES[i] for i, v in enumerate(vec) if not math.isfinite(v)]
    if bad:
        raise LoraStudioError(f"merge weight for {bad[0]} is not a finite number; give numbers such as 0.5")
    return vec


def _preset_values(name: str, arch: str, presets, full: int, label: str) -> list[float]:
    tokens = None
    if presets is None:
        from lib_lora.presets import default_merge_store, default_store

        tokens = default_merge_store().get(name, arch)
        presets = default_store()   # else a LoRA preset: a 20/26-value one fits, a 12/17 one is refused by count
    if tokens is None:
        tokens = presets.get(name, arch)
    if tokens is None:
        close = presets.close_matches(name)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise LoraStudioError(f"--block-weights '{name}' is neither a list of numbers nor a preset name{hint}; "
                              f"give {full} numbers for a {label} merge")
    nums = _numbers(",".join(tokens))
    if nums is None:
        raise LoraStudioError(f"preset '{name}' uses letters (R/U/X), which a merge cannot take; give numbers")
    return nums


# ---------------------------------------------------------------- VAE files

VAE_PREFIX = "first_stage_model."
_VAE_IGNORED = ("loss.", "model_ema.")   # training leftovers in some VAE files (A1111 drops them too)
_ATTN_RENAME = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v",
                "value": "v", "to_out.0": "proj_out", "proj_attn": "proj_out"}


def vae_key_to_ldm(key: str, up_blocks: int = 4) -> str | None:
    """A standalone VAE file's key → its name under `first_stage_model.` (the original/ldm naming);
    diffusers names (down_blocks/up_blocks/mid_block…) are translated; None for keys to ignore."""
    import re

    if key.startswith(VAE_PREFIX):
        key = key[len(VAE_PREFIX):]
    if key.startswith(_VAE_IGNORED):
        return None
    if ".down_blocks." not in key and ".up_blocks." not in key and ".mid_block." not in key \
            and "conv_norm_out" not in key:
        return key   # already ldm-named
    key = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
    key = re.sub(r"\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r".down.\1.block.\2.", key)
    key = re.sub(r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample.", key)
    key = re.sub(r"\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                 lambda mo: f".up.{up_blocks - 1 - int(mo[1])}.block.{mo[2]}.", key)
    key = re.sub(r"\.up_blocks\.(\d+)\.upsamplers\.0\.", lambda mo: f".up.{up_blocks - 1 - int(mo[1])}.upsample.", key)
    key = re.sub(r"\.mid_block\.resnets\.(\d+)\.", lambda mo: f".mid.block_{int(mo[1]) + 1}.", key)
    mo = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)$", key)
    if mo:
        part = _ATTN_RENAME.get(mo[2], mo[2])
        key = f"{mo[1]}.mid.attn_1.{part}.{mo[3]}"
    return key


def _vae_plan(vae, a, path) -> dict:
    """A's key → the VAE file's key that replaces it. Checked from the headers alone: every VAE tensor must
    land on a first_stage_model key of A with the same shape (a diffusers Linear [C, C] may fill an ldm
    1×1 conv [C, C, 1, 1])."""
    name = os.path.basename(os.fspath(path))
    ups = {int(k.split(".")[2]) for k in vae.keys() if ".up_blocks." in k}
    out = {}
    for key in vae.keys():
        ldm = vae_key_to_ldm(key, (max(ups) + 1) if ups else 4)
        if ldm is None:
            continue
        target = VAE_PREFIX + ldm
        if target not in a:
            raise LoraStudioError(f"VAE '{name}' has '{key}', which model A has no place for (no '{target}'); "
                                  f"pick a Stable Diffusion VAE (.safetensors)")
        sv, sa = tuple(vae.shape(key)), tuple(a.shape(target))
        if sv != sa and not (len(sv) == 2 and sa == sv + (1, 1)):
            raise LoraStudioError(f"VAE '{name}' does not fit model A: '{key}' has shape {list(sv)} but "
                                  f"'{target}' is {list(sa)}; pick a VAE made for this model")
        if not vae.dtype(key).is_floating_point:
            continue
        out[target] = key
    if not out:
        raise LoraStudioError(f"'{name}' holds no VAE weights (no encoder./decoder. keys); pick a VAE file")
    return out


# ---------------------------------------------------------------- planning (headers only)

@dataclass
class _Item:
    key: str
    out_dtype: object
    shape: tuple
    slot: int | None = None
    m: float = 0.0
    channels: int | None = None   # merge only A's first `channels` input channels (inpainting conv_in)
    vae_key: str | None = None    # taken from the VAE file (key in that file)


def _shape_rule(key: str, sa: tuple, so: tuple, role: str) -> int | None:
    """None when the shapes are equal; the channel count to merge when only A's dim 1 is larger; else raise."""
    if sa == so:
        return None
    if len(sa) == len(so) >= 2 and sa[0] == so[0] and sa[2:] == so[2:] and sa[1] > so[1]:
        return so[1]
    hint = ("; an inpainting model must be A (--a)" if len(sa) == len(so) >= 2 and sa[1] < so[1]
            and sa[0] == so[0] and sa[2:] == so[2:] else "")
    raise LoraStudioError(f"'{key}' has shape {list(sa)} in A but {list(so)} in {role}; these models cannot be "
                          f"merged{hint}")


def _plan(a, others: dict, arch: str, vec: list, dtype, vae_map: dict | None = None) -> tuple[list, MergeResult]:
    res = MergeResult(out="", arch=arch, weights=vec)
    items = []
    for key in a.keys():
        dt = a.dtype(key)
        shape = tuple(a.shape(key))
        slot = blocks.checkpoint_key_slot(key, arch)
        floating = dt.is_floating_point
        out_dt = dtype if (dtype is not None and floating and slot is not None) else dt
        item = _Item(key, out_dt, shape)
        if vae_map and key in vae_map:
            item.vae_key = vae_map[key]
            res.vae_baked += 1
        elif slot is None or not floating:
            res.copied += 1
        elif not all(key in o and o.dtype(key).is_floating_point for o in others.values()):
            res.copied += 1
            res.missing_in_others += 1
        else:
            channels = set()
            for role, o in others.items():
                channels.add(_shape_rule(key, shape, tuple(o.shape(key)), role))
            if len(channels) > 1:
                raise LoraStudioError(f"'{key}' has different shapes in B and C; these models cannot be merged")
            item.slot, item.m, item.channels = slot, vec[slot], channels.pop()
            if item.channels is not None:
                res.partial.append(key)
            res.merged += 1
        items.append(item)
    a_keys = set(a.keys())
    res.left_out = len({k for o in others.values() for k in o.keys()} - a_keys)
    return items, res


# ---------------------------------------------------------------- arithmetic
# Every path evaluates the same float64 expressions, operation by operation (no fused multiply-add), and
# casts the result once to the output type:
#   weighted:   a·(1−m) + b·m
#   add-diff:   (b − c)·m + a
#   train-diff: a + (q·(b − c))·(1.8·m), q = |b − a| / (|b − c| + |b − a|), q = 0 where that sum is 0
# train-diff is supermerger's "trainDifference" (it computes in float32; here float64). Its published form
# sign(b−c)·q·|b−c| equals q·(b − c) bit for bit (q ≥ 0, rounding is symmetric). Where B equals C the
# difference is 0 and A's value is kept exactly (supermerger keeps A for a key whose B and C are equal).
TRAIN_DIFF_GAIN = 1.8


def _train_diff_into(x, y, a, m: float, s=None):
    """x = b − c, y = b − a on entry (float64 pieces); x ← a + q·(b − c)·(1.8·m). y (and `s`, a buffer of
    the same length) are clobbered."""
    import torch

    y.abs_()
    s = torch.abs(x, out=s) if s is not None else torch.abs(x)
    s.add_(y)
    y.div_(s)
    y.masked_fill_(s == 0, 0.0)
    x.mul_(y)
    x.mul_(TRAIN_DIFF_GAIN * m)
    x.add_(a)
    return x


def _combine(mode: str, a, b, c, m: float):
    """float64 result of one chunk of any shape (used for the partial-channel case)."""
    import torch

    f64 = torch.float64
    if mode == "weighted":
        out = a.to(f64, copy=True)
        out.mul_(1.0 - m)
        out.add_(b.to(f64, copy=True).mul_(m))
        return out
    d = b.to(f64, copy=True)
    d.sub_(c.to(f64))
    if mode == "train-diff":
        y = b.to(f64, copy=True)
        y.sub_(a.to(f64))
        return _train_diff_into(d, y, a.to(f64), m)
    d.mul_(m)
    d.add_(a.to(f64))
    return d


class _Scratch:
    """float64 buffers small enough to stay in the CPU cache: the arithmetic then costs about one read of
    the inputs and one write of the output (a 16 MB chunk at a time was 3-4x slower). Half-precision inputs
    are widened through float32 (exact, and about twice as fast as torch's direct half → double copy).
    SIZE stays under torch's parallel grain (32768 elements): each op then runs on the calling thread only, so
    the writer's worker threads do not also split every op over torch's thread pool (with torch's default
    threads that made a full SD1.5 merge ≈ 1.5× slower), and nothing global (torch.set_num_threads) changes."""
    SIZE = 30 << 10

    def __init__(self):
        import torch

        self.x = torch.empty(self.SIZE, dtype=torch.float64)
        self.y = torch.empty(self.SIZE, dtype=torch.float64)
        self.z = torch.empty(self.SIZE, dtype=torch.float64)
        self.s = torch.empty(self.SIZE, dtype=torch.float64)
        self.w = torch.empty(self.SIZE, dtype=torch.float32)

    def combine_into(self, mode: str, a, b, c, m: float, out) -> None:
        """out[:] = formula(a, b, c) for 1-D tensors of one length, in float64 pieces.

        Written flat on purpose: the pieces come from one `split` per operand and the loads are inline; per-piece
        slices and helper calls made the old loop ~20 % slower for the same operations (bench/README.md, merge,
        session 7)."""
        import itertools

        import torch

        S = self.SIZE
        half = (torch.float16, torch.bfloat16)
        ha, hb = a.dtype in half, b.dtype in half   # half precision: widened through the float32 buffer
        hc = c is not None and c.dtype in half
        cs = c.split(S) if c is not None else itertools.repeat(None)
        c1 = 1.0 - m
        x, y, z, s, w = self.x, self.y, self.z, self.s, self.w
        for ai, bi, ci, oi in zip(a.split(S), b.split(S), cs, out.split(S)):
            k = oi.numel()
            if k != S:   # the last, shorter piece
                x, y, z, s, w = x[:k], y[:k], z[:k], s[:k], w[:k]
            if mode == "weighted":
                x.copy_(w.copy_(ai) if ha else ai)
                x.mul_(c1)
                y.copy_(w.copy_(bi) if hb else bi)
                y.mul_(m)
                x.add_(y)
            elif mode == "add-diff":
                x.copy_(w.copy_(bi)) if hb else x.copy_(bi)
                x.sub_(y.copy_(w.copy_(ci)) if hc else y.copy_(ci))
                x.mul_(m)
                x.add_(y.copy_(w.copy_(ai)) if ha else y.copy_(ai))
            else:
                if torch.equal(bi, ci):   # no difference: A exactly (also its signed zeros)
                    oi.copy_(ai)
                    continue
                x.copy_(w.copy_(bi)) if hb else x.copy_(bi)
                x.sub_(y.copy_(w.copy_(ci)) if hc else y.copy_(ci))    # x = b − c
                y.copy_(w.copy_(bi)) if hb else y.copy_(bi)
                y.sub_(z.copy_(w.copy_(ai)) if ha else z.copy_(ai))    # y = b − a, z = a
                _train_diff_into(x, y, z, m, s)
            oi.copy_(x)


def _rows(t):
    return t.reshape(1) if t.dim() == 0 else t


def _producer(item: _Item, mode: str, a, b, c, scratch, pool, vae=None):
    """produce() for the stream writer; `scratch()` returns the calling thread's _Scratch, `pool` is the
    writer's `fileio.BufferPool` for merged pieces."""
    def produce():
        import torch

        if item.vae_key is not None:   # baked VAE: cast (and a Linear's [C, C] shaped as the 1×1 conv)
            tv = vae.get(item.vae_key).reshape(-1)
            for i in range(0, max(tv.numel(), 1), _CHUNK_ELEMS):
                yield tv[i:i + _CHUNK_ELEMS].to(item.out_dtype)
            return
        ta = _rows(a.get(item.key))
        if item.slot is not None and item.channels is None:   # the common case: flat, cache-sized pieces
            fa = ta.reshape(-1)
            fb = b.get(item.key).reshape(-1)
            fc = c.get(item.key).reshape(-1) if c is not None else None
            n = fa.numel()

            def piece(i, j):   # run by the writer's worker threads, each with its own scratch buffers
                out = pool.take(j - i, item.out_dtype)
                scratch().combine_into(mode, fa[i:j], fb[i:j], fc[i:j] if fc is not None else None, item.m,
                                       out.tensor)
                return out

            for i in range(0, n, _CHUNK_ELEMS):
                yield functools.partial(piece, i, min(n, i + _CHUNK_ELEMS))
            return
        n = ta.shape[0]
        per_row = max(1, ta.numel() // max(1, n))
        step = max(1, _CHUNK_ELEMS // per_row)
        if item.slot is None:   # copied from A (cast only)
            for i in range(0, max(n, 1), step):
                yield ta[i:i + step].to(item.out_dtype)
            return
        tb = _rows(b.get(item.key))
        tc = _rows(c.get(item.key)) if c is not None else None
        k = item.channels
        for i in range(0, n, step):   # A has more input channels: merge the leading ones, keep the rest
            ca = ta[i:i + step]
            out = ca.to(torch.float64, copy=True)
            out[:, :k] = _combine(mode, ca[:, :k], tb[i:i + step], tc[i:i + step] if tc is not None else None,
                                  item.m)
            yield out.to(item.out_dtype)
    return produce


# ---------------------------------------------------------------- the merge

class _Hashes(threading.Thread):
    """Input hashes computed beside the merge (the pages it reads are shared through the page cache), or
    taken from the hash cache (`fileio.cached_model_hash`); `cached` lists the roles that were."""

    def __init__(self, paths: dict, cache="default"):
        super().__init__(daemon=True)
        self.paths, self.cache, self.result, self.cached, self.error = paths, cache, {}, [], None

    def run(self):
        try:
            for role, p in self.paths.items():
                self.result[role], hit = fileio.cached_model_hash(p, self.cache)
                if hit:
                    self.cached.append(role)
        except BaseException as exc:  # reported by wait() in the merging thread
            self.error = exc

    def wait(self) -> dict:
        while self.is_alive():
            self.join(0.2)   # short joins: Ctrl-C still reaches the main thread
        if self.error is not None:
            raise LoraFileError(f"cannot hash the inputs: {self.error}")
        return self.result


def merge_checkpoints(a, b, out, mode: str = "weighted", alpha: float = 0.5, c=None, block_weights=None,
                      base_alpha: float | None = None, dtype: str | None = None, overwrite: bool = False,
                      allow_pickle: bool = False, presets=None, progress=None, vae=None,
                      hash_cache="default", processes: int = 0) -> MergeResult:
    """Merge checkpoint files into `out` (.safetensors). `progress(done_bytes, total_bytes)` while writing.

    `vae`: None or "base" (the VAE is merged like every BASE key), or the path of a VAE file (ldm or
    diffusers names, .safetensors; a pickle only with `allow_pickle`) whose weights replace
    first_stage_model.* (cast to the output type); a VAE that does not fit A is refused before any tensor
    is read.

    `hash_cache`: where the recipe's input hashes are remembered (`fileio.cached_model_hash`): "default",
    None (always hash), or a cache file path.

    `processes` > 1: the tensors are computed and written by that many forked processes (POSIX; for a process that
    owns its runtime, the CLI: not a WebUI); otherwise by `WORKERS` threads.

    Everything that can be checked from the file headers is checked before any tensor is read; a failure,
    Ctrl-C or kill leaves no file at `out` (and an existing one untouched)."""
    out = os.fspath(out)
    fileio.check_target(out, overwrite, ".safetensors")
    if mode not in MODES:
        raise LoraStudioError(f"--mode {mode} is not a merge mode; use one of {', '.join(MODES)}")
    if mode in NEEDS_C and c is None:
        raise LoraStudioError(f"--mode {mode} needs a third model: --c C (the base model B was trained from)")
    if mode not in NEEDS_C and c is not None:
        raise LoraStudioError(f"--c is only used by --mode {' / '.join(NEEDS_C)}; drop it or change --mode")
    if dtype is not None and dtype not in DTYPE_NAMES:
        raise LoraStudioError(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPE_NAMES)}")
    for what, v in (("--alpha", alpha), ("--base-alpha", base_alpha)):
        if v is not None and not math.isfinite(float(v)):
            raise LoraStudioError(f"{what} must be a finite number such as 0.5")
    vae_path = None if vae is None or (isinstance(vae, str) and vae == "base") else vae
    paths = {"A": a, "B": b, **({"C": c} if c is not None else {})}
    hashed = dict(paths, **({"VAE": vae_path} if vae_path is not None else {}))
    for role, p in hashed.items():
        _check_input(p, role)
    # The recipe's input hashes start before torch is imported: in a fresh process (the CLI) the import costs
    # over a second of one core, and hashing (which releases the GIL) uses the other meanwhile. A merge refused
    # below leaves the thread to finish into the hash cache, which the corrected merge then reads.
    hashes = _Hashes({role: os.fspath(p) for role, p in hashed.items()}, hash_cache)
    hashes.start()
    import torch

    torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
    readers = {}
    try:
        for role, p in paths.items():
            readers[role] = _open(p, role, allow_pickle)
        archs = {role: model_arch(r) for role, r in readers.items()}
        from lib_lora.arch import ARCH_LABELS

        for role, arch in archs.items():
            if arch == "unknown":
                raise LoraStudioError(f"model {role} '{paths[role]}' is not an SD1/SD2/SDXL checkpoint (no U-Net "
                                      f"or text-encoder keys found); pick a Stable Diffusion model")
        for role, arch in archs.items():
            if arch != archs["A"]:
                raise LoraStudioError(f"model A '{paths['A']}' is {ARCH_LABELS[archs['A']]} but model {role} "
                                      f"'{paths[role]}' is {ARCH_LABELS[arch]}; merge models of one architecture")
        arch = archs["A"]
        vec = resolve_weights(arch, alpha, block_weights, base_alpha, presets)
        vae_map = None
        if vae_path is not None:
            readers["VAE"] = _open(vae_path, "VAE", allow_pickle)
            vae_map = _vae_plan(readers["VAE"], readers["A"], vae_path)
        others = {role: r for role, r in readers.items() if role not in ("A", "VAE")}
        items, result = _plan(readers["A"], others, arch, vec, torch_dtype, vae_map)
        result.out = out
        full = 20 if arch == "sdxl" else 26
        recipe = {
            "mode": mode, "alpha": float(alpha), "base_alpha": None if base_alpha is None else float(base_alpha),
            "block_weights": dict(zip(blocks.format_names(full), blocks.compress(vec, full))),
            "dtype": dtype, "arch": arch,
            "inputs": {role: {"file": os.path.basename(os.fspath(p)), "sha256": _HASH_PLACEHOLDER}
                       for role, p in paths.items()},
            "merged": result.merged, "copied_from_a": result.copied, "left_out": result.left_out,
            "partial_channels": result.partial,
            "vae": "base" if vae_path is None else {"file": os.path.basename(os.fspath(vae_path)),
                                                     "sha256": _HASH_PLACEHOLDER},
        }
        def final_metadata():
            for role, h in hashes.wait().items():
                (recipe["vae"] if role == "VAE" else recipe["inputs"][role])["sha256"] = h
            return {RECIPE_KEY: json.dumps(recipe, ensure_ascii=False)}

        local = threading.local()

        def scratch():
            if not hasattr(local, "s"):
                local.s = _Scratch()
            return local.s

        pool = fileio.BufferPool(_CHUNK_ELEMS * 4)   # fp32 pieces at most; a float64 A gets fresh tensors
        specs = [(it.key, it.out_dtype, it.shape, _producer(it, mode, readers["A"], readers.get("B"),
                                                            readers.get("C"), scratch, pool, readers.get("VAE")))
                 for it in items]
        fileio.atomic_save_safetensors_stream(specs, out, {RECIPE_KEY: json.dumps(recipe, ensure_ascii=False)},
                                              overwrite=overwrite, progress=progress,
                                              final_metadata=final_metadata, workers=WORKERS,
                                              processes=processes)
        result.recipe = recipe
        result.hashes_cached = list(hashes.cached)
        return result
    finally:
        for r in readers.values():
            r.close()
