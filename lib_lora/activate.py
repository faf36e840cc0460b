"""Tags → `ActiveLora` + messages: the one activation path of `bake`, `bake-lora`, the A1111 engine and Forge.

A caller parses its tags and finds their files (lib_lora.library), loads what it applies (a `LoraNetwork`, or
Forge's own patches), then calls `activate_tag` once per tag. The rules live here once: architecture check,
block-weight resolution (letters drawn from the tag's seed), the unknown-preset rule, the "unlisted blocks"
warning and the effective strength of a weight (`strength`, the patcher's `effective_multiplier`).

`strict` (bake, bake-lora): anything that would make the result differ from what the tag asks for raises a
`LoraStudioError`. Otherwise (generation): the tag is skipped with a message; one bad tag never stops the rest.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from lib_lora.blocks import element_weights
from lib_lora.errors import ArchitectureMismatch, SyntaxProblem
from lib_lora.patcher import ActiveLora, LoraReport, effective_multiplier
from lib_lora.syntax import LoraTag
from lib_lora.tag_weights import ResolvedBlocks, resolve_blocks

KNOWN_ARCHS = ("sd1", "sd2", "sdxl")


class Site(NamedTuple):
    """Where a weight sits, as `effective_multiplier` reads it off a module: block slot and text encoder."""
    slot: int | None
    is_te: bool = False


def strength(active: ActiveLora, slot: int | None, is_te: bool = False, step: int | None = None) -> float:
    """Effective multiplier of a weight in `slot` (None = outside the block table) for callers that have
    slots rather than modules (Forge's patch keys, the text-encoder state)."""
    return effective_multiplier(active, Site(slot, is_te), step)


@dataclass
class Activated:
    """One tag made active: what was asked (tag, resolved blocks), what is applied (`active`), where the
    file came from (`entry`: a library entry or path) and, after the patcher ran, its `report`."""
    tag: LoraTag
    blocks: ResolvedBlocks
    active: ActiveLora
    entry: object = None
    report: LoraReport | None = None

    @property
    def name(self) -> str:
        return self.tag.name

    @property
    def network(self):
        return self.active.network


def attach_reports(activated: list, report) -> None:
    """Give each Activated the patcher's LoraReport for its ActiveLora (matched by the report's `active`)."""
    by_active = {id(a.active): a for a in activated}
    for rep in report.loras:
        a = by_active.get(id(rep.active))
        if a is not None:
            a.report = rep


def unlisted_message(name: str, arch: str | None, blocks: ResolvedBlocks, slots: list) -> str | None:
    """The warning when the weight list leaves out blocks the LoRA has weights in (they become 0).
    `slots`: the block slot of each module (None = outside the table)."""
    from lib_lora.blocks import unlisted_warning

    if blocks.vector is None or blocks.listed is None:
        return None
    msg = unlisted_warning(name, arch, blocks.count, slots, blocks.listed)
    if not msg:
        return None
    n = sum(1 for s in slots if s is not None and 0 <= s < 26 and not blocks.listed[s])
    return f"{n} of {len(slots)} modules dropped: {msg}"


def _fail(problem: str, strict: bool, messages: list, exc=SyntaxProblem):
    if strict:
        raise exc(problem)
    messages.append(f"{problem} (skipped)")


def resolve_tag_blocks(tag: LoraTag, presets, arch: str | None, seed: int, messages: list,
                       strict: bool = False) -> ResolvedBlocks | None:
    """The tag's block weights for a model of `arch`; None (after a message) when they cannot be resolved."""
    res = resolve_blocks(tag, presets, arch, seed)
    if strict and tag.blocks is not None and res.source is None:
        # an unknown preset is never baked as "all 1"
        close = presets.close_matches(tag.blocks) if presets is not None else []
        near = f" (close: {', '.join(close)})" if close else ""
        where = getattr(presets, "user_path", None)
        raise SyntaxProblem(f"`{tag.name}`: unknown block-weight preset '{tag.blocks}'{near}; nothing was "
                            f"written. Fix the name, or save the preset in the Presets tab"
                            + (f" (user presets file: {where})" if where else ""))
    if strict and res.errors:
        raise SyntaxProblem(res.errors[0])
    messages.extend(res.warnings)
    if res.errors:
        messages.extend(f"{e} (skipped)" for e in res.errors)
        return None
    return res


def activate_tag(tag: LoraTag, network, presets, arch: str | None, seed: int = 0, messages: list | None = None,
                 strict: bool = False, entry=None, slots: list | None = None) -> Activated | None:
    """One parsed tag + its loaded network → Activated (None after a message when skipped).

    `arch`: the model's architecture (None/unknown: the LoRA's own decides the block table). `slots`: the
    block slot of each module, when `network` is not a LoraNetwork (Forge's patches)."""
    messages = messages if messages is not None else []
    net_arch = getattr(network, "arch", None)
    check = getattr(network, "check_arch", None)
    if check is not None:
        try:
            check(arch)
        except ArchitectureMismatch as e:
            _fail(str(e), strict, messages, ArchitectureMismatch)
            return None
    blocks_arch = arch if arch in KNOWN_ARCHS else (net_arch if net_arch in KNOWN_ARCHS else arch)
    res = resolve_tag_blocks(tag, presets, blocks_arch, seed, messages, strict)
    if res is None:
        return None
    if strict and res.elements is not None and res.elements.problem:
        raise SyntaxProblem(f"{res.elements.problem}; nothing was written")
    mods = (getattr(network, "modules", None) or {}).values()
    active = ActiveLora(network, te=tag.te, unet=tag.unet_multiplier, blocks=res.vector, dyn=tag.dyn,
                        start=tag.start, stop=tag.stop, listed=res.listed,
                        elements=element_weights(res.elements.entries if res.elements else None, mods))
    if res.elements is not None and res.elements.entries and not getattr(network, "modules", None):
        # Forge's patches carry no layer names to match elements against: say so, never ignore silently
        messages.append(f"`{tag.name}`: lbwe= elemental weights are not applied here (no layer names on this "
                        f"backend); the LoRA is applied without them")
    if slots is None:
        slots = [getattr(m, "slot", None) for m in (getattr(network, "modules", None) or {}).values()]
    msg = unlisted_message(tag.name, net_arch if net_arch in KNOWN_ARCHS else blocks_arch, res, slots)
    if msg:
        messages.append(msg)
    return Activated(tag, res, active, entry)


def unused_message(a: Activated) -> str | None:
    """After applying: the modules of `a` that were not applied (unknown keys, damaged, no such layer), so a
    LoRA partly missing never goes unsaid."""
    unused = (a.report.skipped if a.report is not None else []) + list(a.network.skipped)
    if not unused:
        return None
    key, reason = unused[0]
    n = len({k.split(".", 1)[0] for k, _ in unused})      # files list keys; count modules
    return f"`{a.name}`: {n} module(s) not applied (e.g. '{key}': {reason})"


def te_signature(activated: list) -> tuple:
    """What the text encoder holds: (file, effective TE multiplier, dyn) for LoRAs with text-encoder modules.
    A change means text conditioning cached by prompt text is stale."""
    out = []
    for act in activated:
        a = getattr(act, "active", act)
        mods = (getattr(a.network, "modules", None) or {}).values()
        if not any(getattr(m, "is_te", False) for m in mods):
            continue
        m = strength(a, 0, is_te=True)
        if m != 0.0:
            out.append((str(getattr(a.network, "path", id(a.network))), m, a.dyn))
    return tuple(out)
