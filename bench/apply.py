"""Inference patcher benchmark: full-size SD1.5 U-Net + CLIP-L text encoder on CPU, random weights.

    .venv/bin/python bench/apply.py [--rank 32] [--threads N] [--reps 3]

Needs `diffusers` and `transformers` (no download: configs are built here / read from the fixtures).
Prints, from one run, the ratios described in bench/README.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

CLIP_CONFIG = os.environ.get("LORA_STUDIO_CLIP_CONFIG", os.path.join(
    ROOT, "tests", "fixtures", "clip-l-offline", "config.json"))
SD15_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
                 block_out_channels=(320, 640, 1280, 1280),
                 down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                 up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
                 cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)


def build_models():
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with open(CLIP_CONFIG, encoding="utf-8") as f:
        text_cfg = json.load(f)["text_config"]
    text_cfg = {k: v for k, v in text_cfg.items() if k != "model_type"}
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**SD15_UNET).eval()
    te = CLIPTextModel(CLIPTextConfig(**text_cfg)).eval()
    for p in list(unet.parameters()) + list(te.parameters()):
        p.requires_grad_(False)
    return unet, te


def make_locon(rank: int, tmp: str):
    from lib_lora.network import load_network
    from tests.factory import write_lora

    path = write_lora(os.path.join(tmp, "locon32.safetensors"), model="sd15", algo="locon", family="lycoris",
                      rank=rank, layers="all", seed=1)
    return load_network(path)


def _mem_available():
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def naive_apply(host, net, m=1.0):
    """A1111-style reference: per module, back up the layer, compute its delta, add it (no cache, no batching)."""
    from lib_lora.algos import compute_delta

    backups = {}
    with torch.no_grad():
        for mod in net.modules.values():
            ref = host.get(mod.layer)
            if ref is None:
                continue
            w = ref.weight if mod.qkv is None else ref.qkv_rows(mod.qkv)
            if mod.layer not in backups:
                backups[mod.layer] = ref.weight.detach().to("cpu", copy=True)
            d = compute_delta(mod, w.float(), None)
            w.copy_(w.float() + m * d.weight)
    return backups


def cpu_timed(fn):
    """(wall seconds, process CPU seconds): CPU time is what the step costs us, whatever else runs."""
    w, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w, time.process_time() - c


def copy_bound(host, layers) -> float:
    """One read + one write of every touched weight (reused buffer): the floor of any exact rewrite."""
    big = max(host[n].weight.numel() for n in layers)
    buf = torch.empty(big)
    buf.fill_(0)
    t = time.perf_counter()
    for n in layers:
        w = host[n].weight
        buf[: w.numel()].view(w.shape).copy_(w)
    return time.perf_counter() - t


def forward(unet, latents, t, cond):
    with torch.no_grad():
        return unet(latents, t, encoder_hidden_states=cond).sample


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: on a shared 2-core box two threads made the memory-bound "
                         "patching 4x slower; 0 = torch default)")
    ap.add_argument("--reps", type=int, default=2, help="forward passes per side (each ~30-40 s on one core)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    from lib_lora.host import Host
    from lib_lora.patcher import ActiveLora, Patcher

    t_build, (unet, te) = timed(build_models)
    host = Host.from_diffusers(unet, [te])
    tmp = tempfile.mkdtemp(prefix="lora_bench_")
    t_lora, net = timed(lambda: make_locon(args.rank, tmp))
    layers = sorted({m.layer for m in net.modules.values() if m.layer in host})
    touched = sum(host[n].weight.numel() for n in layers)
    need = 2 * touched * 4 + (1 << 30)  # exact backups + delta cache + margin
    avail = _mem_available()
    if avail is not None and avail < need:
        print(f"not enough free memory: need {need / 2**30:.1f} GiB for backups + delta cache, "
              f"{avail / 2**30:.1f} GiB available; close other programs and retry")
        return 1
    print(f"model: SD1.5 U-Net + CLIP-L, {sum(p.numel() for p in unet.parameters()) / 1e6:.0f}M + "
          f"{sum(p.numel() for p in te.parameters()) / 1e6:.0f}M params, arch {host.arch}, {len(host)} layers "
          f"(built in {t_build:.1f} s)")
    print(f"LoRA: rank-{args.rank} LoCon, {len(net.modules)} modules on {len(layers)} layers, "
          f"{touched / 1e6:.0f}M weights touched ({touched * 4 / 2**30:.2f} GiB fp32); torch threads "
          f"{torch.get_num_threads()}")

    # Naive per-module recompute (A1111's scheme), then put the originals back.
    t_naive, backups = timed(lambda: naive_apply(host, net))
    with torch.no_grad():
        for n, w0 in backups.items():
            host[n].weight.copy_(w0)
    del backups
    gc.collect()

    t_copy = min(copy_bound(host, layers) for _ in range(2))
    patcher = Patcher(host, cache_bytes=touched * 4 + (256 << 20))
    t_first, rep_first = timed(lambda: patcher.apply([ActiveLora(net, 1.0, 1.0)]))
    t_mult, rep_mult = timed(lambda: patcher.apply([ActiveLora(net, 0.6, 0.6)]))
    from lib_lora.blocks import expand
    face = [1, 0, 0, 0, 0, 0, 0, 0, 0.8, 1, 1, 0.2, 0, 0, 0, 0, 0]
    vec, _ = expand(face)
    t_preset, rep_preset = timed(lambda: patcher.apply([ActiveLora(net, 0.6, 0.6, vec)]))
    assert rep_mult.deltas_computed == 0 and rep_preset.deltas_computed == 0

    # Sampling step: one U-Net forward at a 64×64 latent, batch 1, with and without the LoRA merged.
    g = torch.Generator().manual_seed(0)
    latents, cond, step = torch.randn(1, 4, 64, 64, generator=g), torch.randn(1, 77, 768, generator=g), torch.tensor(500)
    forward(unet, latents, step, cond)  # warm-up
    with_l, without = [], []  # (wall, process CPU) per forward; order A B B A … cancels drift
    for i in range(args.reps):
        for merged in ((False, True) if i % 2 == 0 else (True, False)):
            if merged:
                patcher.apply([ActiveLora(net, 1.0, 1.0)])
            else:
                patcher.restore()
            (with_l if merged else without).append(cpu_timed(lambda: forward(unet, latents, step, cond)))
    patcher.restore()

    def line(label, value, target=None):
        mark = "" if target is None else f"   (target ≤ {target}: {'OK' if value <= target else 'MISSED'})"
        print(f"  {label:<58} {value:8.3f}{mark}")

    print("\ntimes (s)")
    line("naive per-module recompute (backup + delta + add each)", t_naive)
    line(f"patcher first apply ({rep_first.deltas_computed} deltas computed)", t_first)
    line("  of which delta computation", rep_first.seconds["deltas"])
    line("patcher multiplier change (te/unet 1 → 0.6, cached deltas)", t_mult)
    line("patcher preset change (→ face, cached deltas)", t_preset)
    line("memory-copy bound: one read+write of the touched weights", t_copy)
    line("U-Net forward 64×64, LoRA merged: wall (min of reps)", min(w for w, _ in with_l))
    line("U-Net forward 64×64, no LoRA: wall (min of reps)", min(w for w, _ in without))
    line("U-Net forward 64×64, LoRA merged: process CPU (min)", min(c for _, c in with_l))
    line("U-Net forward 64×64, no LoRA: process CPU (min)", min(c for _, c in without))
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in unet.modules())
    print(f"  forward hooks on the U-Net: {hooks}")
    print("\nratios")
    line("first apply / naive recompute", t_first / t_naive, 1.0)
    line("multiplier change / first apply", t_mult / t_first, 0.2)
    line("preset change / first apply", t_preset / t_first, 0.2)
    line("multiplier change / memory-copy bound", t_mult / t_copy)
    line("first apply / memory-copy bound", t_first / t_copy)
    line("sampling step with LoRA / without (process CPU time)",
         min(c for _, c in with_l) / min(c for _, c in without), 1.01)
    line("sampling step with LoRA / without (wall; noisy on a shared box)",
         min(w for w, _ in with_l) / min(w for w, _ in without))
    print(f"\n(layers rewritten: first {rep_first.layers_written}, multiplier {rep_mult.layers_written}, "
          f"preset {rep_preset.layers_written} + {rep_preset.layers_restored} restored; "
          f"delta cache {patcher.cache.bytes / 2**30:.2f} GiB; whole run {time.perf_counter() - t_start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
