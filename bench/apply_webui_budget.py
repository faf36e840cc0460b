"""Weight and preset changes at the WebUI's default delta-cache budget (AUTO), fp32 and fp16 models.

    .venv/bin/python bench/apply_webui_budget.py [--scale 1] [--rank 32] [--algos lora,locon,loha,lokr]
                                                 [--dtypes fp32,fp16] [--threads 1] [--cache-mb -1]
                                                 [--dense-lowrank]

Model: every U-Net and CLIP-L layer of SD1.5 at its real shape (`--scale 2` halves the channel widths for a
quicker run), random weights, built from the shape manifest in tests/fixtures (no download, no diffusers).
LoRAs (tests/factory.py): LoRA and LoHa on the kohya default set (attention, linear, 1×1 convs), LoCon on
every Linear and conv layer including the 3×3 convs, LoKr on the kohya default set.

Per LoRA and dtype, one patcher at the default budget runs: first apply at 1.0, then the changes 0.3, 0.6,
0.9 (an X/Y/Z weight axis) and a preset (`face`). Each change prints its time against the first apply
(target ≤ 0.2), against the memory-copy bound of the layers it rewrote (one read + one write of those weights
in their dtype, measured here; target ≤ 1.5), against the built-in Lora's scheme for the same change
(restore every touched layer from its backup, recompute each module's delta, add it: what AUTOMATIC1111 does
on every change), and its cache hits. Memory: LoRA Studio's own overhead (exact backups + delta cache +
scratch) against the built-in scheme's (its backups of the same layers).
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SPECS = {  # name → factory kwargs (rank filled in from --rank)
    "lora": dict(algo="lora", family="kohya"),
    "locon": dict(algo="locon", family="lycoris"),
    "loha": dict(algo="loha", family="lycoris"),
    "lokr": dict(algo="lokr", family="lycoris"),
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
FACE = [1, 0, 0, 0, 0, 0, 0, 0, 0.8, 1, 1, 0.2, 0, 0, 0, 0, 0]


def _scaled_factory(scale: int):
    """tests.factory makes LoRAs for the manifest's shapes; with --scale, for the scaled model's shapes."""
    from tests import factory
    from tests.models import scale_dim

    if scale > 1 and not getattr(factory._fixture_layers, "scaled", False):
        full = factory._fixture_layers

        def scaled(model):
            return {k: tuple(scale_dim(d, scale) if i < 2 else d for i, d in enumerate(s))
                    for k, s in full(model).items()}
        scaled.scaled = True
        factory._fixture_layers = scaled
    return factory


def make_network(name, rank, scale, tmp):
    from lib_lora.network import load_network

    factory = _scaled_factory(scale)
    # layers="all": every layer the algorithm trains (the factory limits lora/loha/lokr to the kohya default set)
    path = factory.write_lora(os.path.join(tmp, f"{name}.safetensors"), model="sd15", rank=rank, seed=3,
                              layers="all", **SPECS[name])
    return load_network(path)


def copy_bound(host, layers) -> float:
    """One read + one write of the given layers' weights in their own dtype, into a reused buffer."""
    if not layers:
        return float("nan")
    parts = [w for n in layers for w, _ in host[n].part_tensors()]
    buf = torch.empty(max(w.numel() for w in parts), dtype=parts[0].dtype)
    buf.fill_(0)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for w in parts:
            buf[: w.numel()].view(w.shape).copy_(w)
        best = min(best, time.perf_counter() - t)
    return best


def gemm_floor(net) -> float:
    """The arithmetic floor of an exact from-factors change of a LoRA/LoCon: only the fp32 products up·down of
    every low-rank module, into one reused buffer (no read of W0, no add, no cast, no Python bookkeeping beyond
    the loop). NaN for a network with no low-rank module. Any exact rewrite from factors costs at least this."""
    from lib_lora.algos import algorithm_of

    pairs = []
    for mod in net.modules.values():
        algo = algorithm_of(mod)
        if algo is None or algo.compact_kind != "lowrank":
            continue
        f = algo.compact(mod, None, "cpu")
        if f is not None:
            pairs.append((f[0].contiguous(), f[1].contiguous()))
    if not pairs:
        return float("nan")
    buf = torch.empty(max(u.shape[0] * d.shape[1] for u, d in pairs), dtype=torch.float32)
    best = float("inf")
    for _ in range(2):
        t = time.perf_counter()
        for u, d in pairs:
            torch.mm(u, d, out=buf[: u.shape[0] * d.shape[1]].view(u.shape[0], d.shape[1]))
        best = min(best, time.perf_counter() - t)
    return best


def builtin_change(host, net, m, blocks, backups):
    """AUTOMATIC1111's scheme for one change: every touched layer back from its backup, every module's delta
    recomputed in fp32 and added, cast to the weight dtype. `backups` (layer → (w, b) clones) persists across
    changes, like the built-in's network_weights_backup."""
    from lib_lora.algos import compute_delta
    from lib_lora.patcher import ActiveLora, effective_multiplier

    active = ActiveLora(net, m, m, blocks)
    with torch.no_grad():
        for mod in net.modules.values():
            ref = host.get(mod.layer)
            if ref is None:
                continue
            w, b = ref.part_tensors()[0]
            if mod.layer not in backups:
                backups[mod.layer] = (w.detach().to("cpu", copy=True),
                                      None if b is None else b.detach().to("cpu", copy=True))
        for layer, (w0, b0) in backups.items():
            w, b = host[layer].part_tensors()[0]
            w.copy_(w0)
            if b is not None and b0 is not None:
                b.copy_(b0)
        for mod in net.modules.values():
            ref = host.get(mod.layer)
            if ref is None:
                continue
            mm = effective_multiplier(active, mod)
            if mm == 0:
                continue
            w = ref.weight if mod.qkv is None else ref.qkv_rows(mod.qkv)
            d = compute_delta(mod, w.float(), None)
            w.copy_(w.float() + mm * d.weight)


def restore_builtin(host, backups):
    with torch.no_grad():
        for layer, (w0, b0) in backups.items():
            w, b = host[layer].part_tensors()[0]
            w.copy_(w0)
            if b is not None and b0 is not None:
                b.copy_(b0)


def nbytes(ts) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


def run_one(host, net, dtype_name, builtin: bool, dense_lowrank: bool = False, cache_bytes: int = -1):
    from lib_lora.blocks import expand
    from lib_lora.patcher import ActiveLora, Patcher

    p = Patcher(host, cache_bytes, dense_lowrank=dense_lowrank)   # the WebUI's default: -1 = AUTO budget
    written = []
    orig_write, orig_restore = p._write_layer, p._restore_layer

    def rec_write(layer, *a):
        written.append(layer)
        return orig_write(layer, *a)

    def rec_restore(layer):
        written.append(layer)
        return orig_restore(layer)
    p._write_layer, p._restore_layer = rec_write, rec_restore

    t = time.perf_counter()
    first = p.apply([ActiveLora(net, 1.0, 1.0)])
    t_first = time.perf_counter() - t
    touched = list(p.patched_layers)
    bound_all = copy_bound(host, touched)
    floor = gemm_floor(net)
    vec, _ = expand(FACE)
    changes = [("weight 0.3", 0.3, None), ("weight 0.6", 0.6, None), ("weight 0.9", 0.9, None),
               ("preset face @0.9", 0.9, vec)]
    rows = []
    for label, m, blocks in changes:
        written.clear()
        t = time.perf_counter()
        rep = p.apply([ActiveLora(net, m, m, blocks)])
        dt = time.perf_counter() - t
        bound = bound_all if set(written) >= set(touched) else copy_bound(host, sorted(set(written)))
        rows.append((label, dt, bound, rep))
    ours_mem = sum(nbytes(x for pair in b for x in pair) for b in p._backups.values()) + p.cache.bytes + \
        (0 if p._scratch_buf is None else nbytes([p._scratch_buf]))
    cache_bytes = p.cache.max_bytes
    held = p.cache.bytes
    p.restore()
    p.forget()
    gc.collect()

    b_rows, b_mem = [], 0
    if builtin:
        backups: dict = {}
        builtin_change(host, net, 1.0, None, backups)   # its first apply (backups taken)
        for label, m, blocks in changes:
            t = time.perf_counter()
            builtin_change(host, net, m, blocks, backups)
            b_rows.append(time.perf_counter() - t)
        b_mem = sum(nbytes(pair) for pair in backups.values())
        restore_builtin(host, backups)
        del backups
        gc.collect()

    summary = dict(name=net.name, dtype=dtype_name, copy=max(dt / bound for _, dt, bound, _ in rows[:3]),
                   builtin=max(dt / b for (_, dt, _, _), b in zip(rows[:3], b_rows)) if b_rows else float("nan"),
                   memory=ours_mem / b_mem if b_mem else float("nan"),
                   hits=rows[1][3].cache_hits, factored=rows[1][3].factored, floor=floor / bound_all)
    n_mod = len(net.modules)
    print(f"\n{net.name} ({n_mod} modules, {len(touched)} layers, {dtype_name}): first apply {t_first:.2f} s "
          f"({first.factored} from factors, {first.deltas_computed} deltas computed); budget "
          f"{cache_bytes / 2**30:.1f} GiB ({'AUTO' if p.cache.auto else 'fixed'}), cache holds {held / 2**20:.0f} MiB")
    print(f"  {'change':<18} {'time s':>7} {'/first':>7} {'/copy':>7} {'/built-in':>9} {'hits':>5} {'computed':>8} "
          f"{'factored':>8}  (targets: /first ≤ 0.2, /copy ≤ 1.5, /built-in ≤ 0.2)")
    for i, (label, dt, bound, rep) in enumerate(rows):
        b = f"{dt / b_rows[i]:9.3f}" if b_rows else f"{'-':>9}"
        print(f"  {label:<18} {dt:7.3f} {dt / t_first:7.3f} {dt / bound:7.3f} {b} {rep.cache_hits:5d} "
              f"{rep.deltas_computed:8d} {rep.factored:8d}")
    if floor == floor:   # not NaN: a LoRA/LoCon
        print(f"  GEMM floor (only the fp32 products up·down, no W0, no add): {floor:.3f} s = {floor / bound_all:.3f}× "
              f"the copy bound: an exact change from factors costs ≥ copy + this, so /copy ≥ "
              f"{1 + floor / bound_all:.2f} unless the two overlap perfectly (≥ {max(1.0, floor / bound_all):.2f})")
    if b_rows:
        print(f"  built-in scheme per change: {', '.join(f'{x:.2f}' for x in b_rows)} s")
        print(f"  memory overhead: LoRA Studio {ours_mem / 2**20:.0f} MiB (backups + cache + scratch) vs built-in "
              f"{b_mem / 2**20:.0f} MiB (backups): ratio {ours_mem / b_mem:.3f} (target ≤ 1)")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=1, help="divide channel widths by this (1 = real SD1.5 shapes)")
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--algos", default="lora,locon,loha,lokr")
    ap.add_argument("--dtypes", default="fp32,fp16")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = torch default)")
    ap.add_argument("--no-builtin", action="store_true", help="skip the built-in scheme's timings")
    ap.add_argument("--cache-mb", type=int, default=-1, help="delta-cache budget in MiB (-1 = AUTO, the default)")
    ap.add_argument("--dense-lowrank", action="store_true",
                    help="Patcher(dense_lowrank=True): LoRA/LoCon cached as a dense ΔW where the budget admits it")
    ap.add_argument("--modes", default="",
                    help="comma list run side by side on the same model: webui (AUTO budget, dense_lowrank "
                         "'auto': the WebUI's defaults), dense (AUTO, dense_lowrank on), lean (budget 0: the "
                         "built-in's memory), factors (AUTO, dense_lowrank off); default: the one mode "
                         "--cache-mb/--dense-lowrank give")
    args = ap.parse_args(argv)
    modes = {"webui": (-1, "auto"), "dense": (-1, True), "lean": (0, False), "factors": (-1, False)}
    runs = [(m, *modes[m]) for m in args.modes.split(",") if m] or \
        [("args", args.cache_mb if args.cache_mb < 0 else args.cache_mb << 20, args.dense_lowrank)]
    if args.threads:
        torch.set_num_threads(args.threads)
    from lib_lora.host import Host
    from tests.models import build_model

    t0 = time.perf_counter()
    tmp = tempfile.mkdtemp(prefix="lora_budget_")
    nets = {a: make_network(a, args.rank, args.scale, tmp) for a in args.algos.split(",")}
    print(f"SD1.5 layers at scale 1/{args.scale}, rank {args.rank}, torch threads {torch.get_num_threads()}, "
          f"dense_lowrank {args.dense_lowrank}; "
          f"LoRAs written in {time.perf_counter() - t0:.0f} s")
    summaries = []
    for dname in args.dtypes.split(","):
        root = build_model("sd15", scale=args.scale, dtype=DTYPES[dname], seed=1)
        for p in root.parameters():
            p.requires_grad_(False)
        host = Host.from_named_modules(root.named_modules())
        size = sum(p.numel() for p in root.parameters())
        print(f"\n== model {dname}: {size / 1e6:.0f}M weights, {len(host)} layers ==")
        for name, net in nets.items():
            for mode, budget, dense in runs:
                print(f"\n-- mode {mode}: budget {'AUTO' if budget < 0 else budget}, dense_lowrank {dense}")
                out = run_one(host, net, dname, builtin=not args.no_builtin, dense_lowrank=dense, cache_bytes=budget)
                summaries.append(dict(out, mode=mode))
        del root, host
        gc.collect()
    print(f"\nper family (worst of the 0.3/0.6/0.9 changes; targets /copy ≤ 1.5, /built-in ≤ 0.2, memory ≤ 1):")
    print(f"  {'LoRA':<7} {'dtype':<5} {'mode':<8} {'/copy':>6} {'/built-in':>9} {'memory':>7} {'hits':>5} "
          f"{'factored':>8} {'GEMM floor/copy':>15}")
    for r in summaries:
        print(f"  {r['name']:<7} {r['dtype']:<5} {r['mode']:<8} {r['copy']:6.2f} {r['builtin']:9.3f} "
              f"{r['memory']:7.3f} {r['hits']:5d} {r['factored']:8d} {r['floor']:15.2f}")
    print(f"\nwhole run {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
