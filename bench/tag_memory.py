"""Peak memory of decoding huge images for tagging: the old decoder vs the current one, same files, one run.

Files: 16-bit greyscale PNGs that are tiny on disk (a gradient compresses to almost nothing) but large in
pixels. The old decoder went through float64 (8 bytes per pixel, several temporaries) and every decode
worker held its own full-size copy; the current one refuses images over preprocess.MAX_PIXELS, converts
16-bit data to 8 bits in row strips, box-reduces at once to about twice the model size, and shares one
memory budget between workers. Each measurement runs in a fresh process (peak RSS = ru_maxrss) with
two decode threads, as the folder pipeline uses on 2 cores.

    python bench/tag_memory.py [--side 6000] [--bomb-baseline]

--bomb-baseline also decodes the 13000x13000 file with the old decoder (about 4.5 GB peak: needs the RAM).
"""

from __future__ import annotations

import argparse
import os
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIZE = 448


def write_png16(path: Path, w: int, h: int) -> Path:
    """A w x h 16-bit greyscale PNG streamed row by row (never the whole image in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    row = bytearray(b"\0")
    for x in range(w):
        row += struct.pack(">H", (x * 65535) // max(1, w - 1))
    comp = zlib.compressobj(9)
    body = bytearray()
    for y in range(h):
        body += comp.compress(bytes(row))
    body += comp.flush()
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)))
        f.write(chunk(b"IDAT", bytes(body)) + chunk(b"IEND", b""))
    return path


# ---- the decoder before this change (kept here as the baseline) -------------------------------------

def old_decode(path, size=SIZE):
    import numpy as np
    from PIL import Image
    img = Image.open(path)
    img.load()
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), "L")
    img = img.convert("RGB")
    w, h = img.size
    side = max(w, h)
    if w != h:
        canvas = Image.new("RGB", (side, side), (255, 255, 255))
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    img = img.resize((size, size), Image.BICUBIC)
    return np.ascontiguousarray(np.asarray(img, dtype=np.float32)[:, :, ::-1])


def child(mode: str, paths: list[str]) -> None:
    import resource
    from concurrent.futures import ThreadPoolExecutor

    sys.path.insert(0, str(ROOT))
    from lib_lora.tagger.preprocess import ImageReadError, decode
    import numpy as np  # noqa: F401
    from PIL import Image  # noqa: F401
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fn = old_decode if mode == "old" else (lambda p: decode(p, SIZE).array)

    def one(p):
        try:
            return fn(p).shape
        except ImageReadError as exc:
            return f"refused: {str(exc).split(': ', 1)[1]}"

    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(one, paths))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{peak:.0f} {base:.0f} {time.perf_counter() - t:.2f} {results}")


def measure(mode: str, paths: list[Path]) -> tuple[float, float, float, str]:
    p = subprocess.run([sys.executable, __file__, "--child", mode, *map(str, paths)], capture_output=True, text=True)
    if p.returncode != 0:
        return float("nan"), float("nan"), float("nan"), (p.stderr.strip().splitlines() or ["?"])[-1]
    peak, base, secs, rest = p.stdout.strip().split(" ", 3)
    return float(peak), float(base), float(secs), rest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=6000, help="side of the two in-limit PNGs (default 6000)")
    ap.add_argument("--bomb-baseline", action="store_true", help="also run the old decoder on 13000x13000")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        child(a.child[0], a.child[1:])
        return 0
    work = Path(tempfile.mkdtemp(prefix="tagmem-"))
    t = time.perf_counter()
    pair = [write_png16(work / f"big{i}.png", a.side, a.side) for i in range(2)]
    bomb = write_png16(work / "bomb.png", 13000, 13000)
    print(f"files: 2 x {a.side}x{a.side} 16-bit PNG ({os.path.getsize(pair[0]) / 1024:.0f} KB each), "
          f"13000x13000 16-bit PNG ({os.path.getsize(bomb) / 1024:.0f} KB); made in {time.perf_counter() - t:.1f} s")
    cases = [(f"2 x {a.side}^2, 2 workers", pair, True), ("13000^2 (169 MP)", [bomb], a.bomb_baseline)]
    for label, paths, with_old in cases:
        new = measure("new", paths)
        line = f"{label}: new peak {new[0]:.0f} MB (imports {new[1]:.0f} MB, {new[2]:.2f} s) {new[3]}"
        if with_old:
            old = measure("old", paths)
            line += (f"\n    old peak {old[0]:.0f} MB (imports {old[1]:.0f} MB, {old[2]:.2f} s) {old[3]}"
                     f"\n    peak ratio old/new {old[0] / new[0]:.1f}x; above the imports "
                     f"{(old[0] - old[1]) / max(1.0, new[0] - new[1]):.1f}x")
        print(line)
    import shutil
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
