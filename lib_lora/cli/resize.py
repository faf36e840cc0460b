"""`python -m lib_lora resize`: a LoRA to a smaller rank, fixed or chosen per module as sd-scripts does."""

from __future__ import annotations

from lib_lora.options import ResizeOptions, add_arguments as add_options, from_args

HELP = "resize a LoRA/LoCon to a rank, or per module by sv_ratio / sv_fro / sv_cumulative (as sd-scripts)"


def add_arguments(parser) -> None:
    add_options(parser, ResizeOptions)


def run(args) -> int:
    from lib_lora.cli.progress import PhaseProgress
    from lib_lora.merge.resize import fidelity_summary, resize_lora

    o = from_args(ResizeOptions, args)
    bar = PhaseProgress({"resize": "modules", "write": "bytes"}, enabled=False if o.quiet else None)
    try:
        res = resize_lora(o.src, o.out, o.rank, o.conv_rank, o.method, o.param, overwrite=o.overwrite,
                          progress=bar)
    finally:
        bar.close()
    if o.verbose:
        for m in res.modules:
            print(f"{m.key}: rank {m.old_rank if m.old_rank is not None else '?'} → {m.new_rank}, "
                  f"alpha {m.alpha:g}, Frobenius kept {m.fro_retained:.2%}")
    for key, why in res.kept[:5]:
        print(f"kept {key}: {why}")
    print(fidelity_summary(res))
    print(f"wrote {res.out} (ss_network_dim {res.metadata['ss_network_dim']}, "
          f"ss_network_alpha {res.metadata['ss_network_alpha']})")
    return 0
