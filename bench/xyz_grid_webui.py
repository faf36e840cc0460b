"""X/Y/Z grid cost: a 10×10 LoRA weight × block-preset grid through LoRA Studio's handler (fake WebUI, real
SD1.5 attention layers at full size, a real kohya LoRA) versus 100 first applies (cold delta cache).

Prints the total LoRA time of each and their ratio, measured in this run. Usage: python bench/xyz_grid_webui.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.fake_webui.harness import FakeWebui, write_lora  # noqa: E402

WEIGHTS = [0.1 * i for i in range(1, 11)]
PRESETS = ["ALL", "face", "Nface", "ware", "pose", "paint", "char", "back", "soft", "OUTALL"]


def attention(layer: str) -> bool:
    return layer.startswith("model.diffusion_model.") and ".attn2.to_" in layer or \
        layer.startswith("cond_stage_model.") and ".self_attn.q_proj" in layer


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        w = FakeWebui(Path(tmp), layers=attention)
        write_lora(w, "bench", seed=1)
        w.start()
        from lora_studio_webui.engine import ENGINE
        try:
            xyz = [d.module for d in __import__("modules.scripts").scripts.scripts_data
                   if d.script_class.__module__ == "xyz_grid.py"][0]
            wopt = [o for o in xyz.axis_options if o.label == "[LoRA Studio] LoRA weight"][0]
            bopt = [o for o in xyz.axis_options if o.label == "[LoRA Studio] LoRA block weights"][0]
            # grid: every cell goes through copy(p) → axis apply → process_images → our activate
            stats = {"lora": 0.0, "hits": 0, "computed": 0}
            real_activate = ENGINE.activate

            def counting(p, params_list):
                act = real_activate(p, params_list)
                if params_list:
                    stats["lora"] += act.seconds
                    stats["hits"] += act.report.cache_hits
                    stats["computed"] += act.report.deltas_computed
                return act
            ENGINE.activate = counting
            t0 = time.perf_counter()
            for preset in PRESETS:
                p = w.processing("x <lora:bench:1>", steps=1)
                bopt.apply(p, preset, PRESETS)
                xyz.run_axis(p, wopt, WEIGHTS)
            grid_wall = time.perf_counter() - t0
            grid_lora, cached, computed = stats["lora"], stats["hits"], stats["computed"]
            ENGINE.activate = real_activate
            # 100 first applies: the delta cache and backups dropped before every apply
            first = 0.0
            for i in range(100):
                ENGINE.restore()
                ENGINE.forget()
                w.generate(f"x <lora:bench:{WEIGHTS[i % 10]:.1f}:{PRESETS[i // 10]}>", steps=1)
                first += ENGINE.last.seconds
            ENGINE.restore()
        finally:
            w.close()
    print(f"model: {sum(1 for _ in w.model.modules())} modules (SD1.5 attention + TE q_proj, full size)")
    print(f"10x10 weight x preset grid: LoRA time {grid_lora:.3f} s (wall {grid_wall:.2f} s), "
          f"deltas computed {computed}, cache hits {cached}")
    print(f"100 first applies (cold cache): LoRA time {first:.3f} s")
    print(f"ratio first-applies / grid: {first / grid_lora:.1f}x")


if __name__ == "__main__":
    main()
