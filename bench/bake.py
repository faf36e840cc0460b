"""bake (LoRA → checkpoint) on the streaming path vs a naive reference, full-size SD1.5-shaped fp16 model.

    .venv/bin/python bench/bake.py [--rank 32] [--algo lora] [--reps 2] [--dir DIR]

One random checkpoint with every key of tests/fixtures/sd15_checkpoint_compvis.json (2.1 GB fp16) and one
random LoRA on every U-Net/text-encoder layer a kohya LoRA targets are written to DIR (kept when --dir is
given). Each side runs in a fresh process (torch import included), alternating, medians of --reps; before
each run the previous output is deleted and the page cache synced, outside the timing (before session 7 each
run started by deleting the last run's 2 GB output, still dirty after save_file, which skews both sides):

- bake: `python -m lib_lora bake` as a user runs it (its `main()` called in the child, timed from before any
  import): the checkpoint's body is copied to the output's temporary (file to file, with its disk writeback) while
  torch is imported, then only the patched layers and the header are written (`fileio.prefill`);
- bake, library: `lib_lora.merge.bake.bake_checkpoint` in a process that has torch loaded (the WebUI's case: its
  own head start overlaps only the loading and merging of the LoRAs), timed from after its imports against the
  naive reference's same span;
- naive: what the issue calls the reference: load the whole checkpoint (safetensors load_file), add every
  module's delta in fp32 (W ← (W.float() + ΔW).to(W.dtype)), save_file.
Ratio bake / naive: target ≤ 0.8 (medians over the reps). Peak RssAnon of each side is printed too. save_file
does not fsync while bake does (every write of the project does); a diagnostic line compares bake with the
naive reference plus an fsync of its output, without changing the headline ratio; another compares the library
call with the naive reference, both from after their imports (torch already loaded, as in the WebUI).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.merge import PRELUDE, fresh  # noqa: E402  (the same child clock, RssAnon sampler, start state)

DONE = r"""
t1 = time.perf_counter()
stop.append(1)
print(json.dumps({"seconds": t1 - t0, "after_imports": t1 - t_ready, "peak_anon": max(peak[0], anon())}))
"""
READY = "t_ready = time.perf_counter()\n"   # after the imports of each side

BAKE_CLI = PRELUDE.replace("import torch\ntorch.set_num_threads(1)\n", "") + r"""
import os
from lib_lora.__main__ import main
ckpt, lora, out = sys.argv[1:4]
t_ready = t0   # the CLI's imports are part of what it costs
rc = main(["bake", "--base", ckpt, "--prompt", "<lora:%s:0.8>" % os.path.splitext(os.path.basename(lora))[0],
           "--lora-dir", os.path.dirname(lora), "--out", out, "--overwrite", "--quiet"])
assert rc == 0
""" + DONE

BAKE = PRELUDE + r"""
import os
from lib_lora.merge.bake import bake_checkpoint
ckpt, lora, out = sys.argv[1:4]
""" + READY + r"""
bake_checkpoint(ckpt, "<lora:%s:0.8>" % os.path.splitext(os.path.basename(lora))[0], os.path.dirname(lora), out,
                overwrite=True)
""" + DONE

NAIVE = PRELUDE + r"""
from safetensors.torch import load_file, save_file
from lib_lora.algos import compute_delta
from lib_lora.host import Host
from lib_lora.network import load_network
ckpt, lora, out = sys.argv[1:4]
""" + READY + r"""
sd = load_file(ckpt)
host = Host.from_state_dict(sd)
net = load_network(lora)
for mod in net.modules.values():
    ref = host.get(mod.layer)
    if ref is None:
        continue
    d = compute_delta(mod, ref.weight, ref.bias)
    ref.weight.copy_((ref.weight.float() + 0.8 * d.weight).to(ref.weight.dtype))
    if d.bias is not None and ref.bias is not None:
        ref.bias.copy_((ref.bias.float() + 0.8 * d.bias).to(ref.bias.dtype))
save_file(sd, out)
if sys.argv[4] == "fsync":   # diagnostic: the same durability as bake (every write of the project fsyncs)
    import os
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
""" + DONE


def _run(code, *args) -> dict:
    fresh(args[2])   # no previous output to delete, nothing dirty (save_file leaves 2 GB unsynced)
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=ROOT)
    if r.returncode:
        sys.exit(r.stderr)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--algo", default="lora", choices=("lora", "locon"))
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--dir", help="where to write the model and LoRA (default: a temporary folder, removed after)")
    args = ap.parse_args()

    import torch

    from tests.checkpoints import write_checkpoint
    from tests.factory import write_lora

    tmp = args.dir or tempfile.mkdtemp(prefix="bench-bake-")
    loras = os.path.join(tmp, "loras")
    os.makedirs(loras, exist_ok=True)
    ckpt = os.path.join(tmp, "a.safetensors")
    lora = os.path.join(loras, f"bench_{args.algo}_{args.rank}.safetensors")
    if not os.path.exists(ckpt):
        write_checkpoint(ckpt, "sd15", scale=1, seed=1, dtype=torch.float16)
    if not os.path.exists(lora):
        family = "lycoris" if args.algo == "locon" else "kohya"
        write_lora(lora, "sd15", algo=args.algo, family=family, rank=args.rank, seed=3)
    out = os.path.join(tmp, "baked.safetensors")
    size = os.path.getsize(ckpt)
    print(f"SD1.5-shaped fp16 checkpoint {size / 1e9:.2f} GB, {args.algo} rank {args.rank} "
          f"({os.path.getsize(lora) / 1e6:.0f} MB)")
    bakes, libs, naives, synced, ratios, ratios_synced, ratios_loaded = [], [], [], [], [], [], []
    try:
        for _ in range(args.reps):
            naives.append(_run(NAIVE, ckpt, lora, out, "plain"))
            bakes.append(_run(BAKE_CLI, ckpt, lora, out))
            libs.append(_run(BAKE, ckpt, lora, out))
            synced.append(_run(NAIVE, ckpt, lora, out, "fsync"))
            ratios.append(bakes[-1]["seconds"] / naives[-1]["seconds"])
            ratios_synced.append(bakes[-1]["seconds"] / synced[-1]["seconds"])
            ratios_loaded.append(libs[-1]["after_imports"] / naives[-1]["after_imports"])
            print(f"  rep: naive {naives[-1]['seconds']:.2f} s, bake {bakes[-1]['seconds']:.2f} s, naive + fsync "
                  f"{synced[-1]['seconds']:.2f} s; after imports: bake (library) {libs[-1]['after_imports']:.2f} s, "
                  f"naive {naives[-1]['after_imports']:.2f} s", flush=True)
    finally:
        if os.path.exists(out):
            os.unlink(out)
        if not args.dir:
            shutil.rmtree(tmp)
    b, n, ns = (statistics.median(r["seconds"] for r in rs) for rs in (bakes, naives, synced))
    print(f"medians of {args.reps} reps (ratios: median of the per-rep ratios)")
    print(f"bake (python -m lib_lora bake) {b:.1f} s (peak RssAnon {max(r['peak_anon'] for r in bakes) / 1e6:.0f} MB) vs naive "
          f"load + fp32 add + save {n:.1f} s (peak RssAnon {max(r['peak_anon'] for r in naives) / 1e6:.0f} MB): "
          f"{statistics.median(ratios):.2f}x   (target <= 0.8)")
    print(f"  diagnostic: vs the naive reference followed by an fsync of its output (bake's durability) {ns:.1f} s: "
          f"{statistics.median(ratios_synced):.2f}x")
    bl, nl = (statistics.median(r["after_imports"] for r in rs) for rs in (libs, naives))
    print(f"  diagnostic: the library call timed from after the imports (torch loaded, as in the WebUI) "
          f"{bl:.1f} s vs naive {nl:.1f} s: {statistics.median(ratios_loaded):.2f}x")


if __name__ == "__main__":
    main()
