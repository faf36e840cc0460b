"""Tagging throughput: the folder pipeline vs one image at a time, same model, same images, one run.

The model has the compute of a real WD14 ViT-B/16 tagger at 448 px (12 blocks, width 768, 784 patches,
10,861 outputs; random weights), exported to ONNX here with torch. Images are a dataset-like mix
(2048x1536 JPEG, 1024x1024 PNG, 832x1216 RGBA PNG). Baseline = what single-image taggers do: decode,
preprocess, run batch 1, write, next. Both write identical captions (checked).
To cancel drift on a shared machine the runs are interleaved A B B A over two halves of the images.

    python bench/tag.py [--images 40] [--batch-size 8] [--keep DIR]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from lib_lora.tagger import captions  # noqa: E402
from lib_lora.tagger.model import Tagger, resolve_model  # noqa: E402
from lib_lora.tagger.pipeline import FolderJob, iter_images, run_folder  # noqa: E402
from lib_lora.tagger.postprocess import Postprocessor, TagOptions  # noqa: E402
from lib_lora.tagger.preprocess import load_and_prepare  # noqa: E402

SIZE, PATCH, DIM, DEPTH, HEADS = 448, 16, 768, 12, 12
N_RATING, N_GENERAL, N_CHAR = 4, 8106, 2751


def export_vit(path: Path) -> None:
    import torch
    import torch.nn as nn

    class Block(nn.Module):                        # pre-norm ViT block, written out (exports on any torch)
        def __init__(self):
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
            self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
            self.fc1, self.fc2 = nn.Linear(DIM, 4 * DIM), nn.Linear(4 * DIM, DIM)

        def forward(self, x):
            b, n, _ = x.shape
            q, k, v = self.qkv(self.n1(x)).reshape(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
            att = torch.softmax(q @ k.transpose(-1, -2) * (DIM // HEADS) ** -0.5, dim=-1)
            x = x + self.proj((att @ v).transpose(1, 2).reshape(b, n, DIM))
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.n2(x))))

    class ViT(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch = nn.Conv2d(3, DIM, PATCH, PATCH)
            self.pos = nn.Parameter(torch.randn(1, (SIZE // PATCH) ** 2, DIM) * 0.02)
            self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
            self.norm = nn.LayerNorm(DIM)
            self.head = nn.Linear(DIM, N_RATING + N_GENERAL + N_CHAR)

        def forward(self, x):                      # NHWC, BGR, 0–255 like the real models
            x = x.permute(0, 3, 1, 2).flip(1) / 127.5 - 1.0
            x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
            x = self.norm(self.blocks(x)).mean(1)
            return torch.sigmoid(self.head(x) * 4)

    torch.manual_seed(0)
    model = ViT().eval()
    with torch.no_grad():                          # shift the logits so ~0.3 % of tags pass 0.35, as real ones
        sample = torch.rand(1, SIZE, SIZE, 3) * 255
        feats = model.norm(model.blocks(model.patch((sample.permute(0, 3, 1, 2) / 127.5 - 1.0))
                                        .flatten(2).transpose(1, 2) + model.pos)).mean(1)
        logits = model.head(feats)[0]
        model.head.bias -= torch.quantile(logits, 0.997)
    kwargs = dict(input_names=["input"], output_names=["output"], opset_version=17,
                  dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}})
    with torch.no_grad():
        try:
            torch.onnx.export(model, torch.zeros(1, SIZE, SIZE, 3), str(path), dynamo=False, **kwargs)
        except TypeError:                          # torch < 2.5 has no `dynamo` argument
            torch.onnx.export(model, torch.zeros(1, SIZE, SIZE, 3), str(path), **kwargs)


def write_tags(path: Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["tag_id", "name", "category", "count"])
        for i, name in enumerate(["general", "sensitive", "questionable", "explicit"]):
            w.writerow([9999999 - i, name, 9, 0])
        for i in range(N_GENERAL):
            w.writerow([i, f"tag_{i}", 0, N_GENERAL - i])
        for i in range(N_CHAR):
            w.writerow([100000 + i, f"character_{i}_(series)", 4, N_CHAR - i])


def make_images(folder: Path, n: int, seed: int) -> None:
    from PIL import Image
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = i % 4
        w, h = [(2048, 1536), (2048, 1536), (1024, 1024), (832, 1216)][kind]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        base = np.stack([np.sin(xx / rng.uniform(40, 200) + c) * np.cos(yy / rng.uniform(40, 200) - c)
                         for c in rng.uniform(0, 6, 3)], -1)
        img = np.clip((base * 0.5 + 0.5) * 230 + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8)
        if kind == 3:
            alpha = np.full((h, w, 1), 255, np.uint8)
            alpha[: h // 8] = 0
            Image.fromarray(np.concatenate([img, alpha], -1), "RGBA").save(folder / f"{i:03d}.png")
        elif kind == 2:
            Image.fromarray(img).save(folder / f"{i:03d}.png")
        else:
            Image.fromarray(img).save(folder / f"{i:03d}.jpg", quality=92)


def one_at_a_time(tagger: Tagger, folder: Path, out: Path) -> tuple[float, float]:
    post = Postprocessor(tagger.tagset, TagOptions())
    t, c = time.perf_counter(), time.process_time()
    for img in iter_images(folder):
        x = load_and_prepare(img, tagger.size)
        result = post(tagger.infer(x[None])[0])
        captions.write_caption(captions.caption_path(img, folder, out), result.tags, "overwrite")
    return time.perf_counter() - t, time.process_time() - c


def pipeline(tagger: Tagger, folder: Path, out: Path, batch: int) -> tuple[float, float, object]:
    t, c = time.perf_counter(), time.process_time()
    rep = run_folder(tagger, FolderJob(folder, output_dir=out, existing="overwrite", batch_size=batch),
                     log=lambda m: None)
    return time.perf_counter() - t, time.process_time() - c, rep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=0, help="0 = the pipeline's automatic choice")
    ap.add_argument("--keep", help="reuse/keep the exported model and images in this folder")
    a = ap.parse_args()
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="tagbench-"))
    model_dir = work / "vit-448"
    model_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if not (model_dir / "model.onnx").exists():
        export_vit(model_dir / "model.onnx")
        write_tags(model_dir / "selected_tags.csv")
    halves = [work / "imgs_a", work / "imgs_b"]
    for k, d in enumerate(halves):
        if not d.exists() or len(list(d.iterdir())) != a.images // 2:
            make_images(d, a.images // 2, k)
    print(f"setup {time.perf_counter() - t:.1f} s (model {os.path.getsize(model_dir / 'model.onnx') / 2**20:.0f} MB)")

    files = resolve_model(str(model_dir), work)
    single = Tagger(files)                        # onnxruntime's default session, as single-image taggers use
    tagger = Tagger(files, throughput=True)       # what `python -m lib_lora tag` uses
    print(f"model: {tagger.describe()}; {os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
    for t in (single, tagger):                    # warm-up
        t.infer(np.zeros((1, SIZE, SIZE, 3), np.float32))
    n = (a.images // 2) * 2
    base_t = pipe_t = base_c = pipe_c = 0.0
    reps = []
    for order, d in zip(("AB", "BA"), halves):                      # A B | B A: drift cancels
        for who in order:
            if who == "A":
                dt, dc = one_at_a_time(single, d, work / "out_single" / d.name)
                base_t, base_c = base_t + dt, base_c + dc
            else:
                dt, dc, rep = pipeline(tagger, d, work / "out_pipe" / d.name, a.batch_size)
                pipe_t, pipe_c = pipe_t + dt, pipe_c + dc
                reps.append(rep)
    pairs = [((work / "out_single" / d.name / p.name).read_text(), p.read_text())
             for d in halves for p in (work / "out_pipe" / d.name).glob("*.txt")]
    same_sets = sum(set(a.split(", ")) == set(b.split(", ")) for a, b in pairs)
    ntags = np.mean([len(b.split(", ")) for _, b in pairs])
    base_rate, pipe_rate = n / base_t, n / pipe_t
    print(f"one image at a time: {base_rate:.3f} images/s ({base_t:.1f} s for {n}; {base_c / n:.2f} CPU-s/image)")
    print(f"pipeline (batch {reps[0].batch_size} x {tagger.streams} streams, {reps[0].provider}): "
          f"{pipe_rate:.3f} images/s ({pipe_t:.1f} s; {pipe_c / n:.2f} CPU-s/image)")
    print(f"speed-up: {pipe_rate / base_rate:.2f}x wall clock, {base_c / pipe_c:.2f}x CPU time per image "
          "(the figure that holds when other processes share the CPU)")
    print(f"same tags for {same_sets}/{len(pairs)} images "
          f"(~{ntags:.0f} tags each; batched float sums may flip a tag sitting on the threshold)   "
          f"load average after: {os.getloadavg()[0]:.1f}")
    if not a.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)
    return 0 if len(pairs) == n else 1


if __name__ == "__main__":
    sys.exit(main())
