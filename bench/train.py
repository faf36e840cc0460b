"""Training overhead: LoRA Studio's Trainer against a minimal hand-written LoRA loop on the same tiny SD model,
the same layers, rank, data and step count (CPU, fp32).

Each side runs in its own process (so its peak RSS is its own) and reports steps/s after a warm-up; the
script prints the ratios. Target: trainer time per step ≤ 1.10 × the hand-written loop's, peak memory no more
than 1.10 ×.

    .venv/bin/python bench/train.py [--size tiny|full] [--steps 40] [--batch 4] [--res 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _data(root: Path, res: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from tests.lib_lora.train.helpers import make_images

    return make_images(root / "data", repeats=4, size=(res, res))


def _cfg(tmp: Path, data: Path, a):
    from lib_lora.train.config import config_from_dict

    return config_from_dict({
        "pretrained_model_name_or_path": f"{a.size}-sd1", "train_data_dir": str(data),
        "output_dir": str(tmp / "out"), "output_name": "bench", "caption_extension": ".txt",
        "resolution": str(a.res), "train_batch_size": a.batch, "network_dim": 8, "network_alpha": 8.0,
        "learning_rate": 1e-4, "max_train_steps": a.steps + a.warmup, "seed": 0, "cache_latents": True,
        "network_train_unet_only": True, "max_grad_norm": 0.0})


def _model(a):
    import torch

    from lib_lora.sd import build_model

    return build_model("sd1", a.size, seed=0, dtype=torch.float32)


def run_trainer(a, tmp: Path, data: Path) -> dict:
    from lib_lora.train.trainer import Trainer

    marks = {}

    def progress(p):
        if p.step == a.warmup:
            marks["t0"] = time.perf_counter()
        marks["t1"] = time.perf_counter()

    Trainer(_cfg(tmp, data, a), model=_model(a), progress=progress, log=lambda *_: None).run()
    return {"sec_per_step": (marks["t1"] - marks["t0"]) / a.steps}


def run_baseline(a, tmp: Path, data: Path) -> dict:
    """What one writes by hand: LoRA linears on the same layers, latents and text encoded once, AdamW."""
    import random

    import torch
    from PIL import Image
    from torch import nn

    from lib_lora.train.network import is_target
    from lib_lora.train.trainer import _alphas_cumprod, model_layers

    model = _model(a)
    for part in [model.unet, model.vae, *model.text_encoders]:
        part.requires_grad_(False)
        part.eval()
    params = []
    for layer, m, is_te in model_layers(model):
        if is_te or not is_target(layer, tuple(m.weight.shape), conv=False):
            continue
        conv = isinstance(m, nn.Conv2d)
        fin = m.in_channels if conv else m.in_features
        fout = m.out_channels if conv else m.out_features
        down = nn.Parameter(torch.empty(8, fin))
        nn.init.kaiming_uniform_(down, a=math.sqrt(5))
        up = nn.Parameter(torch.zeros(fout, 8))
        params += [down, up]

        def fwd(x, m=m, down=down, up=up, orig=m.forward, conv=conv):
            if conv:
                d = torch.nn.functional.conv2d(x, down[:, :, None, None])
                return orig(x) + torch.nn.functional.conv2d(d, up[:, :, None, None])
            return orig(x) + (x @ down.t()) @ up.t()
        m.forward = fwd
    opt = torch.optim.AdamW(params, lr=1e-4)
    files = sorted(p for p in (data / "4_toy").iterdir() if p.suffix == ".png")
    imgs = torch.stack([torch.from_numpy(__import__("numpy").asarray(Image.open(f).convert("RGB"),
                                                                     dtype="float32").copy()).permute(2, 0, 1)
                        / 127.5 - 1 for f in files])
    with torch.no_grad():
        mean, logvar = model.vae.encode(imgs)
        lat = (mean + torch.exp(0.5 * logvar) * torch.randn_like(mean)) * model.scale_factor
        ctx, _ = model.encode_text([f.with_suffix(".txt").read_text() for f in files], clip_skip=1,
                                   max_length=75)
    acp = _alphas_cumprod(model)
    rng = random.Random(0)
    for step in range(a.steps + a.warmup):
        if step == a.warmup:
            t0 = time.perf_counter()
        idx = rng.sample(range(len(files)), a.batch)
        x0, c = lat[idx], ctx[idx]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (a.batch,))
        ab = acp[t].view(-1, 1, 1, 1)
        pred = model.unet(ab.sqrt() * x0 + (1 - ab).sqrt() * noise, t, c)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return {"sec_per_step": (time.perf_counter() - t0) / a.steps}


def child(a) -> None:
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        data = _data(tmp, a.res)
        out = (run_trainer if a.child == "trainer" else run_baseline)(a, tmp, data)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="tiny", choices=("tiny", "full"))
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--res", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--child", choices=("trainer", "baseline"))
    a = ap.parse_args()
    if a.child:
        child(a)
        return
    results = {}
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for side in ("baseline", "trainer", "baseline", "trainer"):     # twice each, best of two
        r = subprocess.run([sys.executable, __file__, "--child", side, "--size", a.size, "--steps", str(a.steps),
                            "--warmup", str(a.warmup), "--batch", str(a.batch), "--res", str(a.res),
                            "--threads", str(a.threads)], capture_output=True, text=True, env=env, check=True)
        line = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")][-1]
        res = json.loads(line[7:])
        best = results.get(side)
        if best is None or res["sec_per_step"] < best["sec_per_step"]:
            results[side] = res
    b, t = results["baseline"], results["trainer"]
    print(f"model {a.size} SD1, {a.res}x{a.res}, batch {a.batch}, rank 8 U-Net LoRA, {a.steps} steps, "
          f"{a.threads} thread(s)")
    print(f"hand-written loop: {1 / b['sec_per_step']:.2f} steps/s, peak RSS {b['peak_rss_mb']:.0f} MB")
    print(f"Trainer:           {1 / t['sec_per_step']:.2f} steps/s, peak RSS {t['peak_rss_mb']:.0f} MB")
    print(f"time per step trainer / hand-written: {t['sec_per_step'] / b['sec_per_step']:.3f}  (target ≤ 1.10)")
    print(f"peak RSS trainer / hand-written:      {t['peak_rss_mb'] / b['peak_rss_mb']:.3f}  (target ≤ 1.10)")


if __name__ == "__main__":
    main()
