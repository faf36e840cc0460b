"""Per-file report (`python -m lib_lora inspect`, the LoRA tab): algorithms, architecture, ranks/alphas,
per-block ΔW norms, metadata, skipped keys. Per-algorithm ranks and norms come from the registry (lib_lora/algos)."""

from __future__ import annotations

import math
import os
from collections import Counter
from typing import Optional

from lib_lora import fileio
from lib_lora.algos import norm_of, rank_of
from lib_lora.arch import guess_non_lora
from lib_lora.blocks import BLOCK_NAMES
from lib_lora.network import load_network
from lib_lora.syntax import format_number


def _fmt_num(x) -> str:
    if x is None:
        return "none"
    return format_number(x)


def inspect_network(net, compute_norms: bool = True) -> dict:
    algos = Counter(m.algo for m in net.modules.values())
    ranks = Counter(rank_of(m) for m in net.modules.values())
    alphas = Counter(m.alpha for m in net.modules.values())
    sq = {name: 0.0 for name in BLOCK_NAMES + ["other"]}
    counts = {name: 0 for name in sq}
    have = {name: 0 for name in sq}
    missing = Counter()
    for m in net.modules.values():
        block = BLOCK_NAMES[m.slot] if m.slot is not None else "other"
        counts[block] += 1
        n = norm_of(m) if compute_norms else None
        if n is None:
            missing["dora" if m.dora_scale is not None else m.algo] += 1
        else:
            sq[block] += n * n
            have[block] += 1
    notes = []
    if missing and compute_norms:
        what = ", ".join(f"{k} ×{v}" for k, v in sorted(missing.items()))
        notes.append(f"norms leave out {sum(missing.values())} module(s) whose ΔW depends on the model weight ({what})")
    meta = {k: v for k, v in sorted(net.metadata.items()) if k.startswith(("ss_", "modelspec.", "sshs_"))}
    verdict, problem = _verdict(net)
    return {
        "verdict": verdict,
        "problem": problem,
        "file": fileio.display_path(net.path),
        "name": net.name,
        "alias": net.alias,
        "size_bytes": net.size,
        "arch": net.arch,
        "arch_label": net.arch_label,
        "algorithms": dict(sorted(algos.items())),
        "module_count": len(net.modules),
        "te_modules": sum(1 for m in net.modules.values() if m.is_te),
        "unet_modules": sum(1 for m in net.modules.values() if not m.is_te),
        "dora_modules": sum(1 for m in net.modules.values() if m.dora_scale is not None),
        "ranks": {_fmt_num(k): v for k, v in sorted(ranks.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))},
        "alphas": {_fmt_num(k): v for k, v in sorted(alphas.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))},
        "block_norms": {k: (math.sqrt(v) if have[k] else None) for k, v in sq.items()},
        "block_modules": counts,
        "notes": notes,
        "metadata": meta,
        "metadata_other_keys": sorted(k for k in net.metadata if k not in meta),
        "skipped": [list(s) for s in net.skipped],
    }


def _verdict(net) -> tuple[str, Optional[str]]:
    """("ok" | "partial" | "unusable" | "not a lora", one line saying what is wrong or None)."""
    if not net.modules:
        if net.rejected:
            key, problem = net.rejected[0]
            return "unusable", (f"no usable module: all {len(net.rejected)} module(s) are damaged "
                                f"(e.g. '{key}': {problem})")
        kind = guess_non_lora(k for k, _ in net.skipped)
        if kind:
            return "not a lora", f"no LoRA modules: this looks like {kind}"
        example = f" (e.g. '{net.skipped[0][0]}': {net.skipped[0][1]})" if net.skipped else ""
        return "not a lora", f"no module this tool can apply to SD1/SD2/SDXL{example}"
    if net.rejected:
        return "partial", net.damage_message
    return "ok", None


def inspect_file(path, allow_pickle: bool = False, compute_norms: bool = True, with_hash: bool = True) -> dict:
    """Report on one LoRA/LyCORIS file (JSON-serialisable dict)."""
    net = load_network(path, allow_pickle=allow_pickle, allow_empty=True)
    report = inspect_network(net, compute_norms=compute_norms)
    if with_hash:
        report["hash"] = fileio.model_hash(os.fspath(path))
        report["hash_short"] = report["hash"][:12]
        report["sshs_model_hash"] = net.metadata.get("sshs_model_hash")
    return report


def format_report(r: dict) -> str:
    """Human-readable table of an inspect_file report."""
    lines = [f"File:        {r['file']} ({r['size_bytes'] / 1e6:.1f} MB)"]
    if r.get("problem"):
        lines.append(f"Verdict:     {r['verdict'].upper()}: {r['problem']}")
    if r.get("hash"):
        lines.append(f"Hash:        {r['hash_short']} (sha256 of the body: {r['hash']})")
    lines.append(f"Arch:        {r['arch_label']}" + (f"    Alias: {r['alias']}" if r.get("alias") else ""))
    algos = ", ".join(f"{k} ×{v}" for k, v in r["algorithms"].items()) or "none"
    lines.append(f"Algorithms:  {algos}" + (f"  (DoRA on {r['dora_modules']})" if r["dora_modules"] else ""))
    lines.append(f"Modules:     {r['module_count']} (text encoder {r['te_modules']}, U-Net {r['unet_modules']})")
    lines.append("Ranks:       " + (", ".join(f"{k} ×{v}" for k, v in r["ranks"].items()) or "-"))
    lines.append("Alphas:      " + (", ".join(f"{k} ×{v}" for k, v in r["alphas"].items()) or "-"))
    lines.append(f"Skipped:     {len(r['skipped'])} key(s)")
    for key, reason in r["skipped"][:10]:
        lines.append(f"  {key}: {reason}")
    if len(r["skipped"]) > 10:
        lines.append(f"  … {len(r['skipped']) - 10} more (use --json for all)")
    norms = {k: v for k, v in r["block_norms"].items() if r["block_modules"][k]}
    if norms:
        top = max((v for v in norms.values() if v), default=0.0) or 1.0
        lines.append("Block norms (Frobenius norm of ΔW at multiplier 1):")
        for k, v in norms.items():
            bar = "#" * int(round(30 * (v or 0.0) / top))
            val = "n/a" if v is None else f"{v:.4g}"
            lines.append(f"  {k:<6} {val:>10}  {r['block_modules'][k]:>4} mod  {bar}")
    for note in r["notes"]:
        lines.append(f"Note: {note}")
    if r["metadata"]:
        lines.append("Metadata:")
        for k, v in r["metadata"].items():
            v = v if len(v) <= 100 else v[:97] + "..."
            lines.append(f"  {k} = {v}")
    if r["metadata_other_keys"]:
        lines.append(f"Other metadata keys: {', '.join(r['metadata_other_keys'])}")
    return "\n".join(lines)


__all__ = ["inspect_file", "inspect_network", "format_report"]
