"""Weight/preset changes through a running WebUI's API (/sdapi/v1/txt2img), LoRA Studio or the built-in Lora.

    python bench/webui_live.py --url http://127.0.0.1:7861 --lora NAME [--pid PID] [--builtin] [--steps 2]
                               [--option KEY=JSON ...] [--save run.json] [--against builtin.json]

Sends 64×64 generations: two without a LoRA (the baseline request time), then the LoRA at 1.0, 0.3, 0.6, 0.9
(and with LoRA Studio the presets `face` and `ALL`, plus an unknown preset to show the warnings in `info`), then
no LoRA again (compared byte for byte with the first image: the weights were restored exactly). Prints per
request: wall time, time above the no-LoRA baseline (= what the LoRA change cost), and with LoRA Studio the
apply time, cache hits and modules written from factors reported by its status route; the process RSS when
--pid is given. `--option` sets WebUI options first (e.g. lora_studio_cache_mb=0, lora_studio_take_over=false);
`--save` writes the per-request figures; `--against` a saved built-in run on the same server prints the
per-change cost ratio (target ≤ 0.2) and the memory ratio (RSS growth from the first no-LoRA request to the
last LoRA request; target ≤ 1). Standard library only (runs with any Python).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request


def post(url, path, body, timeout=900):
    req = urllib.request.Request(url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def get(url, path, timeout=60):
    with urllib.request.urlopen(url + path, timeout=timeout) as r:
        return json.loads(r.read())


def rss_mib(pid) -> float | None:
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def txt2img(url, prompt, steps):
    body = {"prompt": prompt, "steps": steps, "width": 64, "height": 64, "sampler_name": "Euler",
            "scheduler": "Automatic", "cfg_scale": 7, "seed": 1, "batch_size": 1, "n_iter": 1}
    t = time.perf_counter()
    try:
        r = post(url, "/sdapi/v1/txt2img", body)
    except urllib.error.HTTPError as e:
        # random weights can overflow to NaN in the U-Net (the WebUI's NaN check answers 500); the LoRA
        # was applied all the same, so the timing still counts
        detail = json.loads(e.read() or b"{}").get("errors", "")
        return time.perf_counter() - t, f"HTTP {e.code}: {str(detail)[:40]}", {}
    dt = time.perf_counter() - t
    img = base64.b64decode(r["images"][0])
    info = json.loads(r["info"])
    return dt, hashlib.sha256(img).hexdigest()[:16], info


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:7861")
    ap.add_argument("--lora", required=True)
    ap.add_argument("--pid", type=int, default=None)
    ap.add_argument("--builtin", action="store_true", help="the built-in Lora handles the tags (no presets)")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--option", action="append", default=[], help="KEY=JSON, posted to /sdapi/v1/options first")
    ap.add_argument("--save", help="write the per-request figures to this JSON file")
    ap.add_argument("--against", help="a --save file of the built-in on the same server: print the ratios")
    args = ap.parse_args(argv)
    if args.option:
        post(args.url, "/sdapi/v1/options", {k: json.loads(v) for k, v in (o.split("=", 1) for o in args.option)})
    n = args.lora
    prompts = [("no LoRA", "a photo of a cat"), ("no LoRA", "a photo of a cat"), ("first 1.0", f"a photo of a cat <lora:{n}:1>"),
               ("weight 0.3", f"a photo of a cat <lora:{n}:0.3>"), ("weight 0.6", f"a photo of a cat <lora:{n}:0.6>"),
               ("weight 0.9", f"a photo of a cat <lora:{n}:0.9>")]
    if not args.builtin:
        prompts += [("preset face", f"a photo of a cat <lora:{n}:0.9:face>"), ("preset ALL", f"a photo of a cat <lora:{n}:0.9:ALL>"),
                    ("weight 0.6 again", f"a photo of a cat <lora:{n}:0.6>"),
                    ("unknown preset", f"a photo of a cat <lora:{n}:0.9:nosuchpreset>")]
    prompts += [("no LoRA after", "a photo of a cat")]
    print(f"{'request':<18} {'wall s':>7} {'above base':>10} {'apply s':>8} {'hits':>5} {'computed':>8} "
          f"{'factored':>8} {'RSS MiB':>8}  image")
    base = None
    first_img = None
    saved = {}
    for label, prompt in prompts:
        dt, img, info = txt2img(args.url, prompt, args.steps)
        if label == "no LoRA":
            base = dt if base is None else min(base, dt)
            first_img = first_img or img
        st = {}
        if not args.builtin and "lora" in prompt:
            try:
                st = get(args.url, "/lora-studio/v1/status")
            except Exception:
                st = {}
        rep = st.get("report") or {}
        apply_s = f"{st['seconds']:8.2f}" if st.get("seconds") else f"{'-':>8}"
        above = f"{dt - base:10.2f}" if base is not None and label != "no LoRA" else f"{'-':>10}"
        rss = rss_mib(args.pid)
        saved[label] = {"wall": dt, "above": None if base is None or label == "no LoRA" else dt - base,
                        "apply": st.get("seconds"), "rss": rss}
        print(f"{label:<18} {dt:7.2f} {above} {apply_s} {rep.get('cache_hits', '-'):>5} "
              f"{rep.get('deltas_computed', '-'):>8} {rep.get('factored', '-'):>8} "
              f"{(f'{rss:8.0f}' if rss else '-'):>8}  {img}")
        params = info.get("extra_generation_params") or {}
        warn = params.get("LoRA Studio warnings")
        if warn:
            print(f"    info.extra_generation_params['LoRA Studio warnings'] = {warn!r}")
            print(f"    in infotext: {'LoRA Studio warnings' in info['infotexts'][0]}")
        if label == "no LoRA after":
            print(f"    restored exactly (same image bytes as the first no-LoRA image): {img == first_img}")
    if args.save:
        with open(args.save, "w", encoding="utf-8") as f:
            json.dump(saved, f, indent=1)
    if args.against:
        with open(args.against, encoding="utf-8") as f:
            other = json.load(f)
        print("per change vs the built-in (time above the no-LoRA request; LoRA Studio's apply time in brackets):")
        for label in ("weight 0.3", "weight 0.6", "weight 0.9"):
            ours, theirs = saved[label], other[label]
            ap_ = f" (apply {ours['apply'] / theirs['above']:.3f})" if ours.get("apply") else ""
            print(f"  {label}: {ours['above']:.2f} s vs {theirs['above']:.2f} s = {ours['above'] / theirs['above']:.3f}"
                  f"{ap_}  (target ≤ 0.2)")
        grow = lambda d: d["weight 0.9"]["rss"] - d["no LoRA"]["rss"]  # noqa: E731
        if saved["no LoRA"].get("rss") and other["no LoRA"].get("rss"):
            print(f"  memory: RSS growth {grow(saved):.0f} MiB vs {grow(other):.0f} MiB = "
                  f"{grow(saved) / grow(other):.3f}  (target ≤ 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
