"""Checkpoint merges tried on the loaded model, before anything is written.

`LiveMerge` works on the loaded model's tensors, given as {checkpoint key: live tensor} (the host builds the
mapping; nothing here imports a WebUI). A is the loaded weights as they were before the first live merge:
each tensor is cloned to the CPU the first time it is rewritten and that clone is the base of every later
merge, so re-applying with other weights never drifts and `restore()` copies back the exact bits. B and C
are read lazily through their memory maps. Every result is computed by the streamed file merge's own
planning and producers (`merge.checkpoint`), so a live merge holds bit for bit what `merge_checkpoints`
writes for the same recipe when A's file holds the loaded weights.

Only tensors whose recipe changed are rewritten: a block-weight change touches the keys of the blocks whose
weight moved. An apply that fails, is cancelled or interrupted puts back every tensor it had rewritten
(recomputed from the previous recipe, or A's clone), so the model is exactly as before the call.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from dataclasses import dataclass

from lib_lora import blocks, fileio
from lib_lora.errors import LoraStudioError
from lib_lora.merge import checkpoint as ck


class LiveMergeCancelled(LoraStudioError):
    """The user stopped an apply; the loaded model is as before it."""


@dataclass(frozen=True)
class LiveRecipe:
    """What the loaded model holds: A (the loaded weights) merged with `b`/`c` by `mode`."""
    mode: str
    b: str
    c: str | None
    alpha: float
    block_weights: object        # as given: None, a list of numbers, or text (numbers or a preset name)
    base_alpha: float | None
    weights: tuple               # m for each of the 26 slots (blocks.BLOCK_NAMES)
    arch: str

    def describe(self) -> str:
        inputs = os.path.basename(self.b) + (f" − {os.path.basename(self.c)}" if self.c else "")
        bw = self.block_weights
        if bw is None:
            how = f"alpha {ck_number(self.alpha)}"
        elif isinstance(bw, str) and ck._numbers(bw) is None:
            how = f"preset {bw.strip()}"
        else:
            full = 20 if self.arch == "sdxl" else 26
            how = "blocks " + ",".join(ck_number(v) for v in blocks.compress(list(self.weights), full))
        if self.base_alpha is not None:
            how += f", base {ck_number(self.base_alpha)}"
        return f"{self.mode} with {inputs}, {how}"


def ck_number(v) -> str:
    from lib_lora.syntax import format_number
    return format_number(float(v))


class _LiveA(ck.TensorDict):
    """A as the file merge reads it: the live tensors' names, dtypes and shapes; `get` gives A's clone when
    the tensor was rewritten, else the live tensor itself (on the CPU; it still holds A)."""

    def __init__(self, tensors: dict, originals: dict):
        super().__init__(tensors)
        self._orig = originals

    def get(self, key):
        t = self._orig.get(key)
        return t if t is not None else self._t[key].detach().cpu()


def checkpoint_tensors(model) -> dict:
    """{checkpoint key: live tensor} of a loaded torch model (A1111's `sd_model`, `lib_lora.sd`'s SDModel), the
    mapping `LiveMerge` takes. The Parameters themselves (`keep_vars`), so a later device move still writes
    the model; keys spelt as in a checkpoint file (`host.checkpoint_name`); the first name wins on aliases."""
    from lib_lora.host import checkpoint_name

    out: dict = {}
    for name, t in model.state_dict(keep_vars=True).items():
        out.setdefault(checkpoint_name(name), t)
    return out


def file_dtypes(path) -> dict:
    """{checkpoint key: dtype} of a loaded model's file (its safetensors header, keys spelt as `checkpoint_tensors`
    spells them): `LiveMerge(file_dtypes=)`, so a save "as input" writes A's types rather than the dtype the host
    computes in (fp32 in the standalone app and under A1111's --no-half). {} (saved as loaded) for a pickle or a
    file that cannot be read now."""
    from lib_lora.host import checkpoint_name

    if not path or not str(path).lower().endswith(".safetensors"):
        return {}
    try:
        with fileio.MappedTensors(path) as f:
            return {checkpoint_name(k): f.dtype(k) for k in f.keys()}
    except (OSError, ValueError, LoraStudioError):
        return {}


def file_identity(path) -> tuple:
    """A file as the state remembers it: replacing B on disk is a different input (the standalone app also
    asks it whether the model it loaded is still a given checkpoint file)."""
    return (os.path.realpath(path),) + fileio.file_stamp(os.stat(path))


class LiveMerge:
    """A merge held in the loaded model's own tensors. `tensors`: {checkpoint key: live tensor}.

    Hooks (all optional, no arguments unless said): `before_write()` runs before the first tensor of an
    apply/restore is written (a host takes LoRA patches off and drops their backups there: the merge becomes
    their base); `before_read()` before `save` reads the live tensors (LoRA patches off); `after_write(keys)`
    with the keys written (a host drops cached text conditioning when a text-encoder key is among them).
    `keep`: key prefixes that are never merged (the host's VAE, when another setting owns it)."""

    def __init__(self, tensors: dict, *, name: str = "loaded model", presets=None, allow_pickle: bool = False,
                 keep=(), before_write=None, before_read=None, after_write=None, file_dtypes=None):
        self.tensors = dict(tensors)
        # key → dtype of A's file, where the host runs the model in another dtype (the standalone app computes
        # in fp32): "as input" saves write these, not the widened live dtype
        self.file_dtypes = dict(file_dtypes or {})
        self.keep = tuple(keep)          # key prefixes never merged (kept as loaded), e.g. a host's VAE
        self.name = name
        self.presets = presets
        self.allow_pickle = allow_pickle
        self.before_write, self.before_read, self.after_write = before_write, before_read, after_write
        self.lock = threading.RLock()
        self.retired = False             # the host let this model go (`retire`): every later action refuses
        self._orig: dict = {}            # key → exact CPU clone of A (taken before the key's first write)
        self._sig: dict = {}             # key → what the key holds now: (mode, B id, C id, m, channels)
        self._readers: dict = {}         # file identity → open reader, for the inputs `_sig` refers to
        self._a = _LiveA(self.tensors, self._orig)
        self._arch = None
        self.active: LiveRecipe | None = None

    # -- public ----------------------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        if self._arch is None:
            self._arch = ck.model_arch(self._a)
        return self._arch

    def apply(self, *, b, c=None, mode: str = "weighted", alpha: float = 0.5, block_weights=None,
              base_alpha: float | None = None, presets=None, progress=None, cancel=None) -> str:
        """Make the loaded model hold A merged with B (and C) by `mode`; returns one summary line.
        `progress(done, total)` per tensor; `cancel()` returning True stops and leaves the model as before."""
        t0 = time.perf_counter()
        with self.lock:
            self._check_current()
            if mode not in ck.MODES:
                raise LoraStudioError(f"merge mode '{mode}' is not known; use one of {', '.join(ck.MODES)}")
            if mode in ck.NEEDS_C and c is None:
                raise LoraStudioError(f"mode {mode} needs a third model C (the difference is B − C); pick one")
            if mode not in ck.NEEDS_C and c is not None:
                raise LoraStudioError("model C is only used by the difference modes; clear it or pick add-diff")
            for what, v in (("alpha", alpha), ("base alpha", base_alpha)):
                if v is not None and not math.isfinite(float(v)):
                    raise LoraStudioError(f"{what} must be a finite number such as 0.5")
            arch = self.arch
            if arch == "unknown":
                raise LoraStudioError(f"{self._called()} is not an SD1/SD2/SDXL model (no U-Net or text-encoder "
                                      f"weights found); a live merge needs a Stable Diffusion checkpoint loaded")
            paths = {"B": os.fspath(b), **({"C": os.fspath(c)} if c is not None else {})}
            opened = {}          # role → (identity, reader), readers opened by this call
            try:
                ids = {}
                for role, p in paths.items():
                    reader = ck._open(p, role, self.allow_pickle)
                    ident = file_identity(p)
                    if ident in self._readers:
                        reader.close()
                        reader = self._readers[ident]
                    else:
                        opened[role] = (ident, reader)
                    ids[role] = (ident, reader)
                from lib_lora.arch import ARCH_LABELS
                for role, (_, reader) in ids.items():
                    other = ck.model_arch(reader)
                    if other != arch:
                        what = ARCH_LABELS.get(other, "not an SD1/SD2/SDXL model")
                        raise LoraStudioError(f"model {role} '{os.path.basename(paths[role])}' is {what} but "
                                              f"{self._called()} is {ARCH_LABELS.get(arch, arch)}; merge models of one "
                                              f"architecture")
                vec = ck.resolve_weights(arch, alpha, block_weights, base_alpha,
                                         presets if presets is not None else self.presets)
                others = {role: reader for role, (_, reader) in ids.items()}
                items, plan = ck._plan(self._a, others, arch, vec, None)
                for it in items:
                    if it.slot is not None and self.keep and it.key.startswith(self.keep):
                        it.slot = None
                        plan.merged -= 1
                        plan.copied += 1
                id_b = ids["B"][0]
                id_c = ids["C"][0] if "C" in ids else None
                for ident, reader in opened.values():
                    self._readers.setdefault(ident, reader)
                opened = {}
                written = self._write(items, mode, id_b, id_c, progress, cancel)
                self.active = LiveRecipe(mode, paths["B"], paths.get("C"), float(alpha), block_weights,
                                         None if base_alpha is None else float(base_alpha), tuple(vec), arch)
            finally:
                for _, reader in opened.values():
                    reader.close()
                self._close_unused()
        notes = []
        if plan.missing_in_others:
            notes.append(f"{plan.missing_in_others} tensors B{'/C' if c is not None else ''} lacks kept from A")
        if plan.partial:
            notes.append(f"{len(plan.partial)} merged on A's leading input channels")
        return (f"live merge: {self.active.describe()}; {written} of {plan.merged} tensors rewritten in "
                f"{time.perf_counter() - t0:.1f} s" + (f" ({'; '.join(notes)})" if notes else "")
                + "; nothing was written to disk")

    def restore(self) -> str:
        """The loaded weights exactly as before the first live merge."""
        with self.lock:
            self._check_current()
            keys = [k for k in self._sig]
            if keys and self.before_write is not None:
                self.before_write()
            import torch
            with torch.no_grad():
                for k in keys:
                    self.tensors[k].copy_(self._orig[k])
                    del self._sig[k]
            self._orig.clear()           # the model holds A again: the next apply clones afresh
            was = self.active
            self.active = None
            self._close_unused()
            if keys and self.after_write is not None:
                self.after_write(keys)
        if was is None:
            return f"no live merge was applied; {self._called()} is unchanged"
        return f"live merge removed: {len(keys)} tensors restored to the weights of {self.name}"

    def _called(self) -> str:
        """The loaded model in a message: "the loaded model", or "the loaded model (a.safetensors)" when the host
        named its file."""
        return "the loaded model" if self.name == "loaded model" else f"the loaded model ({self.name})"

    def forget(self) -> None:
        """The host reloaded its weights: drop every clone and state without writing anything."""
        with self.lock:
            self._orig.clear()
            self._sig.clear()
            self.active = None
            self._close_unused()

    def retire(self) -> None:
        """The host dropped this model (another one was loaded): forget it, and refuse whatever was waiting
        for the lock meanwhile instead of merging into a model nobody uses."""
        with self.lock:
            self.forget()
            self.retired = True

    def _check_current(self) -> None:
        if self.retired:
            raise LoraStudioError(f"{self._called()} was unloaded while this waited; apply again to the model "
                                  f"loaded now")

    def save(self, out, *, dtype: str | None = None, overwrite: bool = False, progress=None) -> str:
        """Write the merged weights as they are live (and every other key of A) as a .safetensors checkpoint:
        streamed, atomic, never over an existing file unless `overwrite`. `dtype` fp16/bf16/fp32 casts the
        model's floating-point weights (a live merge is only as precise as the loaded model's dtype); None
        writes each key as A's file holds it (`file_dtypes`) or, without one, as it is live."""
        import torch

        with self.lock:
            self._check_current()
            recipe = self.active
            if recipe is None:
                raise LoraStudioError("there is no live merge to save; apply one to the loaded model first")
            out = os.fspath(out)
            fileio.check_target(out, overwrite, ".safetensors")
            if dtype is not None and dtype not in ck.DTYPE_NAMES:
                raise LoraStudioError(f"dtype {dtype} is not supported; use one of {', '.join(ck.DTYPE_NAMES)}")
            torch_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}.get(dtype)
            if self.before_read is not None:
                self.before_read()
            specs = []
            for key, t in self.tensors.items():
                slot = blocks.checkpoint_key_slot(key, recipe.arch)
                out_dt = t.dtype
                if t.is_floating_point():
                    if torch_dtype is not None:
                        out_dt = torch_dtype if slot is not None else t.dtype
                    else:
                        out_dt = self.file_dtypes.get(key, t.dtype)
                specs.append((key, out_dt, tuple(t.shape), _live_producer(t, out_dt)))
            full = 20 if recipe.arch == "sdxl" else 26
            inputs = {"A": {"file": self.name}}
            for role, p in (("B", recipe.b), ("C", recipe.c)):
                if p is not None:
                    inputs[role] = {"file": os.path.basename(p),
                                    "sha256": fileio.cached_model_hash(p, whole_file=True)[0]}
            meta = {ck.RECIPE_KEY: json.dumps({
                "mode": recipe.mode, "alpha": recipe.alpha, "base_alpha": recipe.base_alpha,
                "block_weights": dict(zip(blocks.format_names(full), blocks.compress(list(recipe.weights), full))),
                "dtype": dtype, "arch": recipe.arch, "inputs": inputs, "live": True,
                # keys the host keeps as it loaded them (the WebUI's VAE setting owns the VAE): not merged
                **({"kept_as_loaded": list(self.keep)} if self.keep else {}),
            }, ensure_ascii=False)}
            fileio.atomic_save_safetensors_stream(specs, out, meta, overwrite=overwrite, progress=progress)
        return f"saved the live merge ({recipe.describe()}) to {fileio.display_path(out)}"

    # -- internals -------------------------------------------------------------------------------------
    def _reader(self, ident):
        return None if ident is None else self._readers[ident]

    def _compute_into(self, item, mode, id_b, id_c, scratch):
        """The file merge's producer for one key, concatenated: a CPU tensor of the live dtype."""
        import torch

        out = torch.empty(_numel(item.shape), dtype=item.out_dtype)
        pos = 0
        # the file merge's producer takes a per-thread scratch getter and may yield deferred pieces
        # (callables its writer's workers run); here one thread runs them in order
        pool = fileio.BufferPool(ck._CHUNK_ELEMS * 4)
        produce = ck._producer(item, mode, self._a, self._reader(id_b), self._reader(id_c), lambda: scratch, pool)
        for chunk in produce():
            piece = chunk() if callable(chunk) else chunk
            flat = (piece.tensor if isinstance(piece, fileio.Pooled) else piece).reshape(-1)
            out[pos:pos + flat.numel()].copy_(flat)
            pos += flat.numel()
            if isinstance(piece, fileio.Pooled):
                piece.release()
        return out

    def _put(self, key, value) -> None:
        t = self.tensors[key]
        t.copy_(value.reshape(t.shape))

    def _write(self, items, mode, id_b, id_c, progress, cancel) -> int:
        """Rewrite the keys whose recipe changed; on any failure put back what this call wrote."""
        import torch

        want = {}
        for it in items:
            if it.slot is not None:
                want[it.key] = (mode, id_b, id_c, it.m, it.channels)
        todo = [it for it in items if it.slot is not None and self._sig.get(it.key) != want[it.key]]
        back = [k for k in self._sig if k not in want]          # merged before, not merged by this recipe
        if not todo and not back:
            return 0
        if self.before_write is not None:
            self.before_write()
        scratch = ck._Scratch()
        done: list = []          # (key, previous signature) in write order
        total = len(todo) + len(back)
        try:
            with torch.no_grad():
                for n, it in enumerate(todo):
                    if cancel is not None and cancel():
                        raise LiveMergeCancelled("live merge cancelled; the loaded model is as before")
                    value = self._compute_into(it, mode, id_b, id_c, scratch)
                    if it.key not in self._orig:
                        self._orig[it.key] = self.tensors[it.key].detach().to("cpu", copy=True)
                    done.append((it, self._sig.get(it.key)))
                    self._sig[it.key] = _DIRTY
                    self._put(it.key, value)
                    self._sig[it.key] = want[it.key]
                    if progress is not None:
                        progress(n + 1, total)
                for n, key in enumerate(back):
                    done.append((key, self._sig[key]))
                    self._sig[key] = _DIRTY
                    self.tensors[key].copy_(self._orig[key])
                    del self._sig[key]
                    if progress is not None:
                        progress(len(todo) + n + 1, total)
        except BaseException:
            self._roll_back(done, scratch)
            raise
        finally:
            if done and self.after_write is not None:
                self.after_write([getattr(d[0], "key", d[0]) for d in done])
        return len(todo)

    def _roll_back(self, done, scratch) -> None:
        """Put back each tensor this apply wrote: A's clone, or the previous recipe's result recomputed
        (deterministic: the same bits). If that cannot be computed, the tensor gets A back and the whole
        live merge is dropped (restored) so that nothing is half merged."""
        import torch

        fallback = False
        with torch.no_grad():
            for entry, prev in reversed(done):
                key = getattr(entry, "key", entry)
                if prev is None:
                    self.tensors[key].copy_(self._orig[key])
                    self._sig.pop(key, None)
                    continue
                pmode, pb, pc, pm, pch = prev
                item = ck._Item(key, self.tensors[key].dtype, tuple(self.tensors[key].shape), slot=-1, m=pm,
                                channels=pch)
                try:
                    self._put(key, self._compute_into(item, pmode, pb, pc, scratch))
                    self._sig[key] = prev
                except BaseException:
                    fallback = True
                    break
            if fallback:
                for key in list(self._sig):
                    self.tensors[key].copy_(self._orig[key])
                self._sig.clear()
                self.active = None

    def _close_unused(self) -> None:
        used = {s[1] for s in self._sig.values()} | {s[2] for s in self._sig.values()}
        for ident in [i for i in self._readers if i not in used]:
            self._readers.pop(ident).close()


_DIRTY = ("<being written>",)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _live_producer(t, out_dt):
    def produce():
        flat = t.detach().reshape(-1)
        for i in range(0, flat.numel(), ck._CHUNK_ELEMS):
            yield flat[i:i + ck._CHUNK_ELEMS].to("cpu").to(out_dt)
    return produce
