"""`python -m lib_lora resize`: a LoRA to a smaller rank, fixed or chosen per module as sd-scripts does."""

from __future__ import annotations

from dataclasses import dataclass

from lib_lora.options import add_arguments as add_options, from_args, option

HELP = "resize a LoRA/LoCon to a rank, or per module by sv_ratio / sv_fro / sv_cumulative (as sd-scripts)"


@dataclass
class ResizeOptions:
    """`resize`: a LoRA to a fixed rank or to the rank a singular-value criterion keeps."""
    src: str = option(flag="", metavar="IN", help="LoRA file (.safetensors) to resize", label="LoRA file")
    rank: int = option(help="new rank; with a dynamic --method the largest rank kept", low=1, label="Rank")
    out: str = option(help="output file, ending in .safetensors", label="Output file")
    conv_rank: int | None = option(None, low=1, metavar="R2", label="Conv rank",
                                   help="rank of conv modules (1×1 and 3×3; default: --rank)")
    method: str = option("none", choices="lib_lora.merge.resize:METHODS", label="Method",
                         help="none: fixed rank; sv_ratio: keep S_i > S_0/P; sv_fro: keep a Frobenius share P; "
                              "sv_cumulative: keep a share P of ΣS (ranks as sd-scripts' resize_lora)")
    param: float | None = option(None, metavar="P", label="Parameter",
                                 help="the dynamic method's parameter (sv_ratio > 1; sv_fro, sv_cumulative in (0, 1])")
    overwrite: bool = option(False, help="replace --out if it exists", label="Replace the output file")
    verbose: bool = option(False, help="one line per module: rank, alpha, Frobenius share kept")
    quiet: bool = option(False, help="no progress line")


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
