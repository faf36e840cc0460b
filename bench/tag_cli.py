"""`python -m lib_lora tag` end to end (process start, imports, model load, 120 small images, captions
written) against a one-image-at-a-time loop in its own process, same model, same images, one run.

Neither side imports torch (checked: the tag CLI must not pay ~1.3 s for it). The model is a small
WD14-shaped CNN built with the `onnx` helper API (448x448 BGR NHWC input, 10,861 sigmoid outputs, random
weights), so the images and the model are made without torch too. Images: 512x512-ish PNG/JPEG.
Runs alternate loop, pipeline, pipeline, loop (drift cancels) and the totals are compared.

    python bench/tag_cli.py [--images 120] [--reps 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SIZE, N_TAGS = 448, 10861

LOOP = r"""
import sys, time
t0 = time.perf_counter()
from pathlib import Path
from lib_lora.tagger.model import Tagger, resolve_model
from lib_lora.tagger.pipeline import iter_images
from lib_lora.tagger.postprocess import Postprocessor, TagOptions
from lib_lora.tagger.preprocess import load_and_prepare
from lib_lora.tagger import captions
model, folder = sys.argv[1], Path(sys.argv[2])
t = Tagger(resolve_model(model, folder))      # onnxruntime's default session, as single-image taggers use
post = Postprocessor(t.tagset, TagOptions())
for img in iter_images(folder):               # decode, preprocess, infer batch 1, write; next
    r = post(t.infer(load_and_prepare(img, t.size)[None])[0])
    captions.write_caption(captions.caption_path(img, folder), r.tags, "overwrite")
print("torch" in sys.modules, file=sys.stderr)
"""


def build_model(folder: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(0)

    def conv(name, cin, cout, k, s):
        w = (rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)).astype(np.float32)
        return numpy_helper.from_array(w, name), numpy_helper.from_array(np.zeros(cout, np.float32), name + "_b")

    inits, nodes, x = [], [helper.make_node("Transpose", ["input"], ["nchw"], perm=[0, 3, 1, 2]),
                           helper.make_node("Mul", ["nchw", "scale"], ["x0"])], "x0"
    inits.append(numpy_helper.from_array(np.array(1 / 255.0, np.float32), "scale"))
    for i, (cin, cout, k, s) in enumerate([(3, 32, 4, 4), (32, 64, 3, 2), (64, 128, 3, 2), (128, 256, 3, 2)]):
        w, b = conv(f"c{i}", cin, cout, k, s)
        inits += [w, b]
        nodes += [helper.make_node("Conv", [x, w.name, b.name], [f"y{i}"], strides=[s, s],
                                   pads=[k // 2 - (1 if k % 2 == 0 else 0)] * 2 + [k // 2] * 2 if k > 1 else [0] * 4),
                  helper.make_node("Relu", [f"y{i}"], [f"r{i}"])]
        x = f"r{i}"
    head = (rng.standard_normal((256, N_TAGS)) / 16).astype(np.float32)
    bias = np.full(N_TAGS, -4.0, np.float32)
    inits += [numpy_helper.from_array(head, "head"), numpy_helper.from_array(bias, "bias")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["gap"]),
              helper.make_node("Flatten", ["gap"], ["feat"]),
              helper.make_node("MatMul", ["feat", "head"], ["z0"]),
              helper.make_node("Add", ["z0", "bias"], ["z"]),
              helper.make_node("Sigmoid", ["z"], ["output"])]
    g = helper.make_graph(nodes, "cnn",
                          [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
                          [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", N_TAGS])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    folder.mkdir(parents=True, exist_ok=True)
    save(m, str(folder / "model.onnx"))
    with open(folder / "selected_tags.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, name in enumerate(["general", "sensitive", "questionable", "explicit"]):
            w.writerow([9999999 - i, name, 9, 0])
        for i in range(N_TAGS - 4):
            w.writerow([i, f"tag_{i}", 0 if i < 8000 else 4, 0])


def make_images(folder: Path, n: int) -> None:
    from PIL import Image
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        w, h = [(512, 512), (512, 768), (640, 480)][i % 3]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        img = np.stack([np.sin(xx / rng.uniform(20, 90) + c) * np.cos(yy / rng.uniform(20, 90)) for c in range(3)], -1)
        arr = np.clip((img * 0.5 + 0.5) * 230 + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / (f"{i:03d}.png" if i % 2 else f"{i:03d}.jpg"))


def clear(folder: Path) -> None:
    for p in folder.glob("*.txt"):
        p.unlink()


def timed(cmd, env) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t, p.stderr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=120)
    ap.add_argument("--reps", type=int, default=2, help="A B B A rounds")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="tagcli-"))
    model, imgs = work / "cnn", work / "imgs"
    build_model(model)
    make_images(imgs, a.images)
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1")
    py = sys.executable
    loop_cmd = [py, "-c", LOOP, str(model), str(imgs)]
    pipe_cmd = [py, "-c", "import sys; from lib_lora.__main__ import main; rc = main(sys.argv[1:]); "
                "print('torch' in sys.modules, file=sys.stderr); sys.exit(rc)",
                "tag", str(imgs), "--model-dir", str(model), "--existing", "overwrite", "--quiet", "--frequency", "0"]
    timed(loop_cmd, env)                              # warm the file cache and Python's bytecode cache
    loop_t = pipe_t = 0.0
    torch_seen = set()
    for _ in range(a.reps):
        for who in "ABBA":
            clear(imgs)
            dt, err = timed(loop_cmd if who == "A" else pipe_cmd, env)
            torch_seen.add(err.strip().splitlines()[-1])
            if who == "A":
                loop_t += dt
            else:
                pipe_t += dt
    n = a.images * 2 * a.reps
    print(f"{a.images} images ({a.images // 2} PNG, {a.images - a.images // 2} JPEG, ~512 px), model {SIZE} px input, "
          f"{N_TAGS} tags; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"one image at a time (own process): {loop_t / (2 * a.reps):.2f} s per run ({n / loop_t:.1f} images/s)")
    print(f"python -m lib_lora tag:            {pipe_t / (2 * a.reps):.2f} s per run ({n / pipe_t:.1f} images/s)")
    print(f"speed-up: {loop_t / pipe_t:.2f}x (whole processes: start, imports, model load, tagging, writes)")
    print(f"torch imported by either: {'yes' if 'True' in torch_seen else 'no'}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
