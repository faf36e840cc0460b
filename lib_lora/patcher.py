"""Merge LoRA deltas into the live weights, exactly reversibly (docs/spec/webui_integration.md §4, rules c–f).

Every touched layer holds W0 + Σ mᵢ·ΔWᵢ, computed in fp32 on the weight's device from the exact backup W0
and written with one cast. A layer is rewritten only when its contribution set (network, module, dyn,
effective multiplier — which folds te/unet, block vector and start/stop gate) changed; a layer that is
no longer touched gets its backup copied back (never subtracted). No forward hooks: sampling runs on
plain weights.

Backups are exact clones (same dtype) on `backup_device`, by default the CPU: they are needed only when
a layer changes, and on a GPU they would cost as much memory as the touched weights (see bench/README.md).

What is written per module ("term"): plain LoRA/LoCon (linear in their factors) are written from the
factors, W = W0 + m·(s·up) @ down as one fused fp32 addmm, with no dense ΔW built or cached (unless
`dense_lowrank`: then as a cached dense ΔW where the budget admits it); LoKr from its
two Kronecker factors (one broadcast addcmul, cached); LoHa as a cached dense ΔW where the budget admits it,
else from its four factors in cache-sized row blocks (patch_terms.Hada: no ΔW-sized memory, so a budget of 0
holds no more than the backups); everything else from a dense fp32 ΔW (cached when expensive: Tucker, DoRA, OFT/BOFT,
GLoRA; recomputed when a cast or a product with W0 is all it costs: full, norm, IA3). bench/apply_webui_budget.py measures each against the memory-copy bound.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from lib_lora.algos import Delta, algorithm_of, compute_delta
from lib_lora.delta_cache import AUTO, DeltaCache, network_identity
from lib_lora.errors import ArchitectureMismatch
from lib_lora.network import LoraNetwork, mismatch_message
from lib_lora.patch_terms import HALF, Dense, Hada, Kron, LowRank, fits

DEFAULT_CACHE_BYTES = AUTO
_DIRTY = ("<being written>",)  # signature of a layer whose write has started but not finished


@dataclass
class ActiveLora:
    network: LoraNetwork
    te: float = 1.0
    unet: float = 1.0
    blocks: list[float] | None = None  # 26 slots, None = all 1
    dyn: int | None = None
    start: int | None = None       # 1-based sampling steps, docs/spec/prompt_syntax.md §2.4
    stop: int | None = None
    listed: list[bool] | None = None   # 26 bools: slots the user's weight format listed (docs/spec/blocks.md §2.5)
    elements: dict[str, float] | None = None  # canonical layer → block weight replacing blocks[slot] (lbwe=)

    @property
    def gated(self) -> bool:
        return self.start is not None or self.stop is not None


@dataclass
class LoraReport:
    name: str
    applied: int = 0                # modules merged with a non-zero multiplier
    zero: int = 0                   # modules at multiplier 0 (block weight 0 or gated off)
    outside: int = 0                # U-Net modules outside the block table (unet multiplier only)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (module key, reason)
    slots_used: set[int] = field(default_factory=set)
    unlisted: list[int] = field(default_factory=list)            # used slots the weight format did not list
    notes: list[tuple[str, str]] = field(default_factory=list)   # (module key, note): applied, with a caveat
    error: str | None = None
    active: ActiveLora | None = None  # the ActiveLora this report is about


@dataclass
class ApplyReport:
    loras: list[LoraReport] = field(default_factory=list)
    layers_written: int = 0
    layers_restored: int = 0
    layers_kept: int = 0
    deltas_computed: int = 0        # dense or Kronecker contributions built this apply
    cache_hits: int = 0
    factored: int = 0               # LoRA/LoCon modules written straight from their factors (never cached)
    failed_layers: list[tuple[str, str]] = field(default_factory=list)  # (layer, error): restored to the original
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.loras if r.error]


def gated_off(active: ActiveLora, step: int | None) -> bool:
    """LBW rule on the 0-based sampling step: off while step ≤ start−2, and once step > stop−2."""
    if step is None:
        return False
    if active.start is not None and step <= active.start - 2:
        return True
    return active.stop is not None and step > active.stop - 2


def effective_multiplier(active: ActiveLora, module, step: int | None = None) -> float:
    """docs/spec/prompt_syntax.md §3: te×w[BASE] for the text encoder, unet×w[block] in the table, unet outside;
    an elemental weight of the module's layer (lbwe=) replaces w."""
    slot = module.slot
    w = active.elements.get(getattr(module, "layer", None)) if active.elements else None
    if module.is_te:
        if w is None:
            w = 1.0 if active.blocks is None else active.blocks[0]
        return float(active.te) * float(w)
    if gated_off(active, step):
        return 0.0
    if w is None:
        if slot is None or active.blocks is None:
            return float(active.unet)
        w = active.blocks[slot]
    return float(active.unet) * float(w)


class Patcher:
    def __init__(self, host, cache_bytes: int = DEFAULT_CACHE_BYTES, backup_device="cpu", compute=None,
                 one_shot: bool = False, dense_lowrank: bool | str = False):
        """`one_shot`: apply once and never restore (bake): no backup outlives its layer's write.
        `dense_lowrank`: also cache LoRA/LoCon as a dense ΔW (weight dtype on fp16/bf16) where it fits the budget,
        from a module's second write on (its first apply is from the factors: no ΔW built for one generation);
        "auto": only on fp16/bf16 weights (see _dense_for).
        A change is then one fused add instead of a rank-r GEMM per layer: on one CPU core 1.3-2.9× the
        memory-copy bound instead of 2-8×, for as much memory again as the backups (bench/README.md). Off by
        default here (bake, tools); the WebUI turns it on by a setting (on by default there: the AUTO budget
        only admits what free memory allows)."""
        self.host = host
        self.one_shot = one_shot
        self.dense_lowrank = dense_lowrank
        self.cache = DeltaCache(cache_bytes, device=host.device)
        self.backup_device = torch.device(backup_device) if backup_device is not None else None
        self._compute = compute
        self._backups: dict[str, list] = {}     # layer → [(w0, b0)] per part, exact clones
        self._current: dict[str, tuple] = {}    # layer → signature of what it holds now
        self._failed: dict[tuple, str] = {}     # (network id, module key, dyn) → reason
        self._actives: list = []
        self._step: int | None = None
        self._scratch_buf: torch.Tensor | None = None
        self._lowrank_seen: set = set()          # LoRA/LoCon keys written once already (dense_lowrank)

    # -- public -----------------------------------------------------------------------------------
    def apply(self, actives, step: int | None = None) -> ApplyReport:
        """Make the model hold exactly `actives` (replaces the previous state). `step`: 0-based
        sampling step for start=/stop= gating; None = ungated (bake, conditioning)."""
        t0 = time.perf_counter()
        rep = ApplyReport()
        plan = self._plan(list(actives), step, rep)
        # admission: what this apply needs is never evicted to make room for another entry of it
        self.cache.protect({(c[0], c[1], c[3]) for contribs in plan.values() for c in contribs},
                           device=self.host.device)
        t1 = time.perf_counter()
        compute_s = [0.0]
        with torch.no_grad():
            for layer in [n for n in self._current if n not in plan]:
                self._restore_layer(layer)
                rep.layers_restored += 1
            t2 = time.perf_counter()
            for layer, contribs in plan.items():
                sig = tuple(c[:5] for c in contribs)
                if self._current.get(layer) == sig:
                    rep.layers_kept += 1
                    continue
                try:
                    self._write_layer(layer, contribs, rep, compute_s)
                except Exception as exc:  # e.g. out of memory: never leave a half-written layer
                    self._restore_layer(layer)
                    rep.failed_layers.append((layer, f"{type(exc).__name__}: {exc}"))
                    continue
                except BaseException:
                    # Ctrl-C / SystemExit: put the layer back now; if that is interrupted too, the layer
                    # stays marked _DIRTY in _current, so restore() (or the next apply) still copies it back.
                    self._restore_layer(layer)
                    raise
                self._current[layer] = sig
                rep.layers_written += 1
        t3 = time.perf_counter()
        self._actives, self._step = list(actives), step
        rep.seconds = {"plan": t1 - t0, "restore": t2 - t1, "deltas": compute_s[0],
                       "write": t3 - t2 - compute_s[0], "total": t3 - t0}
        return rep

    def set_step(self, step: int) -> ApplyReport | None:
        """Switch U-Net deltas of start=/stop= LoRAs; only layers whose multiplier changes are touched."""
        if step == self._step or not any(a.gated for a in self._actives):
            self._step = step
            return None
        return self.apply(self._actives, step=step)

    def restore(self) -> None:
        """Bit-exact originals everywhere (backups kept for the next apply)."""
        with torch.no_grad():
            for layer in list(self._current):
                self._restore_layer(layer)
        self._actives, self._step = [], None

    def forget(self, host=None) -> None:
        """The model was (re)loaded: drop backups, state and deltas without touching weights."""
        self._backups.clear()
        self._current.clear()
        self._failed.clear()
        self.cache.clear()
        self._lowrank_seen.clear()
        self._scratch_buf = None
        self._actives, self._step = [], None
        if host is not None:
            self.host = host

    @property
    def patched_layers(self) -> list[str]:
        return list(self._current)

    # -- planning ---------------------------------------------------------------------------------
    def _plan(self, actives, step, rep: ApplyReport) -> dict[str, list]:
        plan: dict[str, list] = {}
        host_arch = self.host.arch
        for active in actives:
            net = active.network
            lrep = LoraReport(net.name, active=active)
            rep.loras.append(lrep)
            net_arch = net.arch or "unknown"
            if net_arch != "unknown" and host_arch not in (None, "unknown") and net_arch != host_arch:
                lrep.error = str(ArchitectureMismatch(mismatch_message(lrep.name, net_arch, host_arch)))
                continue
            ident = network_identity(net)
            for key, mod in net.modules.items():
                ref = self.host.get(mod.layer)
                if ref is None:
                    lrep.skipped.append((key, f"layer {mod.layer} is not in the model"))
                    continue
                qkv = mod.qkv
                if qkv is not None and not ref.is_qkv:
                    lrep.skipped.append((key, f"layer {mod.layer} has no fused q/k/v"))
                    continue
                fail = self._failed.get((ident, key, active.dyn))
                if fail:
                    lrep.skipped.append((key, fail))
                    continue
                slot = mod.slot
                if slot is None:
                    lrep.outside += 1
                else:
                    lrep.slots_used.add(slot)
                m = effective_multiplier(active, mod, step)
                if m == 0.0:
                    lrep.zero += 1
                    continue
                plan.setdefault(mod.layer, []).append((ident, key, qkv, active.dyn, m, mod, lrep))
                lrep.applied += 1
            if active.listed is not None:
                lrep.unlisted = sorted(s for s in lrep.slots_used if not active.listed[s])
        return plan

    # -- writing ----------------------------------------------------------------------------------
    def _backup(self, layer: str, ref) -> list:
        b = self._backups.get(layer)
        if b is None and self.one_shot:
            # No copy: every delta of the layer is computed before its first write, so the live
            # tensors still hold W0 whenever they are read as W0.
            b = self._backups[layer] = [(w.detach(), None if bias is None else bias.detach())
                                        for w, bias in ref.part_tensors()]
        if b is None:
            b = [(self._clone(w), None if bias is None else self._clone(bias)) for w, bias in ref.part_tensors()]
            self._backups[layer] = b
        return b

    def _clone(self, t: torch.Tensor) -> torch.Tensor:
        """Exact copy (same dtype) on the backup device; pinned when it backs a GPU weight (faster copy back)."""
        dev = self.backup_device if self.backup_device is not None else t.device
        c = t.detach().to(dev, copy=True)
        if c.device.type == "cpu" and t.device.type == "cuda":
            try:
                c = c.pin_memory()
            except RuntimeError:  # pinned memory exhausted: a plain copy is still exact
                pass
        return c

    def _restore_layer(self, layer: str) -> None:
        ref = self.host.get(layer)
        backups = self._backups.get(layer)
        if ref is not None and backups is not None:
            for (w, bias), (w0, b0) in zip(ref.part_tensors(), backups):
                w.copy_(w0)
                if bias is not None and b0 is not None:
                    bias.copy_(b0)
        self._current.pop(layer, None)

    def _write_layer(self, layer: str, contribs: list, rep: ApplyReport, compute_s: list) -> None:
        ref = self.host[layer]
        parts = ref.part_tensors()
        backups = self._backup(layer, ref)
        # Tracked before the first byte is written: whatever interrupts the write, restore() knows the layer,
        # and the next apply never takes a half-written layer for one it can keep.
        self._current[layer] = _DIRTY
        terms = []
        bases = _Bases(parts, backups)
        for ident, key, qkv, dyn, m, mod, lrep in contribs:
            t = time.perf_counter()
            term = self._term(ident, key, dyn, mod, ref, qkv, bases, rep, lrep)
            compute_s[0] += time.perf_counter() - t
            if term is not None:
                terms.append((qkv, m, term))
        per_part: list[list] = [[] for _ in parts]  # (rows in the part, rows of the term, m, term)
        for qkv, m, term in terms:
            for part, rows, drows in ref.locate(qkv):
                per_part[part].append((rows, drows, m, term))
        for (w, b), (w0, b0), items in zip(parts, backups, per_part):
            self._write_weight(w, w0, items)
            if b is not None and b0 is not None:
                self._write_bias(b, b0, [(r, term.bias[dr], m) for r, dr, m, term in items
                                          if term.bias is not None])
        if self.one_shot:
            del self._backups[layer]

    def _write_weight(self, live, w0, items) -> None:
        """live ← W0 + Σ m·term, in fp32 and cast once. fp32 weights are written in place, the first term fused
        with the copy of W0 (addmm/add/addcmul with out=); others go through one reused fp32 scratch buffer.
        (Row chunks sized for the CPU cache were measured slower here: many small GEMMs.)"""
        fp32 = live.dtype == torch.float32
        src = w0 if w0.device == live.device else w0.to(live.device)
        todo = [(rows, *drows.indices(term.rows)[:2], m, term) for rows, drows, m, term in items]
        if not fp32 and len(todo) == 1 and todo[0][0] == slice(None) and live.is_contiguous() \
                and src.is_contiguous() and todo[0][4].add_from(src, live, *todo[0][1:4]):
            return  # one fused read-read-write in the weight dtype, no fp32 scratch (Dense.add_from)
        acc = live if fp32 else self._scratch(live.numel(), live.device).view(live.shape)
        if not (fp32 and src.data_ptr() == live.data_ptr()):  # one_shot fp32: the "backup" is live itself
            first = todo[0] if todo else None
            if first is not None and first[0] == slice(None) and acc.is_contiguous() and src.is_contiguous() \
                    and first[4].add_from(src, acc, first[1], first[2], first[3]):
                todo = todo[1:]
            else:
                acc.copy_(src)
        for rows, t0, t1, m, term in todo:
            target = acc[rows]
            if target.is_contiguous():
                term.add_to(target, t0, t1, m)
            else:
                d = term.dense()
                if d is not None:
                    target.add_(d[t0:t1], alpha=m)
        if not fp32:
            live.copy_(acc)

    def _write_bias(self, live, b0, adds) -> None:
        fp32 = live.dtype == torch.float32
        acc = live if fp32 else self._scratch(live.numel(), live.device).view(live.shape)
        src = b0 if b0.device == live.device else b0.to(live.device)
        if not (fp32 and src.data_ptr() == live.data_ptr()):
            acc.copy_(src)
        for rows, d, m in adds:
            acc[rows].add_(d, alpha=m)
        if not fp32:
            live.copy_(acc)

    def _scratch(self, numel: int, device) -> torch.Tensor:
        buf = self._scratch_buf
        if buf is None or buf.numel() < numel or buf.device != torch.device(device):
            buf = self._scratch_buf = torch.empty(numel, dtype=torch.float32, device=device)
        return buf[:numel]

    def _term(self, ident, key, dyn, mod, ref, qkv, bases, rep, lrep):
        """What to write for one module: factors for LoRA/LoCon, else a (cached when expensive) delta."""
        ckey = (ident, key, dyn)
        shape = ref.target_shape(qkv)
        device = ref.part_tensors()[0][0].device
        algo = algorithm_of(mod)
        kind = algo.compact_kind if algo is not None else None
        if kind == "lowrank":
            try:
                f = algo.compact(mod, dyn, device)
                if f is not None and fits(f[0].shape[0], f[1].shape[1], shape):
                    # dense only from a module's second write on (a change, a sweep): a single generation
                    # never pays the ΔW build or its memory
                    if self._dense_for(ref) and ckey in self._lowrank_seen:
                        term = self._dense_lowrank(ckey, f, shape, ref, rep)
                        if term is not None:
                            return term
                    self._lowrank_seen.add(ckey)
                    rep.factored += 1
                    return LowRank(*f, shape)
            except Exception:
                pass  # the dense path below names what is wrong with the module
        cached = self.cache.get(ckey)
        if cached is not None:
            rep.cache_hits += 1
            return cached
        if kind == "hada":
            term = self._hada(ckey, algo, mod, dyn, device, shape, ref, rep)
            if term is not None:
                return term
        base_w, base_b = bases.get(ref, qkv)
        try:
            term = None
            f = algo.compact(mod, dyn, device) if kind == "kron" else None
            if f is not None and fits(f[0].shape[0] * f[1].shape[0], f[0].shape[1] * f[1].shape[1], shape):
                term = Kron(*f, shape)
            if term is None:
                delta = self._compute_fn()(mod, base_w, base_b, dyn=dyn)
                if delta.bias is not None and base_b is None:
                    # A1111 would add a bias Parameter; we never change the module structure.
                    delta = type(delta)(delta.weight, None)
                    lrep.notes.append((key, "bias difference ignored: the layer has no bias"))
                _check_shape(delta, base_w, base_b)
                term = Dense(delta, ref.part_tensors()[0][0].dtype)
        except Exception as exc:  # one bad module never stops the others
            reason = f"cannot apply: {exc}"
            self._failed[ckey] = reason
            lrep.skipped.append((key, reason))
            lrep.applied -= 1
            return None
        rep.deltas_computed += 1
        if algo is None or algo.cache:
            self.cache.put(ckey, term)
        return term

    def _dense_for(self, ref) -> bool:
        """dense_lowrank: True, False, or "auto" = only on fp16/bf16 weights. There the rank-r product in fp32
        costs 6-9× an fp16 copy against 1.7-3.4× for the dense add; on fp32 weights the addmm already runs at
        1.4-2.6× the copy bound, as fast as the dense add, so a dense ΔW would double the memory for nothing
        (bench/README.md)."""
        mode = self.dense_lowrank
        if mode == "auto":
            return ref.part_tensors()[0][0].dtype in HALF
        return bool(mode)

    def _dense_lowrank(self, ckey, f, shape, ref, rep):
        """LoRA/LoCon as a cached dense ΔW when the cache admits it (else None: written from the factors)."""
        cached = self.cache.get(ckey)
        if cached is not None:
            rep.cache_hits += 1
            return cached
        dtype = ref.part_tensors()[0][0].dtype
        numel = int(f[0].shape[0]) * int(f[1].shape[1])
        if not self.cache.admits(numel * (2 if dtype in HALF else 4)):
            return None
        term = Dense(Delta((f[0] @ f[1]).reshape(shape), None), dtype)
        if not self.cache.put(ckey, term):
            return None
        rep.deltas_computed += 1
        return term

    def _hada(self, ckey, algo, mod, dyn, device, shape, ref, rep):
        """LoHa whose dense ΔW the cache does not admit: its factors, written in row blocks (Hada), never a full
        ΔW in memory. None: build (and cache) the dense ΔW as for any other algorithm."""
        try:
            f = algo.compact(mod, dyn, device)
        except Exception:
            return None  # the dense path names what is wrong with the module
        if f is None or not fits(f[0].shape[0], f[1].shape[1], shape):
            return None
        numel = int(f[0].shape[0]) * int(f[1].shape[1])
        if self.cache.admits(numel * (2 if ref.part_tensors()[0][0].dtype in HALF else 4)):
            return None
        rep.factored += 1
        return Hada(*f, shape)

    def _compute_fn(self):
        return self._compute if self._compute is not None else compute_delta


class _Bases:
    """Original weights in fp32 on the weight's device, made only when an algorithm needs one."""

    def __init__(self, parts, backups):
        self.parts, self.backups = parts, backups
        self._w: dict = {}

    def _part(self, i):
        if i not in self._w:
            (w, b), (w0, b0) = self.parts[i], self.backups[i]
            self._w[i] = (w0.to(w.device, torch.float32),
                          None if b0 is None or b is None else b0.to(b.device, torch.float32))
        return self._w[i]

    def get(self, ref, qkv):
        pieces = ref.locate(qkv)
        ws = [self._part(p)[0][r] for p, r, _ in pieces]
        bs = [self._part(p)[1] for p, _, _ in pieces]
        base_b = None if any(b is None for b in bs) else [b[r] for b, (_, r, _) in zip(bs, pieces)]
        if len(pieces) == 1:
            return ws[0], None if base_b is None else base_b[0]
        return torch.cat(ws), None if base_b is None else torch.cat(base_b)


def _check_shape(delta, base_w, base_b) -> None:
    if delta.weight is not None and tuple(delta.weight.shape) != tuple(base_w.shape):
        raise ValueError(f"delta shape {tuple(delta.weight.shape)} does not match weight {tuple(base_w.shape)}")
    if delta.bias is not None and (base_b is None or tuple(delta.bias.shape) != tuple(base_b.shape)):
        raise ValueError("bias delta does not match the layer's bias")
