"""Checkpoint + prompt → checkpoint with every `<lora:…>` of the prompt merged in (`python -m lib_lora bake`).

The merge is the inference patcher run once on the checkpoint's own tensors, so a baked model equals what
the WebUI computes for the same prompt when it runs in the file's dtype; a WebUI in fp32 (`--no-half`, CPU) adds the
LoRA in fp32, which an fp16 file rounds (≈ 0.1 % of the LoRA's change in a real A1111): `--dtype fp32` matches it
exactly. Keys no LoRA touches are written back bit-exact.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import torch

from lib_lora import fileio
from lib_lora.activate import Activated, activate_tag, attach_reports
from lib_lora.errors import LoraFileError, LoraStudioError, SyntaxProblem
from lib_lora.library import Library
from lib_lora.options import OUTPUT_DTYPES

DTYPES = {name: getattr(torch, attr) for name, attr in OUTPUT_DTYPES.items()}   # --dtype name → torch dtype
# Hashes of the source body are wrong for the new file.
_STALE_METADATA = ("sshs_model_hash", "sshs_legacy_hash", "modelspec.hash_sha256")


# One usable tag of a prompt (bake_lora reads .tag, .network, .active): the core's activation record.
Resolved = Activated


@dataclass
class BakeResult:
    out: str
    loras: list = field(default_factory=list)      # Activated, each with its patcher report
    report: object = None                          # patcher ApplyReport
    messages: list = field(default_factory=list)   # warnings shown to the user


def check_lora_dir(lora_dir) -> None:
    if not lora_dir or not os.path.exists(lora_dir):
        raise LoraFileError(f"LoRA folder '{lora_dir}' does not exist; pass --lora-dir with your LoRA folder")
    if not os.path.isdir(lora_dir):
        raise LoraFileError(f"--lora-dir '{lora_dir}' is a file, not a folder; pass the folder that holds "
                            f"your LoRAs (the name goes in the tag: <lora:NAME:…>)")


def lora_library(lora_dir) -> Library:
    check_lora_dir(lora_dir)
    return Library(lambda: [lora_dir])


def find_lora(name: str, lora_dir, library: Library | None = None, fix: str = "check the name or --lora-dir") -> str:
    """Path of LoRA `name` (file stem, else unique alias) inside `lora_dir` (or `library`'s folders); never
    outside them. `fix` ends the not-found line."""
    if not name or any(c in name for c in "/\\") or name in (".", "..") or os.path.isabs(name):
        raise SyntaxProblem(f"LoRA name '{name}' is not a plain name; write the file name without folders")
    library = library or lora_library(lora_dir)
    return str(library.lookup(name, fix).path)


def load_presets(presets_path=None, lora_dir=None, messages: list | None = None):
    """The PresetStore the UI tabs use (presets.default_store: shipped presets + the same user file), so a
    tag copied from the UI bakes the same."""
    from lib_lora.presets import default_store

    if presets_path and not os.path.isfile(presets_path):
        raise LoraFileError(f"preset file '{presets_path}' not found; check --presets")
    store = default_store(user_path=presets_path or None, lora_dir=lora_dir or None)
    if messages is not None:
        messages.extend(store.warnings)
    return store


def parse_tags(prompt: str, lora_dir, *, library: Library | None = None, fix: str = "check the name or --lora-dir",
               required: bool = True) -> list:
    """(tag, file path) of every LoRA tag; bad syntax and unknown names raise. Cheap: nothing is loaded.
    `library`: look the names up there instead of `lora_dir` (a UI's LoRA folders), `fix` ending the not-found
    line; `required=False`: a prompt without tags gives []."""
    from lib_lora.syntax import parse_prompt

    tags = parse_prompt(prompt)
    if not tags:
        if not required:
            return []
        raise SyntaxProblem("the prompt has no <lora:NAME:…> tag; nothing to bake")
    library = library or lora_library(lora_dir)
    out = []
    for tag in tags:
        if tag.errors:
            raise SyntaxProblem(tag.errors[0])
        out.append((tag, find_lora(tag.name, lora_dir, library, fix)))
    return out


def resolve_tag(tag, path, arch: str | None, presets, seed: int = 0, messages: list | None = None,
                gated: str = "baked at full strength") -> Activated:
    """One tag → Activated (bake and bake-lora share it: same rules, same messages). Whatever would make the
    result differ from what the tag asks for raises; caveats go to `messages` (`gated`: what happens to a
    start=/stop= tag, which only a sampler can honour)."""
    from lib_lora.network import load_network

    messages = messages if messages is not None else []
    messages.extend(tag.warnings)
    net = load_network(path, expected_arch=arch)
    if net.skipped:
        key, why = net.skipped[0]
        messages.append(f"`{net.name}`: {len(net.skipped)} keys not used (e.g. '{key}': {why})")
    if net.damage_message:  # damaged modules were left out at load time
        messages.append(net.damage_message)
    a = activate_tag(tag, net, presets, arch, seed, messages, strict=True, entry=path)
    if a.active.gated:
        messages.append(f"`{tag.name}`: start=/stop= only apply while sampling; {gated}")
    return a


def resolve_prompt(prompt: str, lora_dir, arch: str | None, presets=None, seed: int = 0,
                   messages: list | None = None) -> list[Activated]:
    """Every LoRA tag of `prompt` → Activated; any error (bad tag, unknown name or preset) raises."""
    messages = messages if messages is not None else []
    return [resolve_tag(tag, path, arch, presets, seed, messages) for tag, path in parse_tags(prompt, lora_dir)]


class _CountingHost:
    """The host as the patcher sees it during a bake: each layer write (`host[layer]`) ticks the progress
    line. Everything else goes to the real host."""

    def __init__(self, host, tick):
        self._host, self._tick = host, tick

    def __getitem__(self, layer):
        self._tick()
        return self._host[layer]

    def get(self, layer):
        return self._host.get(layer)

    def __len__(self):
        return len(self._host)

    def __getattr__(self, name):
        return getattr(self._host, name)


def _touched_layers(host, resolved) -> dict:
    """layer → [tags] with a non-zero multiplier on it (what the merge will write)."""
    from lib_lora.patcher import effective_multiplier

    out: dict = {}
    for r in resolved:
        for mod in r.network.modules.values():
            if host.get(mod.layer) is not None and effective_multiplier(r.active, mod) != 0.0:
                tags = out.setdefault(mod.layer, [])
                if r.tag.text not in tags:
                    tags.append(r.tag.text or f"<lora:{r.tag.name}>")
    return out


def _overflow(host, touched: dict, sd: dict, base, dtype) -> tuple[list, int]:
    """([(layer, bad values, tags)], total) for merged layers holding ±Inf/NaN the base did not have."""
    import torch

    from lib_lora.algos._common import all_finite

    key_of = {id(t): k for k, t in sd.items()}
    bad = []
    for layer, tags in touched.items():
        n, keys = 0, []
        for w, b in host[layer].part_tensors():
            for t in (w, b):
                if t is not None and not all_finite(t):   # counted only then (isfinite is slow on half)
                    k = int((~torch.isfinite(t)).sum())
                    if k:
                        n += k
                        keys.append(key_of.get(id(t)))
        if n:
            n -= _base_nonfinite(base, [k for k in keys if k], dtype)
        if n > 0:
            bad.append((layer, n, tags))
    return bad, sum(n for _, n, _ in bad)


def _base_nonfinite(base, keys, dtype) -> int:
    """Non-finite values the base file itself has under `keys` (after the --dtype cast): not our doing."""
    import torch
    from safetensors import safe_open

    n = 0
    with safe_open(os.fspath(base), framework="pt", device="cpu") as f:
        for k in keys:
            t = f.get_tensor(k)
            if dtype is not None and t.is_floating_point():
                t = t.to(DTYPES[dtype])
            n += int((~torch.isfinite(t)).sum())
    return n


def bake_checkpoint(base, prompt: str, lora_dir, out, dtype: str | None = None, overwrite: bool = False,
                    presets_path=None, seed: int = 0, allow_overflow: bool = False, progress=None,
                    prefill=None) -> BakeResult:
    """`progress(phase, done, total)`: phase "write" in bytes, "merge" in layers. `prefill`: a
    `fileio.prefill.Prefill` of `base` for `out` started by the caller (the writer uses it when the layout allows;
    the caller closes it); without one (None), a bake that keeps the base's dtypes starts its own, so the copy runs
    while the LoRAs are loaded and merged; `False`: none, the file is written in full."""
    own = None
    try:
        if prefill is None and dtype is None:
            from lib_lora.fileio.prefill import Prefill, room_for

            own = prefill = Prefill.start(base, out, overwrite, reserve=room_for(prompt, prompt.count("<")))
        return _bake(base, prompt, lora_dir, out, dtype, overwrite, presets_path, seed, allow_overflow, progress,
                     prefill or None)
    finally:
        if own is not None:
            own.close()


def _bake(base, prompt, lora_dir, out, dtype, overwrite, presets_path, seed, allow_overflow, progress,
          prefill) -> BakeResult:
    from lib_lora.host import Host
    from lib_lora.patcher import Patcher

    base, out = os.fspath(base), os.fspath(out)
    # Everything that can be checked without loading the checkpoint is checked first.
    fileio.check_target(out, overwrite, ".safetensors")
    if dtype is not None and dtype not in DTYPES:
        raise LoraStudioError(f"--dtype {dtype} is not supported; use one of {', '.join(DTYPES)}")
    if not os.path.isfile(base):
        raise LoraFileError(f"checkpoint '{base}' " + ("is a folder" if os.path.isdir(base) else "not found")
                            + "; pass the .safetensors file with --base")
    result = BakeResult(out)
    tags = parse_tags(prompt, lora_dir)
    presets = load_presets(presets_path, lora_dir, result.messages)
    tick = (lambda phase: (lambda done, total: progress(phase, done, total))) if progress else (lambda phase: None)
    if base.lower().endswith(fileio.PICKLE_SUFFIXES):
        fileio.read_tensors(base)   # raises the one-line "pickle loading is disabled" message
    # Streamed: the checkpoint is memory-mapped (nothing is read until used), only the tensors of layers a
    # LoRA changes are copied (in the output type) and patched, and the file is written from the maps.
    reader = fileio.MappedTensors(base)
    metadata = reader.metadata
    sd = {k: reader.get(k) for k in reader.keys()}
    mapped = dict(sd)   # tensors still as in the file (the changed ones are replaced in sd below)
    want = DTYPES[dtype] if dtype is not None else None
    host = Host.from_state_dict(sd)
    if not len(host):
        raise LoraFileError(f"'{base}' has no U-Net or text-encoder weights; is it a Stable Diffusion checkpoint?")
    result.loras = [resolve_tag(tag, path, host.arch, presets, seed, result.messages) for tag, path in tags]
    touched = _touched_layers(host, result.loras)
    key_of = {id(t): k for k, t in sd.items()}
    for layer in touched:
        for parts in host[layer].part_tensors():
            for t in parts:
                if t is not None and id(t) in key_of:
                    sd[key_of[id(t)]] = t.to(want or t.dtype, copy=True)
    host = Host.from_state_dict(sd, host.arch)   # now over the copies the patcher may write
    done = [0]

    def merged():
        done[0] += 1
        if progress:
            progress("merge", done[0], len(touched))

    report = Patcher(_CountingHost(host, merged), cache_bytes=0, one_shot=True).apply([r.active for r in result.loras])
    result.report = report
    attach_reports(result.loras, report)
    if report.errors:
        raise LoraStudioError(report.errors[0] + "; nothing was written")
    if report.failed_layers:
        layer, why = report.failed_layers[0]
        raise LoraStudioError(f"could not merge into {layer} ({why}); nothing was written")
    for r in result.loras:
        rep = r.report
        if rep.applied == 0 and rep.zero == 0:
            why = (f"none of its {len(r.network.modules)} modules fits this model (e.g. {rep.skipped[0][0]}: "
                   f"{rep.skipped[0][1]})" if rep.skipped else "it has no module that can be merged")
            raise LoraStudioError(f"LoRA '{r.network.name}' could not be applied: {why}; nothing was written")
        if rep.applied == 0:
            result.messages.append(f"LoRA '{r.network.name}' is at weight 0 in every block it has; it changes nothing")
    if report.layers_written == 0:
        raise LoraStudioError("no layer would change (every LoRA is at weight 0); the output would equal the "
                              "base, so nothing was written")
    bad, values = _overflow(host, touched, sd, base, dtype)
    if bad:
        tags_hit = []
        for _, _, ts in bad:
            tags_hit += [t for t in ts if t not in tags_hit]
        kind = next(iter(host[bad[0][0]].part_tensors()))[0].dtype
        msg = (f"merging {' '.join(tags_hit)} made {values} values in {len(bad)} layers infinite or NaN "
               f"({str(kind).replace('torch.', '')} overflow; e.g. {bad[0][0]})")
        if not allow_overflow:
            raise LoraStudioError(msg + "; lower the multiplier or use --dtype fp32, or pass --allow-overflow "
                                        "to write it anyway; nothing was written")
        result.messages.append(msg + "; written anyway (--allow-overflow): that model will render black or noise")
    meta = {k: v for k, v in metadata.items() if k not in _STALE_METADATA}
    meta["lora_studio_baked"] = json.dumps({"prompt": prompt, "loras": [
        {"name": r.network.name, "te": r.active.te, "unet": r.active.unet, "blocks": r.active.blocks,
         "dyn": r.active.dyn, "applied": r.report.applied}
        for r in result.loras]})
    specs = [(k, want if (want is not None and t.is_floating_point()) else t.dtype, tuple(t.shape),
              _pieces(t, want, reader if t is mapped[k] else None, k)) for k, t in sd.items()]
    try:
        fileio.atomic_save_safetensors_stream(specs, out, meta, overwrite=overwrite, progress=tick("write"),
                                              prefill=prefill)
    finally:
        sd.clear()
        host = None
        reader.close()
    return result


_PIECE = 1 << 22   # elements per cast piece: bounds the temporaries of a --dtype conversion


def _pieces(t, want, reader=None, key=None):
    """produce() of one tensor for the stream writer: an unchanged tensor's bytes copied file to file
    (`reader` given), the patched tensor itself, or cast piece by piece to `want`."""
    def produce():
        if want is None or not t.is_floating_point() or t.dtype == want:
            yield reader.piece(key) if reader is not None and t.numel() else t
            return
        flat = t.reshape(-1)
        for i in range(0, max(flat.numel(), 1), _PIECE):
            yield flat[i:i + _PIECE].to(want)
    return produce
