"""Resize time of lib_lora.merge.resize vs the sd-scripts method (full SVD of each module's up·down) on the
same rank-64 SD1.5-shaped LoCon (every Linear and conv layer of U-Net and text encoder, random factors).

Prints, for "to rank 16" and "to sv_fro 0.9": lib_lora's end-to-end time (read, SVDs, write the file), the
baseline's time (product up·down in fp32 and torch.linalg.svd of it, per module, no file I/O: favours the
baseline), their ratio (target ≤ 0.2), modules whose rank differs, and the largest difference of the resized
ΔW (scale included) relative to the module's largest |ΔW| entry. The baseline's SVDs are measured once and
serve both targets (its selection and truncation cost next to nothing; sd-scripts repeats the SVD per run).
Run: .venv/bin/python bench/resize.py [--layers N] [--threads 1]
"""
import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from lib_lora.merge import svd  # noqa: E402
from lib_lora.merge.resize import resize_lora  # noqa: E402
from tests.factory import make_lora  # noqa: E402


def baseline(sd):
    """module → (S, U, Vh, scale, conv) from a full SVD of up·down in fp32, and the seconds it took."""
    out = {}
    t0 = time.perf_counter()
    for k in sd:
        if not k.endswith(".lora_down.weight"):
            continue
        mk = k[: -len(".lora_down.weight")]
        down, up = sd[k], sd[f"{mk}.lora_up.weight"]
        r = down.shape[0]
        w = up.reshape(up.shape[0], -1) @ down.reshape(r, -1)
        U, S, Vh = torch.linalg.svd(w, full_matrices=False)
        out[mk] = (U, S, Vh, float(sd[f"{mk}.alpha"]) / r, down.dim() == 4)
    return out, time.perf_counter() - t0


def compare(base, res_sd, method, param, rank):
    """(modules with another rank, largest relative difference of ΔW)."""
    other, worst = 0, 0.0
    for mk, (U, S, Vh, scale, conv) in base.items():
        want = svd.select_rank(S, len(S), method, param, rank)  # the rule, on the full SVD's whole spectrum
        down = res_sd[f"{mk}.lora_down.weight"].float()
        up = res_sd[f"{mk}.lora_up.weight"].float()
        n = down.shape[0]
        other += n != want
        k = min(n, want)
        ref = scale * (U[:, :k] * S[:k]) @ Vh[:k]
        got = float(res_sd[f"{mk}.alpha"]) / n * (up.reshape(up.shape[0], -1)[:, :k] @ down.reshape(n, -1)[:k])
        worst = max(worst, float((got - ref).abs().max() / max(float(ref.abs().max()), 1e-30)))
    return other, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=None, help="only the first N layers (default: all)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    sd, md = make_lora("sd15", algo="locon", rank=64, layers=a.layers or "all", alpha=32.0)
    n = sum(k.endswith(".lora_down.weight") for k in sd)
    print(f"rank-64 SD1.5 LoCon: {n} modules, {sum(t.numel() for t in sd.values()) / 1e6:.0f} M values; "
          f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "in.safetensors")
        save_file(sd, src, metadata=md)
        base, t_base = baseline(sd)
        print(f"baseline (full SVD of every up·down, fp32): {t_base:.1f} s")
        for label, kw in (("rank 16", dict(rank=16)), ("sv_fro 0.9", dict(rank=64, method="sv_fro", param=0.9))):
            out = os.path.join(d, f"out_{label.replace(' ', '_')}.safetensors")
            t0 = time.perf_counter()
            resize_lora(src, out, **kw)
            t = time.perf_counter() - t0
            other, worst = compare(base, load_file(out), kw.get("method", "none"), kw.get("param"), kw["rank"])
            print(f"{label:>11}: lib_lora {t:.2f} s, ratio {t / t_base:.3f} (target ≤ 0.2), "
                  f"{other} of {n} modules with another rank, max relative ΔW difference {worst:.1e}")


if __name__ == "__main__":
    main()
