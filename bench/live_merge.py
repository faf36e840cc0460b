"""Live merge: re-merge after a block-weight change vs a full merge to a file and reloading it.

    PYTHONPATH=. .venv/bin/python bench/live_merge.py [--scale 1] [--reps 2] [--dir DIR] [--standalone]

Two random fp16 checkpoints with every key of tests/fixtures/sd15_checkpoint_compvis.json (`--scale N`
divides the widths by N) are written to DIR (streamed, one tensor at a time). A "loaded model" holds A's
tensors in memory. Measured in one process, each the minimum over `--reps`:

- baseline: `merge_checkpoints(A, B)` to a file (weighted, per-block weights), then loading that file into the
  model's tensors (what trying another block weight costs without a live merge);
- live: `LiveMerge.apply` with the same weights except one block (OUT05) changed, after a first apply.

`--standalone`: the loaded model is the standalone app's (`lib_lora.ui.merge_live.LoadedModel`: A loaded with
lib_lora.sd in fp32, CUDA when present; full widths only, so `--scale` must be 1), and the baseline's reload is
`lib_lora.sd.load_model` of the merged file, as the app would load it.

Prints the ratio live / baseline (target ≤ 0.2), plus the first full live apply and the restore.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def write_random(path, scale: int, seed: int) -> None:
    import torch

    from lib_lora import fileio
    from tests.models import fixture_keys, scale_dim

    specs = []
    for i, (key, shape) in enumerate(fixture_keys("sd15").items()):
        shape = tuple(scale_dim(d, scale) if j < 2 else d for j, d in enumerate(shape))
        if key.endswith("position_ids"):
            dt = torch.int64
        elif not key.startswith(("model.", "cond_stage_model.", "first_stage_model.")):
            dt = torch.float32
        else:
            dt = torch.float16

        def produce(shape=shape, dt=dt, s=seed * 100_003 + i):
            gen = torch.Generator().manual_seed(s)
            if dt == torch.int64:
                yield torch.arange(shape[-1], dtype=dt).reshape(shape).reshape(-1)
            else:
                yield (torch.randn(shape, generator=gen) * 0.05).to(dt).reshape(-1)
        specs.append((key, dt, shape, produce))
    fileio.atomic_save_safetensors_stream(specs, path, overwrite=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=int, default=1)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dir", default=None)
    ap.add_argument("--standalone", action="store_true", help="the standalone app's loaded model (lib_lora.sd)")
    args = ap.parse_args()
    if args.standalone and args.scale != 1:
        ap.error("--standalone loads the model with lib_lora.sd, which has full widths only: use --scale 1")

    import torch

    from lib_lora import fileio
    from lib_lora.merge.checkpoint import merge_checkpoints
    from lib_lora.merge.live import LiveMerge

    tmp = args.dir or tempfile.mkdtemp(prefix="bench_live_")
    a, b, out = (os.path.join(tmp, f"{n}.safetensors") for n in ("a", "b", "out"))
    t0 = time.perf_counter()
    write_random(a, args.scale, 1)
    write_random(b, args.scale, 2)
    print(f"inputs written in {time.perf_counter() - t0:.1f} s ({os.path.getsize(a) / 2**30:.2f} GiB each)")

    loaded = None
    if args.standalone:
        import gc

        from lib_lora.sd import load_model
        from lib_lora.ui.merge_live import LoadedModel
        loaded = LoadedModel()
        t = time.perf_counter()
        print(loaded.load(a, "a.safetensors"))
        model = None
    else:
        with fileio.MappedTensors(a) as m:
            model = {k: m.get(k).clone() for k in m.keys()}    # the loaded model (in memory)
    w1 = [0.5] * 26
    w2 = list(w1)
    w2[20] = 0.9                                                # OUT05

    def baseline():
        t = time.perf_counter()
        merge_checkpoints(a, b, out, alpha=0.5, block_weights=w2, overwrite=True)
        if args.standalone:                                     # the app loads the merged file
            reloaded = load_model(out)
            del reloaded
        else:
            with torch.no_grad(), fileio.MappedTensors(out) as m:   # "load the merged checkpoint"
                for k, v in model.items():
                    v.copy_(m.get(k))
        return time.perf_counter() - t

    live = loaded() if args.standalone else LiveMerge(model)
    t = time.perf_counter()
    live.apply(b=b, alpha=0.5, block_weights=w1)
    first = time.perf_counter() - t
    lives, bases = [], []
    for _ in range(args.reps):
        t = time.perf_counter()
        live.apply(b=b, alpha=0.5, block_weights=w2)
        lives.append(time.perf_counter() - t)
        live.apply(b=b, alpha=0.5, block_weights=w1)            # back, for the next rep
    t = time.perf_counter()
    live.restore()
    restore = time.perf_counter() - t
    if args.standalone:                                         # one model in memory at a time
        live = loaded = None
        gc.collect()
    for _ in range(args.reps):
        bases.append(baseline())
    os.remove(out)
    lt, bt = min(lives), min(bases)
    print(f"first live apply (every tensor): {first:.2f} s; restore: {restore:.2f} s")
    print(f"live re-merge after one block-weight change: {lt:.2f} s")
    print(f"merge to file + reload: {bt:.2f} s")
    print(f"ratio live / (merge + reload): {lt / bt:.3f} (target <= 0.2)")
    if not args.dir:
        for p in (a, b):
            os.remove(p)
        os.rmdir(tmp)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
