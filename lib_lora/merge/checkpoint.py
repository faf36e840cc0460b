"""Checkpoint merge, streamed: weighted sum A·(1−m)+B·m, add difference A+(B−C)·m and supermerger's train
difference, m per block (`MODES`, `MODE_HELP`).

Inputs are read through memory maps one tensor (one row chunk) at a time and the output is written as it is
produced, so memory stays far below one model whatever its size. The rules:

- The output has exactly A's keys and shapes. Keys only in B or C are left out (counted in the result).
- A key is merged when it has a block slot (`blocks.checkpoint_key_slot`), is floating point in every
  input and present in B (and C). Otherwise A's tensor is copied unchanged: integer/bool buffers (never
  averaged), keys without "model" (the noise schedule: betas, alphas_cumprod…), keys B or C lacks.
- The VAE (`first_stage_model.`) follows the BASE slot, as the text encoders do, or comes from a VAE file (`vae.py`).
- Shapes must be equal, except that A may have more input channels (dim 1) than B/C with every other
  dimension equal (an inpainting model's 9-channel conv_in against a normal model's 4): the leading channels
  are merged and A's extra channels kept, so an inpainting model must be A. Any other difference is refused
  before any tensor is read.
- Arithmetic (`kernel.py`) is float64, cast once to the output type: `dtype` (fp16/bf16/fp32) for merged and VAE/U-Net/
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
from lib_lora.merge.kernel import _combine, _Scratch
from lib_lora.merge.vae import _vae_plan

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
    discarded: int = 0       # keys of A left out because `discard` matched them
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


def _plan(a, others: dict, arch: str, vec: list, dtype, vae_map: dict | None = None,
          discard=None) -> tuple[list, MergeResult]:
    res = MergeResult(out="", arch=arch, weights=vec)
    items = []
    for key in a.keys():
        if discard is not None and discard.search(key):
            res.discarded += 1
            continue
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

def _discard_pattern(text):
    """The compiled `discard` expression (None for none/blank), or one line naming the mistake."""
    import re

    if text is None or not str(text).strip():
        return None
    try:
        return re.compile(str(text).strip())
    except re.error as exc:
        raise LoraStudioError(f"--discard '{text}' is not a regular expression ({exc}); give e.g. model_ema") \
            from None


class _Hashes(threading.Thread):
    """Input hashes computed beside the merge (the pages it reads are shared through the page cache), or
    taken from the hash cache (`fileio.cached_model_hash`); `cached` lists the roles that were."""

    def __init__(self, paths: dict, cache="default"):
        super().__init__(daemon=True)
        self.paths, self.cache, self.result, self.cached, self.error = paths, cache, {}, [], None

    def run(self):
        try:
            for role, p in self.paths.items():
                # the whole file's sha256: the hash the WebUI shows for a checkpoint (its first 10 hex digits)
                self.result[role], hit = fileio.cached_model_hash(p, self.cache, whole_file=True)
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
                      hash_cache="default", processes: int = 0, discard: str | None = None) -> MergeResult:
    """Merge checkpoint files into `out` (.safetensors). `progress(done_bytes, total_bytes)` while writing.

    `vae`: None or "base" (the VAE is merged like every BASE key), or the path of a VAE file (ldm or
    diffusers names, .safetensors; a pickle only with `allow_pickle`) whose weights replace
    first_stage_model.* (cast to the output type); a VAE that does not fit A is refused before any tensor
    is read.

    `discard`: a regular expression; every key of A it finds (`re.search`) is left out of the output, as the
    WebUI's checkpoint merger's "discard weights" field does (e.g. `model_ema` for A's EMA copy, which A1111
    never uses and which would otherwise be copied unmerged).

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
    discard_re = _discard_pattern(discard)
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
        items, result = _plan(readers["A"], others, arch, vec, torch_dtype, vae_map, discard_re)
        if not items:
            raise LoraStudioError(f"--discard '{discard}' matches every key of model A, so nothing would be "
                                  f"written; narrow it (e.g. model_ema)")
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
            **({"discard": discard, "discarded": result.discarded} if discard_re is not None else {}),
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
